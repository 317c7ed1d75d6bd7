"""Amplitude Export API → json_data/.

    python extract.py [--start HOUR] [--end HOUR] [--days N] [--dry-run]

HOUR is YYYYMMDDTHH (UTC) or YYYY-MM-DD. Defaults: from the newest hour already held (in
json_data/ or S3) to the newest hour Amplitude has finished. See README.md.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence
from datetime import UTC, datetime

from pipeline import s3
from pipeline.cli import ArgumentParser, configure_logging, run
from pipeline.export_api import make_session
from pipeline.extraction import Extractor, dry_run_lines, newest_held_hour, plan_windows
from pipeline.hours import parse_hour
from pipeline.settings import load_settings

log = logging.getLogger("pipeline.extract")


def parse_args(argv: Sequence[str] | None):
    parser = ArgumentParser(description="Export Amplitude events into json_data/.")
    parser.add_argument("--start", help="first hour, YYYYMMDDTHH or YYYY-MM-DD (UTC)")
    parser.add_argument("--end", help="last hour, inclusive, YYYYMMDDTHH or YYYY-MM-DD (UTC)")
    parser.add_argument(
        "--days", type=int, default=7, help="with nothing held yet: start this many days ago"
    )
    parser.add_argument(
        "--window-hours", type=int, default=24, help="hours per export request (default 24)"
    )
    parser.add_argument("--dry-run", action="store_true", help="print the requests and stop")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    settings = load_settings()
    configure_logging(settings.log_level, settings.secrets())
    start = parse_hour(args.start, as_end=False, option="--start") if args.start else None
    end = parse_hour(args.end, as_end=True, option="--end") if args.end else None
    base_url = settings.export_url

    held = {}
    if settings.s3_bucket:
        held = s3.list_held(s3.client(settings), settings.s3_bucket, settings.s3_prefix)
    newest = newest_held_hour(settings.json_data_dir, held)
    plan = plan_windows(datetime.now(UTC), start, end, args.days, args.window_hours, newest)

    if args.dry_run or not plan.windows:  # show the plan, or that there is nothing to do
        print("\n".join(dry_run_lines(plan, base_url)))
        return 0
    auth = (
        settings.require("AMPLITUDE_API_KEY", "extract.py"),
        settings.require("AMPLITUDE_SECRET_KEY", "extract.py"),
    )
    extractor = Extractor(
        session=make_session(),
        base_url=base_url,
        auth=auth,
        data_dir=settings.json_data_dir,
        prefix=settings.s3_prefix,
        held=held,
    )
    summary = extractor.run(plan.windows)
    print("\n".join(summary.lines()))
    return 0


if __name__ == "__main__":
    sys.exit(run(main))
