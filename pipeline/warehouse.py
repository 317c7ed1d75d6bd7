"""`load.py --copy`: run worksheet 05 (COPY into raw_events, MERGE into events) from Python.

The SQL lives only in `snowflake/05_copy_and_dedup.sql`; this module renders its placeholders
from the SNOWFLAKE_* settings, runs it statement by statement (copy_raw once per stage folder of
`CopyPlan`, its BEGIN ... COMMIT part as one transaction, rolled back before any error is
reported) and reports COPY's result.
"""

from __future__ import annotations

import logging
import re
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import snowflake.connector
from snowflake.connector.errors import Error as SnowflakeError

from pipeline import worksheets
from pipeline.errors import PipelineError, UsageError
from pipeline.layout import parse_key
from pipeline.settings import Settings
from pipeline.worksheets import Statement

log = logging.getLogger(__name__)

NEEDED_FOR = "load.py --copy"
LOAD_WORKSHEET = worksheets.WORKSHEET_DIR / "05_copy_and_dedup.sql"
FAILED_STATUSES = {"LOAD_FAILED", "PARTIALLY_LOADED"}
MERGE_ATTEMPTS = 5  # runs of the BEGIN ... COMMIT part when another load's transaction conflicts
RETRY_DELAY = 0.2  # seconds before the next run, times the number of runs so far
_CONFLICT = re.compile(r"conflict|deadlock", re.IGNORECASE)
COPY_PATH = "copy_path"  # 05's placeholder for the stage folder copy_raw loads, one per COPY
MAX_DAY_FOLDERS = 62  # a project with more day folders to COPY gets one COPY of its whole folder


@dataclass(frozen=True)
class FileResult:
    """One line of COPY's result."""

    file: str
    status: str
    rows_loaded: int
    first_error: str | None = None
    first_error_line: int | None = None

    @property
    def failed(self) -> bool:
        return self.status.upper() in FAILED_STATUSES


def connect_kwargs(settings: Settings) -> dict[str, Any]:
    """Connector arguments from the SNOWFLAKE_* settings (password or key pair)."""
    kwargs: dict[str, Any] = {
        name.lower(): settings.require(f"SNOWFLAKE_{name}", NEEDED_FOR)
        for name in ("ACCOUNT", "USER", "ROLE", "WAREHOUSE", "DATABASE", "SCHEMA")
    }
    key_file = settings.get("SNOWFLAKE_PRIVATE_KEY_FILE")
    if key_file:
        if not Path(key_file).expanduser().is_file():
            raise UsageError(
                f"SNOWFLAKE_PRIVATE_KEY_FILE {key_file} is not a file: "
                "set it to the path of the PEM private key"
            )
        kwargs["private_key_file"] = str(Path(key_file).expanduser())
        if passphrase := settings.get("SNOWFLAKE_PRIVATE_KEY_PASSPHRASE"):
            kwargs["private_key_file_pwd"] = passphrase
    elif password := settings.get("SNOWFLAKE_PASSWORD"):
        kwargs["password"] = password
    else:
        raise UsageError(
            "neither SNOWFLAKE_PASSWORD nor SNOWFLAKE_PRIVATE_KEY_FILE is set: add one to .env "
            f"(see .env.example); {NEEDED_FOR} needs it"
        )
    for name in ("HOST", "PORT", "PROTOCOL"):
        if value := settings.get(f"SNOWFLAKE_{name}"):
            kwargs[name.lower()] = value
    if "port" in kwargs:
        if not kwargs["port"].isdigit():
            raise UsageError(f"SNOWFLAKE_PORT is {kwargs['port']!r}: set it to a port number")
        kwargs["port"] = int(kwargs["port"])
    kwargs["login_timeout"] = 60
    kwargs["session_parameters"] = {"QUERY_TAG": "amplitude-pipeline load.py --copy"}
    return kwargs


