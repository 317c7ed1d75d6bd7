"""The worksheets parse as Snowflake SQL (sqlglot), and the template renderer behaves."""

from __future__ import annotations

import re

import pytest
import sqlglot
from sqlglot import exp

from pipeline import worksheets
from pipeline.errors import UsageError
from pipeline.settings import REPO_ROOT as REPO

WORKSHEETS = sorted(worksheets.WORKSHEET_DIR.glob("*.sql"))
DUMMY = {
    "database": "AMPLITUDE",
    "schema": "RAW",
    "warehouse": "AMPLITUDE_WH",
    "role": "AMPLITUDE_LOADER",
    "user": "AMPLITUDE_LOADER",
    "s3_bucket": "acme-amplitude",
    "s3_prefix": "amplitude",
    "aws_role_arn": "arn:aws:iam::123456789012:role/snowflake-amplitude",
    "copy_path": "/123456/2026-11-20/",
}
# sqlglot 30 has no grammar for these; it falls back to exp.Command. Only these may.
# For a pipe or task, the statement after AS is parsed on its own (below).
COMMAND_ALLOWED = {
    "create_role": "CREATE ROLE",
    "grant_role_to_sysadmin": "GRANT",
    "grant_role_to_user": "GRANT",
    "create_pipe": "CREATE",
    "show_pipe": "SHOW",
    "refresh_pipe": "ALTER",
    "create_merge_task": "CREATE",
    "resume_merge_task": "ALTER",
}


def statements(path):
    return worksheets.split(worksheets.render(path.read_text(encoding="utf-8"), DUMMY))


def test_the_worksheets_are_numbered_in_order():
    assert [p.name[:2] for p in WORKSHEETS] == ["01", "02", "03", "04", "05", "06", "07"]


@pytest.mark.parametrize("path", WORKSHEETS, ids=lambda p: p.name)
def test_every_statement_parses_as_snowflake_sql(path):
    for statement in statements(path):
        parsed = sqlglot.parse(statement.sql, read="snowflake", error_level="raise")
        assert len(parsed) == 1, f"{path.name}:{statement.name} holds more than one statement"
        tree = parsed[0]
        if isinstance(tree, exp.Command):
            assert statement.name in COMMAND_ALLOWED, (
                f"{path.name}:{statement.name} is not understood by sqlglot (exp.Command); "
                "fix it or add it to COMMAND_ALLOWED"
            )
            assert tree.name.upper() == COMMAND_ALLOWED[statement.name].split()[0]
            body = re.split(r"\bAS\s*\n", statement.sql, maxsplit=1)
            if len(body) == 2 and "$$" in body[1]:  # TASK ... AS EXECUTE IMMEDIATE $$ block $$
                kinds = [type(e) for e in task_transaction(statement.sql)]
                assert kinds == [
                    exp.Transaction,
                    exp.Update,
                    exp.Set,
                    exp.Set,
                    exp.Merge,
                    exp.Commit,
                ]
            elif len(body) == 2:  # CREATE PIPE ... AS <statement>: parse the statement
                inner = sqlglot.parse_one(body[1], read="snowflake", error_level="raise")
                assert isinstance(inner, exp.Copy | exp.Merge), statement.name


def test_the_allowlist_names_only_statements_that_exist():
    names = {s.name for p in WORKSHEETS for s in statements(p)}
    assert set(COMMAND_ALLOWED) <= names


def task_transaction(sql: str) -> list[exp.Expr]:
    """BEGIN TRANSACTION ... COMMIT inside a task's `EXECUTE IMMEDIATE $$ <block> $$`, parsed."""
    block = re.search(r"EXECUTE IMMEDIATE \$\$\n(.*)\n\$\$", sql, re.DOTALL).group(1)
    inner = block[block.index("BEGIN TRANSACTION") : block.index("EXCEPTION")]
    return sqlglot.parse(inner, read="snowflake", error_level="raise")


def by_name(worksheet: str) -> dict[str, str]:
    path = next(worksheets.WORKSHEET_DIR.glob(f"{worksheet}_*.sql"))
    return {s.name: s.sql for s in statements(path)}


TRANSACTION = [
    "begin_merge",
    "take_merge_lock",
    "set_batch_start",
    "set_merge_floor",
    "merge_events",
    "commit_merge",
]


def test_05_merges_in_one_transaction_after_taking_the_lock():
    ordered = statements(worksheets.WORKSHEET_DIR / "05_copy_and_dedup.sql")
    before, transaction, after = worksheets.transaction_parts(ordered)
    assert [s.name for s in transaction] == TRANSACTION
    assert [s.name for s in before][-3:] == ["copy_raw", "create_merge_lock", "seed_merge_lock"]
    assert after == []
    lock = sqlglot.parse_one(transaction[1].sql, read="snowflake")
    assert isinstance(lock, exp.Update) and lock.this.name == "merge_lock"
    seeded = sqlglot.parse_one(by_name("05")["seed_merge_lock"], read="snowflake")
    assert lock.args["where"] == seeded.find(exp.Exists).this.args["where"]  # the seeded row


