"""extract.py's work: plan the windows, download each, unpack it, keep what S3 lacks."""

from __future__ import annotations

import logging
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import requests
from tqdm import tqdm

import modules
from pipeline.errors import PipelineError, UsageError
from pipeline.export_api import Outcome, download, request_url
from pipeline.hours import Window, default_end, default_start, format_hour, split_windows
from pipeline.layout import TEMP_PREFIX, s3_key, scan_local
from pipeline.s3 import HeldObject

log = logging.getLogger("pipeline.extract")

STAGING_PREFIX = f"{TEMP_PREFIX}extract-"


@dataclass
class Plan:
    start: datetime
    end: datetime
    windows: list[Window]
    newest_held: datetime | None


@dataclass
class Summary:
    windows_requested: int = 0
    windows_empty: int = 0
    files_written: int = 0
    files_skipped: int = 0
    events: int = 0
    bytes_downloaded: int = 0
    bytes_written: int = 0
    started: float = field(default_factory=time.monotonic)

    def lines(self) -> list[str]:
        seconds = time.monotonic() - self.started
        return [
            f"windows requested: {self.windows_requested} ({self.windows_empty} with no data)",
            f"files written:     {self.files_written}",
            f"files skipped:     {self.files_skipped} (already in S3)",
            f"events:            {self.events}",
            f"bytes:             {self.bytes_downloaded} downloaded, {self.bytes_written} written",
            f"seconds:           {seconds:.1f}",
        ]


def newest_held_hour(data_dir: Path, held: dict[str, HeldObject]) -> datetime | None:
    """The newest hour with a file in json_data/ or an object in S3."""
    hours = [f.hour_start for f, _ in scan_local(data_dir)]
    hours += [obj.file.hour_start for obj in held.values()]
    return max(hours, default=None)


def plan_windows(
    now: datetime,
    start: datetime | None,
    end: datetime | None,
    days: int,
    window_hours: int,
    newest_held: datetime | None,
) -> Plan:
    """The window plan for the options given; defaults as the contract says."""
    if days < 0:
        raise UsageError("--days must be 0 or more")
    end = end if end is not None else default_end(now)
    explicit_start = start is not None
    start = start if start is not None else default_start(now, days, newest_held)
    if start > end:
        if explicit_start:
            raise UsageError(f"the end {format_hour(end)} is before the start {format_hour(start)}")
        return Plan(start, end, [], newest_held)  # already up to date
    return Plan(start, end, split_windows(start, end, window_hours), newest_held)


def clean_stale_staging(data_dir: Path) -> None:
    """Remove staging folders left by a killed run (their process is gone)."""
    if not data_dir.is_dir():
        return
    for path in data_dir.glob(f"{STAGING_PREFIX}*"):
        pid = path.name[len(STAGING_PREFIX) :].split("-", 1)[0]
        if pid.isdigit() and not _alive(int(pid)):
            log.info("removing %s, left by an interrupted run", path)
            shutil.rmtree(path, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@dataclass
class Extractor:
    """Runs a plan: windows in time order, each all-or-nothing."""

    session: requests.Session
    base_url: str
    auth: tuple[str, str]
    data_dir: Path
    prefix: str
    held: dict[str, HeldObject]
    summary: Summary = field(default_factory=Summary)
    show_progress: bool = field(default_factory=lambda: sys.stderr.isatty())

    def run(self, windows: list[Window]) -> Summary:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        clean_stale_staging(self.data_dir)
        for window in windows:
            self.window(window)
        return self.summary

    def window(self, window: Window) -> None:
        """Fetch one window; on a too-large answer fetch its halves instead."""
        staging = Path(
            tempfile.mkdtemp(prefix=f"{STAGING_PREFIX}{os.getpid()}-", dir=self.data_dir)
        )
        try:
            outcome = self._fetch(window, staging)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        if outcome is Outcome.TOO_LARGE:
            if window.hours == 1:
                raise PipelineError(
                    f"hour {format_hour(window.start)} alone is over Amplitude's 4 GB export "
                    "limit: export it with Amplitude's Amazon S3 export destination instead"
                )
            for half in window.halves():
                self.window(half)

    def _fetch(self, window: Window, staging: Path) -> Outcome:
        archive = staging / "export.zip"
        self.summary.windows_requested += 1
        started = time.monotonic()
        with tqdm(
            desc=str(window), unit="B", unit_scale=True, disable=not self.show_progress
        ) as bar:
            outcome, size = download(
                self.session, self.base_url, self.auth, window, archive, bar.update
            )
        if outcome is Outcome.NO_DATA:
            self.summary.windows_empty += 1
            log.info("window %s: no data (HTTP 404)", window)
            return outcome
        if outcome is Outcome.TOO_LARGE:
            return outcome
        self.summary.bytes_downloaded += size
        try:
            staged = modules.unpack_archive(archive, staging)
        except modules.CorruptExport as exc:
            raise PipelineError(
                f"window {window}: the download is corrupt ({exc}); nothing of it was kept, "
                "rerun to fetch it again"
            ) from exc
        archive.unlink()
        written, skipped = modules.commit(staged, self.data_dir, self._keep)
        self.summary.files_written += len(written)
        self.summary.files_skipped += len(skipped)
        self.summary.events += sum(s.events for s in written)
        self.summary.bytes_written += sum(s.size for s in written)
        log.info(
            "window %s: %d bytes in %.1fs, %d files written, %d already in S3",
            window,
            size,
            time.monotonic() - started,
            len(written),
            len(skipped),
        )
        return outcome

    def _keep(self, staged: modules.StagedFile) -> bool:
        """Gap fill: keep a file unless S3 already holds its key (plain or .gz)."""
        plain = self.held.get(s3_key(self.prefix, staged.file))
        gz = self.held.get(s3_key(self.prefix, staged.file, gzip=True))
        if plain is None and gz is None:
            return True
        if plain is not None and plain.size != staged.size:
            log.warning(
                "%s: S3 holds %d bytes, Amplitude now exported %d; keeping it so load.py "
                "uploads it again",
                plain.key,
                plain.size,
                staged.size,
            )
            return True
        return False


def dry_run_lines(plan: Plan, base_url: str) -> list[str]:
    """What a run would request, without credentials."""
    if not plan.windows:
        return [f"nothing to request: already up to date through {format_hour(plan.end)}"]
    lines = [
        f"would request {len(plan.windows)} window(s), {format_hour(plan.start)} to "
        f"{format_hour(plan.end)} (newest hour held: "
        f"{format_hour(plan.newest_held) if plan.newest_held else 'none'})"
    ]
    lines += [f"GET {request_url(base_url, w)}" for w in plan.windows]
    return lines
