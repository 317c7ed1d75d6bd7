"""A local stand-in for Amplitude's Export API, serving generated Amplitude-shaped events.

It checks basic auth, honours `start` and `end` (inclusive hours), answers 404 for a window
with no data, 400 for a window over `max_hours` (as Amplitude does past its 4 GB limit),
and can be told to answer a queue of scripted statuses first (429 with Retry-After, 503...).

    python -m local_stack.amplitude_server --port 8090 --first 20261120T00 --last 20261121T23
"""

from __future__ import annotations

import argparse
import base64
import tempfile
import threading
import time
import zipfile
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from pipeline import sample_events


def _hour(text: str) -> datetime:
    return datetime.strptime(text, "%Y%m%dT%H").replace(tzinfo=UTC)


@dataclass
class ExportService:
    """What the stand-in serves, and what it was asked."""

    api_key: str = "demo-api-key"
    secret_key: str = "demo-secret-key"
    project_id: int = 123456
    first: datetime | None = None  # data exists for hours first..last
    last: datetime | None = None
    events_per_hour: int = 20
    shards: int = 2
    empty_hours: set[datetime] = field(default_factory=set)
    max_hours: int = 24 * 365
    fixed_archive: Path | None = None  # serve this file for every window (benchmarks)
    # Benchmarks: one day's gzipped members by (hour, shard), served for every day asked for,
    # named for that day (so a month of data costs one day's generation).
    template_day: dict[tuple[int, int], bytes] | None = None
    seed: int = 0
    scripted: deque = field(default_factory=deque)  # (status, headers, body) answered first
    # Late data, as Amplitude has it: an event is exportable only some time after its
    # server_upload_time (shard n of an hour appears n × 45 min later, then grows for up to
    # 30 min), so an hour is complete 2.5 h after it ended, within Amplitude's 2-hour promise
    # plus the hour itself. `clock` is the stand-in's own time (its Date header too).
    late_data: bool = False
    clock: Callable[[], datetime] = field(default=lambda: datetime.now(UTC))
    # Under load, as the real one behaves: seconds before the first byte (a fixed part and
    # one that grows with the archive's size), a bandwidth cap per connection, and 429 with
    # Retry-After above a number of requests at once.
    ttfb: float = 0.0
    ttfb_per_mb: float = 0.0
    bandwidth: float | None = None  # bytes per second per connection
    max_concurrent: int | None = None
    delay_for: Callable[[str, str], float] = field(default=lambda start, end: 0.0)
    # Tests: an answer (status, headers, body) instead of the data for chosen windows.
    answer_for: Callable[[str, str], tuple[int, dict, bytes] | None] = field(
        default=lambda start, end: None
    )
    in_flight: int = 0
    most_in_flight: int = 0
    throttled: int = 0
    answered: list[tuple[str, str, float]] = field(default_factory=list)  # (start, end, when)
    requests: list[tuple[str, str]] = field(default_factory=list)
    events_served: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def members(self, start: datetime, end: datetime) -> list[tuple[str, list[dict]]]:
        if self.first is None or self.last is None:
            return []
        lo, hi = max(start, self.first), min(end, self.last)
        if lo > hi:
            return []
        members = sample_events.export_members(
            self.project_id,
            lo,
            hi,
            self.events_per_hour,
            self.shards,
            self.empty_hours,
            self.seed,
        )
        if not self.late_data:
            return members
        now = self.clock()
        members = [(n, [e for e in ev if exportable_at(n, e) <= now]) for n, ev in members]
        return [(name, events) for name, events in members if events]

    def expected_auth(self) -> str:
        token = base64.b64encode(f"{self.api_key}:{self.secret_key}".encode()).decode()
        return f"Basic {token}"


def template_zip(path: Path, service: ExportService, start: datetime, end: datetime) -> bool:
    """The template day's members for every hour start..end, named for those hours."""
    assert service.template_day is not None
    written = False
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as zf:
        hour = start
        while hour <= end:
            for (h, shard), body in sorted(service.template_day.items()):
                if h == hour.hour:
                    zf.writestr(sample_events.member_name(service.project_id, hour, shard), body)
                    written = True
            hour += timedelta(hours=1)
    return written


def _pause(seconds: float) -> None:
    if seconds > 0:  # no call at all otherwise: tests record time.sleep's calls
        time.sleep(seconds)


