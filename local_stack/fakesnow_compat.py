"""What fakesnow 0.12.1 cannot run from the worksheets, in one visible place.

The worksheets are written for real Snowflake. fakesnow (the local stand-in for tests and the
demo) lacks a few features, so `patched()` changes how fakesnow's cursor runs statements,
matched by their `-- name:` line, and records what it did:

- SKIPPED: run nothing, return one status row. Account objects and metadata fakesnow lacks.
- EQUIVALENT: run an equivalent instead (see `_copy_raw_per_file`, `_set_from_query`).
- DIFFERS: runs as written, but behaves differently from Snowflake, as described.
- Three fakesnow bugs are worked around for every statement: it treats any `$word` in the text
  as a session variable, even inside a quoted JSON key such as `raw:"$insert_id"`; it lets some
  DuckDB errors escape, which its server turns into HTTP 500s that the connector retries for
  minutes (they become SQL errors here); and it records a (missing) comment for every new table
  in its own `_fs_global` database, even the temporary table it runs a MERGE through, so a MERGE
  inside BEGIN ... COMMIT failed ("a single transaction can only write to a single attached
  database"): here a temporary table without a COMMENT gets no such record.

Anything not named here runs on fakesnow exactly as written.
"""

from __future__ import annotations

import re
import threading
import unittest.mock
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import duckdb
import fakesnow.transforms as fs_transforms
import snowflake.connector.errors
from fakesnow.cursor import FakeSnowflakeCursor
from fakesnow.transforms import stage as fs_stage
from fakesnow.variables import Variables
from sqlglot import exp

from pipeline.worksheets import statement_name

SKIPPED: dict[str, str] = {
    "use_admin_role": "no roles in fakesnow",
    "use_role": "no roles in fakesnow",
    "create_warehouse": "no warehouses in fakesnow",
    "use_warehouse": "no warehouses in fakesnow",
    "create_role": "no roles in fakesnow",
    "grant_role_to_sysadmin": "no GRANT in fakesnow",
    "grant_role_to_user": "no GRANT in fakesnow",
    "grant_warehouse": "no GRANT in fakesnow",
    "grant_database": "no GRANT in fakesnow",
    "grant_schema": "no GRANT in fakesnow",
    "create_integration": "no STORAGE INTEGRATION in fakesnow",
    "grant_integration": "no STORAGE INTEGRATION in fakesnow",
    "describe_integration": "no STORAGE INTEGRATION in fakesnow",
    "list_stage": "fakesnow's LIST does not descend into the stage's folders",
    "list_stage_files": "fakesnow's LIST does not descend into the stage's folders",
    "hours_with_files_but_no_rows": "reads RESULT_SCAN of LIST (see list_stage_files)",
    "copy_errors": "no INFORMATION_SCHEMA.COPY_HISTORY in fakesnow",
}

EQUIVALENT: dict[str, str] = {
    "copy_raw": (
        "fakesnow has no transform COPY, METADATA$FILENAME or ON_ERROR = SKIP_FILE, and does "
        "not descend into the stage's folders: each file under the folder after the stage's "
        "name (@stage/<folder>/; @stage/ or @stage for all) is COPYed (FILES = (...)) into a "
        "one-column VARIANT table, then inserted with its key; a failing file is reported "
        "LOAD_FAILED and the others still load. Its landing table is shared, so sessions run "
        "it one at a time. fakesnow's load history knows a file by its name alone, where "
        "Snowflake's knows it by name and checksum (a file re-uploaded with other bytes loads "
        "again): the equivalent keeps each loaded file's ETag and forces the COPY of a file "
        "whose ETag changed. The folder must end with '/' here; Snowflake reads any prefix"
    ),
    **{
        name: (
            "fakesnow keeps a SET's expression as text and evaluates it wherever the variable "
            "is used, later and against later data; Snowflake evaluates it once, at the SET. "
            "Here the query runs at the SET and the variable holds its value. (fakesnow's "
            "TO_VARCHAR ignores its format; a timestamp cut to the second reads the same)"
        )
        for name in ("set_recent_floor", "set_batch_start", "set_merge_floor")
    },
}

DIFFERS: dict[str, str] = {
    "take_merge_lock": (
        "where Snowflake makes a second transaction's UPDATE of merge_lock wait for the first "
        "one's COMMIT, DuckDB fails it at once ('TransactionContext Error: Conflict on update'); "
        "run_copy rolls back and runs the transaction again (pipeline.warehouse.MERGE_ATTEMPTS). "
        "DuckDB's snapshot is per transaction, not per statement, so there this conflict is what "
        "keeps a second MERGE from inserting a uuid again"
    ),
}

