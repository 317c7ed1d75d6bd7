"""The manifest: what extract.py fetched and verified, per Amplitude project and day.

One small JSON document per project and day, kept in two places:

- `json_data/.manifests/<pid>/<YYYY-MM-DD>.json`, written by extract.py when it commits a
  window (durably, after the files themselves). load.py reads it to know that a local file is
  the one extract verified (same size and CRC-32) before it may go to S3, and marks each file
  once S3 holds exactly those bytes.
- `s3://<bucket>/<prefix>-manifests/<pid>/<YYYY-MM-DD>.json`, published by load.py for every
  hour whose files are all in S3. It outlives the laptop, and it sits beside the data prefix,
  outside the Snowflake stage, so COPY never reads it.

Per hour it records when Amplitude exported it (`fetched_at`, by Amplitude's own clock: the
export response's Date header) and each file of that export: size, CRC-32 (the checksum the
gzip trailer carries for the same bytes) and event count. An hour is *final* once it was
fetched at least `FINISHED_AFTER` after it ended; an hour fetched earlier, or whose local file
was found damaged, is fetched again by a later run.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path

from botocore.exceptions import BotoCoreError, ClientError

from pipeline.durable import make_dirs, write_atomic
from pipeline.errors import PipelineError
from pipeline.hours import FINISHED_AFTER, HOUR
from pipeline.layout import ExportFile, manifest_prefix

log = logging.getLogger("pipeline.manifest")

LOCAL_DIR = ".manifests"  # under json_data/; layout.scan_local skips dot-folders
VERSION = 1
_TIME = "%Y-%m-%dT%H:%M:%SZ"


def is_final(hour_start: datetime, fetched_at: datetime) -> bool:
    """True when an export fetched at `fetched_at` holds every event of the hour."""
    return fetched_at >= hour_start + HOUR + FINISHED_AFTER


@dataclass(frozen=True)
class FileRecord:
    """One exported file as extract verified it."""

    size: int
    crc32: str  # 8 lowercase hex digits
    events: int
    key: str | None = None  # the S3 key known to hold exactly these bytes

    def same_content(self, size: int, crc32: str) -> bool:
        return (self.size, self.crc32) == (size, crc32)


@dataclass(frozen=True)
class HourRecord:
    """One hour of one project, as last fetched."""

    fetched_at: datetime
    files: dict[str, FileRecord] = field(default_factory=dict)
    refetch: str | None = None  # why a later run must fetch it again (e.g. a damaged file)
    published: bool = False  # local only: the S3 manifest holds this record

    def in_s3(self, keys: Iterable[str] | set[str]) -> bool:
        """Every file of the hour is confirmed in S3 and its key is among `keys`."""
        held = keys if isinstance(keys, set) else set(keys)
        return all(f.key is not None and f.key in held for f in self.files.values())


@dataclass
class DayManifest:
    project: str
    date: str  # YYYY-MM-DD
    hours: dict[int, HourRecord] = field(default_factory=dict)

    def hour_start(self, hour: int) -> datetime:
        return datetime.strptime(self.date, "%Y-%m-%d").replace(hour=hour, tzinfo=UTC)

    def file(self, f: ExportFile) -> FileRecord | None:
        record = self.hours.get(f.hour)
        return record.files.get(f.filename) if record else None

    def set_file(self, f: ExportFile, record: FileRecord) -> None:
        hour = self.hours[f.hour]
        self.hours[f.hour] = replace(hour, files={**hour.files, f.filename: record})

    def to_json(self, *, local: bool) -> bytes:
        hours = {}
        for hour, rec in sorted(self.hours.items()):
            entry: dict = {"fetched_at": rec.fetched_at.strftime(_TIME), "files": {}}
            for name, f in sorted(rec.files.items()):
                item: dict = {"size": f.size, "crc32": f.crc32, "events": f.events}
                if f.key is not None:
                    item["key"] = f.key
                entry["files"][name] = item
            if rec.refetch:
                entry["refetch"] = rec.refetch
            if local and rec.published:
                entry["published"] = True
            hours[str(hour)] = entry
        document = {"version": VERSION, "project": self.project, "date": self.date}
        document["hours"] = hours
        return (json.dumps(document, indent=1, ensure_ascii=False) + "\n").encode()

    @classmethod
    def from_json(cls, data: bytes, where: str) -> DayManifest:
        try:
            doc = json.loads(data)
            hours = {
                int(hour): HourRecord(
                    fetched_at=datetime.strptime(entry["fetched_at"], _TIME).replace(tzinfo=UTC),
                    files={
                        name: FileRecord(
                            int(f["size"]), str(f["crc32"]), int(f["events"]), f.get("key")
                        )
                        for name, f in entry["files"].items()
                    },
                    refetch=entry.get("refetch"),
                    published=bool(entry.get("published", False)),
                )
                for hour, entry in doc["hours"].items()
            }
            return cls(str(doc["project"]), str(doc["date"]), hours)
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise PipelineError(
                f"manifest {where} is unreadable ({type(exc).__name__}: {exc}): move it away "
                "and rerun; the next extract.py fetches its hours again"
            ) from exc


def latest(a: HourRecord | None, b: HourRecord | None) -> HourRecord | None:
    """The record of the later fetch (the first one on a tie)."""
    if a is None or b is None:
        return a or b
    return b if b.fetched_at > a.fetched_at else a


class LocalManifests:
    """The manifests under json_data/.manifests/."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.root = data_dir / LOCAL_DIR
        self._cache: dict[tuple[str, str], DayManifest] = {}

    def path(self, project: str, date: str) -> Path:
        return self.root / project / f"{date}.json"

    def get(self, project: str, date: str) -> DayManifest:
        """The day's manifest (an empty one if there is none yet); cached."""
        cached = self._cache.get((project, date))
        if cached is not None:
            return cached
        path = self.path(project, date)
        try:
            day = DayManifest.from_json(path.read_bytes(), str(path))
        except FileNotFoundError:
            day = DayManifest(project, date)
        self._cache[(project, date)] = day
        return day

    def save(self, day: DayManifest) -> None:
        path = self.path(day.project, day.date)
        make_dirs(path.parent, self.data_dir)
        write_atomic(path, day.to_json(local=True))
        self._cache[(day.project, day.date)] = day

    def projects(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if p.is_dir() and p.name.isdigit())

    def days(self, project: str) -> list[str]:
        folder = self.root / project
        if not folder.is_dir():
            return []
        return sorted(p.stem for p in folder.glob("*.json") if not p.name.startswith("."))

    def each(self, project: str) -> Iterator[DayManifest]:
        for date in self.days(project):
            yield self.get(project, date)

    def between(self, project: str, first: str, last: str) -> list[DayManifest]:
        """The manifests of the days first..last (YYYY-MM-DD, both inclusive) that exist."""
        return [self.get(project, date) for date in self.days(project) if first <= date <= last]


