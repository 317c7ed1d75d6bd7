"""extract.py end to end in-process: HTTP through `responses` (and one real loopback server)."""

from __future__ import annotations

import base64
import gzip
import io
import json
import os
import subprocess
import zipfile
from datetime import UTC, datetime
from pathlib import Path

import pytest
import responses
import time_machine

import extract
from local_stack.amplitude_server import ExportService, running
from pipeline import sample_events
from pipeline.cli import run
from tests.conftest import API_KEY, BUCKET, SECRET

US = "https://amplitude.com/api/2/export"
EU = "https://analytics.eu.amplitude.com/api/2/export"
NOW = datetime(2026, 11, 28, 10, 30, tzinfo=UTC)
PID = 123456


def hour(text: str) -> datetime:
    return datetime.strptime(text, "%Y%m%dT%H").replace(tzinfo=UTC)


def zip_bytes(members) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, events in members:
            zf.writestr(name, gzip.compress(sample_events.ndjson(events)))
    return buf.getvalue()


def export_for(start: str, end: str, **kw) -> tuple[bytes, list]:
    members = sample_events.export_members(PID, hour(start), hour(end), **kw)
    return zip_bytes(members), members


@pytest.fixture
def frozen():
    with time_machine.travel(NOW, tick=False):
        yield


def extract_run(*argv: str) -> int:
    return run(extract.main, list(argv))


def files_under(root: Path) -> list[str]:
    """Every file under root but the pipeline's own state (the lock, the manifests)."""
    rels = (p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())
    return sorted(r for r in rels if r != ".lock" and not r.startswith(".manifests/"))


def error_line(err: str) -> str:
    """The one `error:` line a failure prints (log lines may come before it)."""
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1, err
    return lines[0]


def window_of(call) -> tuple[str, str]:
    q = call.request.params
    return q["start"], q["end"]


# --- URLs and auth ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("settings", "url"),
    [
        ({}, US),
        ({"AMPLITUDE_REGION": "us"}, US),
        ({"AMPLITUDE_REGION": "EU"}, EU),
        (
            {"AMPLITUDE_REGION": "eu", "AMPLITUDE_EXPORT_URL": "http://proxy.test/x"},
            "http://proxy.test/x",
        ),
    ],
)
@responses.activate
def test_region_urls_and_basic_auth(env, frozen, settings, url):
    for name, value in settings.items():
        env.setenv(name, value)
    responses.get(url, status=404)
    assert extract_run("--start", "20261127T00", "--end", "20261127T05") == 0
    (call,) = responses.calls
    assert call.request.url.startswith(url + "?")
    assert window_of(call) == ("20261127T00", "20261127T05")
    token = base64.b64encode(f"{API_KEY}:{SECRET}".encode()).decode()
    assert call.request.headers["Authorization"] == f"Basic {token}"


def test_unknown_region_is_a_usage_error(env, capsys):
    env.setenv("AMPLITUDE_REGION", "apac")
    assert extract_run("--dry-run") == 2
    assert error_line(capsys.readouterr().err).startswith("error: AMPLITUDE_REGION")


# --- windows ---------------------------------------------------------------------------------


def test_default_window_is_days_ago_to_newest_finished_hour(env, frozen, capsys):
    assert extract_run("--dry-run") == 0
    out = capsys.readouterr().out
    assert "20261121T00 to 20261128T07" in out
    gets = [line for line in out.splitlines() if line.startswith("GET ")]
    assert gets[0] == f"GET {US}?start=20261121T00&end=20261121T23"
    assert gets[-1] == f"GET {US}?start=20261128T00&end=20261128T07"
    assert len(gets) == 8
    assert SECRET not in out and API_KEY not in out


def test_days_and_day_forms(env, frozen, capsys):
    assert extract_run("--days", "1", "--dry-run") == 0
    assert "20261127T00 to 20261128T07" in capsys.readouterr().out
    assert extract_run("--start", "2026-11-20", "--end", "2026-11-20", "--dry-run") == 0
    out = capsys.readouterr().out
    assert f"GET {US}?start=20261120T00&end=20261120T23" in out


