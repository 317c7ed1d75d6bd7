"""The worksheets and `run_copy` against fakesnow's server, with the stage on moto's S3 server.

What fakesnow cannot run is skipped or replaced by name in `local_stack/fakesnow_compat.py`
(the one list); every test that runs worksheets prints and checks what was skipped.
"""

from __future__ import annotations

import gzip
import itertools
import json
import os
import re
import subprocess
import sys
import threading
import uuid
import warnings
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path

import boto3
import pytest
import snowflake.connector
import sqlglot
from snowflake.connector.cursor import SnowflakeCursor
from snowflake.connector.errors import OperationalError

from local_stack import fakesnow_compat
from local_stack.snowflake_server import serve
from pipeline import sample_events, warehouse, worksheets
from pipeline.errors import PipelineError, UsageError
from pipeline.layout import parse_member, s3_key
from pipeline.settings import REPO_ROOT
from pipeline.warehouse import run_copy
from tests.conftest import make_settings

PREFIX = "amplitude"
CREDENTIALS = ("testing-access-key", "testing-secret-key")
_counter = itertools.count()


@pytest.fixture(scope="module")
def snowflake_server(moto_server):
    with serve(moto_server, credentials=CREDENTIALS) as server:
        yield server


def new_stack(moto_server: str, server_settings: dict[str, str]) -> Stack:
    """A fresh bucket on moto and fresh database names on the fakesnow server."""
    n = next(_counter)
    bucket = f"amp-{n}-{uuid.uuid4().hex[:8]}"
    s3 = boto3.client(
        "s3",
        endpoint_url=moto_server,
        region_name="us-east-1",
        aws_access_key_id=CREDENTIALS[0],
        aws_secret_access_key=CREDENTIALS[1],
    )
    s3.create_bucket(Bucket=bucket)
    values = {
        "database": f"AMP_{n}",
        "schema": "RAW",
        "warehouse": "AMPLITUDE_WH",
        "role": "AMPLITUDE_LOADER",
        "user": "fake",
        "s3_bucket": bucket,
        "s3_prefix": PREFIX,
        "aws_role_arn": "arn:aws:iam::123456789012:role/snowflake-amplitude",
        "copy_path": "/123456/",  # worksheet 05 by hand: every file of the tests' usual project
    }
    settings = make_settings(
        **server_settings,
        SNOWFLAKE_ROLE=values["role"],
        SNOWFLAKE_WAREHOUSE=values["warehouse"],
        SNOWFLAKE_DATABASE=values["database"],
        SNOWFLAKE_SCHEMA=values["schema"],
        S3_BUCKET=bucket,
        S3_PREFIX=PREFIX,
    )
    return Stack(s3, bucket, values, settings, server_settings)


@pytest.fixture(autouse=True)
def today(monkeypatch: pytest.MonkeyPatch) -> date:
    """run_copy's today (UTC), fixed: the day folders it COPYs do not drift with the clock."""
    fixed = date(2026, 11, 21)
    monkeypatch.setattr(warehouse, "_today", lambda: fixed)
    return fixed


@pytest.fixture
def stack(moto_server, snowflake_server):
    report = snowflake_server.report
    start = (len(report.skipped), len(report.replaced), len(report.differed))
    yield new_stack(moto_server, snowflake_server.settings())
    skipped = ", ".join(dict.fromkeys(report.skipped[start[0] :]))
    replaced = ", ".join(dict.fromkeys(report.replaced[start[1] :]))
    differed = ", ".join(dict.fromkeys(report.differed[start[2] :]))
    if skipped or replaced or differed:
        # Shown in pytest's warnings summary on every run, not only on failure.
        warnings.warn(
            "fakesnow, by name (local_stack/fakesnow_compat.py): "
            f"skipped {skipped or 'nothing'}; ran an equivalent of {replaced or 'nothing'}"
            + (f"; behaved unlike Snowflake in {differed}" if differed else ""),
            StandInSkipped,
            stacklevel=1,
        )


class StandInSkipped(UserWarning):
    """Statements of the worksheets that the fakesnow stand-in did not run."""


