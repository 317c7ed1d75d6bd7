"""`make demo`: the whole pipeline on a local stack, with no accounts and no network.

- Amplitude: the project's own export stand-in (local_stack.amplitude_server), twice: two
  projects (one "EU", one "US", each with its own key pair, as AMPLITUDE_PROJECTS lists them),
  serving generated events with several shards an hour and an empty hour.
- S3 and KMS: moto's server, set up by `setup_aws.py apply` as for a real account (less the
  bucket policy, whose conditions moto cannot evaluate).
- Snowflake: fakesnow's server (local_stack.snowflake_server), running the snowflake/
  worksheets 01-04.

Then it runs the real `extract.py` and `load.py --copy` as subprocesses, twice, checks that
the counts agree and prints them. Every server runs in this process and stops with it.
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from local_stack.amplitude_server import ExportService, running
from local_stack.snowflake_server import serve
from pipeline import warehouse, worksheets
from pipeline.extraction import DEFAULT_LOOKBACK_HOURS
from pipeline.hours import default_end, format_hour
from pipeline.layout import scan_local
from pipeline.s3 import client as s3_client
from pipeline.settings import Settings

REPO = Path(__file__).resolve().parent.parent
BUCKET = "demo-amplitude-events"
PREFIX = "amplitude"
KMS_ALIAS = "alias/amplitude-export"
AWS_KEYS = ("demo-access-key", "demo-secret-key")  # moto accepts any
SNOWFLAKE_VALUES = {
    "database": "AMPLITUDE",
    "schema": "RAW",
    "warehouse": "AMPLITUDE_WH",
    "role": "AMPLITUDE_LOADER",
    "user": "fake",
    "s3_bucket": BUCKET,
    "s3_prefix": PREFIX,
    "aws_role_arn": "arn:aws:iam::123456789012:role/amplitude-snowflake",
}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextmanager
def moto_server() -> Iterator[str]:
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()


@dataclass
class Counts:
    served: int
    local: int
    objects: int
    encrypted: int
    rows: int
    distinct_uuids: int


# The two projects the demo exports: name → (project id, region label).
PROJECTS = {"eu_app": (123456, "eu"), "us_app": (654321, "us")}


def step(env: dict[str, str], *argv: str, show: int = 12) -> str:
    """Run one of the project's commands as a subprocess; stop the demo if it fails."""
    shown = " ".join(argv)
    print(f"\n$ python {shown}", flush=True)
    result = subprocess.run(
        [sys.executable, *argv], cwd=REPO, env=env, capture_output=True, text=True, timeout=300
    )
    lines = (result.stdout + result.stderr).rstrip().splitlines()
    if result.returncode != 0:
        show = len(lines)  # a failure shows everything
    if len(lines) > show:
        head = show // 2
        lines = [
            *lines[:head],
            f"... ({len(lines) - show} lines)",
            *lines[len(lines) - show + head :],
        ]
    if show:
        print("\n".join(f"  {line}" for line in lines))
    if result.returncode != 0:
        raise SystemExit(f"error: `python {shown}` exited {result.returncode}")
    return result.stdout


def run_worksheets(conn, names: list[str]) -> None:
    cursor = conn.cursor()
    for name in names:
        path = next(worksheets.WORKSHEET_DIR.glob(f"{name}_*.sql"))
        for statement in worksheets.load(path, SNOWFLAKE_VALUES):
            cursor.execute(statement.sql)


def count_events_local(data_dir: Path, project: int) -> int:
    total = 0
    for f, path in scan_local(data_dir):
        if f.project == str(project):
            with open(path, "rb") as src:
                total += sum(1 for _ in src)
    return total


def counts(data_dir: Path, s3, conn, served: dict[int, int]) -> dict[int, Counts]:
    """Per project id: events served, in json_data/, objects, rows and uuids in events."""
    result = {}
    for project, events in served.items():
        keys = [
            obj["Key"]
            for page in s3.get_paginator("list_objects_v2").paginate(
                Bucket=BUCKET, Prefix=f"{PREFIX}/{project}/"
            )
            for obj in page.get("Contents", [])
        ]
        encrypted = sum(
            1
            for key in keys
            if s3.head_object(Bucket=BUCKET, Key=key).get("ServerSideEncryption") == "aws:kms"
        )
        rows, distinct = (
            conn.cursor()
            .execute(f"SELECT COUNT(*), COUNT(DISTINCT uuid) FROM events WHERE app = {project}")
            .fetchone()
        )
        local = count_events_local(data_dir, project)
        result[project] = Counts(events, local, len(keys), encrypted, rows, distinct)
    return result


def total(per_project: dict[int, Counts]) -> Counts:
    fields = Counts.__dataclass_fields__
    return Counts(*(sum(getattr(c, f) for c in per_project.values()) for f in fields))


