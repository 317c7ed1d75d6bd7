"""Benchmark: backfill.py with --parallel 1, the default and 4, on a 30-day range.

    .venv/bin/python -m bench.backfill_bench [--days 30] [--rounds 2] [--mb-per-day 80]

The local Export API stand-in behaves as the real one under load: a time to first byte of 2 s
per window (plus a little per MB), 10 MB/s per connection, and 429 above 5 requests at once.
It serves one generated day for every day asked (renamed), so a month costs one day's
generation. S3 is moto's server (a separate process); S3_GZIP=true, as the README recommends
for backfills. Each run gets a fresh data folder and prefix; the settings alternate per round.

Per setting, the median of the rounds: wall time, peak local disk of json_data/ (sampled every
0.1 s) against the budget (3 windows' worth), and peak RSS (wait4); and `extract.py --parallel N`
alone on the same range (download and unpack only), which isolates the concurrent windows from
the uploads (on a 2-core machine, moto's server and the uploader share the CPU with them). It
also prints what `extract.py` then `load.py` would need locally: the whole range, unpacked.
Not a test: CI does not run it.
"""

from __future__ import annotations

import argparse
import gzip
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import boto3

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.load_bench import CREDS, REGION, _creds, start_moto  # noqa: E402
from local_stack.amplitude_server import ExportService, running  # noqa: E402
from pipeline import sample_events  # noqa: E402
from pipeline.extraction import DEFAULT_PARALLEL  # noqa: E402

PID = 424242
BUCKET = "backfill-bench"
FIRST = datetime(2026, 10, 1, tzinfo=UTC)


def template_day(mb: int, shards: int = 4) -> tuple[dict[tuple[int, int], bytes], int]:
    """One day of Amplitude-shaped members, about `mb` MB unpacked: (members, raw bytes)."""
    rng = random.Random(11)
    pool = [sample_events.make_event(PID, FIRST, rng) for _ in range(2000)]
    per_member = mb * 1_000_000 // (24 * shards)
    members, raw = {}, 0
    for hour in range(24):
        for shard in range(shards):
            lines, size, i = [], 0, 0
            while size < per_member:
                event = dict(pool[(i * 7 + shard + hour) % len(pool)])
                event["uuid"] = f"{hour:02d}-{shard}-{i:08d}"
                line = sample_events.ndjson([event])
                lines.append(line)
                size += len(line)
                i += 1
            members[(hour, shard)] = gzip.compress(b"".join(lines), compresslevel=6, mtime=0)
            raw += size
    return members, raw


def du(path: Path) -> int:
    total = 0
    for dirpath, _, files in os.walk(path):
        for name in files:
            try:
                total += os.stat(os.path.join(dirpath, name)).st_size
            except FileNotFoundError:
                pass
    return total


def run_backfill(env: dict, data: Path, parallel: int, days: int, budget_gb: float | None) -> dict:
    """One backfill.py run (extract.py alone without a budget) as a subprocess: seconds, peak
    local bytes, peak RSS."""
    end = FIRST + timedelta(days=days - 1)
    command = "backfill.py" if budget_gb is not None else "extract.py"
    argv = [
        sys.executable,
        str(REPO / command),
        "--start",
        f"{FIRST:%Y-%m-%d}",
        "--end",
        f"{end:%Y-%m-%d}",
        "--parallel",
        str(parallel),
    ]
    if budget_gb is not None:
        argv += ["--max-local-gb", f"{budget_gb}"]
    peak = [0]
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], du(data))
            time.sleep(0.1)

    sampler = threading.Thread(target=sample, daemon=True)
    started = time.perf_counter()
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    sampler.start()
    _, status, usage = os.wait4(proc.pid, 0)
    elapsed = time.perf_counter() - started
    done.set()
    sampler.join()
    out, err = proc.stdout.read().decode(), proc.stderr.read().decode()
    if os.waitstatus_to_exitcode(status) != 0:
        print(out[-2000:], err[-3000:])
        raise SystemExit(f"{command} --parallel {parallel} failed")
    return {"seconds": elapsed, "peak_disk": peak[0], "rss": usage.ru_maxrss * 1024, "out": out}