class Stack:
    def __init__(self, s3, bucket, values, settings, server_settings):
        self.s3, self.bucket, self.values, self.settings = s3, bucket, values, settings
        self.conn = snowflake.connector.connect(
            **{k.removeprefix("SNOWFLAKE_").lower(): v for k, v in server_settings.items()},
            session_parameters={"CLIENT_OUT_OF_BAND_TELEMETRY_ENABLED": False},
        )

    def upload(self, members, gzip_objects=False) -> list[str]:
        keys = []
        for name, events in members:
            key = s3_key(PREFIX, parse_member(name), gzip=gzip_objects)
            body = sample_events.ndjson(events)
            self.s3.put_object(
                Bucket=self.bucket, Key=key, Body=gzip.compress(body) if gzip_objects else body
            )
            keys.append(key)
        return keys

    def run(self, worksheet: str | Path, **values: str) -> dict[str, list[tuple]]:
        """Run one worksheet (or a .sql file); the rows each statement returned, by name."""
        path = Path(worksheet)
        if path.suffix != ".sql":
            path = next(worksheets.WORKSHEET_DIR.glob(f"{worksheet}_*.sql"))
        text = path.read_text(encoding="utf-8")
        statements = worksheets.split(worksheets.render(text, {**self.values, **values}))
        cursor = self.conn.cursor()
        results = {}
        for statement in statements:
            cursor.execute(statement.sql)
            results[statement.name] = cursor.fetchall()
        return results

    def query(self, sql: str) -> list[tuple]:
        return self.conn.cursor().execute(sql).fetchall()

    def uuids(self, table: str = "events") -> list[str]:
        column = "uuid" if table == "events" else "raw:uuid::VARCHAR"
        return [r[0] for r in self.query(f"SELECT {column} FROM {table}")]