COPY_COLUMNS = (
    "file",
    "status",
    "rows_parsed",
    "rows_loaded",
    "error_limit",
    "errors_seen",
    "first_error",
    "first_error_line",
    "first_error_character",
    "first_error_column_name",
)
_COPY_RAW = re.compile(
    r"COPY\s+INTO\s+(?P<table>\w+)\s*\(\s*(?P<raw>\w+)\s*,\s*(?P<file>\w+)\s*\)\s*"
    r"FROM\s*\(\s*SELECT\s+\$1\s*,\s*METADATA\$FILENAME\s+FROM\s+@(?P<stage>\w+)"
    r"(?P<folder>/(?:[\w.=-]+/)*)?\s*\)\s*"
    r"FILE_FORMAT\s*=\s*\(\s*FORMAT_NAME\s*=\s*'(?P<format>\w+)'\s*\)",
    re.IGNORECASE,
)
_SET_QUERY = re.compile(
    r"SET\s+(?P<name>\w+)\s*=\s*\((?P<query>.*)\)\s*;?", re.IGNORECASE | re.DOTALL
)
_COPY_LOCK = threading.Lock()  # one copy_raw at a time: its landing table is shared
_QUOTED_OR_COMMENT = re.compile(r"'(?:[^'\\]|\\.|'')*'|\"[^\"]*\"|--[^\n]*")
_VARIABLE = re.compile(r"(?<![\$\w])\$(?!\d+)\w+")


@dataclass
class Report:
    """What the stand-in did instead of running a statement as written, in order."""

    skipped: list[str] = field(default_factory=list)
    replaced: list[str] = field(default_factory=list)
    differed: list[str] = field(default_factory=list)


@contextmanager
def patched(filesystem: Any | None = None) -> Iterator[Report]:
    """Patch fakesnow's cursor (in this process) as described above; yields the report.

    `filesystem` is the fsspec filesystem that stage URLs resolve to (s3fs on a moto endpoint),
    used to list a stage's files; it must also be registered on fakesnow's DuckDB connection.
    """
    report = Report()
    original_execute = FakeSnowflakeCursor.execute

    def execute(self: FakeSnowflakeCursor, command: str, *args: Any, **kwargs: Any) -> Any:
        name = statement_name(command)
        if name in SKIPPED:
            report.skipped.append(name)
            status = f"skipped on fakesnow: {name} ({SKIPPED[name]})".replace("'", "''")
            return original_execute(self, f"SELECT '{status}' AS status")
        try:
            if name == "copy_raw":
                report.replaced.append(name)
                with _COPY_LOCK:
                    return _copy_raw_per_file(self, original_execute, command, filesystem)
            if name in EQUIVALENT:
                report.replaced.append(name)
                return _set_from_query(self, original_execute, command)
            return original_execute(self, command, *args, **kwargs)
        except duckdb.Error as exc:
            if name in DIFFERS:
                report.differed.append(name)
            # fakesnow lets some DuckDB errors escape; its server then answers HTTP 500, which the
            # connector retries for minutes. Report them as the SQL errors they are.
            raise snowflake.connector.errors.ProgrammingError(
                msg=f"fakesnow: {exc}", errno=100000, sqlstate="22000"
            ) from exc

    original_comment = fs_transforms.extract_comment_on_table

    def comment_on_table(expression: exp.Expr) -> exp.Expr:
        """fakesnow's own, without recording a comment a temporary table does not have."""
        new = original_comment(expression)
        recorded = new.args.get("table_comment")
        if recorded and recorded[1] is None and expression.find(exp.TemporaryProperty):
            new.args.pop("table_comment")
        return new

    with (
        unittest.mock.patch.object(FakeSnowflakeCursor, "execute", execute),
        unittest.mock.patch.object(Variables, "inline_variables", _inline_variables),
        unittest.mock.patch.object(fs_transforms, "extract_comment_on_table", comment_on_table),
    ):
        yield report


def _inline_variables(self: Variables, sql: str) -> str:
    """fakesnow's own, but a `$word` inside quotes or a comment is not a session variable."""
    for name, value in self._variables.items():
        sql = re.sub(rf"\${name}", value, sql, flags=re.IGNORECASE)
    if found := _VARIABLE.search(_QUOTED_OR_COMMENT.sub("''", sql)):
        raise snowflake.connector.errors.ProgrammingError(
            msg=f"Session variable '{found.group().upper()}' does not exist"
        )
    return sql


