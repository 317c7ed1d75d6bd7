"""What each stage holds of a range of hours: the facts pipeline.status judges.

Read-only, and no lock taken: safe beside cron. Every source is read once:
- Amplitude: the manifests (pipeline.manifest), the local ones from disk and the published
  ones from S3 (one listing per project, one GET per day in range); the newer record wins.
- json_data/: the range's day folders; a file's events from its local record when the size
  agrees, else counted.
- S3: one listing of the data prefix (`list_held`); an object's events from the manifest
  that describes it, else from its `x-amz-meta-events` (one HEAD, only for such objects).
- Snowflake, when SNOWFLAKE_ACCOUNT is set: two queries (pipeline.warehouse_status).
S3 objects are never read back.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from pipeline import s3 as s3mod
from pipeline.errors import UsageError
from pipeline.layout import ExportFile, parse_relpath, s3_key
from pipeline.manifest import DayManifest, FileRecord, LocalManifests, S3Manifests, latest
from pipeline.projects import KeyRegistry, configured, fingerprint, select
from pipeline.s3 import HeldObject
from pipeline.settings import Settings
from pipeline.status import HourFacts, Project, Report, assess, each_hour
from pipeline.upload import checksum

if TYPE_CHECKING:  # snowflake.connector is imported only when Snowflake is checked
    from pipeline.warehouse_status import Loaded

log = logging.getLogger("pipeline.stages")

SNOWFLAKE_NEEDED = ("ACCOUNT", "USER", "ROLE", "WAREHOUSE", "DATABASE", "SCHEMA")


class ReadOnlyKeys(KeyRegistry):
    """The key registry, read only: a project id found in S3 is not written to json_data/."""

    def remember(self, fp: str, project: str, published: bool = False) -> None:
        return None


@dataclass
class Stages:
    """Where the stages are: json_data/, the bucket and its listing, the manifests."""

    settings: Settings
    s3: object
    bucket: str
    prefix: str
    held: dict[str, HeldObject]
    local: LocalManifests
    remote: S3Manifests

    @classmethod
    def open(cls, settings: Settings) -> Stages:
        bucket = settings.require("S3_BUCKET", "status.py")
        prefix = settings.s3_prefix
        client = s3mod.client(settings)
        return cls(
            settings=settings,
            s3=client,
            bucket=bucket,
            prefix=prefix,
            held=s3mod.list_held(client, bucket, prefix),
            local=LocalManifests(settings.json_data_dir),
            remote=S3Manifests(client, bucket, prefix),
        )

    @property
    def data_dir(self) -> Path:
        return self.settings.json_data_dir


def snowflake_configured(settings: Settings) -> bool:
    """SNOWFLAKE_ACCOUNT set: check Snowflake (and the rest of its settings must be set)."""
    if settings.get("SNOWFLAKE_ACCOUNT") is None:
        return False
    needed_for = "status.py (to check Snowflake)"
    for name in SNOWFLAKE_NEEDED:
        settings.require(f"SNOWFLAKE_{name}", needed_for)
    if not settings.get("SNOWFLAKE_PASSWORD") and not settings.get("SNOWFLAKE_PRIVATE_KEY_FILE"):
        raise UsageError(
            "neither SNOWFLAKE_PASSWORD nor SNOWFLAKE_PRIVATE_KEY_FILE is set: add one to .env "
            f"(see .env.example); {needed_for} needs it"
        )
    return True


def report(
    settings: Settings, now: datetime, first: datetime, last: datetime, project: str | None
) -> Report:
    """Every stage of every project's hours first..last, judged at `now`."""
    snowflake = snowflake_configured(settings)
    stages = Stages.open(settings)
    projects, notes = choose_projects(stages, project)
    facts = gather(stages, projects, first, last)
    for project in projects:
        if project.configured and not any(h.expected for h in facts[project.id].values()):
            notes.append(f"project {project.label}: no fetch recorded yet, nothing to check")
    if snowflake:
        from pipeline import warehouse_status  # the connector only when Snowflake is checked

        ids = [p.id for p in projects]
        add_loaded(facts, warehouse_status.counts(settings, stages.prefix, ids, first, last))
    hours = {
        pid: [assess(hour, now, stages.prefix) for hour in by_hour.values()]
        for pid, by_hour in facts.items()
    }
    return Report(first, last, now, snowflake, projects, hours, notes)