class Recorder:
    """The connector's cursor, wrapped: records what each thread runs, fails or pauses by name."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch):
        self.ran: list[tuple[str, str]] = []  # (thread, `-- name:` or the SQL itself)
        self.sql: list[tuple[str, str]] = []  # (`-- name:` or the SQL itself, the SQL)
        self.fail: dict[str, BaseException] = {}
        self.pause: dict[str, threading.Barrier] = {}
        self._paused = threading.local()
        original = SnowflakeCursor.execute

        def execute(cursor: SnowflakeCursor, command: str, *args, **kwargs):
            name = worksheets.statement_name(command) or command.strip()
            self.ran.append((threading.current_thread().name, name))
            self.sql.append((name, command))
            if name in self.fail:
                raise self.fail.pop(name)
            if name in self.pause and not getattr(self._paused, name, False):
                setattr(self._paused, name, True)  # the first attempt only
                self.pause[name].wait()
            return original(cursor, command, *args, **kwargs)

        monkeypatch.setattr(SnowflakeCursor, "execute", execute)

    def names(self, thread: str = "MainThread") -> list[str]:
        return [name for t, name in self.ran if t == thread]

    def folders(self) -> list[str]:
        """The stage folders copy_raw read, in order."""
        return [stage_folder(sql) for name, sql in self.sql if name == "copy_raw"]


def stage_folder(sql: str) -> str:
    """The folder after `@amplitude_stage` in a COPY (comments left out)."""
    code = "\n".join(line for line in sql.splitlines() if not line.lstrip().startswith("--"))
    return re.search(r"@amplitude_stage(\S*)\)", code)[1]


def members(seed: int, hours: int = 3, per_hour: int = 7, day: int = 20):
    """Shards of `hours` hours from 04 UTC (05 empty, as Amplitude has empty hours)."""
    start = datetime(2026, 11, day, 4, tzinfo=UTC)
    end = datetime(2026, 11, day, 4 + hours - 1, tzinfo=UTC)
    empty = [datetime(2026, 11, day, 5, tzinfo=UTC)] if hours > 2 else []
    return sample_events.export_members(
        123456, start, end, events_per_hour=per_hour, shards=2, empty_hours=empty, seed=seed
    )


def all_uuids(members_) -> list[str]:
    return [e["uuid"] for _, events in members_ for e in events]


def test_two_projects_share_events_and_rows_per_hour_tells_them_apart(stack, snowflake_server):
    """One events table for every project: one row per uuid; 06 counts per project and hour."""
    eu = sample_events.export_members(
        111111, datetime(2026, 11, 20, 4, tzinfo=UTC), datetime(2026, 11, 20, 5, tzinfo=UTC), 3, 1
    )
    us = sample_events.export_members(
        222222, datetime(2026, 11, 20, 5, tzinfo=UTC), datetime(2026, 11, 20, 5, tzinfo=UTC), 4, 2
    )
    stack.upload(eu)
    stack.upload(us, gzip_objects=True)
    for worksheet in ("01", "03", "04"):
        stack.run(worksheet)
    stack.run("05", copy_path="/111111/")
    stack.run("05", copy_path="/222222/")
    assert sorted(stack.uuids()) == sorted(all_uuids(eu) + all_uuids(us))
    rows = stack.run("06")["rows_per_hour"]
    assert sorted((r[0], r[1].hour, r[2], r[3]) for r in rows) == [
        (111111, 4, 3, 1),
        (111111, 5, 3, 1),
        (222222, 5, 4, 2),
    ]


def test_worksheets_load_every_event_once_and_rerun_and_reupload_add_nothing(
    stack, snowflake_server
):
    plain = members(seed=1)
    gzipped = members(seed=2, hours=1, day=19)  # .json.gz objects load through COMPRESSION = AUTO
    stack.upload(plain)
    stack.upload(gzipped, gzip_objects=True)
    expected = all_uuids(plain) + all_uuids(gzipped)
    for worksheet in ("01", "02", "03", "04"):
        stack.run(worksheet)

    first = stack.run("05")
    assert sorted(stack.uuids()) == sorted(expected)
    assert len(first["copy_raw"]) == len(plain) + len(gzipped)
    assert sum(row[3] for row in first["copy_raw"]) == len(expected)
    event = stack.query(
        "SELECT insert_id, event_type, event_time, server_upload_time, app, country, city,"
        " source_file, raw:uuid::VARCHAR FROM events ORDER BY uuid LIMIT 1"
    )[0]
    source = next(e for _, events in plain + gzipped for e in events if e["uuid"] == event[8])
    assert event[0] == source["$insert_id"] and event[1] == source["event_type"]
    assert event[2] == datetime.strptime(source["event_time"], sample_events.TS_FORMAT)
    assert event[3] == datetime.strptime(source["server_upload_time"], sample_events.TS_FORMAT)
    assert (event[4], event[5], event[6]) == (123456, source["country"], source["city"])
    assert event[7].startswith(f"{PREFIX}/123456/2026-11-")

    checks = stack.run("06")
    assert checks["duplicate_uuids"] == [] and checks["raw_not_in_events"] == []
    assert sum(r[2] for r in checks["rows_per_hour"]) == len(expected)

    second = stack.run("05")
    assert second["copy_raw"] == [("Copy executed with 0 files processed.",)]
    assert sorted(stack.uuids()) == sorted(expected)

    # The same hour re-uploaded: once under the same key, once gzip-compressed (a new key that
    # COPY really loads, so raw_events holds every uuid of that file twice).
    again = plain[:1]
    stack.upload(again)
    stack.upload(again, gzip_objects=True)
    third = stack.run("05")
    assert [row[1] for row in third["copy_raw"]] == ["LOADED"]
    raw = stack.uuids("raw_events")
    assert len(raw) == len(expected) + len(again[0][1])
    assert sorted(stack.uuids()) == sorted(expected)
    assert stack.run("06")["duplicate_uuids"] == []

    expected_skips = {
        s.name
        for w in ("01", "02", "03", "04", "05", "06")
        for s in worksheets.split(
            worksheets.render(
                next(worksheets.WORKSHEET_DIR.glob(f"{w}_*.sql")).read_text(), stack.values
            )
        )
        if s.name in fakesnow_compat.SKIPPED
    }
    skipped = set(snowflake_server.report.skipped)
    assert expected_skips <= skipped <= set(fakesnow_compat.SKIPPED)
    assert "copy_raw" in snowflake_server.report.replaced


def test_run_copy_loads_merges_and_reports_each_file(stack, capsys):
    for worksheet in ("01", "02", "03", "04"):
        stack.run(worksheet)
    earlier = stack.upload(
        members(seed=3, hours=1, day=19)
    )  # uploaded by a run whose COPY never ran
    now = stack.upload(members(seed=4, hours=2))
    capsys.readouterr()

    assert run_copy(stack.settings, now) == 0
    out = capsys.readouterr().out
    for key in earlier + now:
        assert f"s3://{stack.bucket}/{key}" in out
    assert out.count("loaded  ") == len(earlier) + len(now)
    total = len(all_uuids(members(seed=3, hours=1, day=19))) + len(
        all_uuids(members(seed=4, hours=2))
    )
    assert f"copy: {len(earlier) + len(now)} files loaded ({total} rows), 0 failed" in out
    assert f"merge: {total} new events in events" in out
    assert len(stack.uuids()) == total

    assert run_copy(stack.settings, []) == 0
    out = capsys.readouterr().out
    assert "copy: 0 files loaded (0 rows), 0 failed (no new files in the stage)" in out
    assert "merge: 0 new events" in out
    assert "snow" not in out  # the password


def test_run_copy_exits_1_on_a_corrupt_file_and_still_loads_the_others(stack, capsys):
    for worksheet in ("01", "02", "03", "04"):
        stack.run(worksheet)
    good = stack.upload(members(seed=5, hours=1))
    bad = f"{PREFIX}/123456/2026-11-21/123456_2026-11-21_0#0.json"
    stack.s3.put_object(Bucket=stack.bucket, Key=bad, Body=b'{"uuid": "a"}\n{"uuid": trunc')
    capsys.readouterr()

    assert run_copy(stack.settings, [*good, bad]) == 1
    captured = capsys.readouterr()
    assert f"FAILED  s3://{stack.bucket}/{bad}:" in captured.out
    assert "error: 1 files failed to load" in captured.err
    assert len(stack.uuids()) == len(all_uuids(members(seed=5, hours=1)))

    stack.s3.put_object(Bucket=stack.bucket, Key=bad, Body=b'{"uuid": "fixed-1"}\n')
    assert run_copy(stack.settings, [bad]) == 0  # a failed file is retried once fixed
    assert "fixed-1" in stack.uuids()


def test_run_copy_names_the_missing_setting():
    with pytest.raises(UsageError, match="SNOWFLAKE_ACCOUNT is not set.*load.py --copy"):
        run_copy(make_settings(), [])
    partial = {
        f"SNOWFLAKE_{n}": "x"
        for n in ("ACCOUNT", "USER", "ROLE", "WAREHOUSE", "DATABASE", "SCHEMA")
    }
    with pytest.raises(
        UsageError, match="neither SNOWFLAKE_PASSWORD nor SNOWFLAKE_PRIVATE_KEY_FILE"
    ):
        run_copy(make_settings(**partial), [])


def test_run_copy_reports_missing_objects_in_one_line(stack):
    stack.run("01")
    stack.run("04")  # worksheet 03 not run: no stage
    with pytest.raises(PipelineError) as failure:
        run_copy(stack.settings, [])
    assert str(failure.value) == (
        f"Snowflake copy_raw: SQL compilation error: Stage '{stack.values['database']}.RAW."
        "AMPLITUDE_STAGE' does not exist or not authorized; run worksheets 03 (stage) and 04 "
        "(tables) first, with the same SNOWFLAKE_DATABASE and SNOWFLAKE_SCHEMA"
    )
    assert failure.value.exit_code == 1


def test_the_server_runs_as_a_separate_process_for_load_py(moto_server):
    """`python -m local_stack.snowflake_server`, as the local demo starts it."""
    command = [sys.executable, "-m", "local_stack.snowflake_server", "--s3-endpoint", moto_server]
    env = {
        **os.environ,
        "AWS_ACCESS_KEY_ID": CREDENTIALS[0],
        "AWS_SECRET_ACCESS_KEY": CREDENTIALS[1],
    }
    process = subprocess.Popen(
        command,
        cwd=REPO_ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        printed = dict(next(process.stdout).strip().split("=", 1) for _ in range(6))
        assert printed["SNOWFLAKE_HOST"] == "127.0.0.1" and printed["SNOWFLAKE_PROTOCOL"] == "http"
        stack = new_stack(moto_server, printed)
        for worksheet in ("01", "02", "03", "04"):
            stack.run(worksheet)
        keys = stack.upload(members(seed=6, hours=1))
        assert run_copy(stack.settings, keys) == 0
        assert len(stack.uuids()) == len(all_uuids(members(seed=6, hours=1)))
    finally:
        process.terminate()
        process.wait(timeout=10)


def test_a_bad_value_becomes_null_and_an_event_without_uuid_is_not_merged(stack):
    for worksheet in ("01", "02", "03", "04"):
        stack.run(worksheet)
    name, events = members(seed=7, hours=1)[0]
    odd = [
        {**events[0], "event_time": "yesterday", "session_id": "n/a"},
        {**events[1], "uuid": None},
    ]
    stack.upload([(name, odd)])
    assert run_copy(stack.settings, []) == 0
    # IS NULL in SQL: fakesnow's server sends a NULL TIMESTAMP_NTZ as 1970-01-01 (its bug).
    got = stack.query(
        "SELECT uuid, event_time IS NULL, session_id IS NULL, client_event_time FROM events"
    )
    client_time = datetime.strptime(odd[0]["client_event_time"], sample_events.TS_FORMAT)
    assert got == [(odd[0]["uuid"], True, True, client_time)]
    assert len(stack.uuids("raw_events")) == 2

    # An unreadable server_upload_time is NULL; the MERGE still finds that uuid in events when
    # its file loads again (re-exported with one more event: other bytes, loaded again).
    unreadable = {**events[2], "server_upload_time": "later"}
    stack.upload([(name, [*odd, unreadable])])
    assert run_copy(stack.settings, []) == 0
    stack.upload([(name, [*odd, unreadable, events[3]])])
    assert run_copy(stack.settings, []) == 0
    assert len(stack.uuids("raw_events")) == 2 + 3 + 4
    assert sorted(stack.uuids()) == sorted([odd[0]["uuid"], unreadable["uuid"], events[3]["uuid"]])
    assert stack.query(
        f"SELECT server_upload_time IS NULL FROM events WHERE uuid = '{unreadable['uuid']}'"
    ) == [(True,)]


MERGE_IN_A_TRANSACTION = [
    "copy_raw",
    "create_merge_lock",
    "seed_merge_lock",
    "begin_merge",
    "take_merge_lock",
    "set_batch_start",
    "set_merge_floor",
    "merge_events",
    "commit_merge",
]


def test_run_copy_merges_in_one_transaction_and_makes_a_missing_lock_table(stack, monkeypatch):
    for worksheet in ("01", "02", "03", "04"):
        stack.run(worksheet)
    stack.query("DROP TABLE merge_lock")  # tables made by a worksheet 04 older than merge_lock
    expected = all_uuids(members(seed=8, hours=1))
    keys = stack.upload(members(seed=8, hours=1))
    recorder = Recorder(monkeypatch)

    assert run_copy(stack.settings, keys) == 0
    names = recorder.names()
    assert names[names.index("copy_raw") :][: len(MERGE_IN_A_TRANSACTION)] == MERGE_IN_A_TRANSACTION
    assert "ROLLBACK" not in names
    assert sorted(stack.uuids()) == sorted(expected)
    assert stack.query("SELECT name, taken_at IS NOT NULL FROM merge_lock") == [("events", True)]


def test_a_connection_lost_before_commit_leaves_events_as_they_were(stack, monkeypatch):
    for worksheet in ("01", "02", "03", "04"):
        stack.run(worksheet)
    expected = all_uuids(members(seed=9, hours=1))
    keys = stack.upload(members(seed=9, hours=1))
    recorder = Recorder(monkeypatch)
    recorder.fail["commit_merge"] = OperationalError(msg="Connection reset by peer", errno=250003)

    with pytest.raises(PipelineError, match="^Snowflake commit_merge failed: Connection reset"):
        run_copy(stack.settings, keys)
    names = recorder.names()
    merge = names.index("merge_events")
    assert names[merge : merge + 3] == ["merge_events", "commit_merge", "ROLLBACK"]
    assert stack.uuids() == []  # the MERGE ran, but its transaction was rolled back
    assert sorted(stack.uuids("raw_events")) == sorted(expected)  # COPY committed on its own
    # IS NULL in SQL: fakesnow's server sends a NULL TIMESTAMP_NTZ as 1970-01-01 (its bug).
    assert stack.query("SELECT taken_at IS NULL FROM merge_lock") == [(True,)]  # rolled back too

    assert run_copy(stack.settings, []) == 0  # the next run merges what that one did not
    assert sorted(stack.uuids()) == sorted(expected)


def test_two_loads_at_once_insert_every_uuid_once(stack, monkeypatch, caplog, snowflake_server):
    """Both load.py --copy runs are inside BEGIN when they reach take_merge_lock (a barrier)."""
    for worksheet in ("01", "02", "03", "04"):
        stack.run(worksheet)
    expected = all_uuids(members(seed=10, hours=2))
    stack.upload(members(seed=10, hours=2))
    recorder = Recorder(monkeypatch)
    recorder.pause["take_merge_lock"] = threading.Barrier(2, timeout=30)
    outcomes: dict[str, object] = {}

    def load() -> None:
        try:
            outcomes[threading.current_thread().name] = run_copy(stack.settings, [])
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
            outcomes[threading.current_thread().name] = exc

    threads = [threading.Thread(target=load, name=f"load-{n}") for n in (1, 2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)

    assert outcomes == {"load-1": 0, "load-2": 0}
    uuids = stack.uuids()
    assert len(uuids) == len(set(uuids)) and sorted(uuids) == sorted(expected)
    for thread in ("load-1", "load-2"):
        assert recorder.names(thread).count("commit_merge") == 1
    # On DuckDB the second UPDATE of merge_lock fails at once (Snowflake would make it wait):
    # that load rolled back and took the lock again once the other had committed.
    assert "trying the transaction again" in caplog.text
    assert "take_merge_lock" in snowflake_server.report.differed
    assert "take_merge_lock" in fakesnow_compat.DIFFERS


def test_late_data_ends_in_events_once_per_uuid(stack, monkeypatch, tmp_path):
    """Issue 9 end to end: hours fetched before Amplitude finished them, then cron alone
    (extract.py, load.py --copy), with S3_GZIP=true (where the late events used to be dropped;
    tests/test_nothing_lost.py runs both modes up to S3): every finished hour is complete in
    events, and no uuid is there twice."""
    gzip_mode = "true"
    import time_machine

    import extract
    import load
    from local_stack.amplitude_server import ExportService, running
    from pipeline.cli import run
    from pipeline.hours import default_end

    day = datetime(2026, 11, 28, tzinfo=UTC)
    service = ExportService(
        project_id=123456, first=day, last=day.replace(hour=14), events_per_hour=6, shards=3
    )
    service.late_data = True
    kms = boto3.client(
        "kms",
        endpoint_url=stack.s3.meta.endpoint_url,
        region_name="us-east-1",
        aws_access_key_id=CREDENTIALS[0],
        aws_secret_access_key=CREDENTIALS[1],
    )
    for worksheet in ("01", "03", "04"):
        stack.run(worksheet)
    env = {
        **{k: v for k, v in stack.settings.values.items()},
        "AWS_ENDPOINT_URL": stack.s3.meta.endpoint_url,
        "AWS_ACCESS_KEY_ID": CREDENTIALS[0],
        "AWS_SECRET_ACCESS_KEY": CREDENTIALS[1],
        "KMS_KEY_ID": kms.create_key()["KeyMetadata"]["KeyId"],
        "JSON_DATA_DIR": str(tmp_path / "json_data"),
        "AMPLITUDE_API_KEY": service.api_key,
        "AMPLITUDE_SECRET_KEY": service.secret_key,
        "S3_GZIP": gzip_mode,
    }
    with running(service) as url:
        for name, value in {**env, "AMPLITUDE_EXPORT_URL": url}.items():
            monkeypatch.setenv(name, value)

        def both(moment: datetime, *argv: str) -> None:
            with time_machine.travel(moment, tick=False):
                assert run(extract.main, list(argv)) == 0
                assert run(load.main, ["--copy"]) == 0

        both(day.replace(hour=10, minute=30), "--start", "2026-11-28", "--end", "2026-11-28")
        for hour in (11, 12, 13, 14):
            both(day.replace(hour=hour, minute=15))
    last = default_end(day.replace(hour=14, minute=15))
    service.late_data = False
    expected = [e["uuid"] for _, events in service.members(day, last) for e in events]
    rows = stack.query(
        f"SELECT uuid FROM events WHERE server_upload_time < '{last:%Y-%m-%d %H}:59:59.999999'"
    )
    assert sorted(r[0] for r in rows) == sorted(expected)  # complete, and each uuid once


V1 = REPO_ROOT / "tests" / "snowflake_v1"  # worksheets 04 and 05 from before issue 12
EVENTS_COLUMNS = [
    c.name
    for c in sqlglot.parse_one(
        next(
            s.sql
            for s in worksheets.split(
                (worksheets.WORKSHEET_DIR / "04_tables.sql").read_text(encoding="utf-8")
            )
            if s.name == "create_events"
        ),
        read="snowflake",
    ).find_all(sqlglot.exp.ColumnDef)
]
TYPED = EVENTS_COLUMNS[: EVENTS_COLUMNS.index("raw")]


def expected_value(column: str, event: dict):
    """What events should hold for one field of an exported event (None: NULL)."""
    value = event.get("$insert_id" if column == "insert_id" else column)
    kinds = {
        "timestamp": [c for c in TYPED if c.endswith("_time")],
        "number": ["amplitude_id", "app", "event_id", "session_id", "sample_rate"],
        "float": ["location_lat", "location_lng"],
        "boolean": ["is_attribution_event", "followed_an_identify"],
        "json": [
            "event_properties",
            "user_properties",
            "group_properties",
            "global_user_properties",
            "groups",
            "data",
            "plan",
            "amplitude_attribution_ids",
        ],
    }
    kind = next((k for k, names in kinds.items() if column in names), "varchar")
    try:
        if value is None:
            return None
        if kind == "timestamp":
            return datetime.strptime(value, sample_events.TS_FORMAT)
        if kind in ("number", "float"):
            return float(value)
        if kind == "boolean":
            return value if isinstance(value, bool) else {"true": True, "false": False}[value]
        if column == "amplitude_attribution_ids" and not isinstance(value, list):
            return None
        if kind == "varchar" and isinstance(value, bool):
            return json.dumps(value)  # paying: true → 'true'
        return value
    except (KeyError, ValueError):
        return None  # a bad value


def actual_value(column: str, value):
    """A value as the connector returns it, comparable with expected_value."""
    if value is None:
        return None
    if isinstance(value, Decimal | int) and not isinstance(value, bool):
        return float(value)
    if column in ("event_properties", "user_properties", "group_properties", "data", "plan"):
        return json.loads(value)
    if column in ("global_user_properties", "groups", "amplitude_attribution_ids"):
        return json.loads(value)
    return value


def typed_rows(stack: Stack, columns: list[str] = TYPED) -> dict[str, dict]:
    """events' rows, by uuid: each column as comparable values."""
    times = [c for c in columns if c.endswith("_time")]
    # IS NULL in SQL: fakesnow's server sends a NULL TIMESTAMP_NTZ as 1970-01-01 (its bug).
    nulls = [f"{c} IS NULL" for c in times]
    rows = stack.query(f"SELECT {', '.join(columns + nulls)} FROM events")
    typed = {}
    for row in rows:
        values = dict(zip(columns, row, strict=False))
        for column, is_null in zip(times, row[len(columns) :], strict=True):
            values[column] = None if is_null else values[column]
        typed[row[0]] = {c: actual_value(c, v) for c, v in values.items()}
    return typed