class S3Manifests:
    """The published manifests under `<prefix>-manifests/` in the bucket."""

    def __init__(self, s3, bucket: str, prefix: str) -> None:
        self.s3, self.bucket = s3, bucket
        self.root = manifest_prefix(prefix)
        self._cache: dict[tuple[str, str], DayManifest | None] = {}
        self._days: dict[str, list[str]] = {}

    def key(self, project: str, date: str) -> str:
        return f"{self.root}/{project}/{date}.json"

    def get(self, project: str, date: str) -> DayManifest | None:
        """The published manifest of the day, or None; one GET, cached.

        Only a day the listing shows is read: S3 answers a GET of a missing key with 403,
        not 404, to a loader whose s3:ListBucket is limited to the prefixes.
        """
        if (project, date) in self._cache:
            return self._cache[(project, date)]
        day = None
        if date in self.days(project):
            key = self.key(project, date)
            try:
                body = self.s3.get_object(Bucket=self.bucket, Key=key)["Body"].read()
            except ClientError as exc:
                if exc.response.get("Error", {}).get("Code") not in {"NoSuchKey", "404"}:
                    raise _explain(exc, "s3:GetObject", self.bucket) from exc
            except BotoCoreError as exc:
                raise _explain(exc, "s3:GetObject", self.bucket) from exc
            else:
                day = DayManifest.from_json(body, f"s3://{self.bucket}/{key}")
        self._cache[(project, date)] = day
        return day

    def put(self, day: DayManifest, kms_key: str) -> None:
        key = self.key(day.project, day.date)
        try:
            self.s3.put_object(
                Bucket=self.bucket,
                Key=key,
                Body=day.to_json(local=False),
                ContentType="application/json",
                ServerSideEncryption="aws:kms",
                SSEKMSKeyId=kms_key,
            )
        except (ClientError, BotoCoreError) as exc:
            raise _explain(exc, "s3:PutObject", self.bucket, kms_key) from exc
        self._cache[(day.project, day.date)] = day
        listed = self._days.setdefault(day.project, [])
        if day.date not in listed:
            listed.append(day.date)
            listed.sort()

    def days(self, project: str) -> list[str]:
        """Every day with a published manifest: one ListObjectsV2 per 1,000 days, cached."""
        if project in self._days:
            return self._days[project]
        head = f"{self.root}/{project}/"
        found = []
        try:
            pages = self.s3.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=head
            )
            for page in pages:
                for obj in page.get("Contents", []):
                    name = obj["Key"][len(head) :]
                    if name.endswith(".json") and "/" not in name:
                        found.append(name[: -len(".json")])
        except (ClientError, BotoCoreError) as exc:
            raise _explain(exc, "s3:ListBucket", self.bucket) from exc
        self._days[project] = sorted(found)
        return self._days[project]

    def between(self, project: str, first: str, last: str) -> list[DayManifest]:
        """The published manifests of the days first..last (YYYY-MM-DD, both inclusive): one
        listing (days), then one GET per day it shows."""
        found = (self.get(project, d) for d in self.days(project) if first <= d <= last)
        return [day for day in found if day is not None]

    def projects(self) -> list[str]:
        """Every project id with a published manifest: one listing of the folders."""
        found = []
        try:
            pages = self.s3.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=f"{self.root}/", Delimiter="/"
            )
            for page in pages:
                for common in page.get("CommonPrefixes", []):
                    name = common["Prefix"][len(self.root) + 1 :].rstrip("/")
                    if name.isascii() and name.isdigit():
                        found.append(name)
        except (ClientError, BotoCoreError) as exc:
            raise _explain(exc, "s3:ListBucket", self.bucket) from exc
        return sorted(found)