def stage_read(copy: exp.Copy) -> tuple[str, str, list[exp.Expr]]:
    """COPY's stage, the folder after it ('' for the whole stage), and what it selects."""
    source = copy.args["files"][0].this
    location = source.find(exp.Table).this.name
    stage, _, folder = location.partition("/")
    return stage, folder, source.expressions


def test_the_snowpipe_task_runs_exactly_05s_transaction():
    load = by_name("05")
    pipe = by_name("07")
    assert task_transaction(pipe["create_merge_task"]) == [
        sqlglot.parse_one(load[name], read="snowflake") for name in TRANSACTION
    ]
    handler = pipe["create_merge_task"].split("EXCEPTION", 1)[1]
    assert re.search(r"WHEN OTHER THEN\s+ROLLBACK;\s+RAISE;", handler)
    copy_05 = sqlglot.parse_one(load["copy_raw"], read="snowflake")
    copy_07 = sqlglot.parse_one(pipe["create_pipe"].split("AS\n", 1)[1], read="snowflake")
    assert copy_07.this == copy_05.this
    stage_05, stage_07 = stage_read(copy_05), stage_read(copy_07)
    assert stage_07 == ("@amplitude_stage", "", stage_05[2])  # the pipe: the whole stage


@pytest.mark.parametrize("name", ["create_merge_lock", "seed_merge_lock"])
def test_04_05_and_07_create_the_same_merge_lock(name):
    trees = [sqlglot.parse_one(by_name(w)[name], read="snowflake") for w in ("04", "05", "07")]
    assert trees[0] == trees[1] == trees[2]
    assert trees[0].find(exp.Table).name == "merge_lock"


def test_worksheet_02_names_the_two_trust_values_and_the_allowed_location():
    text = (worksheets.WORKSHEET_DIR / "02_storage_integration.sql").read_text()
    assert "STORAGE_AWS_IAM_USER_ARN" in text and "STORAGE_AWS_EXTERNAL_ID" in text
    create = {
        s.name: s.sql for s in statements(worksheets.WORKSHEET_DIR / "02_storage_integration.sql")
    }
    assert (
        "STORAGE_ALLOWED_LOCATIONS = ('s3://acme-amplitude/amplitude/')"
        in create["create_integration"]
    )


def test_render_fills_every_placeholder_like_snow_sql():
    text = "USE SCHEMA <% database %>.<%schema%>; -- <% database %>"
    assert worksheets.render(text, {"database": "D", "schema": "S"}) == "USE SCHEMA D.S; -- D"


def test_render_names_missing_values():
    with pytest.raises(UsageError, match="worksheet needs a value for: role, schema"):
        worksheets.render("<% role %> <% schema %> <% x %>", {"x": "1"})


@pytest.mark.parametrize("bad", ["a'b", "a;b", "a\nb", "", 'a"b'])
def test_render_refuses_values_that_could_change_the_statement(bad):
    with pytest.raises(UsageError, match="must be non-empty"):
        worksheets.render("USE ROLE <% role %>", {"role": bad})


def test_split_keeps_names_comments_and_strings_with_semicolons():
    text = (
        "-- intro\n-- name: one\nSELECT ';' AS a; -- trailing\n\n-- name: two\nSELECT 2;\n-- end\n"
    )
    got = worksheets.split(text)
    assert [s.name for s in got] == ["one", "two"]
    assert "SELECT ';' AS a;" in got[0].sql
    assert worksheets.statement_name(got[1].sql) == "two"


def test_transaction_parts_finds_the_one_begin_commit():
    text = "-- name: a\nSELECT 1;\n-- name: b\nBEGIN TRANSACTION;\n-- name: c\nUPDATE t SET x=1;\n"
    got = worksheets.transaction_parts(worksheets.split(text + "-- name: d\nCOMMIT;\n"))
    assert [[s.name for s in part] for part in got] == [["a"], ["b", "c", "d"], []]
    plain = worksheets.split("-- name: a\nSELECT 1;\n")
    assert worksheets.transaction_parts(plain) == (plain, [], [])
    for broken in (text, "-- name: d\nCOMMIT;\n" + text):
        with pytest.raises(ValueError, match="BEGIN"):
            worksheets.transaction_parts(worksheets.split(broken))


@pytest.mark.parametrize(
    "text, error",
    [
        ("SELECT 1;", "exactly one `-- name:`"),
        ("-- name: a\nSELECT 1;\n-- name: a\nSELECT 2;", "duplicate statement names: a"),
    ],
)
def test_split_requires_one_unique_name_per_statement(text, error):
    with pytest.raises(ValueError, match=error):
        worksheets.split(text)


