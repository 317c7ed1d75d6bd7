"""Issue 13: status.py, per hour and project, across Amplitude, json_data/, S3 and Snowflake.

The scenarios build a small history with the real extract.py and load.py (in-process) against
the Amplitude stand-in with late data, on moto's S3 (and, in test_status_snowflake.py, the
fakesnow stand-in), damage it the ways that happen, and run status.py as cron would: they
assert each hour's state, the mismatch list with its repair commands, and the exit status.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from html.parser import HTMLParser
from pathlib import Path

import pytest
import time_machine

import extract
import load
import status
from local_stack.amplitude_server import ExportService
from pipeline import lock
from pipeline.cli import run
from pipeline.manifest import FileRecord, HourRecord
from pipeline.status import (
    Fetch,
    FileFacts,
    HourFacts,
    State,
    assess,
    span,
)

from .conftest import BUCKET

PID = 123456
API_KEY = "amp-api-key-0123456789abcdef"
SECRET = "amp-secret-key-fedcba9876543210"
DAY = datetime(2026, 11, 28, tzinfo=UTC)


def at(hour: int, minute: int = 15, day: datetime = DAY) -> datetime:
    return day + timedelta(hours=hour, minutes=minute)


def key(hour: int, shard: int) -> str:
    return f"amplitude/{PID}/2026-11-28/{PID}_2026-11-28_{hour}#{shard}.json"


def name(hour: int, shard: int) -> str:
    return f"{PID}_2026-11-28_{hour}#{shard}.json"


@pytest.fixture
def service() -> ExportService:
    return ExportService(
        api_key=API_KEY,
        secret_key=SECRET,
        project_id=PID,
        first=DAY,
        last=DAY + timedelta(days=1),
        events_per_hour=4,
        shards=2,
        empty_hours={at(4, 0)},
        late_data=True,
    )


@pytest.fixture
def gzip_mode() -> bool:
    return False


def run_at(moment: datetime, command, *argv: str) -> int:
    with time_machine.travel(moment, tick=False):
        return run(command, list(argv))


def status_at(moment: datetime, capsys, *argv: str) -> tuple[int, list[str]]:
    """Run status.py; its exit status and its stdout lines (its stderr must say why)."""
    capsys.readouterr()
    code = run_at(moment, status.main, *argv)
    out, err = capsys.readouterr()
    lines = out.splitlines()
    if code == 1:
        found = len(mismatches(lines))
        assert err.splitlines()[-1].startswith(f"error: {found} mismatch"), err
        assert "(listed above, each with the command that repairs it)" in err
    else:
        assert "error:" not in err
    return code, lines


def row_of(lines: list[str], day: str, project: str | None = None) -> str:
    """The calendar's marks for a day (of the first project, or this one), blanks dropped."""
    if project is not None:
        lines = lines[lines.index(f"project {project}") :]
    line = next(line for line in lines if line.startswith(f"  {day}"))
    return line[len(day) + 4 :][:27].replace(" ", "")


def mismatches(lines: list[str]) -> list[str]:
    start = next(i for i, line in enumerate(lines) if line.startswith("mismatches ("))
    return [line.strip() for line in lines[start + 1 :] if line.startswith("  ")]


# --- the scenario: a day fetched at 10:15, with --end two hours too far -------------------


@pytest.fixture
def history(pipeline_env, s3, data_dir, gzip_mode) -> None:
    """00..09 fetched at 10:15 (08 and 09 early, Amplitude still filling them), uploaded;
    then 02#1's object is lost (its local file is still there), and 03#0 is lost in both."""
    assert run_at(at(10), extract.main, "--days", "0", "--end", "20261128T09") == 0
    assert run_at(at(10), load.main) == 0
    gz = ".gz" if gzip_mode else ""
    s3.delete_object(Bucket=BUCKET, Key=key(2, 1) + gz)
    s3.delete_object(Bucket=BUCKET, Key=key(3, 0) + gz)
    (data_dir / str(PID) / "2026-11-28" / name(3, 0)).unlink()