def clear(s3, prefix: str) -> None:
    for p in (f"{prefix}/", f"{prefix}-manifests/"):
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=p):
            keys = [{"Key": o["Key"]} for o in page.get("Contents", [])]
            if keys:
                s3.delete_objects(Bucket=BUCKET, Delete={"Objects": keys, "Quiet": True})


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--mb-per-day", type=int, default=80)
    parser.add_argument("--ttfb", type=float, default=2.0, help="seconds before the first byte")
    parser.add_argument("--mbps", type=float, default=10.0, help="MB/s per connection")
    parser.add_argument("--shards", type=int, default=2, help="files per hour")
    args = parser.parse_args()
    members, raw_day = template_day(args.mb_per_day, args.shards)
    zipped_day = sum(len(b) for b in members.values())
    budget = 3 * raw_day * 1.15 / 1e9  # three windows' worth, zips included
    print(
        f"one day (one window): {raw_day / 1e6:.0f} MB unpacked, {zipped_day / 1e6:.1f} MB "
        f"zipped; {args.days} days; TTFB {args.ttfb} s, {args.mbps} MB/s per connection, 429 "
        f"above 5 at once; budget {budget:.2f} GB"
    )
    print(
        f"extract.py then load.py would hold {args.days * raw_day / 1e9:.2f} GB in json_data/ "
        "before the first upload"
    )
    service = ExportService(
        project_id=PID,
        first=FIRST,
        last=FIRST + timedelta(days=args.days),
        template_day=members,
        ttfb=args.ttfb,
        ttfb_per_mb=0.02,
        bandwidth=args.mbps * 1e6,
        max_concurrent=5,
    )
    settings = sorted({1, DEFAULT_PARALLEL, 4})
    results: dict[int, list[dict]] = {n: [] for n in settings}
    alone: dict[int, list[float]] = {n: [] for n in settings}
    with tempfile.TemporaryDirectory(prefix="backfill-bench-") as tmp, running(service) as url:
        work = Path(tmp)
        proc, s3_url = start_moto(work / "moto.log")
        try:
            s3 = boto3.client("s3", endpoint_url=s3_url, region_name=REGION, **_creds())
            s3.create_bucket(Bucket=BUCKET)
            kms = boto3.client("kms", endpoint_url=s3_url, region_name=REGION, **_creds())
            key_id = kms.create_key()["KeyMetadata"]["KeyId"]
            for r in range(args.rounds):
                order = settings[r % len(settings) :] + settings[: r % len(settings)]
                for n in order:
                    prefix = f"r{r}-p{n}"
                    data = work / prefix
                    env = {
                        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
                        "HOME": str(work),
                        "AWS_DEFAULT_REGION": REGION,
                        "AWS_ENDPOINT_URL": s3_url,
                        "AWS_CONFIG_FILE": str(work / "none"),
                        "AWS_SHARED_CREDENTIALS_FILE": str(work / "none"),
                        **CREDS,
                        "AMPLITUDE_API_KEY": service.api_key,
                        "AMPLITUDE_SECRET_KEY": service.secret_key,
                        "AMPLITUDE_EXPORT_URL": url,
                        "AMPLITUDE_PROJECT_ID": str(PID),
                        "S3_BUCKET": BUCKET,
                        "S3_PREFIX": prefix,
                        "S3_GZIP": "true",
                        "KMS_KEY_ID": key_id,
                        "JSON_DATA_DIR": str(data),
                    }
                    result = run_backfill(env, data, n, args.days, budget)
                    results[n].append(result)
                    disk, rss = result["peak_disk"] / 1e6, result["rss"] / 1e6
                    print(
                        f"round {r + 1}: --parallel {n}: {result['seconds']:6.1f} s, "
                        f"peak local {disk:6.0f} MB, peak RSS {rss:4.0f} MB"
                    )
                    clear(s3, prefix)
                    shutil.rmtree(data, ignore_errors=True)
                    extract_env = {k: v for k, v in env.items() if k != "S3_BUCKET"}
                    only = run_backfill(extract_env, data, n, args.days, None)
                    alone[n].append(only["seconds"])
                    print(f"round {r + 1}: extract.py --parallel {n}: {only['seconds']:6.1f} s")
                    shutil.rmtree(data, ignore_errors=True)
        finally:
            proc.terminate()
            proc.wait(timeout=10)
    print(f"\nmedian of {args.rounds} rounds, {args.days} windows:")
    med = {n: statistics.median(r["seconds"] for r in results[n]) for n in settings}
    for n in settings:
        disk = max(r["peak_disk"] for r in results[n])
        rss = max(r["rss"] for r in results[n])
        print(
            f"  --parallel {n}: {med[n]:6.1f} s ({med[1] / med[n]:.2f}x --parallel 1), "
            f"peak local {disk / 1e9:.2f} GB (budget {budget:.2f} GB), peak RSS {rss / 1e6:.0f} MB"
        )
    print(f"  429s answered by the stand-in: {service.throttled}")
    solo = {n: statistics.median(alone[n]) for n in settings}
    print("extract.py alone (download and unpack, no upload), same range:")
    for n in settings:
        print(f"  --parallel {n}: {solo[n]:6.1f} s ({solo[1] / solo[n]:.2f}x --parallel 1)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