def test_05s_recipe_for_a_file_copy_skips_after_64_days_is_copy_raw_for_that_file():
    text = (worksheets.WORKSHEET_DIR / "05_copy_and_dedup.sql").read_text()
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("--   COPY INTO"))
    end = next(i for i in range(start, len(lines)) if lines[i].rstrip().endswith(";"))
    recipe = sqlglot.parse_one(
        "\n".join(line.removeprefix("--") for line in lines[start : end + 1]), read="snowflake"
    )
    copy_raw = sqlglot.parse_one(by_name("05")["copy_raw"], read="snowflake")
    assert recipe.this == copy_raw.this
    assert stage_read(recipe) == (stage_read(copy_raw)[0], "", stage_read(copy_raw)[2])
    params = {p.this.name: p for p in recipe.args["params"]}
    assert {p.this.name: p for p in copy_raw.args["params"]}.items() <= params.items()
    assert params["FORCE"].expression == exp.true()
    assert "/" in params["FILES"].expression.this.name  # a key relative to the stage
    assert "64 days" in text and "LOAD_UNCERTAIN_FILES" in text


# Amplitude's own Snowflake export, table EVENTS_<project_id> (Amplitude's "Snowflake Export"
# and "Snowflake Data Share" pages): the columns analysts and dbt packages are written against.
AMPLITUDE_EVENTS_TABLE = """
    adid amplitude_event_type amplitude_id app city client_event_time client_upload_time country
    data device_brand device_carrier device_family device_id device_manufacturer device_model
    device_type dma event_id event_properties event_time event_type followed_an_identify
    group_properties groups idfa ip_address is_attribution_event language library location_lat
    location_lng os_name os_version paying platform processed_time region sample_rate
    server_upload_time session_id start_version user_creation_time user_id user_properties uuid
    version_name amplitude_attribution_ids server_received_time global_user_properties partner_id
    plan source_id data_type
""".split()
BOOKKEEPING = ["raw", "source_file", "loaded_at"]


def columns_of(create: str) -> dict[str, str]:
    """CREATE TABLE's columns and their types, in order."""
    tree = sqlglot.parse_one(create, read="snowflake")
    return {c.name: c.args["kind"].sql("snowflake") for c in tree.find_all(exp.ColumnDef)}


def view_columns(worksheet: str = "04") -> dict[str, exp.Expr]:
    """raw_events_typed's columns and the expression of each."""
    view = sqlglot.parse_one(by_name(worksheet)["create_raw_events_typed"], read="snowflake")
    select = view.expression
    return {e.alias_or_name: e.unalias() for e in select.expressions}


def test_events_has_every_column_of_amplitudes_own_table_and_the_view_types_each():
    events = columns_of(by_name("04")["create_events"])
    assert len(AMPLITUDE_EVENTS_TABLE) == 53
    assert set(AMPLITUDE_EVENTS_TABLE) <= set(events)
    assert sorted(set(events) - set(AMPLITUDE_EVENTS_TABLE)) == ["insert_id", *sorted(BOOKKEEPING)]
    assert list(view_columns()) == list(events)
    typed = {
        "DECIMAL": ["amplitude_id", "app", "event_id", "session_id", "sample_rate"],  # NUMBER
        "TIMESTAMPNTZ": [
            "event_time",
            "client_event_time",
            "client_upload_time",
            "server_received_time",
            "server_upload_time",
            "processed_time",
            "user_creation_time",
            "loaded_at",
        ],
        "DOUBLE": ["location_lat", "location_lng"],
        "BOOLEAN": ["is_attribution_event", "followed_an_identify"],
        "VARIANT": [
            "event_properties",
            "user_properties",
            "group_properties",
            "global_user_properties",
            "groups",
            "data",
            "plan",
            "raw",
        ],
        "ARRAY": ["amplitude_attribution_ids"],
    }
    for kind, names in typed.items():
        for name in names:
            assert events[name].startswith(kind), name
    varchar = [name for name, kind in events.items() if kind == "VARCHAR"]
    assert len(varchar) == 54 + 3 - sum(len(n) for n in typed.values())  # paying is VARCHAR
    assert "paying" in varchar and "insert_id" in varchar


def test_05s_merge_inserts_every_column_of_events_from_the_view():
    events = list(columns_of(by_name("04")["create_events"]))
    merge = sqlglot.parse_one(by_name("05")["merge_events"], read="snowflake")
    insert = merge.find(exp.Insert)
    assert [c.name for c in insert.this.expressions] == events
    assert [(c.table, c.name) for c in insert.expression.expressions] == [("s", n) for n in events]


def v1_events() -> dict[str, str]:
    text = (REPO / "tests" / "snowflake_v1" / "04_tables.sql").read_text()
    create = next(
        s.sql for s in worksheets.split(worksheets.render(text, DUMMY)) if s.name == "create_events"
    )
    return columns_of(create)


