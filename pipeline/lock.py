"""One run at a time per data folder: `json_data/.lock`, taken by extract.py and load.py.

A second run exits at once with a line naming the holder (or, with `--wait`, waits for it).
Read-only runs (`--dry-run`) take no lock. The lock is an flock(2) on the file, so it is
released by the kernel when its process ends, however it ends (kill -9 included).

run_pipeline.sh takes the same lock around extract.py and load.py and passes it down in
`PIPELINE_LOCK_FD`, so a manual run cannot slip in between its two steps.

    python -m pipeline.lock   # prints the lock file's path (for run_pipeline.sh)
"""

from __future__ import annotations

import fcntl
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

from pipeline.errors import PipelineError

LOCK_NAME = ".lock"
INHERITED = "PIPELINE_LOCK_FD"


class Busy(PipelineError):
    """Another run holds the data folder."""


def lock_path(data_dir: Path) -> Path:
    return data_dir / LOCK_NAME


def _inherited(path: Path) -> bool:
    """True when our parent (run_pipeline.sh) holds this very lock on the fd it passed."""
    value = os.environ.get(INHERITED, "")
    if not value.isdigit():
        return False
    try:
        held, ours = os.fstat(int(value)), os.stat(path)
    except OSError:
        return False
    return (held.st_dev, held.st_ino) == (ours.st_dev, ours.st_ino)


@contextmanager
def hold(data_dir: Path, command: str, wait: bool = False) -> Iterator[None]:
    """Hold the data folder's lock for the block; raise Busy if another run has it."""
    data_dir.mkdir(parents=True, exist_ok=True)
    path = lock_path(data_dir)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        if not _inherited(path):
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
            except BlockingIOError:
                holder = os.pread(fd, 300, 0).decode("utf-8", "replace").strip() or "another run"
                raise Busy(
                    f"{holder} is using {data_dir}; this run did nothing: wait for it to "
                    "finish, or rerun with --wait (--dry-run never needs the lock)"
                ) from None
            since = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{command} (pid {os.getpid()}, since {since})\n".encode(), 0)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the flock


def main() -> int:
    from pipeline.settings import load_settings

    print(lock_path(load_settings().json_data_dir).resolve())
    return 0


if __name__ == "__main__":
    sys.exit(main())
