"""Issue 9, sections 3 and 5: one run at a time, and bad input gets a clear error."""

from __future__ import annotations

import gzip
import io
import os
import signal
import subprocess
import sys
import threading
import zipfile
from pathlib import Path

import pytest
import responses

import extract
import load
from pipeline import lock, sample_events
from pipeline.cli import run
from pipeline.settings import load_settings

from .conftest import BUCKET
from .test_extract import (
    PID,
    US,
    error_line,
    export_for,
    files_under,
    hour,
    window_of,
)

REPO = Path(__file__).resolve().parent.parent


# --- 3. one run at a time ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("command", "argv"),
    [(extract.main, ["--start", "20261120T00", "--end", "20261120T00"]), (load.main, [])],
    ids=["extract", "load"],
)
def test_a_second_run_exits_1_naming_the_first(env, data_dir, capsys, command, argv):
    env.setenv("S3_BUCKET", "b")
    env.setenv("KMS_KEY_ID", "k")
    with lock.hold(data_dir, "backfill.py --start 2026-01-01"), responses.RequestsMock():
        assert run(command, argv) == 1
    line = error_line(capsys.readouterr().err)
    assert line.startswith("error: backfill.py --start 2026-01-01 (pid ")
    assert f"is using {data_dir}; this run did nothing" in line and "--wait" in line
    assert files_under(data_dir) == []


def test_dry_run_needs_no_lock(env, data_dir, capsys):
    with lock.hold(data_dir, "load.py"):
        assert run(extract.main, ["--start", "20261120T00", "--dry-run"]) == 0
    assert "would request" in capsys.readouterr().out


def test_wait_waits_for_the_other_run(env, data_dir, capsys):
    env.setenv("S3_BUCKET", "b")
    env.setenv("KMS_KEY_ID", "k")
    held = threading.Event()
    release = threading.Event()

    def other_run():
        with lock.hold(data_dir, "extract.py"):
            held.set()
            release.wait(5)

    thread = threading.Thread(target=other_run)
    thread.start()
    held.wait(5)
    order: list[str] = []
    real_hold = lock.hold

    def hold_and_note(*args, **kwargs):
        order.append("asked")
        threading.Timer(0.3, lambda: (order.append("released"), release.set())).start()
        return real_hold(*args, **kwargs)

    env.setattr(lock, "hold", hold_and_note)
    env.setattr(load, "load", lambda args, settings: order.append("ran") or 0)
    assert run(load.main, ["--wait"]) == 0
    thread.join()
    assert order == ["asked", "released", "ran"]


def test_the_lock_dies_with_its_process(data_dir, tmp_path):
    """kill -9 of the holder frees the folder: the kernel drops an flock with its process."""
    script = (
        "import sys, time; sys.path.insert(0, sys.argv[1]); from pathlib import Path; "
        "from pipeline import lock\n"
        "with lock.hold(Path(sys.argv[2]), 'extract.py'):\n"
        "    print('held', flush=True); time.sleep(30)\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", script, str(REPO), str(data_dir)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout.readline().strip() == "held"
        with pytest.raises(lock.Busy, match=r"extract.py \(pid \d+"):
            with lock.hold(data_dir, "load.py"):
                pass
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    with lock.hold(data_dir, "load.py"):
        assert "load.py (pid" in (data_dir / ".lock").read_text()


# --- 5. bad input: a clear error, never a guess ------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        "2026111T05",
        "2026-11-1",
        "20261120T5",
        "２０２６１１２０T05",
        "2026-11-20T05",
        "202611200T5",
    ],
)
def test_only_the_two_hour_forms_are_accepted(env, capsys, text):
    assert run(extract.main, ["--start", text, "--dry-run"]) == 2
    assert error_line(capsys.readouterr().err).startswith(f"error: --start {text!r} is not an hour")


