"""Writes that survive a power loss: fsync the data before a rename, the folder after it.

A rename alone is atomic for readers but not durable: after a crash the new name can point to
an empty or short file whose data never reached the disk. So every file the pipeline commits
is fsynced under its temporary name, renamed, and its folder fsynced, in that order.
"""

from __future__ import annotations

import os
import tempfile
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

from pipeline.layout import TEMP_PREFIX


def fsync_file(handle) -> None:
    """Flush Python's buffer and the OS cache of an open file to the disk."""
    handle.flush()
    os.fsync(handle.fileno())


def fsync_dir(path: Path) -> None:
    """Make the folder's entries (a rename, a new file or folder) durable."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_path(path: Path) -> None:
    """fsync a closed file's data (through a new read-only descriptor)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class BackgroundSync:
    """fsync files on two threads while the caller goes on writing the next ones.

    An fsync waits on the disk, not the CPU: overlapped with the next file's decompression,
    it costs about nothing instead of doubling the unpack time. `wait()` returns once every
    file submitted is on the disk, and raises the first failure.
    """

    def __init__(self, workers: int = 2) -> None:
        self._pool = ThreadPoolExecutor(workers, "fsync")
        self._pending: list[Future] = []

    def submit(self, path: Path) -> None:
        self._pending.append(self._pool.submit(fsync_path, path))

    def wait(self) -> None:
        try:
            for future in self._pending:
                future.result()
        finally:
            self._pending.clear()

    def __enter__(self) -> BackgroundSync:
        return self

    def __exit__(self, *exc: object) -> None:
        self._pool.shutdown(wait=True)


def make_dirs(path: Path, root: Path) -> None:
    """mkdir -p `path` below `root`, fsyncing the parent of every folder it creates."""
    missing = []
    current = path
    while not current.is_dir() and current != root and root in current.parents:
        missing.append(current)
        current = current.parent
    for folder in reversed(missing):
        folder.mkdir(exist_ok=True)
        fsync_dir(folder.parent)


def write_atomic(path: Path, data: bytes) -> None:
    """Replace `path` with `data`: temporary name in the same folder, fsync, rename, fsync."""
    fd, tmp = tempfile.mkstemp(prefix=TEMP_PREFIX, dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            fsync_file(handle)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)