@dataclass
class DemoResult:
    first: dict[int, Counts]  # per project id
    second: dict[int, Counts]
    second_requests: dict[int, list[tuple[str, str]]]
    files: dict[int, int]
    all_rows: int = 0  # rows in events, every project
    all_uuids: int = 0
    status: str = ""  # status.py's calendar of what was loaded

    @property
    def ok(self) -> bool:
        per_project = all(
            f.served == f.local == f.rows == f.distinct_uuids > 0
            and f.objects == f.encrypted == self.files[pid]
            and self.second[pid] == f
            and len(self.second_requests[pid]) == 1
            for pid, f in self.first.items()
        )
        everything = total(self.first)
        return per_project and self.all_rows == self.all_uuids == everything.served


def run_demo(events_per_hour: int = 20, shards: int = 3) -> DemoResult:
    """Start the stack, run the pipeline twice, count; every server stops on return."""
    for noisy in ("werkzeug", "fakesnow.server", "uvicorn.error", "sqlglot"):
        logging.getLogger(noisy).setLevel(logging.ERROR)  # request logs of the stand-ins
    warnings.filterwarnings("ignore", "Arrow output on a DB-API result", UserWarning)  # fakesnow
    now = datetime.now(UTC)
    last = default_end(now)
    first = last.replace(hour=0) - timedelta(days=1)  # where `extract.py --days 1` starts
    empty = first + timedelta(hours=5)
    work = Path(tempfile.mkdtemp(prefix="amplitude-demo-"))
    data_dir = work / "json_data"
    with ExitStack() as stack:
        stack.callback(shutil.rmtree, work, ignore_errors=True)
        print("starting the local stack: two Amplitude stand-ins, moto (S3, KMS, IAM), fakesnow")
        s3_endpoint = stack.enter_context(moto_server())
        services: dict[int, ExportService] = {}
        amplitude_env: dict[str, str] = {"AMPLITUDE_PROJECTS": ",".join(PROJECTS)}
        for n, (name, (project, region)) in enumerate(PROJECTS.items()):
            service = ExportService(
                api_key=f"demo-{name}-api-key",
                secret_key=f"demo-{name}-secret-key",
                project_id=project,
                first=first,
                last=now,
                events_per_hour=events_per_hour + 5 * n,  # the two differ, visibly
                shards=shards,
                empty_hours={empty},
                seed=42 + n,
            )
            services[project] = service
            upper = name.upper()
            amplitude_env |= {
                f"AMPLITUDE_{upper}_API_KEY": service.api_key,
                f"AMPLITUDE_{upper}_SECRET_KEY": service.secret_key,
                f"AMPLITUDE_{upper}_REGION": region,
                # the stand-in plays the region's host
                f"AMPLITUDE_{upper}_EXPORT_URL": stack.enter_context(running(service)),
            }
        snowflake_server = stack.enter_context(serve(s3_endpoint, credentials=AWS_KEYS))

        env = {
            "PATH": os.environ.get("PATH", ""),
            "HOME": str(work),
            "LOG_LEVEL": "WARNING",
            **amplitude_env,
            "JSON_DATA_DIR": str(data_dir),
            "S3_BUCKET": BUCKET,
            "S3_PREFIX": PREFIX,
            "KMS_KEY_ID": KMS_ALIAS,
            "AWS_ACCESS_KEY_ID": AWS_KEYS[0],
            "AWS_SECRET_ACCESS_KEY": AWS_KEYS[1],
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_ENDPOINT_URL": s3_endpoint,
            "AWS_CONFIG_FILE": str(work / "no-aws-config"),
            "AWS_SHARED_CREDENTIALS_FILE": str(work / "no-aws-credentials"),
            "SNOWFLAKE_ROLE": SNOWFLAKE_VALUES["role"],
            "SNOWFLAKE_WAREHOUSE": SNOWFLAKE_VALUES["warehouse"],
            "SNOWFLAKE_DATABASE": SNOWFLAKE_VALUES["database"],
            "SNOWFLAKE_SCHEMA": SNOWFLAKE_VALUES["schema"],
            **snowflake_server.settings(),
        }

        step(env, "setup_aws.py", "apply", "--skip-bucket-policy", show=0)
        print("  KMS key, bucket (versioned, SSE-KMS default, public access blocked), IAM: done")
        settings = Settings(values=env)
        conn = warehouse.connect(settings)  # as load.py --copy connects
        stack.callback(conn.close)
        run_worksheets(conn, ["01", "03", "04"])
        skipped = ", ".join(dict.fromkeys(snowflake_server.report.skipped))
        print(f"\nSnowflake worksheets 01, 03, 04 run on fakesnow (skipped there: {skipped})")
        conn.cursor().execute(
            f"USE SCHEMA {SNOWFLAKE_VALUES['database']}.{SNOWFLAKE_VALUES['schema']}"
        )
        s3 = s3_client(settings)  # as load.py reaches S3

        # --end pinned to the newest finished hour as computed once, so that a run crossing the
        # top of an hour still compares like with like; --start is left to the default.
        end = format_hour(last)
        step(env, "extract.py", "--days", "1", "--end", end)
        served_first = {pid: svc.events_served for pid, svc in services.items()}
        step(env, "load.py", "--copy")
        first_run = counts(data_dir, s3, conn, served_first)
        before = {pid: len(svc.requests) for pid, svc in services.items()}

        print("\nsecond run (incremental refresh):")
        step(env, "extract.py", "--end", end)
        again = {pid: svc.requests[before[pid] :] for pid, svc in services.items()}
        step(env, "load.py", "--copy")
        second_run = counts(data_dir, s3, conn, served_first)
        files = {pid: 0 for pid in services}
        for f, _ in scan_local(data_dir):
            files[int(f.project)] += 1
        all_rows, all_uuids = (
            conn.cursor().execute("SELECT COUNT(*), COUNT(DISTINCT uuid) FROM events").fetchone()
        )
        print_typed_event(conn)
        calendar = step(env, "status.py", "--days", "1", "--end", end, show=0)  # exit 0 or stop
        print("  (its calendar is shown at the end)")
        status = f"\nstatus.py --days 1 --end {end}, on what the demo loaded:\n{calendar}"
        return DemoResult(first_run, second_run, again, files, all_rows, all_uuids, status)


