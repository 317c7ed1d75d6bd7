"""backfill.py's work: extract, upload and prune window by window under a local disk budget.

Downloads run `parallel` windows at once and commit in time order (pipeline.extraction); each
committed window is handed to one uploader thread, which uploads it (pipeline.upload),
publishes its manifest and deletes its local files once S3 holds them, while the next windows
download. A `Budget` holds new downloads back while the bytes in json_data/ plus those the
downloads in flight will stage would pass `--max-local-gb`.

Resumable: hours the manifests show complete in S3 (fetched after Amplitude finished them,
every file's object present) are not fetched again, and local files a killed run left behind
are uploaded first.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from pipeline import upload
from pipeline.context import Shared
from pipeline.errors import PipelineError
from pipeline.extraction import Committed, Pace, windows_over
from pipeline.hours import HOUR, Window
from pipeline.layout import local_path, remove_stale_temp
from pipeline.manifest import History, is_final
from pipeline.s3 import HeldObject
from pipeline.upload import LocalFile

log = logging.getLogger("pipeline.backfill")

DEFAULT_MAX_LOCAL_GB = 10.0
# Windows uploaded at once (each with upload.CONCURRENCY files in flight): two keep the
# requests flowing while one window waits for its last files, its manifest and its prune.
UPLOADERS = 2
FIRST_RATIO = 12.0  # unpacked / zipped, until a window tells: Amplitude-shaped events ~8-12


def hours_between(start: datetime, end: datetime) -> list[datetime]:
    hours, cursor = [], start
    while cursor <= end:
        hours.append(cursor)
        cursor += HOUR
    return hours


def complete_hours(shared: Shared, project: str, start: datetime, end: datetime) -> set[datetime]:
    """Hours of the range that are complete in S3: fetched after Amplitude finished them, with
    every file's object in the listing (local and published manifests merged)."""
    days = {h.strftime("%Y-%m-%d") for h in hours_between(start, end)}
    merged = History()
    for date in sorted(days):
        merged.add(shared.local.get(project, date))
        if shared.remote is not None and (published := shared.remote.get(project, date)):
            merged.add(published)
    return {
        hour
        for hour, record in merged.hours.items()
        if start <= hour <= end
        and not record.refetch
        and is_final(hour, record.fetched_at)
        and all(f.key is not None and f.key in shared.held for f in record.files.values())
    }


def windows_to_fetch(
    shared: Shared, project: str | None, start: datetime, end: datetime, window_hours: int
) -> tuple[list[Window], int]:
    """The windows over the range's incomplete hours, and how many hours were complete."""
    done = complete_hours(shared, project, start, end) if project else set()
    todo = [h for h in hours_between(start, end) if h not in done]
    return windows_over(todo, window_hours), len(done)


class Budget(Pace):
    """The local disk a backfill may hold: files committed and not yet pruned, plus the zips
    downloaded and waiting, plus the window being unpacked.

    Downloads (zips, a tenth of their unpacked size) go on up to --parallel at once while
    there is room for one more zip; each unpack, in time order, waits until its unpacked
    size (estimated from the zip, by the largest ratio seen) fits, that is until the uploader
    has pruned enough. With the uploader idle it goes ahead anyway: the backfill never stalls.
    """

    unpack_in_workers = False  # each unpack waits for room, in time order

    def __init__(self, max_bytes: float | None) -> None:
        self.max_bytes = max_bytes
        self.on_commit: Callable[[Committed], None] = lambda c: None  # the uploader's submit
        self.check: Callable[[], None] = lambda: None  # raises the uploader's failure
        self.used = 0  # committed, not yet pruned
        self.zips = 0  # downloaded, not yet unpacked
        self.peak = 0
        self.largest_zip = 0
        self.ratio = FIRST_RATIO  # unpacked / zip, the largest seen
        self._measured = False
        self.pending = 0  # windows committed, not yet uploaded and pruned
        self.failed = False
        self._cond = threading.Condition()

    def _room(self, extra: float) -> bool:
        return self.max_bytes is None or self.used + self.zips + extra <= self.max_bytes

    def _wait_for_room(self, extra: float) -> None:
        self._cond.wait_for(lambda: self.failed or self.pending == 0 or self._room(extra))

    def may_start(self, in_flight: int) -> bool:
        self.check()
        with self._cond:
            if in_flight == 0:
                self._wait_for_room(self.largest_zip)
                room = True
            else:
                room = self._room(self.largest_zip)
        self.check()
        return room

    def on_disk(self, zip_bytes: int) -> None:
        with self._cond:
            self.zips += zip_bytes
            self.largest_zip = max(self.largest_zip, zip_bytes)
            self.peak = max(self.peak, self.used + self.zips)
            self._cond.notify_all()

    def before_unpack(self, zip_bytes: int) -> None:
        with self._cond:
            estimate = zip_bytes * self.ratio
            self._wait_for_room(estimate)
            self.peak = max(self.peak, self.used + self.zips + estimate)
        self.check()

    def committed(self, committed: Committed) -> None:
        with self._cond:
            self.used += committed.size
            self.peak = max(self.peak, self.used + self.zips)
            if committed.zip_size:
                ratio = committed.unpacked / committed.zip_size
                self.ratio = max(self.ratio, ratio) if self._measured else ratio
                self._measured = True
            self.pending += 1
        self.on_commit(committed)

    def released(self, size: int) -> None:
        with self._cond:
            self.used -= size
            self.pending -= 1
            self._cond.notify_all()

    def fail(self) -> None:
        with self._cond:
            self.failed = True
            self._cond.notify_all()