def choose_projects(stages: Stages, name: str | None) -> tuple[list[Project], list[str]]:
    """The projects to show, and notes about configured ones that cannot be shown.

    `--project NAME`: that configured project alone. Otherwise every configured project whose
    id is known (set, or learned from its key pair), then every other project id found in
    json_data/ or S3, shown by id.
    """
    registry = ReadOnlyKeys(stages.data_dir, stages.s3, stages.bucket, stages.prefix)
    projects: list[Project] = []
    notes: list[str] = []
    for source in select(configured(stages.settings), name):
        pid = source.project_id
        if pid is None and source.api_key:
            pid = registry.lookup(fingerprint(source.api_key))
        if pid is None:
            why = f"project {source.name}'s id is not known yet: its key pair exported no data"
            if name is not None:
                raise UsageError(f"{why}; run extract.py once, or set {source.prefix}PROJECT_ID")
            if source.api_key:
                notes.append(f"{why} (not shown)")
            continue
        if pid not in {p.id for p in projects}:
            projects.append(Project(pid, source.name))
    if name is None:
        known = {p.id for p in projects}
        projects += [Project(pid) for pid in sorted(found_projects(stages) - known, key=int)]
    return projects, notes


def found_projects(stages: Stages) -> set[str]:
    """Project ids with files or manifests in json_data/ or S3."""
    found = {obj.file.project for obj in stages.held.values()}
    found |= set(stages.local.projects()) | set(stages.remote.projects())
    if stages.data_dir.is_dir():
        found |= {p.name for p in stages.data_dir.iterdir() if p.is_dir() and p.name.isdigit()}
    return found


def gather(
    stages: Stages, projects: list[Project], first: datetime, last: datetime
) -> dict[str, dict[datetime, HourFacts]]:
    """Per project id and hour first..last: the fetch record, the files in json_data/ and S3."""
    hours = each_hour(first, last)
    dates = sorted({h.strftime("%Y-%m-%d") for h in hours})
    result = {}
    for project in projects:
        facts = {h: HourFacts(project.id, h) for h in hours}
        local = {d.date: d for d in stages.local.between(project.id, dates[0], dates[-1])}
        remote = {d.date: d for d in stages.remote.between(project.id, dates[0], dates[-1])}
        _add_records(facts, local, remote)
        _add_local_files(facts, stages.data_dir, project.id, dates, local)
        _add_objects(facts, stages, project.id, local, remote)
        read = [*local.values(), *remote.values()]
        since, until = history_span(stages, project.id, facts, read)
        for start, hour in facts.items():
            after = until if not project.configured else None
            hour.expected = (
                since is not None and since <= start and (after is None or start <= after)
            )
        result[project.id] = facts
    return result


def history_span(
    stages: Stages, project: str, facts: dict[datetime, HourFacts], read: list[DayManifest]
) -> tuple[datetime | None, datetime | None]:
    """The first and last hour the project's history knows (None, None: none).

    From the manifests read (the range's days), its files in range, its objects in S3, and
    the other days its manifests are listed for (not read: their first or last hour is
    enough). Hours before the first are not expected: the pipeline did not run for it then.
    Nor, for a project that is not configured (found only by its files), are hours after the
    last: nothing fetches it.
    """
    known = [day.hour_start(hour) for day in read for hour in day.hours]
    known += [h for h, f in facts.items() if f.files]
    known += [o.file.hour_start for o in stages.held.values() if o.file.project == project]
    dates_read = {day.date for day in read}
    for date in {*stages.local.days(project), *stages.remote.days(project)} - dates_read:
        day = datetime.strptime(date, "%Y-%m-%d").replace(tzinfo=UTC)
        known += [day, day.replace(hour=23)]
    return min(known, default=None), max(known, default=None)


