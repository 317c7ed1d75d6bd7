"""Amplitude Export API → json_data/.

    python extract.py [--start HOUR] [--end HOUR] [--days N] [--dry-run] [--project NAME]
                      [--lookback-hours N] [--window-hours N] [--wait]

HOUR is YYYYMMDDTHH (UTC) or YYYY-MM-DD. Defaults, per project: from the newest hour of that
project already held (in json_data/ or S3), less a short lookback, plus every hour fetched
before Amplitude had finished it, to the newest hour Amplitude has finished. Several projects
(AMPLITUDE_PROJECTS) run in turn; one's failure does not stop the others. See README.md.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence
from contextlib import nullcontext
from datetime import UTC, datetime

from pipeline import lock
from pipeline.cli import ArgumentParser, configure_logging, run
from pipeline.context import (
    Shared,
    add_fetch_options,
    connect,
    each_project,
    extractor_for,
    project_of,
)
from pipeline.errors import UsageError
from pipeline.extraction import (
    DEFAULT_LOOKBACK_HOURS,
    check_parallel,
    dry_run_lines,
    newest_held_hour,
    plan_windows,
)
from pipeline.hours import parse_hour
from pipeline.manifest import history
from pipeline.projects import Source, configured, select
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
        "--lookback-hours",
        type=int,
        default=DEFAULT_LOOKBACK_HOURS,
        help="also fetch again this many hours before the newest one held "
        f"(default {DEFAULT_LOOKBACK_HOURS})",
    )
    parser.add_argument("--dry-run", action="store_true", help="print the requests and stop")
    add_fetch_options(parser)
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    settings = load_settings()
    configure_logging(settings.log_level, settings.secrets())
    check_parallel(args.parallel)
    sources = select(configured(settings), args.project)
    if not args.dry_run:
        for source in sources:  # a missing key is a settings error, before anything runs
            source.auth()
    start = parse_hour(args.start, as_end=False, option="--start") if args.start else None
    end = parse_hour(args.end, as_end=True, option="--end") if args.end else None
    if start is not None and end is not None and start > end:
        raise UsageError(f"the end {args.end} is before the start {args.start}")
    held_lock = (
        nullcontext()
        if args.dry_run
        else lock.hold(settings.json_data_dir, "extract.py", wait=args.wait)
    )
    with held_lock:
        shared = connect(settings)
        return each_project(
            sources, lambda source: extract(args, shared, source, start, end), "python extract.py"
        )


def extract(args, shared: Shared, source: Source, start, end) -> int:
    """One project: plan its windows, then fetch them (or show them, with --dry-run)."""
    settings = shared.settings
    project = project_of(shared, source)
    past = history(project, shared.local, shared.remote) if project else None
    newest = (
        newest_held_hour(settings.json_data_dir, shared.held, project, past) if project else None
    )
    if project is None and start is None:
        log.info(
            "project %s: its project id is not known yet (a key pair never used before): "
            "starting --days back",
            source.name,
        )
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
        print("\n".join(dry_run_lines(plan, source.export_url)))
        return 0
    for note in plan.notes:
        log.warning(note)
    summary = extractor_for(shared, source, project, args.parallel).run(plan.windows)
    print("\n".join(summary.lines()))
    return 0


if __name__ == "__main__":
    sys.exit(run(main))