def _zip(members: list[tuple[str, bytes]]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, raw in members:
            zf.writestr(name, gzip.compress(raw))
    return buf.getvalue()


GOOD = sample_events.ndjson(
    sample_events.export_members(PID, hour("20261120T07"), hour("20261120T07"))[0][1]
)


@pytest.mark.parametrize(
    ("members", "why"),
    [
        (
            [
                (f"{PID}/{PID}_2026-11-20_7#0.json.gz", GOOD),
                (f"{PID}/{PID}_2026-11-20_07#0.json.gz", GOOD),
            ],
            "are the same file",
        ),
        (
            [(f"{PID}/{PID}_2026-11-20_7#0.json.gz", GOOD), (f"{PID}/README.txt", b"hi")],
            "not in Amplitude's layout",
        ),
        (
            [(f"{PID}/{PID}_2026-11-20_٧#0.json.gz", GOOD)],
            "not in Amplitude's layout",
        ),  # Arabic-Indic 7
        (
            [(f"{PID}/{PID}_2026-11-20_7#0.json.gz", GOOD), ("notes.json", b"{}")],
            "not in Amplitude's layout",
        ),
    ],
    ids=["same-file-twice", "stray-member", "non-ascii-digit", "stray-top-level"],
)
@responses.activate
def test_a_doubtful_archive_is_corrupt_and_keeps_nothing(env, data_dir, capsys, members, why):
    responses.get(US, body=_zip(members))
    assert run(extract.main, ["--start", "20261120T07", "--end", "20261120T07"]) == 1
    line = error_line(capsys.readouterr().err)
    assert line.startswith("error: window 20261120T07..20261120T07: the download is corrupt")
    assert why in line
    assert files_under(data_dir) == []


@responses.activate
def test_an_empty_member_is_an_empty_file(env, data_dir):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr(f"{PID}/{PID}_2026-11-20_7#0.json.gz", GOOD and gzip.compress(GOOD))
        zf.writestr(f"{PID}/{PID}_2026-11-20_7#1.json.gz", b"")
    responses.get(US, body=buf.getvalue())
    assert run(extract.main, ["--start", "20261120T07", "--end", "20261120T07"]) == 0
    assert (data_dir / f"{PID}/2026-11-20/{PID}_2026-11-20_7#1.json").read_bytes() == b""


@pytest.mark.parametrize(
    ("body", "headers", "said"),
    [
        (
            b"<html><body><h1>400 Bad Request</h1>nginx</body></html>",
            {"Content-Type": "text/html"},
            "nginx",
        ),
        (b"Invalid start parameter: expected YYYYMMDDTHH", {}, "Invalid start parameter"),
        (b'{"error": "missing end"}', {"Content-Type": "application/json"}, "missing end"),
    ],
    ids=["proxy-html", "bad-parameter", "json-missing"],
)
@responses.activate
def test_a_400_that_is_not_the_size_limit_stops_at_once(env, capsys, body, headers, said):
    responses.get(US, status=400, body=body, headers=headers)
    assert run(extract.main, ["--start", "20261120T00", "--end", "20261120T23"]) == 1
    assert len(responses.calls) == 1  # no splitting
    line = error_line(capsys.readouterr().err)
    assert line.startswith("error: Amplitude answered HTTP 400 for window 20261120T00..20261120T23")
    assert said in line and "AMPLITUDE_EXPORT_URL" in line and "4 GB" in line


@pytest.mark.parametrize("body", [b"Raw data files were too large", b""], ids=["says-so", "empty"])
@responses.activate
def test_a_400_about_size_or_empty_still_splits(env, data_dir, body):
    def answer(request):
        start, end = window_of(SimpleCall(request))
        if start != end:
            return 400, {}, body
        return 200, {}, export_for(start, end)[0]

    responses.add_callback(responses.GET, US, callback=answer)
    assert run(extract.main, ["--start", "20261120T00", "--end", "20261120T01"]) == 0
    assert len(responses.calls) == 3


class SimpleCall:
    def __init__(self, request):
        self.request = request


@responses.activate
def test_the_one_hour_error_quotes_amplitude(env, capsys):
    responses.get(US, status=400, body=b"Raw data files were too large (limit 4GB)")
    assert run(extract.main, ["--start", "20261120T00", "--end", "20261120T00"]) == 1
    line = error_line(capsys.readouterr().err)
    assert "alone is over Amplitude's 4 GB" in line
    assert "Amplitude said: 'Raw data files were too large (limit 4GB)'" in line


def test_an_empty_variable_does_not_hide_the_env_file(tmp_path):
    dotenv = tmp_path / ".env"
    dotenv.write_text("S3_BUCKET=acme-amplitude\nS3_GZIP=true\nS3_PREFIX=\n")
    settings = load_settings({"S3_BUCKET": "", "S3_GZIP": ""}, dotenv)
    assert settings.s3_bucket == "acme-amplitude"  # the gap check stays on
    assert settings.s3_gzip is True
    assert settings.s3_prefix == "amplitude"  # empty in .env: the default


def test_an_empty_bucket_everywhere_says_the_gap_check_is_off(env, capsys):
    env.setenv("S3_BUCKET", "")
    with responses.RequestsMock() as rsps:
        rsps.get(US, status=404)
        assert run(extract.main, ["--start", "20261120T00", "--end", "20261120T00"]) == 0
    out, err = capsys.readouterr()
    assert "S3_BUCKET is not set: no gap check" in err
    assert "gap check off: S3_BUCKET is not set" in out


def test_a_prefix_of_slashes_is_refused(env, capsys):
    env.setenv("S3_BUCKET", "b")
    env.setenv("S3_PREFIX", "//")
    assert run(extract.main, ["--dry-run"]) == 2
    assert "S3_PREFIX is only slashes" in error_line(capsys.readouterr().err)


def test_leftover_load_temporaries_of_dead_runs_are_removed(env, s3, kms_key, data_dir):
    from pipeline.upload import LOAD_TEMP

    env.setenv("S3_BUCKET", BUCKET)
    env.setenv("KMS_KEY_ID", kms_key)
    dead = subprocess.Popen(["true"])
    dead.wait()
    stale = data_dir / f"{LOAD_TEMP}{dead.pid}-abc"
    live = data_dir / f"{LOAD_TEMP}{os.getpid()}-def"  # a live process's: left alone
    for folder in (stale, live):
        folder.mkdir()
        (folder / ".tmp-x.json.gz").write_bytes(b"half")
    assert run(load.main, []) == 0
    assert not stale.exists() and live.exists()