def every_field(event: dict) -> dict:
    """An event with every field Amplitude may fill set, as a real export can have it."""
    return {
        **event,
        "adid": "AEBE52E7-03EE-455A-B3C4-E57283966239",
        "idfa": "C8F9E604-F01A-4BD9-95C6-8E5357DF265D",
        "amplitude_event_type": "legacy_type",
        "amplitude_attribution_ids": ["b1946ac92492d2347c6235b4d2611184"],
        "device_brand": "Apple",
        "device_carrier": "Verizon",
        "device_family": "Apple iPhone",
        "device_manufacturer": "Apple",
        "device_model": "iPhone 15",
        "device_type": "Apple iPhone 15",
        "dma": "San Francisco-Oakland-San Jose, CA",
        "followed_an_identify": False,
        "global_user_properties": {"tier": "gold"},
        "group_properties": {"company": {"acme-1": {"seats": 12}}},
        "is_attribution_event": True,
        "location_lat": 37.7749,
        "location_lng": -122.4194,
        "partner_id": "partner-7",
        "paying": True,
        "plan": {"branch": "main", "source": "web", "version": "3"},
        "sample_rate": 0.5,
        "source_id": "source-3",
        "start_version": "1.0.0",
        "version_name": "2.4.1",
    }


def test_every_amplitude_field_is_a_typed_column_and_a_bad_value_is_null(stack):
    for worksheet in ("01", "03", "04"):
        stack.run(worksheet)
    name, events = members(seed=20, hours=1)[0]
    full = every_field(events[0])
    bad = {
        **every_field(events[1]),
        "location_lat": "north",
        "event_id": "n/a",
        "processed_time": "soon",
        "is_attribution_event": "maybe",
        "amplitude_attribution_ids": "not-a-list",
        "sample_rate": "half",
        "future_field": {"from": "a later Amplitude"},
    }
    keys = stack.upload([(name, [full, bad, events[2]])])
    assert run_copy(stack.settings, keys) == 0

    got = typed_rows(stack)
    assert len(TYPED) == 54
    for event in (full, bad, events[2]):
        expected = {c: expected_value(c, event) for c in TYPED}
        assert got[event["uuid"]] == expected
    assert got[bad["uuid"]]["location_lat"] is None and got[bad["uuid"]]["processed_time"] is None
    assert got[full["uuid"]]["paying"] == "true" and got[full["uuid"]]["sample_rate"] == 0.5
    later = stack.query(
        f"SELECT raw:future_field:from::VARCHAR FROM events WHERE uuid = '{bad['uuid']}'"
    )
    assert later == [("a later Amplitude",)]  # a field events has no column for is still in raw


