"""Backfill a range from Amplitude to S3 under a local disk budget, resumably.

    python backfill.py --start HOUR --end HOUR [--parallel N] [--max-local-gb G] [--copy]
                       [--window-hours N] [--project NAME] [--dry-run] [--wait]

Extracts, uploads and prunes window by window: a window is uploaded (and deleted locally
once S3 holds it) while the next ones download, so json_data/ stays under --max-local-gb
whatever the range. Run the same command again after any interruption: hours already
complete in S3 are not fetched again. See README.md, "Backfill a range".
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence
from contextlib import nullcontext

from pipeline import backfill, lock, upload
from pipeline.cli import ArgumentParser, configure_logging, run
from pipeline.context import (
    Shared,
    add_fetch_options,
    connect,
    each_project,
    extractor_for,
    project_of,
)
from pipeline.errors import PipelineError, UsageError
from pipeline.extraction import check_parallel
from pipeline.hours import format_hour, parse_hour
from pipeline.projects import Source, configured, select
from pipeline.settings import load_settings

log = logging.getLogger("pipeline.backfill")


def parse_args(argv: Sequence[str] | None):
    parser = ArgumentParser(prog="backfill.py", description=__doc__.splitlines()[0])
    parser.add_argument("--start", required=True, help="first hour, YYYYMMDDTHH or YYYY-MM-DD")
    parser.add_argument("--end", required=True, help="last hour, inclusive")
    parser.add_argument(
        "--max-local-gb",
        type=float,
        default=backfill.DEFAULT_MAX_LOCAL_GB,
        help=f"local disk json_data/ may use (default {backfill.DEFAULT_MAX_LOCAL_GB:g} GB)",
    )
    parser.add_argument("--copy", action="store_true", help="then load Snowflake (COPY, MERGE)")
    parser.add_argument("--dry-run", action="store_true", help="show what it would fetch")
    add_fetch_options(parser)
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    settings = load_settings()
    configure_logging(settings.log_level, settings.secrets())
    check_parallel(args.parallel)
    if args.max_local_gb <= 0:
        raise UsageError("--max-local-gb must be more than 0")
    start = parse_hour(args.start, as_end=False, option="--start")
    end = parse_hour(args.end, as_end=True, option="--end")
    if start > end:
        raise UsageError(f"the end {args.end} is before the start {args.start}")
    settings.require("S3_BUCKET", "backfill.py")
    kms_key = settings.require("KMS_KEY_ID", "backfill.py (it uploads, always encrypted)")
    sources = select(configured(settings), args.project)
    for source in sources:
        source.auth()
    held_lock = (
        nullcontext()
        if args.dry_run
        else lock.hold(settings.json_data_dir, "backfill.py", wait=args.wait)
    )
    uploaded: list[str] = []
    with held_lock:
        # a pool as large as the uploads in flight: backfill.UPLOADERS windows of 16 files
        shared = connect(settings, backfill.UPLOADERS * upload.CONCURRENCY + 4)
        status = each_project(
            sources,
            lambda source: one_project(args, shared, source, start, end, kms_key, uploaded),
            f"python backfill.py --start {args.start} --end {args.end}",
        )
    if args.copy and not args.dry_run:
        from pipeline.warehouse import run_copy  # Snowflake only when asked for

        status = run_copy(settings, uploaded)
    return status


def one_project(args, shared: Shared, source: Source, start, end, kms_key, uploaded) -> int:
    """Backfill one project: leftovers first, then every incomplete window of the range."""
    project = project_of(shared, source)
    windows, complete = backfill.windows_to_fetch(shared, project, start, end, args.window_hours)
    span = f"{format_hour(start)} to {format_hour(end)}"
    if args.dry_run:
        print(
            f"would fetch {len(windows)} window(s) of {span} ({complete} hours already complete "
            f"in S3), {args.parallel} at once, keeping json_data/ under {args.max_local_gb:g} GB"
        )
        return 0
    budget = backfill.Budget(args.max_local_gb * 1e9)
    with backfill.Uploader(shared, kms_key, budget) as uploader:
        budget.on_commit = uploader.submit
        budget.check = lambda: backfill.check_uploader(uploader)
        backfill.upload_leftovers(uploader)
        windows, complete = backfill.windows_to_fetch(
            shared, project, start, end, args.window_hours
        )
        extractor = extractor_for(shared, source, project, args.parallel)
        extractor.guard = uploader.lock
        summary = extractor.run(windows, budget)
    backfill.check_uploader(uploader)
    totals = uploader.totals
    uploaded += totals.uploaded
    print("\n".join(summary.lines()))
    print(
        f"backfill {span}: {complete} hours were complete in S3 already; "
        f"uploaded {len(totals.uploaded)} files ({totals.bytes_sent / 1e6:.1f} MB sent), "
        f"pruned {totals.pruned}, published {totals.published} hours; "
        f"peak local {budget.peak / 1e9:.2f} GB of {args.max_local_gb:g} GB"
    )
    if totals.failed or totals.damaged:
        raise PipelineError(
            f"{len(totals.failed)} uploads failed and {len(totals.damaged)} local files are "
            "damaged (logged above): run the same backfill command again"
        )
    return 0


if __name__ == "__main__":
    sys.exit(run(main))