@dataclass
class Totals:
    uploaded: list[str] = field(default_factory=list)  # S3 keys
    bytes_sent: int = 0
    failed: list[str] = field(default_factory=list)
    damaged: list[str] = field(default_factory=list)
    pruned: int = 0
    published: int = 0


class Uploader:
    """One thread: uploads each committed window, publishes its manifest, prunes it."""

    def __init__(self, shared: Shared, kms_key: str, budget: Budget) -> None:
        self.shared, self.kms_key, self.budget = shared, kms_key, budget
        settings = shared.settings
        self.bucket, self.prefix = settings.s3_bucket or "", settings.s3_prefix
        self.gzip, self.root = settings.s3_gzip, settings.json_data_dir
        self.lock = threading.Lock()  # the manifests and the listing, shared with extract
        self.totals = Totals()
        self.error: BaseException | None = None
        self._queue: queue.Queue[Committed | None] = queue.Queue()
        self._threads = [
            threading.Thread(target=self._work, name=f"uploader-{n}", daemon=True)
            for n in range(UPLOADERS)
        ]

    def __enter__(self) -> Uploader:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        for _ in self._threads:
            self._queue.put(None)
        for thread in self._threads:
            thread.join()

    def submit(self, committed: Committed) -> None:
        """From the budget, in time order, right after a window's commit."""
        self._queue.put(committed)

    def _work(self) -> None:
        while (item := self._queue.get()) is not None:
            if self.error is not None:
                continue
            try:
                started = time.monotonic()
                sent, pruned = self.send(local_files(self.root, item.written))
                self.budget.released(pruned)
                log.info(
                    "window %s: uploaded and pruned, %d bytes sent in %.1fs",
                    item.window,
                    sent,
                    time.monotonic() - started,
                )
            except BaseException as exc:  # noqa: BLE001 - handed to the main thread
                self.error = exc
                self.budget.fail()

    def send(self, files: list[LocalFile]) -> tuple[int, int]:
        """Upload, record, publish, prune `files`; returns (bytes sent, bytes pruned)."""
        shared, totals = self.shared, self.totals
        s3 = shared.client
        with self.lock:
            todo = upload.plan(files, shared.held, self.prefix, self.gzip, shared.local)
        progress = upload.Progress(len(todo.uploads), todo.upload_bytes, enabled=False, lines=False)
        outcome = upload.upload_all(
            s3, todo.uploads, self.bucket, self.kms_key, temp_root=self.root, progress=progress
        )
        if outcome.fatal is not None:
            raise outcome.fatal
        damaged = todo.damaged + outcome.damaged
        with self.lock:
            upload.record_outcome(shared.local, outcome.uploaded, damaged)
            for item in outcome.uploaded:
                shared.held[item.key] = HeldObject(
                    item.key, item.local.size, item.local.file, item.gzip
                )
            assert shared.remote is not None
            totals.published += upload.publish(
                shared.local, shared.remote, set(shared.held), self.kms_key
            )
        totals.uploaded += [u.key for u in outcome.uploaded]
        totals.bytes_sent += outcome.bytes_sent
        totals.failed += [u.key for u, _ in outcome.failed]
        totals.damaged += [str(d.local.path) for d in damaged]
        for bad in damaged:
            log.error(
                "%s is damaged (%s): not uploaded, S3's object is kept", bad.local.path, bad.why
            )

        def raw_size_of(key: str) -> int | None:
            return upload.head_raw_size(s3, self.bucket, key)

        confirmed = upload.confirmed_for_prune(todo, outcome, raw_size_of)
        deleted, _ = upload.prune(confirmed, self.root)
        totals.pruned += deleted
        return outcome.bytes_sent, sum(lf.size for lf in confirmed if not lf.path.exists())


def local_files(root: Path, staged: Iterable) -> list[LocalFile]:
    """The committed files of a window, as load's planner takes them."""
    files = []
    for item in staged:
        path = local_path(root, item.file)
        st = path.stat()
        files.append(LocalFile(item.file, path, st.st_size, st.st_mtime_ns))
    return files


def upload_leftovers(uploader: Uploader) -> int:
    """Local files a killed run left behind: uploaded (and pruned) before any download."""
    remove_stale_temp(uploader.root, upload.LOAD_TEMP)
    leftovers = upload.walk_local(uploader.root)
    if not leftovers:
        return 0
    log.info("uploading %d files left in %s by an earlier run", len(leftovers), uploader.root)
    uploader.send(leftovers)
    return len(leftovers)


def check_uploader(uploader: Uploader) -> None:
    if uploader.error is not None:
        error = uploader.error
        if isinstance(error, PipelineError):
            raise error
        raise PipelineError(f"uploading failed: {type(error).__name__}: {error}") from error
