"""Amplitude Export API → json_data/.

    python extract.py [--start HOUR] [--end HOUR] [--days N] [--dry-run]
                      [--lookback-hours N] [--window-hours N] [--wait]

HOUR is YYYYMMDDTHH (UTC) or YYYY-MM-DD. Defaults: from the newest hour of this project
already held (in json_data/ or S3), less a short lookback, plus every hour fetched before
Amplitude had finished it, to the newest hour Amplitude has finished. See README.md.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence
from contextlib import nullcontext
from datetime import UTC, datetime

from pipeline import lock, s3
from pipeline.cli import ArgumentParser, configure_logging, run
from pipeline.errors import UsageError
from pipeline.export_api import make_session
from pipeline.extraction import (
    DEFAULT_LOOKBACK_HOURS,
    Extractor,
    dry_run_lines,
    newest_held_hour,
    plan_windows,
)
from pipeline.hours import parse_hour
from pipeline.manifest import LocalManifests, S3Manifests, history
from pipeline.projects import KeyRegistry, check_project_id, fingerprint
from pipeline.settings import Settings, load_settings

log = logging.getLogger("pipeline.extract")


def parse_args(argv: Sequence[str] | None):
    parser = ArgumentParser(description="Export Amplitude events into json_data/.")
    parser.add_argument("--start", help="first hour, YYYYMMDDTHH or YYYY-MM-DD (UTC)")
    parser.add_argument("--end", help="last hour, inclusive, YYYYMMDDTHH or YYYY-MM-DD (UTC)")
    parser.add_argument(
        "--days", type=int, default=7, help="with nothing held yet: start this many days ago"
    )
    parser.add_argument(
        "--lookback-hours",
        type=int,
        default=DEFAULT_LOOKBACK_HOURS,
        help="also fetch again this many hours before the newest one held "
        f"(default {DEFAULT_LOOKBACK_HOURS})",
    )
    parser.add_argument(
        "--window-hours", type=int, default=24, help="hours per export request (default 24)"
    )
    parser.add_argument("--dry-run", action="store_true", help="print the requests and stop")
    parser.add_argument(
        "--wait", action="store_true", help="wait for another run on json_data/ to finish"
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    settings = load_settings()
    configure_logging(settings.log_level, settings.secrets())
    held_lock = (
        nullcontext()
        if args.dry_run
        else lock.hold(settings.json_data_dir, "extract.py", wait=args.wait)
    )
    with held_lock:
        return extract(args, settings)


def extract(args, settings: Settings) -> int:
    start = parse_hour(args.start, as_end=False, option="--start") if args.start else None
    end = parse_hour(args.end, as_end=True, option="--end") if args.end else None
    if start is not None and end is not None and start > end:
        raise UsageError(f"the end {args.end} is before the start {args.start}")
    base_url = settings.export_url
    data_dir, bucket, prefix = settings.json_data_dir, settings.s3_bucket, settings.s3_prefix
    explicit = check_project_id(settings.get("AMPLITUDE_PROJECT_ID"))

    client = s3.client(settings) if bucket else None
    held = s3.list_held(client, bucket, prefix) if client and bucket else {}
    registry = KeyRegistry(data_dir, client, bucket, prefix)
    api_key = settings.get("AMPLITUDE_API_KEY")
    key_print = fingerprint(api_key) if api_key else None
    project = explicit or (registry.lookup(key_print) if key_print else None)
    local = LocalManifests(data_dir)
    remote = S3Manifests(client, bucket, prefix) if client and bucket else None
    past = history(project, local, remote) if project else None
    newest = newest_held_hour(data_dir, held, project, past) if project else None
    if not bucket:
        log.warning("S3_BUCKET is not set: no gap check, and S3 does not move the start")
    if project is None and start is None:
        log.info("this key pair's project id is not known yet: starting --days back")
    plan = plan_windows(
        datetime.now(UTC),
        start,
        end,
        args.days,
        args.window_hours,
        newest,
        lookback_hours=args.lookback_hours,
        history=past,
    )

    if args.dry_run or not plan.windows:  # show the plan, or that there is nothing to do
        print("\n".join(dry_run_lines(plan, base_url)))
        return 0
    for note in plan.notes:
        log.warning(note)
    auth = (
        settings.require("AMPLITUDE_API_KEY", "extract.py"),
        settings.require("AMPLITUDE_SECRET_KEY", "extract.py"),
    )
    if explicit and key_print:
        registry.remember(key_print, explicit)

    def learned(pid: str) -> None:
        log.info("this key pair exports project %s: remembered", pid)
        if key_print:
            registry.remember(key_print, pid)

    extractor = Extractor(
        session=make_session(),
        base_url=base_url,
        auth=auth,
        data_dir=data_dir,
        prefix=prefix,
        held=held,
        project=project,
        explicit_project=explicit is not None,
        s3=client,
        bucket=bucket,
        remote=remote,
        local=local,
        on_project=learned,
    )
    summary = extractor.run(plan.windows)
    print("\n".join(summary.lines()))
    return 0


if __name__ == "__main__":
    sys.exit(run(main))