def connect(settings: Settings) -> snowflake.connector.SnowflakeConnection:
    """Open a connection; a refused login or an unknown account becomes one clear line."""
    return _open(connect_kwargs(settings))


def _open(kwargs: dict[str, Any]) -> snowflake.connector.SnowflakeConnection:
    log.debug("connecting to Snowflake account %s as %s", kwargs["account"], kwargs["user"])
    try:
        return snowflake.connector.connect(**kwargs)
    except SnowflakeError as exc:
        raise explain_login(exc, kwargs) from None


def run_copy(
    settings: Settings, uploaded_keys: Sequence[str], sweep_days: int | None = None
) -> int:
    """COPY the stage's new files into raw_events, MERGE into events, print what happened.

    copy_raw reads only the folders `CopyPlan` picks: those of `uploaded_keys`, each project's
    recent days, and with `sweep_days` the last N days of every project.
    Returns 1 if a file failed to load (the others are loaded and merged), else 0.
    """
    kwargs = connect_kwargs(settings)  # first: the missing setting named is a connection one
    text = LOAD_WORKSHEET.read_text(encoding="utf-8")
    needed = worksheets.placeholders(text) - {COPY_PATH}
    values = worksheets.values_from_settings(settings, needed, NEEDED_FOR)
    statements = worksheets.split(worksheets.render(text, values, leave={COPY_PATH}))
    plan = CopyPlan.from_keys(settings.s3_prefix, uploaded_keys, _today(), sweep_days)
    with _open(kwargs) as conn:
        outcome = run_statements(conn.cursor(), statements, settings, plan)
    for line in summary(outcome.files, outcome.merged, uploaded_keys):
        print(line)
    if failed := [f for f in outcome.files if f.failed]:
        print(
            f"error: {len(failed)} files failed to load (listed above); fix or re-upload them "
            "and rerun (worksheet 06, copy_errors, shows the history)",
            file=sys.stderr,
        )
        return 1
    return 0


def _today() -> date:
    return datetime.now(UTC).date()


@dataclass(frozen=True)
class CopyPlan:
    """Which stage folders copy_raw reads: this run's uploads, recent days, and a sweep.

    A COPY lists every file under its path, so the hourly run names day folders instead of the
    whole stage (worksheet 05 says why): per project, from its newest day in events minus one
    through today, plus the day of every file uploaded now; with `sweep_days`, also the days
    from N days ago. A project without a newest day (new, or silent for a week), or with more
    than MAX_DAY_FOLDERS folders to read, gets one COPY of its whole folder.
    """

    uploaded: Mapping[str, frozenset[date]]  # project id → days of the files uploaded now
    today: date
    sweep_days: int | None = None

    @classmethod
    def from_keys(
        cls, prefix: str, keys: Iterable[str], today: date, sweep_days: int | None = None
    ) -> CopyPlan:
        days: dict[str, set[date]] = {}
        for key in keys:
            parsed = parse_key(prefix, key)
            if parsed is None:
                log.warning(
                    "%s is not under S3_PREFIX %s/: not in the stage, not copied", key, prefix
                )
                continue
            found = parsed[0]
            days.setdefault(found.project, set()).add(date.fromisoformat(found.date))
        uploaded = {project: frozenset(d) for project, d in days.items()}
        return cls(uploaded, today, sweep_days)

    def paths(self, newest: Mapping[str, date]) -> list[str]:
        """Stage folders, each `/<project>/<YYYY-MM-DD>/` or `/<project>/`; `/` is the whole
        stage, read while events is empty (a first load, or files `load.py` uploaded before)."""
        if not newest:
            return ["/"]
        paths: list[str] = []
        for project in sorted(set(self.uploaded) | set(newest), key=lambda p: (len(p), p)):
            days = self._days(project, newest.get(project))
            if days is None:
                paths.append(f"/{project}/")
            else:
                paths.extend(f"/{project}/{day.isoformat()}/" for day in days)
        return paths

    def _days(self, project: str, newest: date | None) -> list[date] | None:
        """The day folders to read for one project; None for its whole folder."""
        if newest is None:
            return None
        first = newest - timedelta(days=1)
        if self.sweep_days is not None:
            first = min(first, self.today - timedelta(days=self.sweep_days))
        span = (max(self.today, newest) - first).days + 1
        if span > MAX_DAY_FOLDERS:
            return None
        days = {first + timedelta(days=n) for n in range(span)}
        days |= self.uploaded.get(project, frozenset())
        return None if len(days) > MAX_DAY_FOLDERS else sorted(days)