def test_an_events_table_of_18_columns_is_upgraded_in_place_and_filled_from_raw(stack):
    for worksheet in ("01", "03"):
        stack.run(worksheet)
    stack.run(V1 / "04_tables.sql")
    old = [(name, [every_field(e) for e in events]) for name, events in members(seed=21, hours=2)]
    stack.upload(old)
    stack.run(V1 / "05_copy_and_dedup.sql")
    assert len(stack.query("DESCRIBE TABLE events")) == 18 + 3
    before = sorted(stack.uuids())
    assert len(before) == len(all_uuids(old))

    upgrade = stack.run("04")
    assert sorted(stack.uuids()) == before  # not a row lost
    assert len(stack.query("DESCRIBE TABLE events")) == len(EVENTS_COLUMNS)
    assert upgrade["backfill_new_columns"][0][0] == len(before)
    got = typed_rows(stack)
    for _, events in old:
        for event in events:
            assert got[event["uuid"]] == {c: expected_value(c, event) for c in TYPED}
    assert stack.run("04")["backfill_new_columns"][0][0] == 0  # once: a rerun updates nothing

    new = members(seed=22, hours=1, day=21)
    assert run_copy(stack.settings, stack.upload(new)) == 0
    uuids = stack.uuids()
    assert sorted(uuids) == sorted(before + all_uuids(new)) and len(set(uuids)) == len(uuids)
    got = typed_rows(stack)
    for event in new[0][1]:
        assert got[event["uuid"]] == {c: expected_value(c, event) for c in TYPED}