@pytest.mark.parametrize("gzip_mode", [False, True], ids=["plain", "gzip"])
def test_each_state_and_each_repair_in_the_calendar_and_the_list(history, capsys, gzip_mode):
    code, lines = status_at(at(10), capsys, "--days", "0")
    assert code == 1
    assert not any("\x1b[" in line for line in lines)  # no colour but on a terminal
    # 00-03 data, 02 and 03 each lose a file; 04 empty; 08, 09 (fetched early) and 10 filling
    assert row_of(lines, "2026-11-28") == "##~~-###..."
    assert "Snowflake not checked (SNOWFLAKE_ACCOUNT is not set)" in lines[0]
    assert mismatches(lines) == [
        f"{PID} 20261128T02  {name(2, 1)}: not in S3 (extract 2, S3 none) → python load.py",
        f"{PID} 20261128T03  {name(3, 0)}: not in S3 nor in json_data/ (extract 2, S3 none)"
        " → python extract.py --start 20261128T03 --end 20261128T03",
    ]
    total = next(line for line in lines if line.startswith("total: "))
    assert total == (
        "total: 11 hours of 1 project: 5 complete, 2 partial, 3 not finished yet, 1 no data; "
        "events: 34 extracted, 32 in json_data/, 30 in S3"
    )


def test_when_cron_stops_early_fetches_are_partial_and_hours_never_asked_missing(history, capsys):
    """Nothing ran after 10:15; at 14:15 08 and 09 are finished but were fetched early, 10
    and 11 were never asked. Hours before the project's first fetch are not judged."""
    code, lines = status_at(at(14), capsys, "--start", "20261127T22")
    assert code == 1
    assert row_of(lines, "2026-11-27") == ""  # blank: before its first fetch
    assert row_of(lines, "2026-11-28") == "##~~-###~~xx..."
    found = mismatches(lines)
    assert found[-4:] == [
        f"{PID} 20261128T08  (hour): fetched at 2026-11-28T10:15Z, before Amplitude had "
        "finished it → python extract.py --start 20261128T08 --end 20261128T08",
        f"{PID} 20261128T09  (hour): fetched at 2026-11-28T10:15Z, before Amplitude had "
        "finished it → python extract.py --start 20261128T09 --end 20261128T09",
        f"{PID} 20261128T10  (hour): never fetched from Amplitude"
        " → python extract.py --start 20261128T10 --end 20261128T10",
        f"{PID} 20261128T11  (hour): never fetched from Amplitude"
        " → python extract.py --start 20261128T11 --end 20261128T11",
    ]


def test_following_the_repairs_ends_complete_with_exit_0(history, capsys):
    """Cron alone refetches 08 and 09 and re-uploads 02#1; 03#0 needs the command status
    names (its hour was fetched final, so no run fetches it again by itself)."""
    assert run_at(at(12), extract.main) == 0
    assert run_at(at(12), load.main) == 0
    code, lines = status_at(at(12), capsys, "--days", "0")
    assert code == 1
    assert [m.split(":")[0] for m in mismatches(lines)] == [f"{PID} 20261128T03  {name(3, 0)}"]
    assert run_at(at(12), extract.main, "--start", "20261128T03", "--end", "20261128T03") == 0
    assert run_at(at(12), load.main) == 0
    code, lines = status_at(at(12), capsys, "--days", "0")
    assert code == 0, lines
    assert row_of(lines, "2026-11-28") == "####-#####..."
    assert lines[-1] == "no mismatch: every finished hour is complete in S3 (Snowflake not checked)"


def test_html_page_holds_the_same_states(history, capsys, tmp_path):
    page = tmp_path / "status.html"
    code, lines = status_at(at(10), capsys, "--days", "0", "--html", str(page))
    assert code == 1 and lines[-1] == f"wrote {page}"
    parsed = Page.read(page)
    states = {h: s for h, s in parsed.cells.items() if h.startswith("20261128")}
    marks = row_of(lines, "2026-11-28")
    legend = {"#": "complete", "~": "partial", "-": "no data", ".": "not finished yet"}
    assert states == {f"20261128T{n:02d}": legend[m] for n, m in enumerate(marks)}
    assert "".join(parsed.marks[h] for h in sorted(states)) == marks
    assert [row[:3] for row in parsed.mismatches] == [
        [str(PID), "20261128T02", name(2, 1)],
        [str(PID), "20261128T03", name(3, 0)],
    ]
    assert parsed.mismatches[0][-1] == "python load.py"
    assert parsed.days["2026-11-28"]["complete"] == "5"
    assert "http" not in page.read_text().replace('lang="en"', "")  # nothing to fetch
    assert run_at(at(10), status.main, "--html", str(tmp_path / "no" / "page.html")) == 1
    err = capsys.readouterr().err
    assert err.endswith(
        f"error: cannot write {tmp_path / 'no' / 'page.html'}: No such file or directory\n"
    )