def test_window_hours_option(env, frozen, capsys):
    assert (
        extract_run(
            "--start", "20261120T00", "--end", "20261120T11", "--window-hours", "5", "--dry-run"
        )
        == 0
    )
    gets = [x for x in capsys.readouterr().out.splitlines() if x.startswith("GET")]
    assert [g.split("?")[1] for g in gets] == [
        "start=20261120T00&end=20261120T04",
        "start=20261120T05&end=20261120T09",
        "start=20261120T10&end=20261120T11",
    ]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--start", "2026112000"], "--start '2026112000' is not an hour"),
        (["--end", "tomorrow"], "--end 'tomorrow' is not an hour"),
        (["--start", "20261122T00", "--end", "20261121T00"], "is before the start"),
        (["--bogus"], "unrecognized arguments"),
    ],
)
def test_bad_usage_exits_2_with_one_error_line(env, frozen, capsys, argv, message):
    assert extract_run(*argv) == 2
    err = capsys.readouterr().err
    assert error_line(err).startswith("error: ") and message in err
    assert len(err.strip().splitlines()) == 1


def test_missing_keys_exit_2(monkeypatch, data_dir, frozen, capsys):
    monkeypatch.setenv("JSON_DATA_DIR", str(data_dir))
    assert extract_run("--start", "20261127T00") == 2
    assert "AMPLITUDE_API_KEY is not set" in capsys.readouterr().err


# --- data ------------------------------------------------------------------------------------


@responses.activate
def test_shards_empty_hours_and_unicode_land_as_exact_gunzipped_bytes(
    env, frozen, data_dir, capsys
):
    members = sample_events.export_members(
        PID,
        hour("20261120T00"),
        hour("20261120T05"),
        events_per_hour=9,
        shards=3,
        empty_hours=[hour("20261120T02")],
    )
    responses.get(US, body=zip_bytes(members))
    assert extract_run("--start", "20261120T00", "--end", "20261120T05") == 0
    written = files_under(data_dir)
    assert len(written) == 5 * 3
    assert f"{PID}/2026-11-20/{PID}_2026-11-20_5#2.json" in written
    assert not any("_2#" in w for w in written)
    for name, events in members:
        rel = name.replace(f"{PID}/", f"{PID}/2026-11-20/").removesuffix(".gz")
        assert (data_dir / rel).read_bytes() == sample_events.ndjson(events)
    text = (data_dir / f"{PID}/2026-11-20/{PID}_2026-11-20_0#0.json").read_text("utf-8")
    first = json.loads(text.splitlines()[0])
    assert first["server_upload_time"].startswith("2026-11-20 00:")
    assert "naïve café ✓" in text
    out = capsys.readouterr().out
    assert "events:            45" in out and "files written:     15" in out


@responses.activate
def test_404_is_no_data_and_exit_0(env, frozen, data_dir, capsys):
    responses.get(US, status=404)
    assert extract_run("--start", "20261120T00", "--end", "20261121T23") == 0
    assert len(responses.calls) == 2
    assert "(2 with no data)" in capsys.readouterr().out
    assert files_under(data_dir) == []