def _add_records(
    facts: dict[datetime, HourFacts], local: dict[str, DayManifest], remote: dict[str, DayManifest]
) -> None:
    """The newest fetch of each hour (local first on a tie: it may carry `refetch`)."""
    for start, hour in facts.items():
        date = start.strftime("%Y-%m-%d")
        records = [d.hours.get(start.hour) for d in (local.get(date), remote.get(date)) if d]
        record = None
        for candidate in records:
            record = latest(record, candidate)
        hour.record = record
        for name, f in (record.files if record else {}).items():
            hour.file(name).extracted = f.events


def _add_local_files(
    facts: dict[datetime, HourFacts],
    data_dir: Path,
    project: str,
    dates: list[str],
    local: dict[str, DayManifest],
) -> None:
    for date in dates:
        folder = data_dir / project / date
        if not folder.is_dir():
            continue
        for path in sorted(folder.iterdir()):
            f = parse_relpath(f"{project}/{date}/{path.name}")
            if f is None or f.hour_start not in facts or not path.is_file():
                continue  # temporaries (.tmp-*), other names, hours out of range
            day = local.get(date)
            record = day.file(f) if day else None
            facts[f.hour_start].file(f.filename).local_events = _local_events(path, record)


def _local_events(path: Path, record: FileRecord | None) -> int | None:
    """The events extract recorded when the size agrees; else counted (a file it did not
    record, or one a crash cut short)."""
    try:
        if record is not None and path.stat().st_size == record.size:
            return record.events
        return checksum(path)[2]
    except FileNotFoundError:  # pruned since the folder was read
        return None


def _add_objects(
    facts: dict[datetime, HourFacts],
    stages: Stages,
    project: str,
    local: dict[str, DayManifest],
    remote: dict[str, DayManifest],
) -> None:
    by_file: dict[ExportFile, list[HeldObject]] = {}
    for obj in stages.held.values():
        if obj.file.project == project and obj.file.hour_start in facts:
            by_file.setdefault(obj.file, []).append(obj)
    for f, objects in sorted(by_file.items()):
        records = [d.file(f) for d in (local.get(f.date), remote.get(f.date)) if d]
        named = {r.key for r in records if r is not None}
        objects.sort(key=lambda o: (o.key not in named, o.key != s3_key(stages.prefix, f)))
        obj = objects[0]  # the one a manifest names, else the plain key
        if len(objects) > 1:
            log.warning(
                "%s is held twice (%s): counting %s",
                f.filename,
                ", ".join(o.key for o in objects),
                obj.key,
            )
        target = facts[f.hour_start].file(f.filename)
        target.s3_key, target.s3_modified = obj.key, obj.last_modified
        target.s3_events = _object_events(stages, obj, records)


def _object_events(stages: Stages, obj: HeldObject, records: list[FileRecord | None]) -> int | None:
    """From a manifest that names this object (plain: with its size), else its metadata."""
    for record in records:
        if record is not None and record.key == obj.key and (obj.gzip or record.size == obj.size):
            return record.events
    meta = s3mod.object_metadata(stages.s3, stages.bucket, obj.key) or {}
    events = meta.get("events", "")
    return int(events) if events.isascii() and events.isdigit() else None


def add_loaded(facts: dict[str, dict[datetime, HourFacts]], loaded: Loaded) -> None:
    """Snowflake's counts into the facts: per object in S3, and per hour."""
    for project, hours in facts.items():
        for start, hour in hours.items():
            hour.snowflake = True
            hour.raw_uuids = loaded.hours.get((project, start), 0)
            hour.rows, hour.row_uuids = loaded.events.get((project, start), (0, 0))
            for f in hour.files.values():
                if f.s3_key is not None:
                    f.loaded = loaded.files.get(f.s3_key, 0)
