"""What extract.py and backfill.py share: S3, the listing, the manifests, the projects."""

from __future__ import annotations

import argparse
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from pipeline import s3
from pipeline.errors import PipelineError, UsageError
from pipeline.export_api import make_session
from pipeline.extraction import DEFAULT_PARALLEL, MAX_PARALLEL, Extractor
from pipeline.manifest import LocalManifests, S3Manifests
from pipeline.projects import KeyRegistry, Source, fingerprint
from pipeline.s3 import HeldObject
from pipeline.settings import Settings

log = logging.getLogger("pipeline.extract")


@dataclass
class Shared:
    """What every project of a run uses alike: S3, the listing, the manifests."""

    settings: Settings
    client: object | None
    held: dict[str, HeldObject]
    local: LocalManifests
    remote: S3Manifests | None
    registry: KeyRegistry


def add_fetch_options(parser: argparse.ArgumentParser) -> None:
    """The options extract.py and backfill.py share: how windows are fetched, which project,
    and whether to wait for another run."""
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
    parser.add_argument(
        "--wait", action="store_true", help="wait for another run on json_data/ to finish"
    )


def connect(settings: Settings, max_pool_connections: int = 10) -> Shared:
    """One S3 client and one listing of the prefix for the whole run (a pool as large as the
    uploads in flight, for backfill)."""
    data_dir, bucket, prefix = settings.json_data_dir, settings.s3_bucket, settings.s3_prefix
    client = s3.client(settings, "s3", max_pool_connections) if bucket else None
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


def project_of(shared: Shared, source: Source) -> str | None:
    """The source's project id: explicit, or remembered for its key pair, or None."""
    if source.project_id:
        return source.project_id
    return shared.registry.lookup(fingerprint(source.api_key)) if source.api_key else None


def extractor_for(shared: Shared, source: Source, project: str | None, parallel: int) -> Extractor:
    """An Extractor for one project; a project id it learns is remembered for its key pair."""
    settings = shared.settings
    key_print = fingerprint(source.api_key) if source.api_key else None
    if source.project_id and key_print:
        shared.registry.remember(key_print, source.project_id)

    def learned(pid: str) -> None:
        log.info("project %s: this key pair exports project id %s (remembered)", source.name, pid)
        if key_print:
            shared.registry.remember(key_print, pid)

    return Extractor(
        session=make_session(),
        base_url=source.export_url,
        auth=source.auth(),
        data_dir=settings.json_data_dir,
        prefix=settings.s3_prefix,
        held=shared.held,
        project=project,
        explicit_project=source.project_id is not None,
        s3=shared.client,
        bucket=settings.s3_bucket,
        remote=shared.remote,
        local=shared.local,
        on_project=learned,
        parallel=parallel,
    )


def each_project(sources: Sequence[Source], work: Callable[[Source], int], command: str) -> int:
    """Run `work` for every project; one project's failure does not stop the others.

    A single project's failure is its own error line, as it is; with several, the run goes on
    and ends with one line naming each failed project and the command to rerun it alone.
    """
    if len(sources) == 1:
        return work(sources[0])
    failed: list[tuple[Source, PipelineError]] = []
    for source in sources:
        print(f"project {source.name}:")
        try:
            work(source)
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
            + ", ".join(f"{command} --project {s.name}" for s, _ in failed)
        )
    return 0
