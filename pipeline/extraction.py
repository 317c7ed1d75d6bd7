"""extract.py's work: plan the hours, download each window, unpack it, keep what S3 lacks,
and record every fetch in the manifest (pipeline.manifest)."""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import sys
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import requests
from tqdm import tqdm

import modules
from pipeline import s3 as s3mod
from pipeline.errors import PipelineError, UsageError
from pipeline.export_api import Download, Outcome, download, make_session, request_url
from pipeline.hours import HOUR, Window, default_end, default_start, format_hour, split_windows
from pipeline.layout import TEMP_PREFIX, local_path, remove_stale_temp, s3_key, scan_local
from pipeline.manifest import (
    DayManifest,
    FileRecord,
    History,
    HourRecord,
    LocalManifests,
    S3Manifests,
    is_final,
)
from pipeline.s3 import HeldObject

log = logging.getLogger("pipeline.extract")

STAGING_PREFIX = f"{TEMP_PREFIX}extract-"
DEFAULT_LOOKBACK_HOURS = 2
# Windows downloaded at once. Amplitude documents 5 concurrent requests across its REST
# endpoints (not whether Export shares them): 3 stays below, and a 429 lowers it for the run.
DEFAULT_PARALLEL = 3
MAX_PARALLEL = 4
# Amplitude's Date header more than this far behind the local clock earns a warning.
CLOCK_SKEW_WARNING = timedelta(minutes=10)


@dataclass
class Plan:
    start: datetime | None  # the first hour requested (None: nothing to request)
    end: datetime
    windows: list[Window]
    newest_held: datetime | None
    refetch: list[datetime] = field(default_factory=list)  # older hours fetched again
    notes: list[str] = field(default_factory=list)


@dataclass
class Summary:
    windows_requested: int = 0
    windows_empty: int = 0
    files_written: int = 0
    files_skipped: int = 0
    files_unchanged: int = 0
    events: int = 0
    bytes_downloaded: int = 0
    bytes_written: int = 0
    hours_early: set[datetime] = field(default_factory=set)
    gap_check: bool = True
    started: float = field(default_factory=time.monotonic)

    def lines(self) -> list[str]:
        seconds = time.monotonic() - self.started
        skipped = "already in S3" if self.gap_check else "gap check off: S3_BUCKET is not set"
        lines = [
            f"windows requested: {self.windows_requested} ({self.windows_empty} with no data)",
            f"files written:     {self.files_written}",
            f"files skipped:     {self.files_skipped} ({skipped})",
            *(
                [f"files unchanged:   {self.files_unchanged} (json_data/ holds the same bytes)"]
                if self.files_unchanged
                else []
            ),
            f"events:            {self.events}",
            f"bytes:             {self.bytes_downloaded} downloaded, {self.bytes_written} written",
            f"seconds:           {seconds:.1f}",
        ]
        if self.hours_early:
            first, last = min(self.hours_early), max(self.hours_early)
            lines.append(
                f"still filling:     {len(self.hours_early)} hours ({format_hour(first)}.."
                f"{format_hour(last)}) were fetched before Amplitude finished them; a later "
                "run fetches them again"
            )
        return lines


def newest_held_hour(
    data_dir: Path,
    held: dict[str, HeldObject],
    project: str | None = None,
    history: History | None = None,
) -> datetime | None:
    """The newest hour of `project` (every project if None) with data in json_data/ or S3."""
    hours = [f.hour_start for f, _ in scan_local(data_dir) if project in (None, f.project)]
    hours += [o.file.hour_start for o in held.values() if project in (None, o.file.project)]
    if history is not None and (newest := history.newest_with_data()) is not None:
        hours.append(newest)
    return max(hours, default=None)


def check_parallel(parallel: int) -> int:
    if not 1 <= parallel <= MAX_PARALLEL:
        raise UsageError(
            f"--parallel must be 1 to {MAX_PARALLEL}: Amplitude accepts only a few requests at once"
        )
    return parallel


def windows_over(hours: Iterable[datetime], window_hours: int) -> list[Window]:
    """Windows of at most `window_hours` covering exactly these hours, in time order."""
    windows: list[Window] = []
    ordered = sorted(set(hours))
    run_start = prev = None
    for moment in [*ordered, None]:
        if moment is not None and prev is not None and moment == prev + HOUR:
            prev = moment
            continue
        if run_start is not None and prev is not None:
            windows += split_windows(run_start, prev, window_hours)
        run_start = prev = moment
    return windows