class Page(HTMLParser):
    """The parts of status.py's HTML page the tests read."""

    def __init__(self) -> None:
        super().__init__()
        self.cells: dict[str, str] = {}  # hour → state
        self.marks: dict[str, str] = {}  # hour → the terminal's mark
        self.days: dict[str, dict[str, str]] = {}
        self.mismatches: list[list[str]] = []
        self._table = self._day = self._state = self._hour = None
        self._row: list[str] | None = None
        self._text: list[str] = []

    @classmethod
    def read(cls, path: Path) -> Page:
        page = cls()
        page.feed(path.read_text(encoding="utf-8"))
        return page

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "table":
            self._table = a.get("class")
        elif tag == "td" and "data-hour" in a:
            self.cells[a["data-hour"]] = a["data-state"]
            self._hour = a["data-hour"]
        elif tag == "tr" and "data-day" in a:
            self._day = a["data-day"]
            self.days[self._day] = {}
        elif tag == "td" and self._day and "data-state" in a:
            self._state = a["data-state"]
        elif tag == "tr" and self._table == "mismatches":
            self._row = []
        if tag == "td":
            self._text = []

    def handle_data(self, data):
        self._text.append(data)

    def handle_endtag(self, tag):
        if tag == "td" and self._hour:
            self.marks[self._hour] = "".join(self._text) or " "
            self._hour = None
        elif tag == "td" and self._state and self._day:
            self.days[self._day][self._state] = "".join(self._text)
            self._state = None
        elif tag == "td" and self._row is not None:
            self._row.append("".join(self._text))
        elif tag == "tr" and self._row:
            self.mismatches.append(self._row)
            self._row = None
        elif tag == "tr":
            self._day = None


# --- read-only, projects, usage -------------------------------------------------------------


def test_read_only_and_no_lock(history, capsys, data_dir):
    """Beside a run that holds json_data/.lock, status.py reads and writes nothing there."""
    with lock.hold(data_dir, "extract.py"):
        before = sorted((p.as_posix(), p.stat().st_mtime_ns) for p in data_dir.rglob("*"))
        code, lines = status_at(at(10), capsys, "--days", "0")
        after = sorted((p.as_posix(), p.stat().st_mtime_ns) for p in data_dir.rglob("*"))
    assert code == 1 and lines
    assert after == before


def test_projects_by_name_and_by_id(history, capsys, monkeypatch, s3, data_dir):
    """A configured project by name (its id learned from its key pair: found in S3 on a new
    laptop, and not written down by status.py); another id found in S3 by its id, judged
    over its own history only. S3 objects are never read: their events come from the
    manifests, or for an object no manifest describes, from one HEAD."""
    other = "amplitude/777/2026-11-28/777_2026-11-28_1#0.json"
    s3.put_object(Bucket=BUCKET, Key=other, Body=b"{}\n", Metadata={"events": "1"})
    (data_dir / ".manifests" / "keys.json").unlink()
    requests = record_s3_requests(monkeypatch)
    code, lines = status_at(at(10), capsys, "--days", "0")
    assert code == 1
    assert not (data_dir / ".manifests" / "keys.json").exists()
    assert row_of(lines, "2026-11-28", f"default ({PID})") == "##~~-###..."
    assert row_of(lines, "2026-11-28", "777") == "~"  # 01 only: no record of its fetch
    assert mismatches(lines)[-1] == (
        "777 20261128T01  (hour): no record of its fetch (files of an older version, or a lost "
        "manifest) → python extract.py --start 20261128T01 --end 20261128T01"
    )
    assert [k for op, k in requests if op == "HeadObject"] == [other]
    assert all(k.startswith("amplitude-manifests/") for op, k in requests if op == "GetObject")

    code, lines = status_at(at(10), capsys, "--days", "0", "--project", "default")
    assert "project 777" not in lines
    assert run_at(at(10), status.main, "--project", "staging") == 2
    assert "error: --project 'staging' is not configured" in capsys.readouterr().err