def exportable_at(member: str, event: dict) -> datetime:
    """When the stand-in's late-data model first exports this event of this member."""
    shard = int(member.rsplit("#", 1)[1].split(".", 1)[0])
    upload = datetime.strptime(event["server_upload_time"], sample_events.TS_FORMAT)
    jitter = int(event["uuid"][:8], 16) % 1800
    return upload.replace(tzinfo=UTC) + timedelta(minutes=45 * shard, seconds=jitter)


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def date_time_string(self, timestamp: float | None = None) -> str:
        """The Date header, from the stand-in's own clock."""
        return formatdate(self.server.service.clock().timestamp(), usegmt=True)

    def log_message(self, format: str, *args: object) -> None:  # quiet
        pass

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        service = self.server.service
        url = urlsplit(self.path)
        if url.path != "/api/2/export":
            return self._answer(404, b"not found")
        if self.headers.get("Authorization") != service.expected_auth():
            return self._answer(401, b"Invalid API key")
        query = parse_qs(url.query)
        try:
            start, end = _hour(query["start"][0]), _hour(query["end"][0])
        except (KeyError, ValueError):
            return self._answer(400, b"bad start or end")
        with service.lock:
            service.requests.append((query["start"][0], query["end"][0]))
            scripted = service.scripted.popleft() if service.scripted else None
            busy = (
                service.max_concurrent is not None and service.in_flight >= service.max_concurrent
            )
            if busy:
                service.throttled += 1
            else:
                service.in_flight += 1
                service.most_in_flight = max(service.most_in_flight, service.in_flight)
        if busy:
            return self._answer(429, b"Too many concurrent requests", {"Retry-After": "1"})
        try:
            self._serve(service, query, scripted, start, end)
        finally:
            with service.lock:
                service.in_flight -= 1
                service.answered.append((query["start"][0], query["end"][0], time.monotonic()))

    def _serve(self, service: ExportService, query, scripted, start, end) -> None:
        _pause(service.delay_for(query["start"][0], query["end"][0]))
        scripted = scripted or service.answer_for(query["start"][0], query["end"][0])
        if scripted is not None:
            status, headers, body = scripted
            return self._answer(status, body, headers)
        hours = int((end - start) / timedelta(hours=1)) + 1
        if hours > service.max_hours:
            return self._answer(400, b"Raw data files were too large")
        if service.fixed_archive is not None:
            return self._send_file(service.fixed_archive, service)
        if service.template_day is not None:
            with tempfile.TemporaryDirectory() as tmp:
                archive = Path(tmp) / "export.zip"
                if not template_zip(archive, service, start, end):
                    return self._answer(404, b"")
                return self._send_file(archive, service)
        members = service.members(start, end)
        if not members:
            return self._answer(404, b"")
        with tempfile.TemporaryDirectory() as tmp:
            archive = sample_events.export_zip(Path(tmp) / "export.zip", members)
            with service.lock:
                service.events_served += sum(len(events) for _, events in members)
            self._send_file(archive, service)

    def _send_file(self, path: Path, service: ExportService) -> None:
        size = path.stat().st_size
        _pause(service.ttfb + service.ttfb_per_mb * size / 1e6)
        self.send_response(200)
        self.send_header("Content-Type", "application/zip")
        self.send_header("Content-Length", str(size))
        self.end_headers()
        block = 1 << 16 if service.bandwidth else 1 << 20
        started = time.monotonic()
        sent = 0
        with open(path, "rb") as src:
            while chunk := src.read(block):
                self.wfile.write(chunk)
                sent += len(chunk)
                if service.bandwidth:  # hold the pace: `sent` bytes take sent / bandwidth s
                    ahead = sent / service.bandwidth - (time.monotonic() - started)
                    if ahead > 0:
                        time.sleep(ahead)

    def _answer(self, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], service: ExportService) -> None:
        super().__init__(address, _Handler)
        self.service = service


@contextmanager
def running(service: ExportService, port: int = 0) -> Iterator[str]:
    """Serve `service` on 127.0.0.1 in a thread; yields the export URL."""
    server = _Server(("127.0.0.1", port), service)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/api/2/export"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, default=8090)
    parser.add_argument("--first", required=True, help="first hour with data, YYYYMMDDTHH")
    parser.add_argument("--last", required=True, help="last hour with data, YYYYMMDDTHH")
    parser.add_argument("--events-per-hour", type=int, default=20)
    parser.add_argument("--shards", type=int, default=2)
    parser.add_argument("--empty-hour", action="append", default=[], help="YYYYMMDDTHH")
    parser.add_argument("--api-key", default="demo-api-key")
    parser.add_argument("--secret-key", default="demo-secret-key")
    parser.add_argument("--archive", type=Path, help="serve this zip for every window")
    args = parser.parse_args()
    service = ExportService(
        api_key=args.api_key,
        secret_key=args.secret_key,
        first=_hour(args.first),
        last=_hour(args.last),
        events_per_hour=args.events_per_hour,
        shards=args.shards,
        empty_hours={_hour(h) for h in args.empty_hour},
        fixed_archive=args.archive,
    )
    server = _Server(("127.0.0.1", args.port), service)
    print(f"serving http://127.0.0.1:{server.server_address[1]}/api/2/export", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


if __name__ == "__main__":
    main()
