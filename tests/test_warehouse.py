"""`pipeline.warehouse` without a server: connection settings, error lines, the summary."""

from __future__ import annotations

import re
from datetime import date, datetime
from decimal import Decimal

import pytest
import snowflake.connector
from snowflake.connector.errors import DatabaseError, OperationalError, ProgrammingError

from pipeline import warehouse, worksheets
from pipeline.errors import PipelineError, UsageError
from pipeline.warehouse import CopyPlan, FileResult, connect_kwargs, copy_results, summary
from tests.conftest import make_settings

SECRET = "s3cr3t-Passw0rd"
BASE = {
    "SNOWFLAKE_ACCOUNT": "myorg-myaccount",
    "SNOWFLAKE_USER": "LOADER",
    "SNOWFLAKE_ROLE": "AMPLITUDE_LOADER",
    "SNOWFLAKE_WAREHOUSE": "AMPLITUDE_WH",
    "SNOWFLAKE_DATABASE": "AMPLITUDE",
    "SNOWFLAKE_SCHEMA": "RAW",
}


def test_password_auth_and_host_port_protocol_are_passed_through():
    kwargs = connect_kwargs(
        make_settings(
            **BASE,
            SNOWFLAKE_PASSWORD=SECRET,
            SNOWFLAKE_HOST="127.0.0.1",
            SNOWFLAKE_PORT="8085",
            SNOWFLAKE_PROTOCOL="http",
        )
    )
    assert kwargs["password"] == SECRET and "private_key_file" not in kwargs
    assert (kwargs["host"], kwargs["port"], kwargs["protocol"]) == ("127.0.0.1", 8085, "http")
    assert (kwargs["account"], kwargs["warehouse"], kwargs["schema"]) == (
        "myorg-myaccount",
        "AMPLITUDE_WH",
        "RAW",
    )


def test_key_pair_auth_wins_over_a_password(tmp_path):
    key = tmp_path / "rsa_key.p8"
    key.write_text("placeholder: only the path is passed on\n")
    kwargs = connect_kwargs(
        make_settings(
            **BASE,
            SNOWFLAKE_PASSWORD=SECRET,
            SNOWFLAKE_PRIVATE_KEY_FILE=str(key),
            SNOWFLAKE_PRIVATE_KEY_PASSPHRASE="pass",
        )
    )
    assert kwargs["private_key_file"] == str(key) and kwargs["private_key_file_pwd"] == "pass"
    assert "password" not in kwargs and "host" not in kwargs


@pytest.mark.parametrize(
    "extra, message",
    [
        ({"SNOWFLAKE_PRIVATE_KEY_FILE": "/nowhere/key.p8"}, "is not a file"),
        ({"SNOWFLAKE_PASSWORD": "x", "SNOWFLAKE_PORT": "http"}, "SNOWFLAKE_PORT is 'http'"),
        ({}, "neither SNOWFLAKE_PASSWORD nor SNOWFLAKE_PRIVATE_KEY_FILE is set"),
    ],
)
def test_bad_connection_settings_are_usage_errors(extra, message):
    with pytest.raises(UsageError, match=message):
        connect_kwargs(make_settings(**BASE, **extra))


@pytest.mark.parametrize(
    "error, kind, expected",
    [
        (
            DatabaseError(
                msg="Failed to connect to DB: myorg-myaccount.snowflakecomputing.com:443. "
                "Incorrect username or password was specified.",
                errno=250001,
            ),
            UsageError,
            "Snowflake refused the login of user LOADER: check SNOWFLAKE_USER and "
            "SNOWFLAKE_PASSWORD",
        ),
        (
            OperationalError(
                msg="Could not connect to Snowflake backend after 2 attempt(s).Aborting",
                errno=250001,
            ),
            PipelineError,
            "cannot log in to Snowflake account myorg-myaccount (Could not connect to Snowflake "
            "backend after 2 attempt(s).Aborting): check SNOWFLAKE_ACCOUNT",
        ),
        (
            DatabaseError(
                msg="Role 'AMPLITUDE_LOADER' specified in the connect string is not granted to "
                "this user. Contact your local system administrator.",
                errno=250001,
            ),
            UsageError,
            "Snowflake role AMPLITUDE_LOADER is missing or not granted to LOADER",
        ),
    ],
)
def test_login_failures_become_one_line_without_the_password(monkeypatch, error, kind, expected):
    def refuse(**kwargs):
        raise error

    monkeypatch.setattr(snowflake.connector, "connect", refuse)
    with pytest.raises(PipelineError) as failure:
        warehouse.connect(make_settings(**BASE, SNOWFLAKE_PASSWORD=SECRET))
    assert type(failure.value) is kind
    assert str(failure.value).startswith(expected)
    assert SECRET not in str(failure.value) and "\n" not in str(failure.value)


