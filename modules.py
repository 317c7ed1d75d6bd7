"""Unpacking Amplitude's export: a zip of gzipped newline-delimited JSON files.

Streaming throughout: each zip member is read, gunzipped and written in fixed-size chunks,
so memory stays flat whatever the export's size. zipfile checks each member's CRC-32 and
the inflater checks each gzip member's CRC-32 and length; any mismatch or truncation raises
`CorruptExport`. The inflater is ISA-L's (the `isal` package, about twice zlib's speed) when
installed, else the standard library's zlib: both check the gzip trailer the same way.
Each file's CRC-32 is computed on the way (the value the gzip trailer carries for the same
bytes), fsynced under its staging name, and only `commit` moves it into json_data/, in time
order, by rename, fsyncing each folder after: a committed file is complete even after a
power loss.
"""

from __future__ import annotations

import logging
import os
import zipfile
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import BinaryIO

try:
    from isal import isal_zlib as INFLATER
except ImportError:  # pragma: no cover - isal is in requirements.txt; zlib does the same job
    INFLATER = zlib

from pipeline.durable import BackgroundSync, fsync_dir, make_dirs
from pipeline.layout import ExportFile, local_path, parse_member

log = logging.getLogger("pipeline.modules")

CHUNK = 1 << 20  # bytes read from the archive at a time
_GZIP = 16 + zlib.MAX_WBITS  # zlib wbits for the gzip wrapper (header and CRC-checked trailer)


class CorruptExport(Exception):
    """The archive or one of its members is truncated or fails its checksum."""


@dataclass(frozen=True)
class StagedFile:
    file: ExportFile
    path: Path  # where it was staged
    size: int  # gunzipped bytes
    events: int  # lines
    crc32: str  # CRC-32 of the gunzipped bytes, 8 hex digits


def gunzip_stream(
    src: BinaryIO, dst: BinaryIO, chunk: int = CHUNK, inflater_module: ModuleType = INFLATER
) -> tuple[int, int, int]:
    """Gunzip `src` into `dst` (multi-member gzip too); return (bytes, events, CRC-32).

    Output is produced at most `chunk` bytes at a time, so even a highly compressed member
    never expands in memory. An empty input (a zero-byte zip member) is an empty file.
    """
    inflater = inflater_module.decompressobj(_GZIP)
    crc = size = events = 0
    last = b"\n"
    seen_input = False
    while data := src.read(chunk):
        seen_input = True
        while True:
            if inflater.eof and data:  # a further gzip member follows
                inflater = inflater_module.decompressobj(_GZIP)
            try:
                out = inflater.decompress(data, chunk)
            except inflater_module.error as exc:
                raise CorruptExport(f"gzip data is corrupt ({exc})") from exc
            if out:
                dst.write(out)
                crc = inflater_module.crc32(out, crc)
                size += len(out)
                events += out.count(b"\n")
                last = out[-1:]
            if inflater.eof:
                data = inflater.unused_data
                if not data:
                    break
            else:
                data = inflater.unconsumed_tail
                if not data and len(out) < chunk:  # input used up, no output held back
                    break
    if not seen_input:
        return 0, 0, 0
    if not inflater.eof:
        raise CorruptExport("gzip data is truncated")
    if size and last != b"\n":
        events += 1  # a last line without its newline is still an event
    return size, events, crc


def unpack_archive(archive: Path, staging: Path, chunk: int = CHUNK) -> list[StagedFile]:
    """Unpack every member of `archive` into `staging/<pid>/<date>/<name>.json`, fsynced.

    Raises CorruptExport if the archive or any member is damaged, if a member is not in
    Amplitude's layout (`<pid>/<pid>_<YYYY-MM-DD>_<H>#<n>.json.gz`, ASCII digits), or if two
    members name the same file (`_7#0` and `_07#0`); the caller then discards the whole
    staging folder, so nothing of a doubtful window ever reaches json_data/.
    """
    staged: list[StagedFile] = []
    seen: dict[ExportFile, str] = {}
    try:
        with zipfile.ZipFile(archive) as zf, BackgroundSync() as syncer:
            for info in zf.infolist():
                if info.is_dir():
                    continue
                found = parse_member(info.filename)
                if found is None:
                    raise CorruptExport(
                        f"member {info.filename!r} is not in Amplitude's layout "
                        "<pid>/<pid>_<YYYY-MM-DD>_<H>#<n>.json.gz"
                    )
                if found in seen:
                    raise CorruptExport(
                        f"members {seen[found]!r} and {info.filename!r} are the same file"
                    )
                seen[found] = info.filename
                target = local_path(staging, found)
                target.parent.mkdir(parents=True, exist_ok=True)
                with zf.open(info) as src, open(target, "wb") as dst:
                    try:
                        size, events, crc = gunzip_stream(src, dst, chunk)
                    except CorruptExport as exc:
                        raise CorruptExport(f"{info.filename}: {exc}") from exc
                syncer.submit(target)  # on the disk by the end, overlapped with the next
                staged.append(StagedFile(found, target, size, events, f"{crc:08x}"))
            syncer.wait()
    except zipfile.BadZipFile as exc:  # also raised for a member's bad CRC-32
        raise CorruptExport(f"zip archive is corrupt ({exc})") from exc
    except EOFError as exc:
        raise CorruptExport(f"zip archive is truncated ({exc})") from exc
    staged.sort(key=lambda s: s.file)
    return staged


def commit(
    staged: Iterable[StagedFile],
    root: Path,
    keep: Callable[[StagedFile], bool] = lambda s: True,
) -> tuple[list[StagedFile], list[StagedFile]]:
    """Move staged files into `root` in time order (by rename); drop those `keep` refuses.

    Returns (written, skipped). Staged files were fsynced before; each folder a file was
    renamed into is fsynced after, so a committed file survives a power loss whole. Renames in
    time order mean that a run killed half-way leaves a complete prefix of hours, which the
    next incremental run resumes from.
    """
    written: list[StagedFile] = []
    skipped: list[StagedFile] = []
    touched: list[Path] = []
    for item in sorted(staged, key=lambda s: s.file):
        if not keep(item):
            item.path.unlink()
            skipped.append(item)
            continue
        target = local_path(root, item.file)
        make_dirs(target.parent, root)
        os.replace(item.path, target)
        if target.parent not in touched:
            touched.append(target.parent)
        written.append(item)
    for folder in touched:
        fsync_dir(folder)
    return written, skipped
