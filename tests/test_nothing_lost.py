"""Issue 9: the runs that used to end with exit 0 and events missing.

Each scenario drives the real extract.py and load.py (in-process) against the Amplitude
stand-in with late data (an hour keeps gaining events and shards for up to 3 h after it
starts) and moto's S3, moves the clock like cron would, and asserts what a user cares
about: in the end every finished hour is complete in S3, and no uuid is there twice.
"""

from __future__ import annotations

import gzip
import json
import os
from collections import Counter, defaultdict
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import time_machine

import extract
import load
from local_stack.amplitude_server import ExportService
from pipeline.cli import run
from pipeline.hours import default_end
from pipeline.layout import parse_key
from pipeline.manifest import LocalManifests

from .conftest import BUCKET

PID = 123456
API_KEY = "amp-api-key-0123456789abcdef"
SECRET = "amp-secret-key-fedcba9876543210"
DAY = datetime(2026, 11, 28, tzinfo=UTC)


def at(hour: int, minute: int = 0, day: datetime = DAY) -> datetime:
    return day + timedelta(hours=hour, minutes=minute)


@pytest.fixture(params=[False, True], ids=["plain", "gzip"])
def gzip_mode(request) -> bool:
    return request.param


@pytest.fixture
def service() -> ExportService:
    return ExportService(
        api_key=API_KEY,
        secret_key=SECRET,
        project_id=PID,
        first=DAY,
        last=DAY + timedelta(days=2),
        events_per_hour=6,
        shards=3,
        empty_hours={at(4)},
        late_data=True,
    )


def extract_at(moment: datetime, *argv: str) -> int:
    with time_machine.travel(moment, tick=False):
        return run(extract.main, list(argv))


def load_at(moment: datetime, *argv: str) -> int:
    with time_machine.travel(moment, tick=False):
        return run(load.main, list(argv))


def cron(moment: datetime) -> None:
    """run_pipeline.sh: extract.py then load.py, no options."""
    assert extract_at(moment) == 0
    assert load_at(moment) == 0


def uuids_in_s3(s3) -> tuple[dict[datetime, set[str]], Counter]:
    """Per hour, the uuids S3's export objects hold; and how often each uuid occurs."""
    per_hour: dict[datetime, set[str]] = defaultdict(set)
    seen: Counter = Counter()
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix="amplitude/"):
        for obj in page.get("Contents", []):
            parsed = parse_key("amplitude", obj["Key"])
            assert parsed is not None, obj["Key"]
            body = s3.get_object(Bucket=BUCKET, Key=obj["Key"])["Body"].read()
            if parsed[1]:
                body = gzip.decompress(body)
            for line in body.splitlines():
                event = json.loads(line)
                per_hour[parsed[0].hour_start].add(event["uuid"])
                seen[event["uuid"]] += 1
    return per_hour, seen


def served(service: ExportService, first: datetime, last: datetime) -> dict[datetime, set]:
    """Every uuid the stand-in will ever export for each hour (late data included)."""
    late, service.late_data = service.late_data, False
    try:
        hours: dict[datetime, set[str]] = defaultdict(set)
        for _, events in service.members(first, last):
            for e in events:
                upload = datetime.strptime(e["server_upload_time"], "%Y-%m-%d %H:%M:%S.%f")
                hours[upload.replace(minute=0, second=0, microsecond=0, tzinfo=UTC)].add(e["uuid"])
        return hours
    finally:
        service.late_data = late


def assert_complete(s3, service: ExportService, first: datetime, last: datetime) -> None:
    """Every hour first..last holds in S3 exactly the uuids Amplitude has for it, once."""
    held, seen = uuids_in_s3(s3)
    expected = served(service, first, last)
    hour = first
    while hour <= last:
        assert held.get(hour, set()) == expected.get(hour, set()), f"hour {hour:%Y%m%dT%H}"
        hour += timedelta(hours=1)
    assert [u for u, n in seen.items() if n > 1] == []


# --- 1. late data: every hour is complete in the end -----------------------------------------