def plan_windows(
    now: datetime,
    start: datetime | None,
    end: datetime | None,
    days: int,
    window_hours: int,
    newest_held: datetime | None,
    *,
    lookback_hours: int = 0,
    history: History | None = None,
) -> Plan:
    """The hours to request, as windows; defaults as the contract says.

    Without --start: from the newest hour held (or the newest hour known final, if later)
    minus `lookback_hours`, plus every older hour the manifest says must be fetched again
    (fetched before Amplitude finished it, or a damaged local file). With nothing held:
    00 UTC `days` days ago.
    """
    if days < 0:
        raise UsageError("--days must be 0 or more")
    if lookback_hours < 0:
        raise UsageError("--lookback-hours must be 0 or more")
    finished = default_end(now)
    notes = []
    if end is not None and end > finished:
        notes.append(
            f"--end {format_hour(end)} is past {format_hour(finished)}, the newest hour "
            "Amplitude has finished: later hours are fetched now and again by a later run"
        )
    end = end if end is not None else finished
    if start is not None:
        if start > end:
            raise UsageError(f"the end {format_hour(end)} is before the start {format_hour(start)}")
        return Plan(start, end, split_windows(start, end, window_hours), newest_held, [], notes)
    known = [newest_held, history.newest_final() if history is not None else None]
    anchor = max((h for h in known if h is not None), default=None)
    first = default_start(now, days, anchor)
    if anchor is not None:
        first -= HOUR * lookback_hours
    hours = _span(first, end)
    pending = history.pending() if history is not None else []
    refetch = [h for h in pending if h < first and h <= end]
    hours |= set(refetch)
    windows = windows_over(hours, window_hours)
    return Plan(min(hours, default=None), end, windows, newest_held, refetch, notes)


def _span(first: datetime, last: datetime) -> set[datetime]:
    hours = set()
    while first <= last:
        hours.add(first)
        first += HOUR
    return hours


def clean_stale_staging(data_dir: Path) -> None:
    """Remove staging folders left by a killed run (their process is gone)."""
    remove_stale_temp(data_dir, STAGING_PREFIX)


@dataclass
class Fetched:
    """One request's answer, its zip downloaded into staging, waiting for its turn."""

    window: Window
    got: Download
    staging: Path
    archive: Path | None  # the zip, with data
    seconds: float
    staged: list[modules.StagedFile] | None = None  # once unpacked


class Pace:
    """How a run paces itself; backfill's disk budget overrides these. The defaults: no limit.

    `may_start(in_flight, zip_bytes)` is asked before each new download; with nothing in
    flight it may wait, but must then say yes. `before_unpack(zip_bytes)` is called in time
    order before a downloaded window is unpacked, and may wait. `committed(c)` follows each
    window's commit; `on_disk(zip_bytes)` counts a zip written or removed (negative).
    """

    # Unpack in the download workers, at once, rather than one by one in time order (only
    # commits need the order); backfill's budget says False, to hold each unpack for room.
    unpack_in_workers = True

    def may_start(self, in_flight: int) -> bool:
        return True

    def on_disk(self, zip_bytes: int) -> None:
        pass

    def before_unpack(self, zip_bytes: int) -> None:
        pass

    def committed(self, committed: Committed) -> None:
        pass


@dataclass
class Committed:
    """What one window's commit wrote (for backfill.py, which uploads it next)."""

    window: Window
    written: list[modules.StagedFile]
    events: int
    size: int  # bytes written into json_data/
    zip_size: int = 0  # the download's
    unpacked: int = 0  # every file of the zip, written or not


