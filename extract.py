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
from dataclasses import dataclass
from datetime import UTC, datetime

from pipeline import lock, s3
from pipeline.cli import ArgumentParser, configure_logging, run
from pipeline.errors import PipelineError, UsageError
from pipeline.export_api import make_session
from pipeline.extraction import (
    DEFAULT_LOOKBACK_HOURS,
    DEFAULT_PARALLEL,
    MAX_PARALLEL,
    Extractor,
    check_parallel,
    dry_run_lines,
    newest_held_hour,
    plan_windows,
)
from pipeline.hours import parse_hour
from pipeline.manifest import LocalManifests, S3Manifests, history
from pipeline.projects import KeyRegistry, Source, configured, fingerprint, select
from pipeline.s3 import HeldObject
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
    parser.add_argument(
        "--parallel",
        type=int,
        default=DEFAULT_PARALLEL,
        help=f"windows downloaded at once, 1 to {MAX_PARALLEL} (default {DEFAULT_PARALLEL})",
    )
    parser.add_argument("--project", help="only this project of AMPLITUDE_PROJECTS")
    parser.add_argument("--dry-run", action="store_true", help="print the requests and stop")
    parser.add_argument(
        "--wait", action="store_true", help="wait for another run on json_data/ to finish"
    )
    return parser.parse_args(argv)


@dataclass
class Shared:
    """What every project of a run uses alike: S3, the listing, the manifests."""

    settings: Settings
    client: object | None
    held: dict[str, HeldObject]
    local: LocalManifests
    remote: S3Manifests | None
    registry: KeyRegistry


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
        if len(sources) == 1:  # one project: its own error line, as it is
            return extract(args, shared, sources[0], start, end)
        failed: list[tuple[Source, PipelineError]] = []
        for source in sources:
            print(f"project {source.name}:")
            try:
                extract(args, shared, source, start, end)
            except UsageError:
                raise
            except PipelineError as exc:
                log.error("project %s failed: %s", source.name, exc)
                failed.append((source, exc))
        if failed:
            raise PipelineError(
                f"{len(failed)} of {len(sources)} projects failed ("
                + "; ".join(f"{s.name}: {exc}" for s, exc in failed)
                + "); the others completed. Rerun one alone with: "
                + ", ".join(f"python extract.py --project {s.name}" for s, _ in failed)
            )
        return 0


def connect(settings: Settings) -> Shared:
    data_dir, bucket, prefix = settings.json_data_dir, settings.s3_bucket, settings.s3_prefix
    client = s3.client(settings) if bucket else None
    held = s3.list_held(client, bucket, prefix) if client and bucket else {}
    if not bucket:
        log.warning("S3_BUCKET is not set: no gap check, and S3 does not move the start")
    return Shared(
        settings=settings,
        client=client,
        held=held,
        local=LocalManifests(data_dir),
        remote=S3Manifests(client, bucket, prefix) if client and bucket else None,
        registry=KeyRegistry(data_dir, client, bucket, prefix),
    )


def extract(args, shared: Shared, source: Source, start, end) -> int:
    settings = shared.settings
    data_dir, prefix = settings.json_data_dir, settings.s3_prefix
    key_print = fingerprint(source.api_key) if source.api_key else None
    project = source.project_id or (shared.registry.lookup(key_print) if key_print else None)
    past = history(project, shared.local, shared.remote) if project else None
    newest = newest_held_hour(data_dir, shared.held, project, past) if project else None
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
    auth = source.auth()
    if source.project_id and key_print:
        shared.registry.remember(key_print, source.project_id)

    def learned(pid: str) -> None:
        log.info("project %s: this key pair exports project id %s (remembered)", source.name, pid)
        if key_print:
            shared.registry.remember(key_print, pid)

    extractor = Extractor(
        session=make_session(),
        base_url=source.export_url,
        auth=auth,
        data_dir=data_dir,
        prefix=prefix,
        held=shared.held,
        project=project,
        explicit_project=source.project_id is not None,
        s3=shared.client,
        bucket=settings.s3_bucket,
        remote=shared.remote,
        local=shared.local,
        on_project=learned,
        parallel=args.parallel,
    )
    summary = extractor.run(plan.windows)
    print("\n".join(summary.lines()))
    return 0


if __name__ == "__main__":
    sys.exit(run(main))