def test_an_hourly_copy_reads_recent_day_folders_and_a_sweep_the_older_ones(
    stack, monkeypatch, today
):
    for worksheet in ("01", "03", "04"):
        stack.run(worksheet)
    loaded = members(seed=23, hours=1, day=20)
    assert run_copy(stack.settings, stack.upload(loaded)) == 0
    # A run whose COPY failed left two days unloaded: yesterday's (recent) and an older one.
    recent = members(seed=24, hours=1, day=21)
    older = members(seed=25, hours=1, day=12)
    stack.upload(recent)
    stack.upload(older)
    recorder = Recorder(monkeypatch)

    assert run_copy(stack.settings, []) == 0
    assert recorder.folders() == [
        "/123456/2026-11-19/",
        "/123456/2026-11-20/",
        "/123456/2026-11-21/",
    ]
    assert sorted(stack.uuids()) == sorted(all_uuids(loaded) + all_uuids(recent))

    assert run_copy(stack.settings, [], sweep_days=9) == 0
    assert recorder.folders()[3:] == [f"/123456/2026-11-{day}/" for day in range(12, 22)]
    assert sorted(stack.uuids()) == sorted(all_uuids(loaded + recent + older))


def event_file(day: datetime, events: list[dict]) -> tuple[str, list[dict]]:
    """One export file of `day`'s hour holding `events`, each uploaded in that hour."""
    moment = sample_events.ts(day.replace(minute=10))
    return sample_events.member_name(123456, day, 0), [
        {**e, "server_upload_time": moment} for e in events
    ]


@pytest.mark.parametrize("days_later, copies", [(1, 1), (4, 2)])
def test_the_merge_compares_the_batch_with_events_from_2_days_before_it_on(
    stack, days_later, copies
):
    """The bound of merge_events' target side, at work: a uuid exported again up to 2 days
    later is found; one whose first copy is older than that is not (05 documents the margin)."""
    for worksheet in ("01", "03", "04"):
        stack.run(worksheet)
    first = members(seed=26, hours=1, day=10)
    assert run_copy(stack.settings, stack.upload(first)) == 0
    # Loaded three days ago: out of the next run's batch (raw rows of the last day).
    stack.query("UPDATE raw_events SET loaded_at = DATEADD(day, -3, loaded_at)")
    again = first[0][1][0]
    fresh = members(seed=27, hours=1, day=10 + days_later)[0][1][:2]
    later = datetime(2026, 11, 10 + days_later, 5, tzinfo=UTC)
    assert run_copy(stack.settings, stack.upload([event_file(later, [again, *fresh])])) == 0
    uuids = stack.uuids()
    assert uuids.count(again["uuid"]) == copies
    assert len(uuids) == len(all_uuids(first)) + len(fresh) + copies - 1
