"""Benchmark: extract's unpack against `unzip` + `gzip -d`, and extract.py's peak RSS.

    .venv/bin/python -m bench.extract_bench [--mb 300] [--rounds 3]

Generates an Amplitude-shaped export of at least --mb MB uncompressed, then in the same run:
1. times modules.unpack_archive against `unzip -q` followed by `gzip -d` on the same archive
   (alternating, medians) and prints the ratio (CLI seconds / ours: above 1 means faster);
2. runs extract.py as a subprocess against the local Amplitude stand-in serving that archive
   and prints its peak RSS (os.wait4).
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
import time
import zipfile
from datetime import UTC, datetime, timedelta
from pathlib import Path

import modules
from local_stack.amplitude_server import ExportService, running
from pipeline import sample_events

REPO = Path(__file__).resolve().parent.parent
PID = 424242


def build_export(path: Path, target_mb: int, shards: int = 4) -> tuple[int, int]:
    """Write a zip of ~target_mb MB of gunzipped events; return (raw bytes, events)."""
    rng = random.Random(7)
    hour = datetime(2026, 11, 20, tzinfo=UTC)
    raw_total = events_total = 0
    # A pool of realistic events, re-stamped per line so members differ (generation is not
    # what is measured; the unpack is).
    pool = [sample_events.make_event(PID, hour, rng) for _ in range(2000)]
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as zf:
        while raw_total < target_mb * 1_000_000:
            for shard in range(shards):
                name = sample_events.member_name(PID, hour, shard)
                with zf.open(name, "w", force_zip64=True) as member:
                    with gzip.GzipFile(fileobj=member, mode="wb", compresslevel=6, mtime=0) as gz:
                        for i in range(5000):
                            event = dict(pool[(i * 7 + shard) % len(pool)])
                            event["uuid"] = f"{hour:%Y%m%d%H}-{shard}-{i:08d}"
                            line = sample_events.ndjson([event])
                            gz.write(line)
                            raw_total += len(line)
                            events_total += 1
            hour += timedelta(hours=1)
    return raw_total, events_total


def time_ours(archive: Path, work: Path) -> float:
    out = work / "ours"
    started = time.perf_counter()
    modules.unpack_archive(archive, out)
    elapsed = time.perf_counter() - started
    shutil.rmtree(out)
    return elapsed


def time_cli(archive: Path, work: Path) -> float:
    out = work / "cli"
    out.mkdir()
    started = time.perf_counter()
    subprocess.run(["unzip", "-q", str(archive), "-d", str(out)], check=True)
    members = [str(p) for p in out.rglob("*.gz")]
    subprocess.run(["gzip", "-d", *members], check=True)
    elapsed = time.perf_counter() - started
    shutil.rmtree(out)
    return elapsed


def extract_peak_rss(archive: Path, work: Path) -> tuple[int, float, int]:
    """Run extract.py against the stand-in serving `archive`; (peak RSS bytes, seconds, rc)."""
    service = ExportService(api_key="bench", secret_key="bench-secret", fixed_archive=archive)
    data_dir = work / "json_data"
    with running(service) as url:
        env = {
            "PATH": os.environ["PATH"],
            "AMPLITUDE_API_KEY": "bench",
            "AMPLITUDE_SECRET_KEY": "bench-secret",
            "AMPLITUDE_EXPORT_URL": url,
            "JSON_DATA_DIR": str(data_dir),
            "LOG_LEVEL": "WARNING",
        }
        started = time.perf_counter()
        proc = subprocess.Popen(
            [
                sys.executable,
                str(REPO / "extract.py"),
                "--start",
                "20261120T00",
                "--end",
                "20261120T00",
            ],
            env=env,
            cwd=work,
            stdout=subprocess.DEVNULL,
        )
        _, status, usage = os.wait4(proc.pid, 0)
        elapsed = time.perf_counter() - started
    shutil.rmtree(data_dir, ignore_errors=True)
    return usage.ru_maxrss * 1024, elapsed, os.waitstatus_to_exitcode(status)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=int, default=300, help="uncompressed size (MB)")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    for tool in ("unzip", "gzip"):
        if shutil.which(tool) is None:
            sys.exit(f"error: {tool} is not installed (apt-get install {tool})")
    with tempfile.TemporaryDirectory(prefix="extract-bench-") as tmp:
        work = Path(tmp)
        archive = work / "export.zip"
        raw, events = build_export(archive, args.mb)
        zipped = archive.stat().st_size
        print(
            f"export: {raw / 1e6:.0f} MB uncompressed, {zipped / 1e6:.0f} MB zipped, "
            f"{events} events"
        )
        ours, cli = [], []
        for _ in range(args.rounds):
            ours.append(time_ours(archive, work))
            cli.append(time_cli(archive, work))
        o, c = statistics.median(ours), statistics.median(cli)
        print(
            f"unpack, median of {args.rounds}: modules.unpack_archive {o:.2f} s "
            f"({raw / 1e6 / o:.0f} MB/s), unzip + gzip -d {c:.2f} s ({raw / 1e6 / c:.0f} MB/s)"
        )
        print(f"ratio: {c / o:.2f}x the CLI pair (target >= 1.5x)")
        rss, seconds, rc = extract_peak_rss(archive, work)
        print(
            f"extract.py on the stand-in: exit {rc}, {seconds:.2f} s, "
            f"peak RSS {rss / 1e6:.0f} MB (target < 100 MB)"
        )


if __name__ == "__main__":
    main()
