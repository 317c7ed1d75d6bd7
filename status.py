"""Is everything there? Per hour and project: Amplitude, json_data/, S3 and Snowflake.

python status.py [--days N | --start HOUR --end HOUR] [--project NAME] [--html PATH]

Read-only and takes no lock: safe beside cron. Prints a calendar (days by 24 hours), a
totals line and every mismatch with what to run to repair it. Exit status 0 when every
finished hour is complete and reconciled, 1 otherwise, 2 for bad usage or settings.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

from pipeline import stages, status_view
from pipeline.cli import ArgumentParser, configure_logging, run
from pipeline.errors import PipelineError
from pipeline.hours import parse_hour
from pipeline.settings import load_settings
from pipeline.status import span


def parse_args(argv: Sequence[str] | None):
    parser = ArgumentParser(prog="status.py", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--days", type=int, metavar="N", help="days back from the newest finished hour (default 7)"
    )
    parser.add_argument(
        "--start", metavar="HOUR", help="first hour, YYYYMMDDTHH or YYYY-MM-DD (UTC)"
    )
    parser.add_argument(
        "--end",
        metavar="HOUR",
        help="last hour, inclusive (default: the current hour; unfinished ones are not checked)",
    )
    parser.add_argument("--project", metavar="NAME", help="only this project of AMPLITUDE_PROJECTS")
    parser.add_argument("--html", type=Path, metavar="PATH", help="also write an HTML page")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    settings = load_settings()
    configure_logging(settings.log_level, settings.secrets())
    now = datetime.now(UTC)
    start = parse_hour(args.start, as_end=False, option="--start") if args.start else None
    end = parse_hour(args.end, as_end=True, option="--end") if args.end else None
    first, last = span(now, args.days, start, end)
    report = stages.report(settings, now, first, last, args.project)

    colour = sys.stdout.isatty() and not os.environ.get("NO_COLOR")
    print("\n".join(status_view.terminal(report, colour=colour)))
    if args.html:
        status_view.write_page(report, args.html)
        print(f"wrote {args.html}")
    if not report.ok:
        raise PipelineError(status_view.failure(report))
    return 0


if __name__ == "__main__":
    sys.exit(run(main))