@dataclass
class Outcome:
    """What the worksheet's statements reported: COPY's files, the rows MERGE inserted."""

    files: list[FileResult] = field(default_factory=list)
    merged: int | None = None
    newest: dict[str, date] = field(default_factory=dict)  # project id → its newest day
    paths: list[str] = field(default_factory=list)  # the stage folders copy_raw read


def run_statements(
    cursor: Any, statements: list[Statement], settings: Settings, plan: CopyPlan
) -> Outcome:
    """Run the statements in order, copy_raw once per folder, those from BEGIN to COMMIT as
    one transaction."""
    before, transaction, after = worksheets.transaction_parts(statements)
    outcome = Outcome()
    for statement in before:
        if statement.name == "copy_raw":
            _copy_folders(cursor, statement, settings, plan, outcome)
        else:
            _run_one(cursor, statement, settings, outcome)
    if transaction:
        _run_transaction(cursor, transaction, settings, outcome)
    for statement in after:
        _run_one(cursor, statement, settings, outcome)
    return outcome


def _copy_folders(
    cursor: Any, statement: Statement, settings: Settings, plan: CopyPlan, outcome: Outcome
) -> None:
    """copy_raw once for each folder the plan picks, from the newest days read before it."""
    outcome.paths = plan.paths(outcome.newest)
    shown = ", ".join(outcome.paths[:8]) + (" ..." if len(outcome.paths) > 8 else "")
    log.info("copy_raw: %d stage folders: %s", len(outcome.paths), shown or "none")
    for path in outcome.paths:
        sql = worksheets.render(statement.sql, {COPY_PATH: path})
        _run_one(cursor, Statement(statement.name, sql), settings, outcome)


def _run_one(cursor: Any, statement: Statement, settings: Settings, outcome: Outcome) -> None:
    try:
        _execute(cursor, statement, outcome)
    except SnowflakeError as exc:
        raise explain_statement(exc, statement.name, settings) from None


def _run_transaction(
    cursor: Any, statements: list[Statement], settings: Settings, outcome: Outcome
) -> None:
    """BEGIN ... COMMIT; rolled back on any failure, and run again after a conflict.

    In Snowflake a second load's take_merge_lock waits for the first one's COMMIT; a deadlock
    victim, or a stand-in that fails at once where Snowflake would wait (DuckDB under fakesnow:
    "Conflict on update"), is rolled back and tried again, up to MERGE_ATTEMPTS times.
    """
    for attempt in range(1, MERGE_ATTEMPTS + 1):
        failure = _attempt(cursor, statements, outcome)
        if failure is None:
            return
        statement, exc = failure
        if attempt == MERGE_ATTEMPTS or not is_conflict(exc):
            raise explain_statement(exc, statement.name, settings) from None
        log.warning(
            "%s: %s; rolled back, trying the transaction again (%d of %d)",
            statement.name,
            _first_line(exc),
            attempt + 1,
            MERGE_ATTEMPTS,
        )
        time.sleep(RETRY_DELAY * attempt)


def _attempt(
    cursor: Any, statements: list[Statement], outcome: Outcome
) -> tuple[Statement, SnowflakeError] | None:
    """Run the transaction once; on a failure ROLLBACK first, then return what failed."""
    for statement in statements:
        try:
            _execute(cursor, statement, outcome)
        except SnowflakeError as exc:
            _rollback(cursor)
            return statement, exc
        except BaseException:  # Ctrl-C too: leave no open transaction behind
            _rollback(cursor)
            raise
    return None