def record_s3_requests(monkeypatch) -> list[tuple[str, str]]:
    """(operation, key) of every S3 request status.py's client makes from now on."""
    from pipeline import s3 as s3mod

    seen: list[tuple[str, str]] = []
    real = s3mod.client

    def client(*args, **kwargs):
        c = real(*args, **kwargs)

        def before(params, model, **_):
            seen.append((model.name, params.get("Key", params.get("Prefix", ""))))

        c.meta.events.register("before-parameter-build.s3", before)
        return c

    monkeypatch.setattr(s3mod, "client", client)
    return seen


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--days", "2", "--start", "2026-11-28"], "give --days or --start, not both"),
        (["--days", "-1"], "--days must be 0 or more"),
        (["--start", "2026-11-28T05"], "--start '2026-11-28T05' is not an hour"),
        (["--start", "20261128T05", "--end", "20261128T04"], "the end 20261128T04 is before"),
    ],
)
def test_usage_errors_exit_2(capsys, argv, message):
    assert run_at(at(10), status.main, *argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and "Traceback" not in err


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({}, "S3_BUCKET is not set: add it to .env (see .env.example); status.py needs it"),
        (
            {"S3_BUCKET": BUCKET, "SNOWFLAKE_ACCOUNT": "acme-prod"},
            "SNOWFLAKE_USER is not set: add it to .env (see .env.example); status.py (to check "
            "Snowflake) needs it",
        ),
    ],
)
def test_settings_errors_exit_2_before_any_request(monkeypatch, data_dir, capsys, values, message):
    monkeypatch.setenv("JSON_DATA_DIR", str(data_dir))
    for var, value in values.items():
        monkeypatch.setenv(var, value)
    assert run(status.main, []) == 2  # no moto here: a request would fail otherwise
    assert capsys.readouterr().err == f"error: {message}\n"


# --- the judgement alone ----------------------------------------------------------------------


def test_span_defaults_to_days_back_from_the_newest_finished_hour_and_shows_the_rest():
    first, last = span(at(10), None, None, None)
    assert (first, last) == (DAY - timedelta(days=7), at(10, 0))
    assert span(at(1), 0, None, None) == (DAY - timedelta(days=1), at(1, 0))  # 22:00 yesterday
    end = at(5, 0)
    assert span(at(10), 1, None, end) == (DAY - timedelta(days=1), end)


def hour_facts(**files: FileFacts) -> HourFacts:
    record = HourRecord(
        at(9), {n: FileRecord(10, "0" * 8, f.extracted or 0) for n, f in files.items()}
    )
    facts = HourFacts(str(PID), at(5, 0), record=record, snowflake=True)
    facts.files = {f.name: f for f in files.values()}
    return facts


def test_a_file_not_loaded_names_the_force_recipe_once_copy_forgot_it():
    fresh = FileFacts(name(5, 0), 7, None, key(5, 0), 7, at(6), loaded=0)
    old = FileFacts(name(5, 1), 7, None, key(5, 1), 7, at(6) - timedelta(days=65), loaded=0)
    facts = hour_facts(a=fresh, b=old)
    facts.raw_uuids = facts.rows = facts.row_uuids = 0
    judged = assess(facts, at(12), "amplitude")
    assert (judged.fetch, judged.state) == (Fetch.FINAL, State.PARTIAL)
    first, second = (m.repair for m in judged.mismatches)
    relative = f"{PID}/2026-11-28/{name(5, 0)}"
    assert first.startswith("python load.py --copy; if it stays unloaded: COPY ... FILES = (")
    assert relative in first
    assert second.startswith("uploaded over 64 days ago, COPY skips it: COPY ... FILES = (")


def test_duplicates_across_files_reconcile_and_a_uuid_twice_in_events_does_not():
    """Hour check: rows in events = distinct uuids over its files, each uuid once."""
    a = FileFacts(name(5, 0), 3, None, key(5, 0), 3, at(6), loaded=3)
    b = FileFacts(name(5, 1), 3, None, key(5, 1), 3, at(6), loaded=3)
    facts = hour_facts(a=a, b=b)
    facts.raw_uuids, facts.rows, facts.row_uuids = 5, 5, 5  # one uuid in both files
    assert assess(facts, at(12), "amplitude").state is State.COMPLETE
    facts.rows = 6
    (found,) = assess(facts, at(12), "amplitude").mismatches
    assert found.repair == "worksheet 06 duplicate_uuids"
    assert found.counts == (("distinct uuids", 5), ("rows in events", 6))
    facts.rows = facts.row_uuids = 4
    (found,) = assess(facts, at(12), "amplitude").mismatches
    assert found.problem == "events lacks uuids of its files"
