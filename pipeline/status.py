"""Is everything there? Each hour's state, judged from what every stage holds.

pipeline.stages gathers the facts of one project and hour (its fetch record, its files in
json_data/, in S3 and in Snowflake); this module only judges them, without I/O:

- Amplitude: fetched after it had finished, fetched early, no data (404), or never asked,
  from the manifest's record of the newest fetch (`manifest.is_final`).
- The reconciliation: per file, the events extract counted = the events S3's object holds =
  the distinct uuids raw_events holds from that object; per hour, the rows in `events` = the
  distinct uuids over the hour's files, each uuid once.
- The hour: complete, partial, missing, not finished yet, or no data; and every mismatch with
  the file, both counts, and what to run to repair it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import StrEnum

from pipeline.errors import UsageError
from pipeline.hours import HOUR, default_end, floor_hour, format_hour
from pipeline.manifest import HourRecord, is_final

# COPY's load metadata expires after this; an older object needs the FORCE recipe.
COPY_MEMORY = timedelta(days=64)
FORCE_DOC = "docs/snowflake.md#files-copy-skips-after-64-days"


class Fetch(StrEnum):
    """What Amplitude was asked for the hour, by the newest record of a fetch."""

    FINAL = "fetched after it had finished"
    EARLY = "fetched early"
    NO_DATA = "no data"
    NEVER = "never asked"


class State(StrEnum):
    COMPLETE = "complete"
    PARTIAL = "partial"
    MISSING = "missing"
    FILLING = "not finished yet"
    NO_DATA = "no data"
    OUTSIDE = "outside its history"  # before a project's first fetch (or, for a project
    # found only by its files, after its last): nothing was expected, nothing is judged


@dataclass
class FileFacts:
    """One export file of an hour in every stage; None where a stage does not hold it."""

    name: str  # <pid>_<date>_<H>#<n>.json
    extracted: int | None = None  # events extract counted, if the newest fetch had it
    local_events: int | None = None  # in json_data/
    s3_key: str | None = None
    s3_events: int | None = None  # None with s3_key set: unknown (an older version's object)
    s3_modified: datetime | None = None
    loaded: int | None = None  # distinct uuids raw_events holds from s3_key; None: not checked


@dataclass
class HourFacts:
    """What every stage holds of one project's hour."""

    project: str
    start: datetime
    expected: bool = True  # within the project's history (see stages.history_span)
    record: HourRecord | None = None  # the newest fetch, local or published
    files: dict[str, FileFacts] = field(default_factory=dict)
    snowflake: bool = False  # the three counts below were asked for
    raw_uuids: int = 0  # distinct uuids raw_events holds over the hour's files
    rows: int = 0  # rows in events for the project and hour of server_upload_time
    row_uuids: int = 0  # distinct uuids among them

    def file(self, name: str) -> FileFacts:
        return self.files.setdefault(name, FileFacts(name))

    def total(self, stage: str) -> int | None:
        """Events of the hour in a stage (extracted, local_events, s3_events, loaded); None
        when S3 holds an object whose events are unknown (an older version's)."""
        files = self.files.values()
        if stage == "s3_events" and any(f.s3_key and f.s3_events is None for f in files):
            return None
        return sum(getattr(f, stage) or 0 for f in files)

    @property
    def local_files(self) -> int:
        return sum(1 for f in self.files.values() if f.local_events is not None)

    @property
    def objects(self) -> int:
        return sum(1 for f in self.files.values() if f.s3_key is not None)


@dataclass(frozen=True)
class Mismatch:
    """One thing not where it should be, with both counts and the command that repairs it."""

    project: str
    hour: datetime
    file: str | None  # None: the hour as a whole
    problem: str
    counts: tuple[tuple[str, int | None], tuple[str, int | None]] | None
    repair: str

    def both_counts(self) -> str:
        if self.counts is None:
            return ""
        return ", ".join(f"{k} {'none' if v is None else v}" for k, v in self.counts)

    def line(self) -> str:
        counts = f" ({self.both_counts()})" if self.counts else ""
        what = f"{self.file or '(hour)'}: {self.problem}{counts}"
        return f"{self.project} {format_hour(self.hour)}  {what} → {self.repair}"