@pytest.mark.parametrize(
    "name, message, kind, expected",
    [
        (
            "use_warehouse",
            "SQL compilation error:\nObject does not exist, or operation cannot be performed.",
            UsageError,
            "warehouse AMPLITUDE_WH does not exist or the role may not use it: check "
            "SNOWFLAKE_WAREHOUSE, or run worksheet 01",
        ),
        (
            "use_schema",
            "SQL compilation error:\nSchema 'AMPLITUDE.RAW' does not exist or not authorized.",
            UsageError,
            "schema AMPLITUDE.RAW does not exist or the role may not use it: check "
            "SNOWFLAKE_DATABASE and SNOWFLAKE_SCHEMA, or run worksheet 01",
        ),
        (
            "copy_raw",
            "Failure using stage area. Cause: [Access Denied (Status Code: 403; Error Code: "
            "AccessDenied)]",
            PipelineError,
            "Snowflake cannot read the stage's bucket (Failure using stage area.",
        ),
        (
            "merge_events",
            "No active warehouse selected in the current session.",
            UsageError,
            "no usable warehouse",
        ),
        (
            "merge_events",
            "Something else.\nDetail",
            PipelineError,
            "Snowflake merge_events failed: ",
        ),
    ],
)
def test_statement_failures_name_what_to_fix(name, message, kind, expected):
    error = ProgrammingError(msg=message, errno=2003)
    explained = warehouse.explain_statement(error, name, make_settings(**BASE))
    assert type(explained) is kind
    assert str(explained).startswith(expected)
    assert "\n" not in str(explained)


def test_copy_results_read_snowflakes_columns_and_its_zero_files_answer():
    columns = ["file", "status", "rows_parsed", "rows_loaded", "error_limit", "errors_seen"]
    columns += [
        "first_error",
        "first_error_line",
        "first_error_character",
        "first_error_column_name",
    ]
    rows = [
        ("s3://b/amplitude/1/2026-11-20/1_2026-11-20_5#0.json", "LOADED", 3, 3, 1, 0) + (None,) * 4,
        ("s3://b/amplitude/1/2026-11-20/1_2026-11-20_6#0.json", "LOAD_FAILED", 2, 0, 1, 1)
        + ("Error parsing JSON: incomplete object value", 2, 9, None),
    ]
    got = copy_results(columns, rows)
    assert [(f.status, f.rows_loaded, f.failed) for f in got] == [
        ("LOADED", 3, False),
        ("LOAD_FAILED", 0, True),
    ]
    assert got[1].first_error_line == 2
    assert copy_results(["status"], [("Copy executed with 0 files processed.",)]) == []


def test_summary_prints_each_file_totals_and_uploads_copy_did_not_see():
    files = [
        FileResult("s3://b/amplitude/1/d/1_d_5#0.json", "LOADED", 3),
        FileResult("s3://b/amplitude/1/d/1_d_6#0.json", "LOAD_FAILED", 0, "bad JSON", 2),
    ]
    uploaded = ["amplitude/1/d/1_d_5#0.json", "amplitude/1/d/1_d_7#0.json"]
    assert summary(files, 3, uploaded) == [
        "loaded         3 rows  s3://b/amplitude/1/d/1_d_5#0.json",
        "FAILED  s3://b/amplitude/1/d/1_d_6#0.json: bad JSON (line 2)",
        "copy: 1 files loaded (3 rows), 1 failed",
        "note: 1 of the 2 files uploaded this run are not in COPY's result: loaded before with "
        "the same content, or outside the stage's URL (check worksheet 03's URL against "
        "S3_BUCKET and S3_PREFIX)",
        "merge: 3 new events in events",
    ]


LOAD_VALUES = {"role": "R", "warehouse": "W", "database": "D", "schema": "S"}
CONFLICT = "fakesnow: TransactionContext Error: Conflict on update!"