def test_hours_fetched_before_they_finished_are_fetched_again(pipeline_env, s3, service):
    """`extract.py --end <today>` at 10:30 fetches hours still filling; cron alone then
    completes them (today's code left 8 and 9 partial for good, and in gzip mode 10 too)."""
    service.events_per_hour = 24  # enough that 08, 09 and 10 are all partial at 10:30
    assert extract_at(at(10, 30), "--start", "2026-11-28", "--end", "2026-11-28") == 0
    assert load_at(at(10, 30)) == 0
    held, _ = uuids_in_s3(s3)
    full = served(service, at(8), at(10))
    for hour in (8, 9, 10):  # really partial at first, the older two behind the newest
        assert 0 < len(held[at(hour)]) < len(full[at(hour)])
    for hour in (11, 12, 13, 14):
        cron(at(hour, 15))
    assert_complete(s3, service, at(0), default_end(at(14, 15)))


def test_a_clock_ahead_of_amplitude_still_ends_complete(pipeline_env, s3, service, monkeypatch):
    """A laptop clock 5 h ahead asks for hours Amplitude has not finished; the manifest
    judges them by Amplitude's own clock (its Date header) and later runs fetch them again."""
    monkeypatch.setattr(service, "clock", lambda: datetime.now(UTC) - timedelta(hours=5))
    laptop = timedelta(hours=5)
    assert extract_at(at(10, 15) + laptop, "--days", "0") == 0
    assert load_at(at(10, 15) + laptop) == 0
    for hour in (11, 12, 13, 14):
        cron(at(hour, 15) + laptop)
    assert_complete(s3, service, at(0), default_end(at(14, 15)))


def test_late_shard_of_an_hour_already_in_s3_is_uploaded(pipeline_env, s3, service, data_dir):
    """An hour first exported with shard #0 only gains #1 and #2 and a longer #0."""
    assert extract_at(at(7, 20), "--start", "20261128T06", "--end", "20261128T06") == 0
    assert load_at(at(7, 20)) == 0
    assert [p.name for p in _files(data_dir, 6)][-1] != f"{PID}_2026-11-28_6#2.json"
    cron(at(9, 15))  # 06 is final now
    assert [p.name for p in _files(data_dir, 6)][-1] == f"{PID}_2026-11-28_6#2.json"
    assert_complete(s3, service, at(6), at(6))


def test_lookback_refetches_the_trailing_hours(pipeline_env, service):
    cron(at(10, 15))
    before = len(service.requests)
    cron(at(11, 15))
    assert service.requests[before:] == [("20261128T05", "20261128T08")]  # 07 held, 2 back
    assert extract_at(at(11, 15), "--lookback-hours", "0") == 0
    assert service.requests[-1] == ("20261128T08", "20261128T08")


# --- 2. local damage never overwrites good data -----------------------------------------------


def _files(data_dir: Path, hour: int) -> list[Path]:
    return sorted((data_dir / str(PID) / "2026-11-28").glob(f"{PID}_2026-11-28_{hour}#*.json"))


