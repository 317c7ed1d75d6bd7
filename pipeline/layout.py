"""File names and S3 keys, as fixed by the contract.

Amplitude's zip member `<pid>/<pid>_<YYYY-MM-DD>_<H>#<n>.json.gz` becomes the local file
`<json_data>/<pid>/<YYYY-MM-DD>/<pid>_<YYYY-MM-DD>_<H>#<n>.json` and the S3 key
`<prefix>/<pid>/<YYYY-MM-DD>/<pid>_<YYYY-MM-DD>_<H>#<n>.json` (plus `.gz` with S3_GZIP).
"""

from __future__ import annotations

import logging
import os
import re
import shutil
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

_NAME = re.compile(
    r"(?P<project>[0-9]+)_(?P<date>[0-9]{4}-[0-9]{2}-[0-9]{2})_(?P<hour>[0-9]{1,2})"
    r"#(?P<shard>[0-9]+)\.json"
)  # ASCII digits only: `\d` would also accept other scripts' digits
log = logging.getLogger("pipeline.layout")

# Prefix of the folders and files that are being written and must be ignored by readers.
TEMP_PREFIX = ".tmp-"


@dataclass(frozen=True, order=True)
class ExportFile:
    """One shard of one hour of one project's export."""

    date: str  # YYYY-MM-DD
    hour: int  # 0-23, UTC hour of server_upload_time
    shard: int
    project: str

    @property
    def filename(self) -> str:
        return f"{self.project}_{self.date}_{self.hour}#{self.shard}.json"

    @property
    def relpath(self) -> str:
        """Path relative to json_data/, with `/` separators."""
        return f"{self.project}/{self.date}/{self.filename}"

    @property
    def hour_start(self) -> datetime:
        return datetime.strptime(self.date, "%Y-%m-%d").replace(hour=self.hour, tzinfo=UTC)


def _match(name: str, suffix: str) -> ExportFile | None:
    m = _NAME.fullmatch(name[: -len(suffix)] + ".json" if suffix else name)
    if m is None or int(m["hour"]) > 23:
        return None
    try:
        datetime.strptime(m["date"], "%Y-%m-%d")
    except ValueError:
        return None
    return ExportFile(m["date"], int(m["hour"]), int(m["shard"]), m["project"])


def parse_member(name: str) -> ExportFile | None:
    """Parse a zip member name `<pid>/<pid>_<date>_<H>#<n>.json.gz`; None if it is not one."""
    parts = name.split("/")
    if len(parts) != 2 or not parts[1].endswith(".json.gz"):
        return None
    found = _match(parts[1], ".json.gz")
    return found if found is not None and found.project == parts[0] else None


def parse_relpath(relpath: str) -> ExportFile | None:
    """Parse `<pid>/<date>/<pid>_<date>_<H>#<n>.json` (json_data/-relative); None otherwise."""
    parts = relpath.replace("\\", "/").split("/")
    if len(parts) != 3 or not parts[2].endswith(".json"):
        return None
    found = _match(parts[2], "")
    if found is None or found.project != parts[0] or found.date != parts[1]:
        return None
    return found


def local_path(root: Path, f: ExportFile) -> Path:
    return root / f.project / f.date / f.filename


def s3_key(prefix: str, f: ExportFile, gzip: bool = False) -> str:
    key = f"{prefix}/{f.relpath}" if prefix else f.relpath
    return key + ".gz" if gzip else key


def manifest_prefix(prefix: str) -> str:
    """Where the manifests (pipeline.manifest) live in S3: a sibling of the data prefix, so the
    stage (`s3://<bucket>/<prefix>/`) never reads them, e.g. `amplitude-manifests`."""
    return f"{prefix}-manifests"


def parse_key(prefix: str, key: str) -> tuple[ExportFile, bool] | None:
    """Parse an S3 key under `prefix`: (file, is_gzip), or None if it is not in the layout."""
    head = f"{prefix}/" if prefix else ""
    if not key.startswith(head):
        return None
    rel = key[len(head) :]
    gz = rel.endswith(".json.gz")
    found = parse_relpath(rel[:-3] if gz else rel)
    return (found, gz) if found is not None else None


def remove_stale_temp(root: Path, prefix: str) -> None:
    """Remove `root/<prefix><pid>-*` folders whose process is gone (a killed run's leftovers)."""
    if not root.is_dir():
        return
    for path in root.glob(f"{prefix}*"):
        pid = path.name[len(prefix) :].split("-", 1)[0]
        if path.is_dir() and pid.isdigit() and not _alive(int(pid)):
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


def scan_local(root: Path) -> list[tuple[ExportFile, Path]]:
    """Every export file under `root` (os.walk, any depth), in time order.

    Temporary names (being written) and files outside the layout are logged and left alone;
    the pipeline's own dot-files and dot-folders (`.manifests/`, `.lock`) are skipped.
    """
    found: list[tuple[ExportFile, Path]] = []
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        for name in sorted(d for d in dirnames if d.startswith(TEMP_PREFIX)):
            log.info("leaving temporary folder %s alone", here / name)
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            path = here / name
            f = parse_relpath(path.relative_to(root).as_posix())
            if name.startswith(TEMP_PREFIX):
                log.info("leaving temporary file %s alone (still being written?)", path)
            elif name.startswith(".") and here == root:
                continue
            elif f is None:
                log.warning("%s is not in the json_data layout: left alone", path)
            else:
                found.append((f, path))
    found.sort()
    return found