def _explain(exc: Exception, action: str, bucket: str, kms_key: str | None = None):
    from pipeline.s3 import explain  # pipeline.s3 imports settings; keep this module light

    return explain(exc, action=action, bucket=bucket, kms_key=kms_key)


@dataclass
class History:
    """Every hour of one project the manifests know, the local and published ones merged."""

    hours: dict[datetime, HourRecord] = field(default_factory=dict)

    def add(self, day: DayManifest) -> None:
        for hour, record in day.hours.items():
            start = day.hour_start(hour)
            self.hours[start] = latest(self.hours.get(start), record)  # type: ignore[assignment]

    def pending(self) -> list[datetime]:
        """Hours a later run must fetch again: fetched early, or marked (a damaged file)."""
        return sorted(
            start
            for start, rec in self.hours.items()
            if rec.refetch or not is_final(start, rec.fetched_at)
        )

    def newest_with_data(self) -> datetime | None:
        return max((s for s, r in self.hours.items() if r.files), default=None)

    def newest_final(self) -> datetime | None:
        return max((s for s, r in self.hours.items() if is_final(s, r.fetched_at)), default=None)


def history(
    project: str, local: LocalManifests, remote: S3Manifests | None, remote_days: int = 2
) -> History:
    """The project's merged history: all local manifests and the newest published days.

    Hours fetched early are always among the newest a run fetched, so the newest
    `remote_days` published days (one listing and a GET each) hold every such hour even when
    the local folder is gone (a new laptop).
    """
    result = History()
    for day in local.each(project):
        result.add(day)
    if remote is not None:
        for date in remote.days(project)[-remote_days:]:
            day = remote.get(project, date)
            if day is not None:
                result.add(day)
    return result