class FakeCursor:
    """Records what runs (by `-- name:`, or the SQL itself) and fails as told."""

    def __init__(self, failures: dict[str, list[BaseException]], newest: list[tuple] = ()):
        self.failures = failures
        self.newest = list(newest)  # newest_day_per_project's rows
        self.ran: list[str] = []
        self.sql: list[str] = []
        self.description: list[tuple[str]] = []

    def execute(self, sql: str) -> None:
        name = worksheets.statement_name(sql) or sql
        self.ran.append(name)
        self.sql.append(sql)
        if self.failures.get(name):
            raise self.failures[name].pop(0)
        column = "number of rows inserted" if name == "merge_events" else "status"
        self.description = [(column,)]

    def fetchall(self) -> list[tuple]:
        if self.ran[-1] == "newest_day_per_project":
            return self.newest
        return [("Copy executed with 0 files processed.",)]

    def fetchone(self) -> tuple:
        return (3,)


TODAY = date(2026, 11, 21)
UPLOADED = ["amplitude/123456/2026-11-21/123456_2026-11-21_3#0.json"]


def run_05(cursor: FakeCursor, sweep_days: int | None = None) -> warehouse.Outcome:
    text = warehouse.LOAD_WORKSHEET.read_text()
    statements = worksheets.split(worksheets.render(text, LOAD_VALUES, leave={"copy_path"}))
    plan = CopyPlan.from_keys("amplitude", UPLOADED, TODAY, sweep_days)
    return warehouse.run_statements(cursor, statements, make_settings(**BASE), plan)


TRANSACTION = [
    "begin_merge",
    "take_merge_lock",
    "set_batch_start",
    "set_merge_floor",
    "merge_events",
    "commit_merge",
]


def test_the_merge_runs_between_begin_and_commit_after_taking_the_lock():
    cursor = FakeCursor({})
    outcome = run_05(cursor)
    assert cursor.ran[-8:] == ["create_merge_lock", "seed_merge_lock", *TRANSACTION]
    assert cursor.ran.index("copy_raw") < cursor.ran.index("begin_merge")
    assert (outcome.files, outcome.merged) == ([], 3)


def test_copy_raw_runs_once_per_folder_picked_from_the_newest_days_read_before_it():
    cursor = FakeCursor({}, newest=[(123456, date(2026, 11, 20)), (654321, date(2026, 11, 21))])
    outcome = run_05(cursor)
    assert cursor.ran.index("newest_day_per_project") < cursor.ran.index("copy_raw")
    assert outcome.paths == [
        "/123456/2026-11-19/",
        "/123456/2026-11-20/",
        "/123456/2026-11-21/",
        "/654321/2026-11-20/",
        "/654321/2026-11-21/",
    ]
    copies = [sql for name, sql in zip(cursor.ran, cursor.sql, strict=True) if name == "copy_raw"]
    code = ["\n".join(x for x in s.splitlines() if not x.startswith("--")) for s in copies]
    assert [re.search(r"@amplitude_stage(\S*)\)", sql)[1] for sql in code] == outcome.paths
    assert all("<%" not in sql for sql in cursor.sql)


def plan(uploaded=(), sweep_days=None, today=TODAY) -> CopyPlan:
    return CopyPlan.from_keys("amplitude", uploaded, today, sweep_days)


def test_an_hourly_run_copies_each_projects_days_from_its_newest_loaded_day_minus_one():
    newest = {"123456": date(2026, 11, 21)}
    assert plan(UPLOADED).paths(newest) == ["/123456/2026-11-20/", "/123456/2026-11-21/"]
    # cron was down four days: the days since its newest loaded day, nothing older
    assert plan().paths({"123456": date(2026, 11, 17)}) == [
        f"/123456/2026-11-{day}/" for day in range(16, 22)
    ]


def test_while_events_is_empty_the_whole_stage_is_copied():
    """A first load, or files that load.py uploaded without --copy before."""
    assert plan().paths({}) == plan(UPLOADED, sweep_days=3).paths({}) == ["/"]


def test_an_old_day_uploaded_now_is_copied_and_an_unknown_project_whole():
    old = ["amplitude/123456/2026-10-02/123456_2026-10-02_7#1.json.gz", *UPLOADED]
    new = ["amplitude/777/2026-11-21/777_2026-11-21_3#0.json", "elsewhere/x.json"]
    paths = plan([*old, *new]).paths({"123456": date(2026, 11, 21)})
    assert paths == ["/777/", "/123456/2026-10-02/", "/123456/2026-11-20/", "/123456/2026-11-21/"]