def _copy_raw_per_file(cursor: FakeSnowflakeCursor, execute: Any, command: str, fs: Any) -> Any:
    """05's copy_raw, file by file: COPY into a landing table, then insert tagged rows."""
    m = _COPY_RAW.search(command)
    if m is None or fs is None:
        raise NotImplementedError(f"fakesnow_compat cannot run this copy_raw: {command[:80]}")
    conn = cursor._conn  # noqa: SLF001 - the stand-in's own connection
    db, schema, stage_name = fs_stage.parts_from_var(m["stage"], conn.database, conn.schema)
    row = cursor._duck_conn.execute(  # noqa: SLF001
        "SELECT url FROM _fs_global._fs_information_schema._fs_stages "
        "WHERE database_name = ? AND schema_name = ? AND name = ?",
        (db, schema, stage_name),
    ).fetchone()
    if row is None or not row[0]:
        raise fs_stage.not_found_error(f"{db}.{schema}.{stage_name}")
    url = row[0].rstrip("/") + "/"
    scheme, _, location = url.partition("://")
    folder = (location + (m["folder"] or "").lstrip("/")).rstrip("/")
    bucket = location.split("/", 1)[0]
    landing = f"{m['table']}_fakesnow_landing"
    # Created only when missing: fakesnow's CREATE TABLE IF NOT EXISTS clears the load history.
    exists = cursor._duck_conn.execute(  # noqa: SLF001
        "SELECT 1 FROM information_schema.tables WHERE upper(table_catalog) = ? "
        "AND upper(table_schema) = ? AND upper(table_name) = ?",
        (db, schema, landing.upper()),
    ).fetchone()
    etags = f"{landing}_etags"  # what each loaded file's bytes were (Snowflake's checksum)
    if not exists:
        execute(cursor, f"CREATE TABLE {landing} ({m['raw']} VARIANT)")
        execute(cursor, f"CREATE TABLE IF NOT EXISTS {etags} (file VARCHAR, etag VARCHAR)")
    results: list[tuple] = []
    fs.invalidate_cache()
    for path in sorted(fs.find(folder)):
        relative = path[len(location) :]
        key = path[len(bucket) + 1 :]  # METADATA$FILENAME of an S3 stage: the object's key
        etag = str(fs.info(path).get("ETag", ""))
        loaded = execute(cursor, f"SELECT etag FROM {etags} WHERE file = '{_quote(key)}'")
        before = loaded.fetchall()
        force = " FORCE = TRUE" if before and before[0][0] != etag else ""
        try:
            execute(
                cursor,
                f"COPY INTO {landing} FROM @{m['stage']} FILES = ('{_quote(relative)}') "
                f"FILE_FORMAT = (FORMAT_NAME = '{m['format']}'){force}",
            )
            result = cursor.fetchall()[0]
        except (snowflake.connector.errors.ProgrammingError, duckdb.Error) as exc:
            # ON_ERROR = SKIP_FILE: nothing of this file stays loaded, the others go on.
            execute(cursor, f"DELETE FROM {landing}")
            first_error = str(getattr(exc, "msg", exc)).splitlines()[0][:200]
            results.append((f"{scheme}://{path}", "LOAD_FAILED", 0, 0, 1, 1, first_error))
            continue
        if result[1] != "LOADED":
            continue  # Snowflake leaves files it skips (loaded before) out of COPY's result
        execute(
            cursor,
            f"INSERT INTO {m['table']} ({m['raw']}, {m['file']}) "
            f"SELECT {m['raw']}, '{_quote(key)}' FROM {landing}",
        )
        execute(cursor, f"DELETE FROM {landing}")
        execute(cursor, f"DELETE FROM {etags} WHERE file = '{_quote(key)}'")
        execute(cursor, f"INSERT INTO {etags} VALUES ('{_quote(key)}', '{_quote(etag)}')")
        results.append(tuple(result[:7]))
    if not results:
        return execute(cursor, "SELECT 'Copy executed with 0 files processed.' AS status")
    rows = [(*r, None, None, None) for r in results]
    values = exp.values(rows, alias="t", columns=list(COPY_COLUMNS))
    return execute(cursor, exp.select(*COPY_COLUMNS).from_(values).sql(dialect="snowflake"))


def _set_from_query(cursor: FakeSnowflakeCursor, execute: Any, command: str) -> Any:
    """`SET name = (SELECT ...)` with the query run now, so the variable holds its value."""
    body = "\n".join(line for line in command.splitlines() if not line.lstrip().startswith("--"))
    m = _SET_QUERY.fullmatch(body.strip())
    if m is None:
        raise NotImplementedError(f"fakesnow_compat cannot run this SET: {command[:80]}")
    row = execute(cursor, m["query"]).fetchone()
    if row is None or row[0] is None:
        raise NotImplementedError(f"fakesnow_compat: {m['name']}'s query gave no value")
    return execute(cursor, f"SET {m['name']} = '{_quote(str(row[0]))}'")


def _quote(text: str) -> str:
    return text.replace("'", "''")
