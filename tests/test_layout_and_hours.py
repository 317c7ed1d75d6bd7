from datetime import UTC, datetime

import pytest

from pipeline.errors import UsageError
from pipeline.hours import Window, default_end, default_start, parse_hour, split_windows
from pipeline.layout import ExportFile, parse_key, parse_member, parse_relpath, s3_key


def h(text: str) -> datetime:
    return datetime.strptime(text, "%Y%m%dT%H").replace(tzinfo=UTC)


def test_member_to_local_path_and_key():
    f = parse_member("123456/123456_2026-11-20_5#0.json.gz")
    assert f == ExportFile("2026-11-20", 5, 0, "123456")
    assert f.relpath == "123456/2026-11-20/123456_2026-11-20_5#0.json"
    assert s3_key("amplitude", f) == "amplitude/123456/2026-11-20/123456_2026-11-20_5#0.json"
    assert s3_key("amplitude", f, gzip=True).endswith("_5#0.json.gz")
    assert f.hour_start == h("20261120T05")


@pytest.mark.parametrize(
    "name",
    [
        "123456_2026-11-20_5#0.json.gz",  # no project folder
        "9/123456_2026-11-20_5#0.json.gz",  # folder is another project
        "123456/123456_2026-11-20_24#0.json.gz",  # no hour 24
        "123456/123456_2026-02-30_1#0.json.gz",  # no such day
        "123456/123456_2026-11-20_5#0.json",  # not gzipped
    ],
)
def test_member_names_outside_the_layout(name):
    assert parse_member(name) is None


def test_keys_and_relpaths_round_trip():
    assert parse_relpath("1/2026-11-20/1_2026-11-20_23#12.json") == ExportFile(
        "2026-11-20", 23, 12, "1"
    )
    assert parse_relpath("1/2026-11-21/1_2026-11-20_23#12.json") is None
    assert parse_relpath("1/2026-11-20/.tmp-1_2026-11-20_23#12.json") is None
    f, gz = parse_key("amp/raw", "amp/raw/1/2026-11-20/1_2026-11-20_3#0.json.gz")
    assert (f.hour, gz) == (3, True)
    assert parse_key("amp", "other/1/2026-11-20/1_2026-11-20_3#0.json") is None


def test_parse_hour_forms():
    assert parse_hour("20261120T05", as_end=False) == h("20261120T05")
    assert parse_hour("2026-11-20", as_end=False) == h("20261120T00")
    assert parse_hour("2026-11-20", as_end=True) == h("20261120T23")
    for bad in ("2026112005", "20261120T24", "yesterday", "2026-13-01"):
        with pytest.raises(UsageError, match="YYYYMMDDTHH"):
            parse_hour(bad, as_end=False)


def test_default_end_is_the_newest_hour_ended_two_hours_ago():
    now = datetime(2026, 11, 28, 10, 30, tzinfo=UTC)
    assert default_end(now) == h("20261128T07")  # 07:00-08:00 ended 2.5 h ago
    assert default_end(datetime(2026, 11, 28, 10, 0, tzinfo=UTC)) == h("20261128T07")


def test_default_start():
    now = datetime(2026, 11, 28, 10, 30, tzinfo=UTC)
    assert default_start(now, 7, None) == h("20261121T00")
    assert default_start(now, 7, h("20261127T13")) == h("20261127T13")


def test_split_windows_and_halves():
    windows = split_windows(h("20261120T00"), h("20261122T05"), 24)
    assert [str(w) for w in windows] == [
        "20261120T00..20261120T23",
        "20261121T00..20261121T23",
        "20261122T00..20261122T05",
    ]
    first, second = Window(h("20261120T00"), h("20261120T23")).halves()
    assert (first.hours, second.hours) == (12, 12)
    a, b = Window(h("20261120T00"), h("20261120T02")).halves()
    assert (str(a), str(b)) == ("20261120T00..20261120T00", "20261120T01..20261120T02")
    with pytest.raises(UsageError):
        split_windows(h("20261120T00"), h("20261120T01"), 0)


def test_redaction_hides_secrets_in_messages_and_tracebacks():
    import logging

    from pipeline.cli import RedactingFormatter

    fmt = RedactingFormatter(["s3cr3t-value", "tok"])
    try:
        raise ValueError("token s3cr3t-value leaked")
    except ValueError:
        import sys

        record = logging.LogRecord(
            "pipeline", logging.ERROR, "f", 1, "%s", ("s3cr3t-value",), sys.exc_info()
        )
    text = fmt.format(record)
    assert "s3cr3t-value" not in text and "ValueError: token *** leaked" in text
    assert "token" in text  # a value under 4 characters would garble every line