def _execute(cursor: Any, statement: Statement, outcome: Outcome) -> None:
    log.debug("running %s", statement.name)
    cursor.execute(statement.sql)
    if statement.name == "copy_raw":
        outcome.files.extend(copy_results(_column_names(cursor), cursor.fetchall()))
    elif statement.name == "newest_day_per_project":
        outcome.newest = newest_days(cursor.fetchall())
    elif statement.name == "merge_events":
        outcome.merged = _inserted(cursor)


def _rollback(cursor: Any) -> None:
    """ROLLBACK; if even that fails (connection gone), Snowflake rolls back at the session's end."""
    try:
        cursor.execute("ROLLBACK")
    except SnowflakeError as exc:
        log.debug("ROLLBACK failed (%s); the session's end rolls the transaction back", exc)


def is_conflict(exc: SnowflakeError) -> bool:
    """A statement another transaction made fail, which a new attempt may pass."""
    return bool(_CONFLICT.search(_first_line(exc)))


def copy_results(columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> list[FileResult]:
    """COPY's result rows; its one-column "0 files processed" answer gives an empty list."""
    if "file" not in columns:
        return []
    results = []
    for row in rows:
        r = dict(zip(columns, row, strict=False))
        results.append(
            FileResult(
                file=str(r["file"]),
                status=str(r["status"]),
                rows_loaded=int(r.get("rows_loaded") or 0),
                first_error=r.get("first_error"),
                first_error_line=r.get("first_error_line"),
            )
        )
    return results


def newest_days(rows: Iterable[Sequence[Any]]) -> dict[str, date]:
    """newest_day_per_project's rows (project id, day) by project id; NULL ids are left out."""
    newest = {}
    for project, day in rows:
        if project is None or day is None:
            continue
        newest[str(int(project))] = day.date() if isinstance(day, datetime) else day
    return newest


def summary(files: Sequence[FileResult], merged: int | None, uploaded: Sequence[str]) -> list[str]:
    """The lines load.py --copy prints: one per file, then totals."""
    lines = []
    for f in sorted(files, key=lambda f: f.file):
        if f.failed:
            where = f" (line {f.first_error_line})" if f.first_error_line else ""
            lines.append(f"FAILED  {f.file}: {f.first_error}{where}")
        else:
            lines.append(f"loaded  {f.rows_loaded:>8} rows  {f.file}")
    ok = [f for f in files if not f.failed]
    failed = len(files) - len(ok)
    rows = sum(f.rows_loaded for f in ok)
    lines.append(
        f"copy: {len(ok)} files loaded ({rows} rows), {failed} failed"
        + ("" if files else " (no new files in the stage)")
    )
    in_result = {_key_of(f.file) for f in files}
    not_seen = [k for k in uploaded if k not in in_result]
    if not_seen:
        lines.append(
            f"note: {len(not_seen)} of the {len(uploaded)} files uploaded this run are not in "
            "COPY's result: loaded before with the same content, or outside the stage's URL "
            "(check worksheet 03's URL against S3_BUCKET and S3_PREFIX)"
        )
    if merged is not None:
        lines.append(f"merge: {merged} new events in events")
    return lines


def explain_login(exc: SnowflakeError, kwargs: dict[str, Any]) -> PipelineError:
    """One line for a failed login."""
    message = _first_line(exc)
    lowered = message.lower()
    if "incorrect username or password" in lowered or "jwt token is invalid" in lowered:
        how = "SNOWFLAKE_PRIVATE_KEY_FILE" if "private_key_file" in kwargs else "SNOWFLAKE_PASSWORD"
        return UsageError(
            f"Snowflake refused the login of user {kwargs['user']}: check SNOWFLAKE_USER and {how}"
        )
    if "role" in lowered and ("not granted" in lowered or "does not exist" in lowered):
        return UsageError(
            f"Snowflake role {kwargs['role']} is missing or not granted to {kwargs['user']}: "
            "check SNOWFLAKE_ROLE, or run worksheet 01 (grant_role_to_user)"
        )
    if "private key" in lowered or "passphrase" in lowered or "password was not given" in lowered:
        return UsageError(
            f"cannot read the private key ({message}): check SNOWFLAKE_PRIVATE_KEY_FILE "
            "and SNOWFLAKE_PRIVATE_KEY_PASSPHRASE"
        )
    return PipelineError(
        f"cannot log in to Snowflake account {kwargs['account']} ({message}): check "
        "SNOWFLAKE_ACCOUNT (your <orgname>-<account_name> identifier), SNOWFLAKE_HOST if set, "
        "and the network"
    )


def explain_statement(exc: SnowflakeError, name: str, settings: Settings) -> PipelineError:
    """One line for a failed worksheet statement, naming the setting or worksheet to fix."""
    message = _first_line(exc)
    lowered = message.lower()
    if name == "use_role":
        return UsageError(
            f"cannot use role {settings.get('SNOWFLAKE_ROLE')} ({message}): check SNOWFLAKE_ROLE, "
            "or run worksheet 01"
        )
    if name == "use_warehouse":
        return UsageError(
            f"warehouse {settings.get('SNOWFLAKE_WAREHOUSE')} does not exist or the role may not "
            "use it: check SNOWFLAKE_WAREHOUSE, or run worksheet 01"
        )
    if name == "use_schema":
        return UsageError(
            f"schema {settings.get('SNOWFLAKE_DATABASE')}.{settings.get('SNOWFLAKE_SCHEMA')} does "
            "not exist or the role may not use it: check SNOWFLAKE_DATABASE and "
            "SNOWFLAKE_SCHEMA, or run worksheet 01"
        )
    if "does not exist or not authorized" in lowered:
        return PipelineError(
            f"Snowflake {name}: {message.rstrip('.')}; run worksheets 03 (stage) and 04 (tables) "
            "first, with the same SNOWFLAKE_DATABASE and SNOWFLAKE_SCHEMA"
        )
    if "access denied" in lowered or "assume" in lowered or "kms" in lowered:
        return PipelineError(
            f"Snowflake cannot read the stage's bucket ({message}): check the AWS role's trust "
            "relationship (`python setup_aws.py trust`, worksheet 02) and its KMS permission"
        )
    if "no active warehouse" in lowered:
        return UsageError(
            f"no usable warehouse ({message}): check SNOWFLAKE_WAREHOUSE, or run worksheet 01"
        )
    if name == "take_merge_lock":
        return PipelineError(
            f"Snowflake take_merge_lock: {message.rstrip('.')}; if another load holds merge_lock, "
            "SHOW LOCKS lists its transaction and SYSTEM$ABORT_TRANSACTION(<id>) ends a stuck one"
        )
    return PipelineError(f"Snowflake {name} failed: {message}")


def _first_line(exc: SnowflakeError) -> str:
    """The connector's message on one line (Snowflake's often start "SQL compilation error:")."""
    text = " ".join(str(getattr(exc, "msg", None) or exc).split())
    text = re.sub(r"^\d{6}(?: \(\w{5}\))?: ", "", text)  # the connector's "002003 (02000): "
    return text[:300] if text else type(exc).__name__


def _column_names(cursor: Any) -> list[str]:
    return [d[0].lower() for d in (cursor.description or [])]


def _inserted(cursor: Any) -> int:
    """Rows MERGE inserted: its 'number of rows inserted' column, else the row count."""
    columns = _column_names(cursor)
    row = cursor.fetchone()
    if row is not None and "number of rows inserted" in columns:
        return int(row[columns.index("number of rows inserted")])
    return int(cursor.rowcount or 0)


def _key_of(url: str) -> str:
    """`s3://bucket/key` → `key`."""
    return url.split("://", 1)[-1].split("/", 1)[-1]
