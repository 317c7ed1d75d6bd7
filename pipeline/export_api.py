"""Amplitude's Export API: one GET per window, the body streamed to a file on disk."""

from __future__ import annotations

import enum
import logging
from collections.abc import Callable
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
) -> tuple[Outcome, int]:
    """Stream the export of `window` into `dest`; return the outcome and the bytes written."""
    url = request_url(base_url, window)
    host = urlsplit(base_url).netloc
    try:
        with session.get(
            url, auth=auth, stream=True, timeout=(CONNECT_TIMEOUT, READ_TIMEOUT)
        ) as response:
            status = response.status_code
            if status == 404:
                return Outcome.NO_DATA, 0
            if status in TOO_LARGE_STATUSES:
                log.info("window %s: HTTP %d, too large for one request", window, status)
                return Outcome.TOO_LARGE, 0
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
            return Outcome.DATA, written
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
