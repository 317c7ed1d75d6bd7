"""The SQL worksheets in `snowflake/`, shared by people (Snowsight, `snow sql`) and by Python.

Placeholders use the Snowflake CLI's template syntax, `<% name %>`, so `snow sql -f FILE
-D name=value` and `render` fill the same file. Every statement carries a `-- name: <name>`
comment line, which tests and `load.py --copy` use to refer to it.
"""

from __future__ import annotations

import io
import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from pathlib import Path

from snowflake.connector.util_text import split_statements

from pipeline.errors import UsageError
from pipeline.settings import REPO_ROOT, Settings

WORKSHEET_DIR = REPO_ROOT / "snowflake"
PLACEHOLDER = re.compile(r"<%\s*([A-Za-z_][A-Za-z0-9_]*)\s*%>")
_NAME = re.compile(r"^\s*--\s*name:\s*([a-z0-9_]+)\s*$", re.MULTILINE)
_WORD = re.compile(r"\w+")
# Characters that would let a value end a string literal or a statement.
_UNSAFE = re.compile(r"['\";\n\r\\]")

# Where each placeholder's value comes from when Python runs a worksheet.
SETTING_FOR = {
    "database": "SNOWFLAKE_DATABASE",
    "schema": "SNOWFLAKE_SCHEMA",
    "warehouse": "SNOWFLAKE_WAREHOUSE",
    "role": "SNOWFLAKE_ROLE",
    "user": "SNOWFLAKE_USER",
    "s3_bucket": "S3_BUCKET",
}


@dataclass(frozen=True)
class Statement:
    """One statement of a worksheet: its `-- name:` and its text (comments included)."""

    name: str
    sql: str


def placeholders(text: str) -> set[str]:
    return set(PLACEHOLDER.findall(text))


def render(text: str, values: Mapping[str, str], leave: Collection[str] = ()) -> str:
    """Replace every `<% name %>` by its value; all must be given and plain (no quotes, `;`).

    Placeholders named in `leave` stay as they are, for a later `render` (a value per run).
    """
    missing = sorted(placeholders(text) - set(values) - set(leave))
    if missing:
        raise UsageError(f"worksheet needs a value for: {', '.join(missing)}")
    for name in placeholders(text) & set(values):
        if _UNSAFE.search(values[name]) or not values[name]:
            raise UsageError(
                f"value for <% {name} %> must be non-empty, without quotes, ';', '\\' or newlines"
            )
    return PLACEHOLDER.sub(lambda m: values.get(m.group(1), m.group(0)), text)


def split(text: str) -> list[Statement]:
    """The statements of a worksheet, in order, each with its `-- name:` (required, unique)."""
    statements: list[Statement] = []
    for sql, _is_put_get in split_statements(io.StringIO(text), remove_comments=False):
        if not _strip_comments(sql):
            continue  # a trailing comment, no statement
        names = _NAME.findall(sql)
        if len(names) != 1:
            first = _strip_comments(sql).splitlines()[0]
            raise ValueError(f"statement needs exactly one `-- name:` line: {first}")
        statements.append(Statement(names[0], sql.strip()))
    seen = [s.name for s in statements]
    duplicates = sorted({n for n in seen if seen.count(n) > 1})
    if duplicates:
        raise ValueError(f"duplicate statement names: {', '.join(duplicates)}")
    return statements


def values_from_settings(settings: Settings, names: set[str], needed_for: str) -> dict[str, str]:
    """Placeholder values from settings (`s3_prefix` has its default); missing → UsageError."""
    values: dict[str, str] = {}
    for name in sorted(names):
        if name == "s3_prefix":
            values[name] = settings.s3_prefix
        elif name in SETTING_FOR:
            values[name] = settings.require(SETTING_FOR[name], needed_for)
        else:
            raise UsageError(f"no setting provides <% {name} %>; run that worksheet by hand")
    return values


def load(path: Path, values: Mapping[str, str]) -> list[Statement]:
    """Read, render and split one worksheet."""
    return split(render(path.read_text(encoding="utf-8"), values))


def keyword(statement: Statement) -> str:
    """The statement's first word, upper-cased (`BEGIN`, `COMMIT`, `MERGE`, ...)."""
    found = _WORD.match(_strip_comments(statement.sql))
    return found.group(0).upper() if found else ""


def transaction_parts(
    statements: list[Statement],
) -> tuple[list[Statement], list[Statement], list[Statement]]:
    """The statements before BEGIN, from BEGIN to COMMIT (both included), and after COMMIT.

    A worksheet holds at most one explicit transaction; without one, all are "before".
    """
    words = [keyword(s) for s in statements]
    if "BEGIN" not in words and "COMMIT" not in words:
        return list(statements), [], []
    if words.count("BEGIN") != 1 or words.count("COMMIT") != 1:
        raise ValueError("a worksheet holds at most one BEGIN ... COMMIT")
    begin, commit = words.index("BEGIN"), words.index("COMMIT")
    if commit < begin:
        raise ValueError(f"{statements[commit].name}: COMMIT before BEGIN")
    return statements[:begin], statements[begin : commit + 1], statements[commit + 1 :]


def _strip_comments(sql: str) -> str:
    return "\n".join(
        line for line in sql.splitlines() if line.strip() and not line.lstrip().startswith("--")
    ).strip()


def statement_name(sql: str) -> str | None:
    """The `-- name:` of a statement's text, if it has one."""
    found = _NAME.search(sql)
    return found.group(1) if found else None
