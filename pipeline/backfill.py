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
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from pipeline import upload
from pipeline.context import Shared
from pipeline.errors import PipelineError
from pipeline.extraction import Committed, windows_over
from pipeline.hours import HOUR, Window
from pipeline.layout import local_path, remove_stale_temp
from pipeline.manifest import History, is_final
from pipeline.s3 import HeldObject
from pipeline.upload import LocalFile

log = logging.getLogger("pipeline.backfill")

DEFAULT_MAX_LOCAL_GB = 10.0
ZIP_SHARE = 0.15  # a window's zip, beside its unpacked files while it is unpacked


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


class Budget:
    """Bytes of local disk the backfill may hold: files committed and not yet pruned, plus
    what the downloads in flight will stage (estimated from the largest window so far)."""

    def __init__(self, max_bytes: float | None) -> None:
        self.max_bytes = max_bytes
        self.used = 0
        self.peak = 0
        self.largest = 0  # unpacked bytes of the largest window so far
        self.pending = 0  # windows committed, not yet uploaded and pruned
        self.failed = False
        self._cond = threading.Condition()

    def estimate(self) -> float:
        return self.largest * (1 + ZIP_SHARE)

    def may_start(self, in_flight: int) -> bool:
        """Room for one more download? With none in flight, wait for room (or for the
        uploader to run dry), then start anyway: the backfill always moves on."""
        if self.max_bytes is None:
            return True
        with self._cond:
            if in_flight == 0:
                self._cond.wait_for(
                    lambda: (
                        self.failed
                        or self.pending == 0
                        or self.used + self.estimate() <= self.max_bytes
                    )
                )
                return True
            if self.largest == 0:
                return False  # the first window's size is not known yet: it goes alone
            return self.used + (in_flight + 1) * self.estimate() <= self.max_bytes

    def committed(self, size: int) -> None:
        with self._cond:
            self.used += size
            self.peak = max(self.peak, self.used)
            self.largest = max(self.largest, size)
            self.pending += 1

    def released(self, size: int, window_done: bool = True) -> None:
        with self._cond:
            self.used -= size
            self.pending -= 1 if window_done else 0
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
        self._thread = threading.Thread(target=self._work, name="uploader", daemon=True)

    def __enter__(self) -> Uploader:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._queue.put(None)
        self._thread.join()

    def submit(self, committed: Committed) -> None:
        """From the extractor, in time order, right after a window's commit."""
        if self.error is not None:
            raise self.error
        self.budget.committed(committed.size)
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
        progress = upload.Progress(len(todo.uploads), todo.upload_bytes, enabled=False)
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
