"""Issue 13: status.py with Snowflake, on moto's S3 server and the fakesnow stand-in.

One history built by the real extract.py and load.py --copy, then damaged in Snowflake the
ways that happen: a file COPY skipped, a uuid twice in events; with a uuid Amplitude put in
two files of one hour, and hours fetched before they had finished, re-uploaded later with
more events (late data: COPY loads such a file again, so raw_events holds both versions).
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import boto3
import pytest
import time_machine

import extract
import load
import status
from local_stack.amplitude_server import ExportService, running
from local_stack.snowflake_server import serve
from pipeline.cli import run
from tests.test_snowflake_load import CREDENTIALS, new_stack
from tests.test_status import Page, mismatches, row_of

PID = 123456
DAY = datetime(2026, 11, 28, tzinfo=UTC)


def at(hour: int, minute: int = 15) -> datetime:
    return DAY + timedelta(hours=hour, minutes=minute)


def key(hour: int, shard: int) -> str:
    return f"amplitude/{PID}/2026-11-28/{PID}_2026-11-28_{hour}#{shard}.json"


@pytest.fixture(scope="module")
def snowflake_server(moto_server):
    with serve(moto_server, credentials=CREDENTIALS) as server:
        yield server


@pytest.fixture
def service(monkeypatch) -> ExportService:
    """Data from 02, two shards an hour, 04 empty, late data (09#0 and 09#1 grow after 10:15);
    06#1 also holds a uuid of 06#0."""
    svc = ExportService(
        project_id=PID, first=at(2, 0), last=at(14), events_per_hour=8, shards=2, late_data=True
    )
    svc.empty_hours = {at(4, 0)}
    real = svc.members

    def members(start, end):
        found = dict(real(start, end))
        first, second = (f"{PID}/{PID}_2026-11-28_6#{n}.json.gz" for n in (0, 1))
        if first in found and second in found:
            found[second] = [*found[second], found[first][0]]
        return list(found.items())

    monkeypatch.setattr(svc, "members", members)
    return svc


@pytest.fixture
def stack(moto_server, snowflake_server, service, monkeypatch, tmp_path) -> Iterator:
    stack = new_stack(moto_server, snowflake_server.settings())
    for worksheet in ("01", "03", "04"):
        stack.run(worksheet)
    kms = boto3.client(
        "kms",
        endpoint_url=moto_server,
        region_name="us-east-1",
        aws_access_key_id=CREDENTIALS[0],
        aws_secret_access_key=CREDENTIALS[1],
    )
    with running(service) as url:
        for var, value in {
            **stack.settings.values,
            "AWS_ENDPOINT_URL": moto_server,
            "AWS_ACCESS_KEY_ID": CREDENTIALS[0],
            "AWS_SECRET_ACCESS_KEY": CREDENTIALS[1],
            "KMS_KEY_ID": kms.create_key()["KeyMetadata"]["KeyId"],
            "JSON_DATA_DIR": str(tmp_path / "json_data"),
            "AMPLITUDE_API_KEY": service.api_key,
            "AMPLITUDE_SECRET_KEY": service.secret_key,
            "AMPLITUDE_EXPORT_URL": url,
        }.items():
            monkeypatch.setenv(var, value)
        yield stack


def run_at(moment: datetime, command, *argv: str) -> int:
    with time_machine.travel(moment, tick=False):
        return run(command, list(argv))


def test_reconciliation_against_snowflake(stack, capsys, tmp_path):
    assert run_at(at(10), extract.main, "--days", "0", "--end", "20261128T09") == 0
    assert run_at(at(10), load.main, "--copy") == 0
    # COPY skipped 05#0 (its rows are not in raw_events, nor in events)
    stack.query(f"DELETE FROM events WHERE source_file = '{key(5, 0)}'")
    stack.query(f"DELETE FROM raw_events WHERE source_file = '{key(5, 0)}'")
    # a uuid twice in events, as a broken MERGE would leave it
    stack.query(
        f"INSERT INTO events SELECT * FROM events WHERE source_file = '{key(3, 0)}' LIMIT 1"
    )
    # the object of 07#1 is gone from S3 (its rows stay loaded)
    stack.s3.delete_object(Bucket=stack.bucket, Key=key(7, 1))

    page = tmp_path / "status.html"
    capsys.readouterr()
    assert run_at(at(10), status.main, "--days", "0", "--html", str(page)) == 1
    out, err = capsys.readouterr()
    lines = out.splitlines()
    assert err.splitlines()[-1] == (
        "error: 3 mismatches in 3 finished hours (listed above, each with the command that "
        "repairs it): not everything is there yet"
    )
    assert "Snowflake checked" in lines[0]
    # 06 holds one uuid in both its files: rows in events = distinct uuids, so it reconciles
    assert row_of(lines, "2026-11-28") == "--#~-~#~..."
    assert mismatches(lines) == [
        f"{PID} 20261128T03  (hour): a uuid more than once in events (distinct uuids 8, "
        "rows in events 9) → worksheet 06 duplicate_uuids",
        f"{PID} 20261128T05  {PID}_2026-11-28_5#0.json: not loaded into raw_events (extract 4, "
        "loaded 0) → python load.py --copy; if it stays unloaded: COPY ... FILES = "
        f"('{PID}/2026-11-28/{PID}_2026-11-28_5#0.json') FORCE = TRUE "
        "(docs/snowflake.md#files-copy-skips-after-64-days)",
        f"{PID} 20261128T07  {PID}_2026-11-28_7#1.json: not in S3 (extract 4, S3 none) → "
        "python load.py --copy",
    ]
    cells = Page.read(page).cells
    assert [cells[f"20261128T{n:02d}"] for n in (0, 2, 3, 5, 6, 7, 8)] == [
        "no data",
        "complete",
        "partial",
        "partial",
        "complete",
        "partial",
        "not finished yet",
    ]

    # 08 and 09 were fetched before they had finished; cron fetches them again with more
    # events and load.py --copy loads the grown files again: they reconcile all the same.
    # That load.py also uploads 07#1 again (its local file is still there).
    assert run_at(at(12), extract.main) == 0
    assert run_at(at(12), load.main, "--copy") == 0
    loaded_twice = stack.query(
        "SELECT source_file FROM raw_events GROUP BY source_file "
        "HAVING COUNT(*) > COUNT(DISTINCT raw:uuid::VARCHAR)"
    )
    capsys.readouterr()
    assert run_at(at(12), status.main, "--days", "0") == 1
    lines = capsys.readouterr().out.splitlines()
    assert row_of(lines, "2026-11-28") == "--#~-~####..."
    # both versions of a grown file are in raw_events
    assert sorted(k for (k,) in loaded_twice) == [key(9, 0), key(9, 1)]
    assert [m.split("  ")[0] for m in mismatches(lines)] == [
        f"{PID} 20261128T03",
        f"{PID} 20261128T05",
    ]


def test_tables_not_there_yet(moto_server, snowflake_server, monkeypatch, tmp_path, capsys):
    """Snowflake's part is one `error:` line naming the worksheets, as load.py --copy's is."""
    stack = new_stack(moto_server, snowflake_server.settings())
    stack.run("01")  # the database and schema, not the tables
    for var, value in {
        **stack.settings.values,
        "AWS_ENDPOINT_URL": moto_server,
        "AWS_ACCESS_KEY_ID": CREDENTIALS[0],
        "AWS_SECRET_ACCESS_KEY": CREDENTIALS[1],
        "JSON_DATA_DIR": str(tmp_path / "json_data"),
        "AMPLITUDE_PROJECT_ID": str(PID),
    }.items():
        monkeypatch.setenv(var, value)
    assert run_at(at(10), status.main) == 1
    # (the in-process stand-ins log through status.py's handler too: read its error lines)
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    # Snowflake says "Object 'RAW_EVENTS' does not exist or not authorized", which
    # warehouse.explain_statement turns into "run worksheets 03 and 04"; fakesnow words it
    # its own way ("Table with name RAW_EVENTS does not exist")
    assert len(errors) == 1
    assert errors[0].startswith("error: Snowflake status_raw_events") and "RAW_EVENTS" in errors[0]