@pytest.mark.parametrize(
    "sweep_days, expected",
    [(0, ["/123456/2026-11-20/", "/123456/2026-11-21/"]), (3, ["/123456/2026-11-18/"]), (62, [])],
)
def test_a_sweep_adds_the_last_n_days_and_a_long_one_the_projects_whole_folder(
    sweep_days, expected
):
    paths = plan(sweep_days=sweep_days).paths({"123456": date(2026, 11, 21)})
    if expected:
        assert paths[0] == expected[0] and paths[-1] == "/123456/2026-11-21/"
        assert len(paths) == max(sweep_days, 1) + 1
    else:
        assert paths == ["/123456/"]  # more than MAX_DAY_FOLDERS: one COPY of the project
    assert warehouse.MAX_DAY_FOLDERS == 62


def test_newest_days_reads_project_ids_and_days_and_skips_nulls():
    rows = [(Decimal(123456), date(2026, 11, 20)), (None, date(2026, 11, 20)), (7, None)]
    rows.append((654321, datetime(2026, 11, 21, 0, 0)))
    assert warehouse.newest_days(rows) == {
        "123456": date(2026, 11, 20),
        "654321": date(2026, 11, 21),
    }


def test_a_conflict_rolls_back_and_runs_the_transaction_again(monkeypatch, caplog):
    monkeypatch.setattr(warehouse, "RETRY_DELAY", 0)
    cursor = FakeCursor({"take_merge_lock": [ProgrammingError(msg=CONFLICT, errno=100000)]})
    assert run_05(cursor).merged == 3
    after_copy = cursor.ran[cursor.ran.index("begin_merge") :]
    assert after_copy == ["begin_merge", "take_merge_lock", "ROLLBACK", *TRANSACTION]
    assert "take_merge_lock: fakesnow: TransactionContext Error: Conflict on update!" in caplog.text
    assert "trying the transaction again (2 of 5)" in caplog.text


def test_a_failure_inside_the_transaction_rolls_back_then_reports_one_line():
    cursor = FakeCursor(
        {"merge_events": [ProgrammingError(msg="Numeric value 'x' is not recognized\nMore")]}
    )
    with pytest.raises(PipelineError) as failure:
        run_05(cursor)
    assert str(failure.value) == (
        "Snowflake merge_events failed: Numeric value 'x' is not recognized More"
    )
    assert cursor.ran[-4:] == ["set_batch_start", "set_merge_floor", "merge_events", "ROLLBACK"]


def test_a_dropped_connection_before_commit_rolls_back_and_is_not_retried():
    dropped = OperationalError(msg="Could not connect to Snowflake backend", errno=250001)
    cursor = FakeCursor({"commit_merge": [dropped], "ROLLBACK": [dropped]})
    with pytest.raises(PipelineError, match="Snowflake commit_merge failed: Could not connect"):
        run_05(cursor)
    assert cursor.ran[-2:] == ["commit_merge", "ROLLBACK"]  # the failed ROLLBACK is not fatal
    assert cursor.ran.count("begin_merge") == 1


def test_an_interrupt_inside_the_transaction_rolls_back_first():
    cursor = FakeCursor({"merge_events": [KeyboardInterrupt()]})
    with pytest.raises(KeyboardInterrupt):
        run_05(cursor)
    assert cursor.ran[-2:] == ["merge_events", "ROLLBACK"]


def test_a_lock_still_held_after_every_attempt_names_how_to_find_it(monkeypatch):
    monkeypatch.setattr(warehouse, "RETRY_DELAY", 0)
    conflicts = [ProgrammingError(msg=CONFLICT) for _ in range(warehouse.MERGE_ATTEMPTS)]
    cursor = FakeCursor({"take_merge_lock": conflicts})
    with pytest.raises(PipelineError) as failure:
        run_05(cursor)
    assert cursor.ran.count("begin_merge") == cursor.ran.count("ROLLBACK") == 5
    assert "merge_events" not in cursor.ran
    assert str(failure.value).startswith("Snowflake take_merge_lock: ")
    assert "SHOW LOCKS" in str(failure.value)


@pytest.mark.parametrize(
    "message, conflict",
    [
        (CONFLICT, True),
        ("Transaction was aborted: deadlock detected", True),
        ("Object 'MERGE_LOCK' does not exist or not authorized.", False),
        ("Statement reached its statement or warehouse timeout", False),
    ],
)
def test_only_conflicts_and_deadlocks_are_retried(message, conflict):
    assert warehouse.is_conflict(ProgrammingError(msg=message)) is conflict