@dataclass
class Extractor:
    """Runs a plan: up to `parallel` windows download at once; each commits in time order,
    all-or-nothing, and is recorded in the manifest."""

    session: requests.Session | None
    base_url: str
    auth: tuple[str, str]
    data_dir: Path
    prefix: str
    held: dict[str, HeldObject]
    project: str | None = None  # the key pair's project id, when known
    explicit_project: bool = False  # AMPLITUDE_PROJECT_ID: another id is refused
    s3: object | None = None  # for the gap check's rare HEAD
    bucket: str | None = None
    remote: S3Manifests | None = None
    local: LocalManifests | None = None
    on_project: Callable[[str], None] = lambda pid: None  # a project id learned from data
    clock: Callable[[], datetime] = lambda: datetime.now(UTC)
    parallel: int = 1
    # Held while a window commits: backfill's uploader touches the manifests and the listing.
    guard: contextlib.AbstractContextManager = field(default_factory=threading.Lock)
    summary: Summary = field(default_factory=Summary)
    show_progress: bool = field(default_factory=lambda: sys.stderr.isatty())

    def __post_init__(self) -> None:
        if self.local is None:
            self.local = LocalManifests(self.data_dir)
        self.summary.gap_check = self.bucket is not None
        self.limit = max(1, self.parallel)  # lowered for the rest of the run by a 429
        self._sessions = threading.local()
        self._cancel = threading.Event()

    def run(self, windows: list[Window], pace: Pace | None = None) -> Summary:
        """Fetch every window: up to `limit` downloads at once; unpack and commit in time order.

        Workers only download (the slow part: Amplitude's time to first byte, the transfer);
        this thread unpacks and commits each window in turn, so a later window is never
        visible before an earlier one, and backfill's budget can wait before each unpack.
        """
        pace = pace or Pace()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        clean_stale_staging(self.data_dir)
        todo = deque(windows)
        in_flight: deque[tuple[Window, Future]] = deque()
        pool = ThreadPoolExecutor(self.limit, "window")
        bar = tqdm(
            total=len(windows), unit="window", disable=not self.show_progress, file=sys.stderr
        )
        try:
            while todo or in_flight:
                while todo and len(in_flight) < self.limit and pace.may_start(len(in_flight)):
                    window = todo.popleft()
                    in_flight.append((window, pool.submit(self._fetch_all, window, pace)))
                window, future = in_flight.popleft()
                fetched_all = future.result()  # in time order; a failure stops here
                for n, fetched in enumerate(fetched_all):
                    try:
                        staged = self._unpack(fetched, pace)
                        with self.guard:
                            done = self._commit(fetched, staged)
                    except BaseException:
                        for later in fetched_all[n:]:
                            shutil.rmtree(later.staging, ignore_errors=True)
                        raise
                    pace.committed(done)
                bar.update(1)
                bar.set_postfix_str(
                    f"{self.summary.events} events, {self.summary.bytes_downloaded / 1e6:.0f} MB",
                    refresh=False,
                )
        except BaseException:
            self._cancel.set()  # running downloads stop at their next block
            for _, future in in_flight:
                future.cancel()
            for _, future in in_flight:
                if not future.cancelled():
                    with contextlib.suppress(BaseException):
                        for fetched in future.result():
                            shutil.rmtree(fetched.staging, ignore_errors=True)
            raise
        finally:
            bar.close()
            pool.shutdown(wait=True, cancel_futures=True)
        return self.summary

    def _session(self) -> requests.Session:
        if self.session is not None and self.limit == 1 and self.parallel == 1:
            return self.session
        session = getattr(self._sessions, "session", None)
        if session is None:
            session = self._sessions.session = make_session()
        return session

    def _fetch_all(self, window: Window, pace: Pace) -> list[Fetched]:
        """Download one window (its halves, in order, if it is too large)."""
        staging = Path(
            tempfile.mkdtemp(prefix=f"{STAGING_PREFIX}{os.getpid()}-", dir=self.data_dir)
        )
        try:
            fetched = self._fetch(window, staging, pace)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        if fetched.got.outcome is not Outcome.TOO_LARGE:
            return [fetched]
        shutil.rmtree(staging, ignore_errors=True)
        if window.hours == 1:
            said = f" (Amplitude said: {fetched.got.message!r})" if fetched.got.message else ""
            raise PipelineError(
                f"hour {format_hour(window.start)} alone is over Amplitude's 4 GB export "
                f"limit{said}: export it with Amplitude's Amazon S3 export destination instead"
            )
        results: list[Fetched] = []
        try:
            for half in window.halves():
                results += self._fetch_all(half, pace)
        except BaseException:
            for done in results:
                shutil.rmtree(done.staging, ignore_errors=True)
            raise
        return results

    def _fetch(self, window: Window, staging: Path, pace: Pace) -> Fetched:
        """In a worker thread: the request, streamed to a zip in staging."""
        archive = staging / "export.zip"
        started = time.monotonic()

        def progress(n: int) -> None:
            if self._cancel.is_set():
                raise PipelineError(f"window {window}: cancelled")

        got = download(self._session(), self.base_url, self.auth, window, archive, progress)
        if got.outcome is not Outcome.DATA:
            return Fetched(window, got, staging, None, time.monotonic() - started)
        pace.on_disk(got.size)
        fetched = Fetched(window, got, staging, archive, time.monotonic() - started)
        if pace.unpack_in_workers:
            fetched.staged = self._unpack(fetched, pace)
        return fetched

    def _unpack(self, fetched: Fetched, pace: Pace) -> list[modules.StagedFile]:
        """Unpack and check a downloaded zip (after the pace allows it), once."""
        if fetched.staged is not None:
            return fetched.staged
        if fetched.archive is None:
            return []
        pace.before_unpack(fetched.got.size)
        try:
            staged = modules.unpack_archive(fetched.archive, fetched.staging)
        except modules.CorruptExport as exc:
            raise PipelineError(
                f"window {fetched.window}: the download is corrupt ({exc}); nothing of it was "
                "kept, rerun to fetch it again"
            ) from exc
        finally:
            fetched.archive.unlink(missing_ok=True)
            pace.on_disk(-fetched.got.size)
        return staged

    def _commit(self, fetched: Fetched, staged: list[modules.StagedFile]) -> Committed:
        """In time order: check, gap fill, rename into place, record; then drop the staging."""
        try:
            return self._commit_staged(fetched, staged)
        finally:
            shutil.rmtree(fetched.staging, ignore_errors=True)

    def _commit_staged(self, fetched: Fetched, staged: list[modules.StagedFile]) -> Committed:
        window, got = fetched.window, fetched.got
        self.summary.windows_requested += 1
        if got.throttled and self.limit > 1:
            self.limit -= 1
            log.warning(
                "Amplitude answered 429 (too many requests): %d window(s) at once from now on",
                self.limit,
            )
        fetched_at = self._fetched_at(got)
        if got.outcome is Outcome.NO_DATA:
            self.summary.windows_empty += 1
            log.info("window %s: no data (HTTP 404)", window)
            if self.project is not None:
                self._record(window, self.project, fetched_at, [], {})
            return Committed(window, [], 0, 0)
        self.summary.bytes_downloaded += got.size
        project = self._project_of(window, staged)
        in_s3 = {s.file: key for s in staged if (key := self._identical_in_s3(s)) is not None}
        unchanged = {s.file for s in staged if self._unchanged_locally(s)}

        def keep(item: modules.StagedFile) -> bool:
            # Gap fill: bytes S3 holds already are not written again, nor bytes json_data/
            # holds already; a local copy that differs (damaged, or older) is replaced.
            if item.file in unchanged:
                return False
            return item.file not in in_s3 or local_path(self.data_dir, item.file).exists()

        written, skipped = modules.commit(staged, self.data_dir, keep)
        self.summary.files_unchanged += sum(1 for s in skipped if s.file in unchanged)
        if project is not None:
            self._record(window, project, fetched_at, staged, in_s3)
        events = sum(s.events for s in written)
        size = sum(s.size for s in written)
        self.summary.files_written += len(written)
        self.summary.files_skipped += sum(1 for s in skipped if s.file not in unchanged)
        self.summary.events += events
        self.summary.bytes_written += size
        log.info(
            "window %s: %d bytes in %.1fs, %d files written, %d already in S3",
            window,
            got.size,
            fetched.seconds,
            len(written),
            len(skipped),
        )
        return Committed(window, written, events, size, got.size, sum(s.size for s in staged))

    def _unchanged_locally(self, staged: modules.StagedFile) -> bool:
        """json_data/ holds these bytes already, as recorded, and nothing asks to redo them."""
        f = staged.file
        assert self.local is not None
        day = self.local.get(f.project, f.date)
        hour = day.hours.get(f.hour)
        record = hour.files.get(f.filename) if hour else None
        if hour is None or hour.refetch or record is None:
            return False
        if not record.same_content(staged.size, staged.crc32):
            return False
        path = local_path(self.data_dir, f)
        return path.is_file() and path.stat().st_size == staged.size

    def _fetched_at(self, got: Download) -> datetime:
        """When Amplitude exported it, by Amplitude's clock (the local one if it gave none)."""
        local = self.clock()
        if got.server_time is None:
            return local
        if local - got.server_time > CLOCK_SKEW_WARNING:
            log.warning(
                "this machine's clock is %s ahead of Amplitude's: hours are judged finished "
                "by Amplitude's clock",
                local - got.server_time,
            )
        return got.server_time

    def _project_of(self, window: Window, staged: list[modules.StagedFile]) -> str | None:
        """The export's one project id; another id than the known one is refused."""
        found = sorted({s.file.project for s in staged})
        if not found:
            return self.project
        if len(found) > 1:
            raise PipelineError(
                f"window {window}: the export holds several projects ({', '.join(found)}); "
                "nothing of it was kept"
            )
        if self.project is not None and found[0] != self.project:
            how = (
                f"AMPLITUDE_PROJECT_ID is {self.project}"
                if self.explicit_project
                else f"this key pair exported project {self.project} before"
            )
            raise PipelineError(
                f"window {window}: the export is of project {found[0]}, but {how}: check "
                "AMPLITUDE_API_KEY and AMPLITUDE_SECRET_KEY; nothing of it was kept"
            )
        if self.project is None:
            self.project = found[0]
            self.on_project(found[0])
        return found[0]

    def _identical_in_s3(self, staged: modules.StagedFile) -> str | None:
        """The S3 key holding exactly these bytes (plain or .gz), or None.

        Known without a request from the local manifest (load.py marks what it uploaded) or
        the published one; otherwise one HEAD reads the object's metadata (crc32 and
        raw-size; objects of older versions carry only raw-size, or, plain, their size).
        """
        f = staged.file
        names = [s3_key(self.prefix, f), s3_key(self.prefix, f, gzip=True)]
        present = [self.held[n] for n in names if n in self.held]
        if not present:
            return None
        records = [self.local.get(f.project, f.date).file(f)] if self.local else []
        if self.remote is not None and (day := self.remote.get(f.project, f.date)) is not None:
            records.append(day.file(f))
        for record in records:
            if (
                record is not None
                and record.key in names
                and record.key in self.held
                and record.same_content(staged.size, staged.crc32)
            ):
                return record.key
        for obj in present:
            if self._object_matches(obj, staged):
                return obj.key
        return None

    def _object_matches(self, obj: HeldObject, staged: modules.StagedFile) -> bool:
        if self.s3 is None or self.bucket is None:
            return False
        meta = s3mod.object_metadata(self.s3, self.bucket, obj.key)
        if meta is None:
            return False
        raw = meta.get("raw-size")
        size = int(raw) if raw and raw.isdigit() else (None if obj.gzip else obj.size)
        if "crc32" in meta:
            return meta["crc32"] == staged.crc32 and size == staged.size
        if size != staged.size:
            log.warning(
                "%s: S3 holds %s bytes, Amplitude now exported %d; kept so load.py uploads it",
                obj.key,
                size,
                staged.size,
            )
            return False
        return True  # an older object with the same size: the best evidence it carries

    def _record(
        self,
        window: Window,
        project: str,
        fetched_at: datetime,
        staged: list[modules.StagedFile],
        in_s3: dict,
    ) -> None:
        """Write every hour of the window into the local manifest, after its files."""
        assert self.local is not None
        by_hour: dict[datetime, dict[str, FileRecord]] = {h: {} for h in _span_list(window)}
        for s in staged:
            by_hour.setdefault(s.file.hour_start, {})[s.file.filename] = FileRecord(
                s.size, s.crc32, s.events, in_s3.get(s.file)
            )
        days: dict[str, DayManifest] = {}
        for start, files in by_hour.items():
            date = start.strftime("%Y-%m-%d")
            day = days.get(date) or self.local.get(project, date)
            days[date] = day
            day.hours[start.hour] = HourRecord(fetched_at, files)
            if not is_final(start, fetched_at):
                self.summary.hours_early.add(start)
        for day in days.values():
            self.local.save(day)


def _span_list(window: Window) -> list[datetime]:
    return [window.start + HOUR * i for i in range(window.hours)]


def dry_run_lines(plan: Plan, base_url: str) -> list[str]:
    """What a run would request, without credentials."""
    lines = list(plan.notes)
    if not plan.windows:
        return [*lines, f"nothing to request: already up to date through {format_hour(plan.end)}"]
    held = format_hour(plan.newest_held) if plan.newest_held else "none"
    lines.append(
        f"would request {len(plan.windows)} window(s), {format_hour(plan.windows[0].start)} to "
        f"{format_hour(plan.end)} (newest hour held: {held})"
    )
    if plan.refetch:
        lines.append(
            f"including {len(plan.refetch)} older hour(s) fetched before Amplitude finished them "
            f"or damaged locally: {', '.join(format_hour(h) for h in plan.refetch[:10])}"
            + (" …" if len(plan.refetch) > 10 else "")
        )
    lines += [f"GET {request_url(base_url, w)}" for w in plan.windows]
    return lines