def test_04_adds_each_column_an_older_events_lacks_with_its_type():
    events = columns_of(by_name("04")["create_events"])
    old = v1_events()
    assert len(old) == 18 + 3 and set(old) <= set(events)
    added = {}
    for name, sql in by_name("04").items():
        if name.startswith("add_"):
            alter = sqlglot.parse_one(sql, read="snowflake")
            (column,) = alter.args["actions"]
            assert alter.this.name == "events" and column.args["exists"]  # IF NOT EXISTS
            assert name == f"add_{column.name}"
            added[column.name] = column.args["kind"].sql("snowflake")
    assert added == {name: kind for name, kind in events.items() if name not in old}


def test_04s_backfill_fills_exactly_the_added_columns_as_the_view_types_them():
    update = sqlglot.parse_one(by_name("04")["backfill_new_columns"], read="snowflake")
    assert update.this.name == "events"
    assignments = {e.this.name: e.expression for e in update.expressions}
    added = {n.removeprefix("add_") for n in by_name("04") if n.startswith("add_")}
    assert set(assignments) == added and len(added) == 36
    view = view_columns()
    for name, expression in assignments.items():
        assert expression == view[name], name
    # Every row merged before the upgrade has all three NULL; rows merged after have them.
    where = {c.name for c in update.args["where"].find_all(exp.Column)}
    assert where == {"server_received_time", "client_upload_time", "processed_time"} <= added


def test_copy_raw_reads_only_the_folder_it_is_given_never_the_whole_stage():
    text = (worksheets.WORKSHEET_DIR / "05_copy_and_dedup.sql").read_text()
    without = {k: v for k, v in DUMMY.items() if k != "copy_path"}
    with pytest.raises(UsageError, match="copy_path"):
        worksheets.render(text, without)
    copy = sqlglot.parse_one(by_name("05")["copy_raw"], read="snowflake")
    assert stage_read(copy)[:2] == ("@amplitude_stage", "123456/2026-11-20/")
    params = {p.this.name for p in copy.args["params"]}
    assert "PATTERN" not in params  # a PATTERN still lists the whole stage
    assert "FILES" not in params


def constants_only(node: exp.Expr) -> bool:
    """No column and no query inside: Snowflake can prune micro-partitions with it."""
    return not any(isinstance(n, exp.Column | exp.Select | exp.Subquery) for n in node.walk())


def range_on(condition: exp.Expr, table: str, column: str) -> list[exp.GTE]:
    return [
        gte
        for gte in condition.find_all(exp.GTE)
        if isinstance(gte.this, exp.Column) and (gte.this.table, gte.this.name) == (table, column)
    ]


def test_05s_merge_reads_events_from_a_constant_bound_two_days_before_the_batch():
    merge = sqlglot.parse_one(by_name("05")["merge_events"], read="snowflake")
    (bound,) = range_on(merge.args["on"], "t", "server_upload_time")
    assert constants_only(bound.expression)
    assert bound.expression.find(exp.Parameter).name == "merge_floor"  # $merge_floor
    shift = bound.expression.find(exp.DateAdd)
    assert (shift.unit.name.upper(), shift.expression.sql()) == ("DAY", "-2")
    # The source: rows of the batch (loaded from $batch_start on), from $merge_floor on.
    wheres = list(merge.args["using"].find_all(exp.Where))
    source = next(w.this for w in wheres if range_on(w.this, "", "loaded_at"))
    (loaded,) = range_on(source, "", "loaded_at")
    (floor,) = range_on(source, "", "server_upload_time")
    assert constants_only(loaded.expression) and constants_only(floor.expression)
    assert loaded.expression.find(exp.Parameter).name == "batch_start"
    assert floor.expression.find(exp.Parameter).name == "merge_floor"
    assert not merge.args["on"].find(exp.Select) and not source.find(exp.Select)


def test_05s_variables_are_set_in_the_transaction_from_the_batch():
    batch = sqlglot.parse_one(by_name("05")["set_batch_start"], read="snowflake")
    floor = sqlglot.parse_one(by_name("05")["set_merge_floor"], read="snowflake")
    assert batch.find(exp.Max).this.name == "loaded_at"
    assert batch.find(exp.From).this.name == "events"
    assert floor.find(exp.Min).this.name == "server_upload_time"
    assert floor.find(exp.From).this.name == "raw_events_typed"
    (loaded,) = range_on(floor.find(exp.Where).this, "", "loaded_at")
    assert constants_only(loaded.expression)  # raw_events is pruned too
    recent = sqlglot.parse_one(by_name("05")["newest_day_per_project"], read="snowflake")
    (window,) = range_on(recent.find(exp.Where).this, "", "server_upload_time")
    assert constants_only(window.expression)