def _limit_callback(max_hours: int, status: int):
    def callback(request):
        start, end = hour(request.params["start"]), hour(request.params["end"])
        n = int((end - start).total_seconds() // 3600) + 1
        if n > max_hours:
            return status, {}, b"Raw data files were too large"
        return 200, {}, export_for(request.params["start"], request.params["end"])[0]

    return callback


@pytest.mark.parametrize("status", [400, 504])
@responses.activate
def test_too_large_windows_split_in_halves_then_quarters(env, frozen, data_dir, status):
    responses.add_callback(responses.GET, US, callback=_limit_callback(6, status))
    assert extract_run("--start", "20261120T00", "--end", "20261120T23") == 0
    asked = [window_of(c) for c in responses.calls]
    assert asked == [
        ("20261120T00", "20261120T23"),
        ("20261120T00", "20261120T11"),
        ("20261120T00", "20261120T05"),
        ("20261120T06", "20261120T11"),
        ("20261120T12", "20261120T23"),
        ("20261120T12", "20261120T17"),
        ("20261120T18", "20261120T23"),
    ]
    assert len(files_under(data_dir)) == 24 * 2


@responses.activate
def test_one_hour_too_large_says_use_the_s3_export(env, frozen, data_dir, capsys):
    responses.add_callback(responses.GET, US, callback=_limit_callback(0, 400))
    assert extract_run("--start", "20261120T00", "--end", "20261120T01") == 1
    err = capsys.readouterr().err
    assert error_line(err).startswith("error: hour 20261120T00 alone is over Amplitude's 4 GB")
    assert "S3 export" in err
    assert files_under(data_dir) == []


# --- retries and refusals ----------------------------------------------------------------------


@responses.activate
def test_429_then_success(env, frozen, data_dir):
    body, _ = export_for("20261120T00", "20261120T00")
    responses.get(US, status=429, headers={"Retry-After": "0"})
    responses.get(US, body=body)
    assert extract_run("--start", "20261120T00", "--end", "20261120T00") == 0
    assert len(responses.calls) == 2
    assert len(files_under(data_dir)) == 2


def test_retry_after_is_honoured_over_real_http(env, frozen, data_dir, monkeypatch):
    slept: list[float] = []
    monkeypatch.setattr("urllib3.util.retry.time.sleep", slept.append)
    service = ExportService(
        api_key=API_KEY, secret_key=SECRET, first=hour("20261120T00"), last=hour("20261120T03")
    )
    service.scripted.extend([(429, {"Retry-After": "7"}, b"slow down"), (503, {}, b"")])
    with running(service) as url:
        env.setenv("AMPLITUDE_EXPORT_URL", url)
        assert extract_run("--start", "20261120T00", "--end", "20261120T03") == 0
    assert slept[0] == 7  # Retry-After, not the backoff
    assert len(slept) == 2 and len(service.requests) == 3
    assert len(files_under(data_dir)) == 4 * 2


@responses.activate
def test_5xx_until_retries_run_out_exits_1(env, frozen, data_dir, capsys):
    responses.get(US, status=503)
    assert extract_run("--start", "20261120T00", "--end", "20261120T00") == 1
    assert len(responses.calls) == 7  # the first try and six retries
    err = capsys.readouterr().err
    assert error_line(err).startswith(
        "error: Amplitude answered HTTP 503 for window 20261120T00..20261120T00"
    )
    assert files_under(data_dir) == []


@pytest.mark.parametrize("status", [401, 403])
@responses.activate
def test_refused_key_pair_names_keys_and_region(env, frozen, capsys, status):
    responses.get(US, status=status)
    assert extract_run("--start", "20261120T00") == 1
    err = capsys.readouterr().err
    assert f"Amplitude refused the key pair (HTTP {status}) at amplitude.com" in err
    assert "AMPLITUDE_REGION" in err and "EU project" in err
    assert SECRET not in err


# --- corrupt downloads -------------------------------------------------------------------------


def _truncated_gzip_zip() -> bytes:
    good = export_for("20261120T00", "20261120T00")[1]
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for i, (name, events) in enumerate(good):
            data = gzip.compress(sample_events.ndjson(events))
            zf.writestr(name, data[:-10] if i == 1 else data)
    return buf.getvalue()


def _bad_crc_zip() -> bytes:
    body = bytearray(export_for("20261120T00", "20261120T00")[0])
    # flip one byte inside the first stored member's data (after its 30-byte header + name)
    name_len = int.from_bytes(body[26:28], "little")
    body[30 + name_len + 40] ^= 0xFF
    return bytes(body)


@pytest.mark.parametrize(
    ("body", "why"),
    [
        (export_for("20261120T00", "20261120T00")[0][:-100], "zip archive is corrupt"),
        (b"<html>not a zip</html>", "zip archive is corrupt"),
        (_truncated_gzip_zip(), "gzip data is truncated"),
        (_bad_crc_zip(), "corrupt"),
    ],
)
@responses.activate
def test_corrupt_download_fails_loudly_and_keeps_nothing_of_its_window(
    env, frozen, data_dir, capsys, body, why
):
    good, _ = export_for("20261120T00", "20261120T00")
    responses.get(US, body=good)  # first window fine
    responses.get(US, body=body)  # second window damaged
    responses.get(US, body=good)  # never asked: the run stops at the damaged window
    rc = extract_run("--start", "20261120T00", "--end", "20261120T01", "--window-hours", "1")
    assert rc == 1
    err = capsys.readouterr().err
    assert error_line(err).startswith(
        "error: window 20261120T01..20261120T01: the download is corrupt"
    )
    assert why in err
    assert len(responses.calls) == 2
    # only the first window's two shards; no temporary leftovers anywhere
    assert files_under(data_dir) == [
        f"{PID}/2026-11-20/{PID}_2026-11-20_0#0.json",
        f"{PID}/2026-11-20/{PID}_2026-11-20_0#1.json",
    ]
    assert sorted(p.name for p in data_dir.iterdir()) == [".lock", ".manifests", str(PID)]


# --- incremental start and gap fill ------------------------------------------------------------


def _touch(root: Path, rel: str, body: bytes = b"{}\n") -> None:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(body)


def test_incremental_start_from_local_files(env, frozen, data_dir, capsys):
    env.setenv("AMPLITUDE_PROJECT_ID", str(PID))
    _touch(data_dir, f"{PID}/2026-11-26/{PID}_2026-11-26_23#0.json")
    _touch(data_dir, f"{PID}/2026-11-27/{PID}_2026-11-27_13#1.json")
    _touch(data_dir, f"{PID}/2026-11-27/.tmp-{PID}_2026-11-27_20#0.json")  # ignored
    _touch(data_dir, "654321/2026-11-28/654321_2026-11-28_5#0.json")  # another project's
    assert extract_run("--dry-run") == 0
    out = capsys.readouterr().out
    assert "20261127T11 to 20261128T07 (newest hour held: 20261127T13)" in out
    assert f"GET {US}?start=20261127T11&end=20261128T07" in out
    assert extract_run("--dry-run", "--lookback-hours", "0") == 0
    assert f"GET {US}?start=20261127T13&end=20261128T07" in capsys.readouterr().out


def test_incremental_start_from_s3_keys(env, frozen, s3, capsys):
    env.setenv("AMPLITUDE_PROJECT_ID", str(PID))
    env.setenv("S3_BUCKET", BUCKET)
    env.setenv("S3_PREFIX", "raw/amplitude")
    s3.put_object(
        Bucket=BUCKET, Key=f"raw/amplitude/{PID}/2026-11-27/{PID}_2026-11-27_9#0.json.gz", Body=b"x"
    )
    s3.put_object(
        Bucket=BUCKET, Key=f"raw/amplitude/{PID}/2026-11-26/{PID}_2026-11-26_3#0.json", Body=b"x"
    )
    s3.put_object(Bucket=BUCKET, Key="raw/amplitude/notes/2026-11-28.txt", Body=b"x")
    assert extract_run("--dry-run") == 0
    assert "(newest hour held: 20261127T09)" in capsys.readouterr().out


def test_up_to_date_requests_nothing(env, data_dir, capsys):
    env.setenv("AMPLITUDE_PROJECT_ID", str(PID))
    _touch(data_dir, f"{PID}/2026-11-28/{PID}_2026-11-28_9#0.json")
    with time_machine.travel(NOW, tick=False), responses.RequestsMock() as rsps:
        assert extract_run("--lookback-hours", "0") == 0
        assert len(rsps.calls) == 0
    assert "already up to date" in capsys.readouterr().out


def test_gap_fill_skips_keys_already_in_s3(env, frozen, s3, data_dir, capsys):
    env.setenv("S3_BUCKET", BUCKET)
    body, members = export_for("20261120T00", "20261120T01")
    held_plain = sample_events.ndjson(members[0][1])
    s3.put_object(
        Bucket=BUCKET, Key=f"amplitude/{PID}/2026-11-20/{PID}_2026-11-20_0#0.json", Body=held_plain
    )
    # an older .gz object: only its raw-size metadata tells what it holds
    raw = sample_events.ndjson(members[1][1])
    s3.put_object(
        Bucket=BUCKET,
        Key=f"amplitude/{PID}/2026-11-20/{PID}_2026-11-20_0#1.json.gz",
        Body=gzip.compress(raw),
        Metadata={"raw-size": str(len(raw))},
    )
    # a re-exported hour whose size changed is kept, so load.py uploads it again
    s3.put_object(
        Bucket=BUCKET, Key=f"amplitude/{PID}/2026-11-20/{PID}_2026-11-20_1#0.json", Body=b"{}\n"
    )
    # a .gz object that carries nothing to compare with is kept too
    s3.put_object(
        Bucket=BUCKET, Key=f"amplitude/{PID}/2026-11-20/{PID}_2026-11-20_1#1.json.gz", Body=b"gz"
    )
    with responses.RequestsMock(assert_all_requests_are_fired=False) as rsps:
        rsps.add_passthru("https://")  # moto's S3 calls pass through botocore, not requests
        rsps.get(US, body=body)
        assert extract_run("--start", "20261120T00", "--end", "20261120T01") == 0
    assert files_under(data_dir) == [
        f"{PID}/2026-11-20/{PID}_2026-11-20_1#0.json",
        f"{PID}/2026-11-20/{PID}_2026-11-20_1#1.json",
    ]
    out = capsys.readouterr().out
    assert "files skipped:     2 (already in S3)" in out


def test_s3_listing_error_is_one_line(env, frozen, aws, capsys):
    env.setenv("S3_BUCKET", "no-such-bucket")
    assert extract_run("--dry-run") == 1
    err = capsys.readouterr().err
    assert error_line(err).startswith("error: bucket no-such-bucket does not exist")


# --- secrets -----------------------------------------------------------------------------------


@responses.activate
def test_no_secret_in_any_output_even_at_debug(env, frozen, data_dir, capsys):
    env.setenv("LOG_LEVEL", "DEBUG")
    body, _ = export_for("20261120T00", "20261120T00")
    responses.get(US, status=503)
    responses.get(US, body=body)
    assert extract_run("--start", "20261120T00", "--end", "20261120T00") == 0
    responses.get(US, status=401)
    assert extract_run("--start", "20261120T01", "--end", "20261120T01") == 1
    assert extract_run("--start", "20261120T01", "--dry-run") == 0
    out, err = capsys.readouterr()
    token = base64.b64encode(f"{API_KEY}:{SECRET}".encode()).decode()
    for text in (out, err):
        assert SECRET not in text and API_KEY not in text and token not in text
    assert "DEBUG" in err or "INFO" in err  # the project's own logging did run


def test_staging_left_by_a_killed_run_is_removed_but_a_live_ones_is_kept(data_dir):
    from pipeline.extraction import STAGING_PREFIX, clean_stale_staging

    dead = _dead_pid()  # a process that has exited
    stale = data_dir / f"{STAGING_PREFIX}{dead}-abc123"
    live = data_dir / f"{STAGING_PREFIX}{os.getpid()}-def456"
    for folder in (stale, live):
        (folder / str(PID)).mkdir(parents=True)
        (folder / str(PID) / "half.json").write_bytes(b"{}")
    clean_stale_staging(data_dir)
    assert not stale.exists()
    assert live.exists()


def _dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid
