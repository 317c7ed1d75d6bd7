"""Issue 11: backfill.py extracts, uploads and prunes window by window, under a disk budget,
and a killed backfill continues where it stopped, nothing lost, nothing fetched twice."""

from __future__ import annotations

import gzip
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

import boto3
import pytest
import time_machine

import backfill
from local_stack.amplitude_server import ExportService, running
from pipeline import backfill as backfill_module
from pipeline.cli import run
from pipeline.layout import parse_key, parse_member, s3_key, scan_local
from pipeline.sample_events import ndjson

from .conftest import API_KEY, BUCKET, REGION, SECRET

REPO = Path(__file__).resolve().parent.parent
FIRST = datetime(2026, 10, 1, tzinfo=UTC)
NOW = datetime(2026, 11, 28, 10, 30, tzinfo=UTC)
PID = 123456


def make_service(days: int, **kw) -> ExportService:
    return ExportService(
        api_key=API_KEY,
        secret_key=SECRET,
        project_id=PID,
        first=FIRST,
        last=FIRST + timedelta(days=days) - timedelta(hours=1),
        events_per_hour=4,
        shards=2,
        empty_hours={FIRST + timedelta(hours=5)},
        **kw,
    )


def held_events(s3, bucket: str) -> Counter:
    """How often each uuid is in the bucket's export objects."""
    seen: Counter = Counter()
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix="amplitude/")
    for page in pages:
        for obj in page.get("Contents", []):
            parsed = parse_key("amplitude", obj["Key"])
            body = s3.get_object(Bucket=bucket, Key=obj["Key"])["Body"].read()
            body = gzip.decompress(body) if parsed[1] else body
            seen.update(json.loads(line)["uuid"] for line in body.splitlines())
    return seen


def served_uuids(service: ExportService) -> set[str]:
    return {e["uuid"] for _, events in service.members(service.first, service.last) for e in events}


def local_bytes(data_dir: Path) -> int:
    """json_data/ as the budget counts it: export files and staging, not the manifests."""
    total = 0
    for path in data_dir.rglob("*"):
        rel = path.relative_to(data_dir).as_posix()
        if path.is_file() and not rel.startswith(".manifests/") and rel != ".lock":
            total += path.stat().st_size
    return total


def test_backfill_uploads_prunes_and_stays_under_the_budget(
    env, s3, kms_key, data_dir, monkeypatch, capsys
):
    service = make_service(days=8)
    env.setenv("S3_BUCKET", BUCKET)
    env.setenv("KMS_KEY_ID", kms_key)
    env.setenv("S3_GZIP", "true")
    one_day = 4 * 23 * 1700  # about one window of these events, unpacked
    budget = 3 * one_day
    samples: list[int] = []
    real_committed = backfill_module.Budget.committed

    def sampled(self, size):
        real_committed(self, size)
        samples.append(local_bytes(data_dir))

    monkeypatch.setattr(backfill_module.Budget, "committed", sampled)
    real_upload_all = backfill_module.upload.upload_all

    def slow_upload_all(*args, **kwargs):  # uploads slower than downloads, as on a laptop
        time.sleep(0.3)
        return real_upload_all(*args, **kwargs)

    monkeypatch.setattr(backfill_module.upload, "upload_all", slow_upload_all)
    with running(service) as url, time_machine.travel(NOW, tick=False):
        env.setenv("AMPLITUDE_EXPORT_URL", url)
        code = run(
            backfill.main,
            ["--start", "2026-10-01", "--end", "2026-10-08", "--max-local-gb", str(budget / 1e9)],
        )
    out, err = capsys.readouterr()
    assert code == 0, out
    # under cron (no terminal): a line per window for its download and one for its upload
    assert err.count("files written") == 8 and err.count("uploaded and pruned") == 8
    assert "%|" not in err  # no progress bar off a terminal
    seen = held_events(s3, BUCKET)
    assert set(seen) == served_uuids(service) and max(seen.values()) == 1
    assert scan_local(data_dir) == []  # every file pruned once in S3
    assert len(samples) == 8 and max(samples) <= budget
    assert "8 hours" not in out and "0 hours were complete in S3 already" in out
    published = s3.list_objects_v2(Bucket=BUCKET, Prefix=f"amplitude-manifests/{PID}/")
    assert len(published["Contents"]) == 8  # one manifest a day, beside the data


def test_a_second_backfill_over_the_same_range_fetches_nothing(env, s3, kms_key, data_dir, capsys):
    service = make_service(days=3)
    env.setenv("S3_BUCKET", BUCKET)
    env.setenv("KMS_KEY_ID", kms_key)
    argv = ["--start", "2026-10-01", "--end", "2026-10-03"]
    with running(service) as url, time_machine.travel(NOW, tick=False):
        env.setenv("AMPLITUDE_EXPORT_URL", url)
        env.setenv("AMPLITUDE_PROJECT_ID", str(PID))
        assert run(backfill.main, argv) == 0
        asked = len(service.requests)
        assert run(backfill.main, argv) == 0
        assert run(backfill.main, [*argv, "--dry-run"]) == 0
    assert len(service.requests) == asked  # complete in S3: not fetched again
    out = capsys.readouterr().out
    assert "72 hours were complete in S3 already" in out
    assert "would fetch 0 window(s)" in out


def test_an_hour_whose_object_is_gone_is_not_complete(env, s3, kms_key, data_dir, capsys):
    """The skip rule when it would be wrong: the manifest says final, but an object of the
    hour was deleted since: that day is fetched again and the object comes back."""
    service = make_service(days=2)
    env.setenv("S3_BUCKET", BUCKET)
    env.setenv("KMS_KEY_ID", kms_key)
    argv = ["--start", "2026-10-01", "--end", "2026-10-02"]
    with running(service) as url, time_machine.travel(NOW, tick=False):
        env.setenv("AMPLITUDE_EXPORT_URL", url)
        env.setenv("AMPLITUDE_PROJECT_ID", str(PID))
        assert run(backfill.main, argv) == 0
        gone = f"amplitude/{PID}/2026-10-02/{PID}_2026-10-02_7#1.json"
        s3.delete_object(Bucket=BUCKET, Key=gone)
        asked = len(service.requests)
        assert run(backfill.main, argv) == 0
    assert service.requests[asked:] == [("20261002T07", "20261002T07")]  # that hour alone
    assert s3.head_object(Bucket=BUCKET, Key=gone)["ContentLength"] > 0
    assert "47 hours were complete in S3 already" in capsys.readouterr().out


@pytest.fixture
def server_env(moto_server, data_dir, tmp_path) -> dict[str, str]:
    bucket = f"backfill-{uuid.uuid4().hex[:10]}"
    kw = {"endpoint_url": moto_server, "region_name": REGION}
    boto3.client("s3", **kw).create_bucket(Bucket=bucket)
    key_id = boto3.client("kms", **kw).create_key()["KeyMetadata"]["KeyId"]
    return {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(tmp_path),
        "AWS_ENDPOINT_URL": moto_server,
        "AWS_ACCESS_KEY_ID": "testing-access-key",
        "AWS_SECRET_ACCESS_KEY": "testing-secret-key",
        "AWS_DEFAULT_REGION": REGION,
        "AWS_CONFIG_FILE": str(tmp_path / "none"),
        "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "none"),
        "S3_BUCKET": bucket,
        "KMS_KEY_ID": key_id,
        "JSON_DATA_DIR": str(data_dir),
        "AMPLITUDE_API_KEY": API_KEY,
        "AMPLITUDE_SECRET_KEY": SECRET,
        "AMPLITUDE_PROJECT_ID": str(PID),
    }


def test_kill_9_mid_backfill_then_the_same_command_finishes_the_job(server_env, data_dir):
    """SIGKILL while windows download and upload; the rerun fetches only what was not
    complete in S3, and the bucket ends byte for byte what Amplitude served, each uuid once."""
    service = make_service(days=5, delay_for=lambda start, end: 0.3)
    argv = [sys.executable, "backfill.py", "--start", "2026-10-01", "--end", "2026-10-05"]
    with running(service) as url:
        env = {**server_env, "AMPLITUDE_EXPORT_URL": url}
        proc = subprocess.Popen(argv + ["--parallel", "2"], cwd=REPO, env=env)
        deadline = time.monotonic() + 60
        while len(service.answered) < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        assert len(service.answered) >= 3, "killed too late to prove anything"
        s3 = boto3.client("s3", endpoint_url=server_env["AWS_ENDPOINT_URL"], region_name=REGION)
        days_done = {
            o["Key"].rsplit("/", 1)[1].removesuffix(".json")
            for o in s3.list_objects_v2(
                Bucket=server_env["S3_BUCKET"], Prefix=f"amplitude-manifests/{PID}/"
            ).get("Contents", [])
        }
        before = len(service.requests)
        again = subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True)
        assert again.returncode == 0, again.stderr
    refetched = {start[:8] for start, _ in service.requests[before:]}
    assert not refetched & {d.replace("-", "") for d in days_done}  # nothing complete again
    seen = held_events(s3, server_env["S3_BUCKET"])
    assert set(seen) == served_uuids(service) and max(seen.values()) == 1
    for name, events in service.members(service.first, service.last):  # byte for byte
        key = s3_key("amplitude", parse_member(name))
        body = s3.get_object(Bucket=server_env["S3_BUCKET"], Key=key)["Body"].read()
        assert body == ndjson(events), key
    assert scan_local(data_dir) == []
    assert not [p for p in data_dir.iterdir() if p.name.startswith(".tmp-")]