def test_a_truncated_local_file_never_replaces_a_complete_object(
    pipeline_env, s3, service, data_dir, capsys
):
    """A crash or a full disk truncates a committed file: load.py keeps S3's object, says
    so, exits 1; the next extract fetches the hour again and all ends complete."""
    cron(at(10, 15))
    victim = _files(data_dir, 2)[0]  # an old hour, well outside the lookback
    good = victim.read_bytes()
    victim.write_bytes(good[: len(good) // 3])
    capsys.readouterr()
    assert load_at(at(10, 20)) == 1
    err = capsys.readouterr().err
    assert f"{victim} is damaged" in err and "S3's object is kept" in err
    assert "error: 1 local files are damaged" in err
    assert_complete(s3, service, at(0), at(7))  # the object was not touched
    cron(at(11, 15))
    assert victim.read_bytes() == good  # repaired from a new export
    assert_complete(s3, service, at(0), default_end(at(11, 15)))


def test_same_size_damage_is_caught_by_the_checksum_before_upload(
    pipeline_env, s3, service, data_dir, capsys
):
    """Zeroed blocks keep the size: the CRC-32 recorded at commit catches them."""
    assert extract_at(at(10, 15)) == 0
    victim = _files(data_dir, 3)[1]
    size = victim.stat().st_size
    with open(victim, "r+b") as f:
        f.seek(size // 2)
        f.write(b"\0" * 64)
    assert victim.stat().st_size == size
    assert load_at(at(10, 15)) == 1
    assert "with CRC-32" in capsys.readouterr().err
    held, _ = uuids_in_s3(s3)
    assert held[at(3)] < served(service, at(3), at(3))[at(3)]  # not uploaded
    cron(at(11, 15))
    assert_complete(s3, service, at(0), default_end(at(11, 15)))


def test_fsync_before_rename_and_folder_after(pipeline_env, monkeypatch, data_dir):
    """A committed file is durable: its data fsynced before the rename, its folder after."""
    events: list[tuple[str, str]] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        path = os.readlink(f"/proc/self/fd/{fd}")
        events.append(("dir" if os.path.isdir(path) else "file", path))
        return real_fsync(fd)

    def replace(src, dst):
        events.append(("rename", str(dst)))
        return real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    assert extract_at(at(10, 15), "--start", "20261128T01", "--end", "20261128T01") == 0
    committed = [dst for kind, dst in events if kind == "rename" and "/.manifests/" not in dst]
    assert len(committed) == 3
    for dst in committed:
        renamed = events.index(("rename", dst))
        name = Path(dst).name
        synced = [i for i, (k, p) in enumerate(events) if k == "file" and p.endswith(name)]
        assert synced and synced[0] < renamed, f"{name} not fsynced before its rename"
        folder = str(Path(dst).parent)
        assert ("dir", folder) in events[renamed:], f"{folder} not fsynced after"


def test_a_crash_between_commit_and_manifest_ends_complete(
    pipeline_env, s3, service, data_dir, monkeypatch
):
    """Killed after the files were renamed but before the manifest was written: load.py
    treats the unrecorded files as damaged or new, and cron converges."""
    real_save = LocalManifests.save
    calls = {"n": 0}

    def crash_once(self, day):
        calls["n"] += 1
        if calls["n"] == 1:
            raise KeyboardInterrupt  # the process dies here
        return real_save(self, day)

    cron(at(9, 15))
    monkeypatch.setattr(LocalManifests, "save", crash_once)
    assert extract_at(at(10, 15)) == 130
    monkeypatch.setattr(LocalManifests, "save", real_save)
    load_at(at(10, 15))  # may report damaged files; what matters is the end state
    for hour in (11, 12):
        extract_at(at(hour, 15))
        load_at(at(hour, 15))
    cron(at(13, 15))
    assert_complete(s3, service, at(0), default_end(at(13, 15)))


def test_an_unrecorded_file_is_uploaded_when_its_key_is_new(pipeline_env, s3, data_dir):
    """A local file with no manifest entry and no object is uploaded as is (older versions
    wrote such files); it never replaces an object (tests/test_load.py)."""
    cron(at(10, 15))
    path = data_dir / str(PID) / "2026-11-28" / f"{PID}_2026-11-28_3#7.json"
    path.write_bytes(b'{"uuid": "by-hand", "server_upload_time": "2026-11-28 03:00:00.000000"}\n')
    assert load_at(at(10, 20)) == 0
    held, _ = uuids_in_s3(s3)
    assert "by-hand" in held[at(3)]


def test_no_get_of_a_missing_manifest(pipeline_env, s3, service, monkeypatch):
    """Real S3 answers a GET of a missing key with 403 to a loader whose s3:ListBucket is
    limited to the prefixes (moto says 404): manifests and key maps are listed, then read."""
    from pipeline import s3 as s3mod

    from .test_load import s3_error_response

    real_client = s3mod.client

    def strict(*args, **kwargs):
        c = real_client(*args, **kwargs)

        def remember(params, context, **_):
            context["asked"] = (params["Bucket"], params["Key"])

        def get_object(model, context, **_):
            bucket, key = context["asked"]
            try:
                s3.head_object(Bucket=bucket, Key=key)
            except s3.exceptions.ClientError:
                return s3_error_response(403, "AccessDenied", "Access Denied")(model=model)
            return None

        c.meta.events.register("before-parameter-build.s3.GetObject", remember)
        c.meta.events.register("before-call.s3.GetObject", get_object)
        return c

    monkeypatch.setattr(s3mod, "client", strict)
    monkeypatch.setattr("load.client", strict)
    cron(at(10, 15))
    cron(at(11, 15))
    assert_complete(s3, service, at(0), default_end(at(11, 15)))
