"""Amplitude's Export API: one GET per window, the body streamed to a file on disk."""

from __future__ import annotations

import enum
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from pathlib import Path
from urllib.parse import urlencode, urlsplit

import requests
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

from pipeline.errors import PipelineError
from pipeline.hours import Window, format_hour

log = logging.getLogger("pipeline.export_api")

RETRY_STATUSES = (429, 500, 502, 503)  # retried with backoff, honouring Retry-After
TOO_LARGE_STATUSES = (400, 504)  # Amplitude's answer to a range over its 4 GB limit
AUTH_STATUSES = (401, 403)
CONNECT_TIMEOUT = 10.0
READ_TIMEOUT = 300.0  # Amplitude can take minutes before the first byte of a large export
CHUNK = 1 << 20


class Outcome(enum.Enum):
    DATA = "data"
    NO_DATA = "no data"
    TOO_LARGE = "too large"


@dataclass(frozen=True)
class Download:
    """What one request gave: the outcome, the bytes written, and Amplitude's clock."""

    outcome: Outcome
    size: int = 0
    server_time: datetime | None = None  # the response's Date header
    message: str = ""  # Amplitude's words with a too-large answer
    throttled: bool = False  # Amplitude answered 429 at least once before this answer


# A 400 is Amplitude's "over 4 GB, ask for less" unless its body plainly says something else:
# an HTML page (a proxy, a wrong AMPLITUDE_EXPORT_URL) or a complaint about a parameter.
_SAYS_TOO_LARGE = re.compile(r"too large|too big|4 ?gb|size|limit|smaller", re.IGNORECASE)
_SAYS_BAD_PARAMETER = re.compile(
    r"\b(start|end|param\w*|invalid|missing|malformed|format)\b", re.IGNORECASE
)


def body_excerpt(body: bytes, limit: int = 200) -> str:
    """A response body on one line, shortened, for an error message."""
    text = " ".join(body.decode("utf-8", "replace").split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def is_too_large(status: int, body: bytes, content_type: str) -> bool:
    """True when a 400/504 means "this window is over the 4 GB limit"."""
    if status == 504:
        return True
    text = body_excerpt(body, 2000)
    if _SAYS_TOO_LARGE.search(text):
        return True
    is_html = "html" in content_type.lower() or text.lstrip().startswith("<")
    return not (is_html or _SAYS_BAD_PARAMETER.search(text))


def was_throttled(response: requests.Response) -> bool:
    """True if urllib3 retried this request after a 429 (its retry history says so)."""
    retries = getattr(response.raw, "retries", None)
    history = getattr(retries, "history", None) or ()
    return any(getattr(h, "status", None) == 429 for h in history)


def server_time(response: requests.Response) -> datetime | None:
    """The response's Date header as an aware datetime, or None if absent or unreadable."""
    value = response.headers.get("Date")
    if not value:
        return None
    try:
        return parsedate_to_datetime(value).astimezone(UTC)
    except (TypeError, ValueError):
        return None


def make_session(retries: int = 6, backoff: float = 2.0) -> requests.Session:
    """A session whose adapter retries 429/5xx with exponential backoff and Retry-After."""
    retry = Retry(
        total=retries,
        connect=retries,
        read=retries,
        status=retries,
        backoff_factor=backoff,
        backoff_max=300,
        status_forcelist=RETRY_STATUSES,
        allowed_methods=frozenset({"GET"}),
        respect_retry_after_header=True,
        raise_on_status=False,
    )
    session = requests.Session()
    adapter = HTTPAdapter(max_retries=retry)
    session.mount("https://", adapter)
    session.mount("http://", adapter)
    return session


def request_url(base_url: str, window: Window) -> str:
    """The URL for one window, as it is requested (no credentials in it)."""
    query = urlencode({"start": format_hour(window.start), "end": format_hour(window.end)})
    return f"{base_url}?{query}"


def download(
    session: requests.Session,
    base_url: str,
    auth: tuple[str, str],
    window: Window,
    dest: Path,
    progress: Callable[[int], object] = lambda n: None,
) -> Download:
    """Stream the export of `window` into `dest`; return the outcome, size and server time."""
    url = request_url(base_url, window)
    host = urlsplit(base_url).netloc
    try:
        with session.get(
            url, auth=auth, stream=True, timeout=(CONNECT_TIMEOUT, READ_TIMEOUT)
        ) as response:
            status = response.status_code
            when = server_time(response)
            throttled = was_throttled(response)
            if status == 404:
                return Download(Outcome.NO_DATA, 0, when, throttled=throttled)
            if status in TOO_LARGE_STATUSES:
                body = next(response.iter_content(64 * 1024), b"")
                said = body_excerpt(body)
                if not is_too_large(status, body, response.headers.get("Content-Type", "")):
                    raise PipelineError(
                        f"Amplitude answered HTTP {status} for window {window} at {host}: "
                        f"{said or '(empty body)'!r}; check AMPLITUDE_EXPORT_URL and "
                        "AMPLITUDE_REGION (this is not the 4 GB limit)"
                    )
                log.info("window %s: HTTP %d, too large for one request (%s)", window, status, said)
                return Download(Outcome.TOO_LARGE, 0, when, said, throttled)
            if status in AUTH_STATUSES:
                raise PipelineError(
                    f"Amplitude refused the key pair (HTTP {status}) at {host}: check "
                    "AMPLITUDE_API_KEY and AMPLITUDE_SECRET_KEY, and AMPLITUDE_REGION "
                    "(an EU project is refused on the US host)"
                )
            if status != 200:
                raise PipelineError(
                    f"Amplitude answered HTTP {status} for window {window} after retries: "
                    "rerun later (the next run resumes from the newest hour held)"
                )
            written = 0
            with open(dest, "wb") as out:
                for block in response.iter_content(CHUNK):
                    out.write(block)
                    written += len(block)
                    progress(len(block))
            expected = response.headers.get("Content-Length")
            if expected is not None and int(expected) != written:
                raise PipelineError(
                    f"window {window}: download cut short ({written} of {expected} bytes); rerun"
                )
            return Download(Outcome.DATA, written, when, throttled=throttled)
    except requests.exceptions.RetryError as exc:
        raise PipelineError(
            f"Amplitude kept failing for window {window}: {exc}; rerun later"
        ) from exc
    except requests.exceptions.ConnectionError as exc:
        raise PipelineError(
            f"cannot reach {host} ({type(exc).__name__}): check the network, "
            "AMPLITUDE_REGION and AMPLITUDE_EXPORT_URL"
        ) from exc
    except requests.exceptions.Timeout as exc:
        raise PipelineError(f"{host} timed out for window {window}: rerun later") from exc
    except requests.exceptions.ChunkedEncodingError as exc:
        raise PipelineError(f"window {window}: download broke off ({exc}); rerun") from exc