@dataclass
class HourStatus:
    facts: HourFacts
    fetch: Fetch
    state: State
    mismatches: list[Mismatch]

    @property
    def start(self) -> datetime:
        return self.facts.start


def fetch_state(record: HourRecord | None, start: datetime) -> Fetch:
    if record is None:
        return Fetch.NEVER
    if not is_final(start, record.fetched_at):
        return Fetch.EARLY
    return Fetch.FINAL if record.files else Fetch.NO_DATA


@dataclass(frozen=True)
class Hints:
    """The repair commands, as this configuration runs them."""

    snowflake: bool

    def extract(self, hour: datetime) -> str:
        h = format_hour(hour)
        return f"python extract.py --start {h} --end {h}"

    @property
    def load(self) -> str:
        return "python load.py --copy" if self.snowflake else "python load.py"

    def copy(self, f: FileFacts, prefix: str, now: datetime) -> str:
        relative = (f.s3_key or "").removeprefix(f"{prefix}/")
        force = f"COPY ... FILES = ('{relative}') FORCE = TRUE ({FORCE_DOC})"
        if f.s3_modified is not None and now - f.s3_modified > COPY_MEMORY:
            return f"uploaded over 64 days ago, COPY skips it: {force}"
        return f"python load.py --copy; if it stays unloaded: {force}"


def assess(facts: HourFacts, now: datetime, prefix: str) -> HourStatus:
    """The hour's state and its mismatches (none for an hour Amplitude has not finished)."""
    fetch = fetch_state(facts.record, facts.start)
    if not facts.expected:
        return HourStatus(facts, fetch, State.OUTSIDE, [])
    if not is_final(facts.start, now):
        return HourStatus(facts, fetch, State.FILLING, [])
    hints = Hints(facts.snowflake)
    found = [
        *_fetch_problems(facts, fetch, hints),
        *_file_problems(facts, hints, prefix, now),
        *_hour_problems(facts),
    ]
    in_s3 = any(f.s3_key for f in facts.files.values())
    if found:
        state = State.PARTIAL if in_s3 or facts.rows else State.MISSING
    elif fetch is Fetch.NO_DATA and not facts.files and not facts.rows:
        state = State.NO_DATA
    else:
        state = State.COMPLETE
    return HourStatus(facts, fetch, state, found)


def _mismatch(facts: HourFacts, file: str | None, problem: str, counts, repair: str) -> Mismatch:
    return Mismatch(facts.project, facts.start, file, problem, counts, repair)


def _fetch_problems(facts: HourFacts, fetch: Fetch, hints: Hints) -> list[Mismatch]:
    redo = hints.extract(facts.start)
    if fetch is Fetch.NEVER:
        held = any(f.s3_key or f.local_events is not None for f in facts.files.values())
        problem = (
            "no record of its fetch (files of an older version, or a lost manifest)"
            if held
            else "never fetched from Amplitude"
        )
        return [_mismatch(facts, None, problem, None, redo)]
    record = facts.record
    assert record is not None
    found = []
    if fetch is Fetch.EARLY:
        at = record.fetched_at.astimezone(UTC).strftime("%Y-%m-%dT%H:%MZ")
        found.append(
            _mismatch(facts, None, f"fetched at {at}, before Amplitude had finished it", None, redo)
        )
    if record.refetch:
        found.append(_mismatch(facts, None, f"to fetch again: {record.refetch}", None, redo))
    return found