TYPED_SHOWN = [  # (column of events, its Snowflake type): a few of one event's typed columns
    ("event_type", "VARCHAR"),
    ("server_upload_time", "TIMESTAMP_NTZ"),
    ("client_upload_time", "TIMESTAMP_NTZ"),
    ("app", "NUMBER"),
    ("session_id", "NUMBER"),
    ("is_attribution_event", "BOOLEAN"),
    ("device_id", "VARCHAR"),
    ("language", "VARCHAR"),
    ("event_properties", "VARIANT"),
]


def print_typed_event(conn) -> None:
    """One event of events, a few of its typed columns (worksheet 04 types every field)."""
    columns = ", ".join(name for name, _ in TYPED_SHOWN)
    row = (
        conn.cursor()
        .execute(f"SELECT uuid, {columns} FROM events ORDER BY server_upload_time, uuid LIMIT 1")
        .fetchone()
    )
    print(f"\none event in events ({row[0]}), a few of its typed columns:")
    for (name, kind), value in zip(TYPED_SHOWN, row[1:], strict=True):
        shown = " ".join(str(value).split())  # a VARIANT arrives as indented JSON
        print(f"  {name:22} {kind:14} {shown}")


def main() -> int:
    started = time.monotonic()
    result = run_demo()
    print_table(result, started)
    print(result.status, end="")
    if not result.ok:
        print("error: the counts disagree", file=sys.stderr)
        return 1
    return 0


def print_table(result: DemoResult, started: float) -> None:
    names = {pid: name for name, (pid, _) in PROJECTS.items()}
    columns = [(pid, run) for pid in result.first for run in ("first", "second")]
    print()
    print(f"{'':30}" + "".join(f"{names[pid]:>12}" for pid, _ in columns))
    print(f"{'':30}" + "".join(f"{run + ' run':>12}" for _, run in columns))
    for label, field_ in [
        ("events served by Amplitude", "served"),
        ("events in json_data/", "local"),
        ("objects in S3", "objects"),
        ("  of which SSE-KMS encrypted", "encrypted"),
        ("rows in events", "rows"),
        ("distinct uuids in events", "distinct_uuids"),
    ]:
        cells = [
            getattr((result.first if run == "first" else result.second)[pid], field_)
            for pid, run in columns
        ]
        print(f"{label:30}" + "".join(f"{c:>12}" for c in cells))
    print(
        f"\nevents, both projects: {result.all_rows} rows, {result.all_uuids} distinct uuids "
        "(one row per uuid across projects; the app column tells them apart)"
    )
    for pid, asked in result.second_requests.items():
        windows = ", ".join(f"{s}..{e}" for s, e in asked) or "nothing"
        added_objects = result.second[pid].objects - result.first[pid].objects
        added_rows = result.second[pid].rows - result.first[pid].rows
        print(
            f"the second run asked Amplitude for {names[pid]} only {windows} (its own newest "
            f"hour held and the {DEFAULT_LOOKBACK_HOURS}-hour lookback) and added "
            f"{added_objects} objects and {added_rows} rows."
        )
    print(f"demo finished in {time.monotonic() - started:.1f} s; every server stopped.")


if __name__ == "__main__":
    sys.exit(main())