def _file_problems(facts: HourFacts, hints: Hints, prefix: str, now: datetime) -> list[Mismatch]:
    found = []
    for name, f in sorted(facts.files.items(), key=lambda item: (len(item[0]), item[0])):
        if f.s3_key is None:
            if f.extracted is not None or f.local_events is not None:
                local = f.local_events is not None
                label, count = (
                    ("extract", f.extracted)
                    if f.extracted is not None
                    else ("json_data", f.local_events)
                )
                found.append(
                    _mismatch(
                        facts,
                        name,
                        "not in S3" + ("" if local else " nor in json_data/"),
                        ((label, count), ("S3", None)),
                        hints.load if local else hints.extract(facts.start),
                    )
                )
            continue
        if f.extracted is not None and f.s3_events is not None and f.s3_events != f.extracted:
            current = f.local_events == f.extracted
            found.append(
                _mismatch(
                    facts,
                    name,
                    "S3 holds another version",
                    (("extract", f.extracted), ("S3", f.s3_events)),
                    hints.load if current else hints.extract(facts.start),
                )
            )
            continue
        label, want = ("extract", f.extracted) if f.extracted is not None else ("S3", f.s3_events)
        if f.loaded is not None and want is not None and f.loaded != want:
            problem = "not loaded into raw_events" if f.loaded == 0 else "loaded another count"
            found.append(
                _mismatch(
                    facts,
                    name,
                    problem,
                    ((label, want), ("loaded", f.loaded)),
                    hints.copy(f, prefix, now),
                )
            )
    return found


def _hour_problems(facts: HourFacts) -> list[Mismatch]:
    if not facts.snowflake:
        return []
    found = []
    if facts.rows > facts.row_uuids:
        found.append(
            _mismatch(
                facts,
                None,
                "a uuid more than once in events",
                (("distinct uuids", facts.row_uuids), ("rows in events", facts.rows)),
                "worksheet 06 duplicate_uuids",
            )
        )
    if facts.row_uuids < facts.raw_uuids:
        found.append(
            _mismatch(
                facts,
                None,
                "events lacks uuids of its files",
                (("distinct uuids in its files", facts.raw_uuids), ("in events", facts.row_uuids)),
                "python load.py --copy (its MERGE); if that stays: worksheet 06 raw_not_in_events",
            )
        )
    elif facts.row_uuids > facts.raw_uuids:
        found.append(
            _mismatch(
                facts,
                None,
                "events holds uuids its files do not",
                (("distinct uuids in its files", facts.raw_uuids), ("in events", facts.row_uuids)),
                "worksheet 06 rows_per_hour; were rows of raw_events deleted?",
            )
        )
    return found


@dataclass(frozen=True)
class Project:
    """A project to show: its id, and its name in AMPLITUDE_PROJECTS (or `default`) if it is
    configured; one found only by its files in json_data/ or S3 has none."""

    id: str
    name: str | None = None

    @property
    def configured(self) -> bool:
        return self.name is not None

    @property
    def label(self) -> str:
        return f"{self.name} ({self.id})" if self.name else self.id


@dataclass
class Report:
    """Every project's hours first..last, judged at `now`."""

    first: datetime
    last: datetime
    now: datetime
    snowflake: bool
    projects: list[Project]
    hours: dict[str, list[HourStatus]]  # by project id, in time order
    notes: list[str] = field(default_factory=list)

    @property
    def mismatches(self) -> list[Mismatch]:
        return [m for p in self.projects for h in self.hours[p.id] for m in h.mismatches]

    @property
    def ok(self) -> bool:
        """Every finished hour complete (or without data) and reconciled."""
        return not self.mismatches


def span(
    now: datetime, days: int | None, start: datetime | None, end: datetime | None
) -> tuple[datetime, datetime]:
    """The hours to show, first and last, both inclusive.

    Without --end, up to the current hour: the hours after the newest finished one are shown
    as not finished yet (and not checked). Without --start, from 00 UTC `days` (default 7)
    days before the day of the last checked hour (the newest finished one, or --end).
    """
    if days is not None and start is not None:
        raise UsageError("give --days or --start, not both")
    days = 7 if days is None else days
    if days < 0:
        raise UsageError("--days must be 0 or more")
    checked = end if end is not None else default_end(now)
    last = end if end is not None else floor_hour(now)
    first = start if start is not None else checked.replace(hour=0) - timedelta(days=days)
    if first > last:
        raise UsageError(f"the end {format_hour(last)} is before the start {format_hour(first)}")
    return first, last


def each_hour(first: datetime, last: datetime) -> list[datetime]:
    hours = []
    while first <= last:
        hours.append(first)
        first += HOUR
    return hours
