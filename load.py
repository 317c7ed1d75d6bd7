"""json_data/ → S3 (SSE-KMS), only what is new; `--copy` then loads into Snowflake.

python load.py [--dry-run] [--copy [--sweep-days N]] [--prune] [--wait]
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence
from contextlib import nullcontext

from pipeline import lock, upload
from pipeline.cli import ArgumentParser, configure_logging, run
from pipeline.errors import PipelineError
from pipeline.layout import remove_stale_temp
from pipeline.manifest import LocalManifests, S3Manifests
from pipeline.projects import KeyRegistry
from pipeline.s3 import client, list_held
from pipeline.settings import Settings, load_settings

log = logging.getLogger("pipeline.load")


def human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


def main(argv: Sequence[str] | None = None) -> int:
    parser = ArgumentParser(prog="load.py", description=__doc__.splitlines()[0])
    parser.add_argument("--dry-run", action="store_true", help="list what would be uploaded")
    parser.add_argument("--copy", action="store_true", help="then COPY INTO Snowflake")
    parser.add_argument(
        "--prune", action="store_true", help="delete local files once verified in S3"
    )
    parser.add_argument(
        "--wait", action="store_true", help="wait for another run on json_data/ to finish"
    )
    parser.add_argument(
        "--sweep-days",
        type=int,
        metavar="N",
        help="with --copy: also COPY the stage folders of the last N days (what a failed run left)",
    )
    args = parser.parse_args(argv)
    if args.sweep_days is not None and (not args.copy or args.sweep_days < 0):
        parser.error("--sweep-days N needs --copy, and N must be 0 or more")

    settings = load_settings()
    configure_logging(settings.log_level, settings.secrets())
    settings.require("S3_BUCKET", "load.py")
    settings.require("KMS_KEY_ID", "load.py (it never uploads unencrypted)")
    held_lock = (
        nullcontext()
        if args.dry_run
        else lock.hold(settings.json_data_dir, "load.py", wait=args.wait)
    )
    with held_lock:
        return load(args, settings)


def load(args, settings: Settings) -> int:
    bucket, kms_key = settings.require("S3_BUCKET"), settings.require("KMS_KEY_ID")
    prefix, gzip_mode, root = settings.s3_prefix, settings.s3_gzip, settings.json_data_dir

    s3 = client(settings, "s3", max_pool_connections=upload.POOL_CONNECTIONS)
    local = upload.walk_local(root)
    held = list_held(s3, bucket, prefix)
    manifests = LocalManifests(root)

    def raw_size_of(key: str) -> int | None:
        return upload.head_raw_size(s3, bucket, key)

    todo = upload.plan(local, held, prefix, gzip_mode, manifests)
    where = f"s3://{bucket}/{prefix}/"
    found_bytes = sum(lf.size for lf in local)

    if args.dry_run:
        for u in todo.uploads:
            why = "new" if u.reason == "new" else f"changed: S3 has {u.held_size} bytes"
            print(f"would upload s3://{bucket}/{u.key} ({human(u.local.size)}, {why})")
        for d in todo.damaged:
            print(f"damaged: {d.local.path}: {d.why}; would not upload it")
        print(
            f"dry run: {len(local)} files in {root} ({human(found_bytes)}); would upload "
            f"{len(todo.uploads)} ({human(todo.upload_bytes)}) to {where}, "
            f"skip {len(todo.held)} already there"
            + (f", keep {len(todo.damaged)} damaged" if todo.damaged else "")
            + (f"; --prune would then delete up to {len(local)} local files" if args.prune else "")
            + (f"; --copy would load {len(todo.uploads)} files" if args.copy else "")
            + ". Nothing was changed."
        )
        return 0

    remove_stale_temp(root, upload.LOAD_TEMP)
    outcome = upload.upload_all(s3, todo.uploads, bucket, kms_key, temp_root=root)
    damaged = todo.damaged + outcome.damaged
    upload.record_outcome(manifests, outcome.uploaded, damaged)
    published = 0
    if outcome.fatal is None:
        held_keys = set(held) | {u.key for u in outcome.uploaded}
        published = upload.publish(manifests, S3Manifests(s3, bucket, prefix), held_keys, kms_key)
        KeyRegistry(root, s3, bucket, prefix).publish(kms_key)
    reuploaded = sum(1 for u in outcome.uploaded if u.reason == "changed")
    rate = len(outcome.uploaded) / outcome.seconds if outcome.seconds else 0.0
    print(
        f"load: {len(local)} files found ({human(found_bytes)}); "
        f"uploaded {len(outcome.uploaded) - reuploaded}, re-uploaded {reuploaded}, "
        f"skipped {len(todo.held)}, failed {len(outcome.failed)}"
        + (f", damaged {len(damaged)}" if damaged else "")
        + (f", not attempted {len(outcome.not_attempted)}" if outcome.not_attempted else "")
        + f"; sent {human(outcome.bytes_sent)} to {where} in {outcome.seconds:.1f} s "
        f"({rate:.0f} files/s); manifest: {published} hours published"
    )
    for bad in damaged:
        log.error(
            "%s is damaged (%s): not uploaded, S3's object is kept; the next extract.py "
            "fetches its hour again",
            bad.local.path,
            bad.why,
        )

    if args.prune and outcome.fatal is None:
        confirmed = upload.confirmed_for_prune(todo, outcome, raw_size_of)
        deleted, folders = upload.prune(confirmed, root)
        print(f"prune: deleted {deleted} local files and {folders} emptied folders")

    status = 0
    if args.copy:
        from pipeline.warehouse import run_copy  # Snowflake only when asked for

        status = run_copy(settings, [u.key for u in outcome.uploaded], args.sweep_days)

    if outcome.fatal is not None:
        raise outcome.fatal
    if outcome.failed or outcome.not_attempted:
        names = ", ".join(u.key for u, _ in outcome.failed[:5])
        more = len(outcome.failed) - 5
        raise PipelineError(
            f"{len(outcome.failed)} of {len(todo.uploads)} uploads failed ({names}"
            + (f" and {more} more" if more > 0 else "")
            + "; reasons logged above): rerun load.py to upload what is missing"
        )
    if damaged:
        names = ", ".join(d.local.file.filename for d in damaged[:3])
        raise PipelineError(
            f"{len(damaged)} local files are damaged ({names}"
            + (" …" if len(damaged) > 3 else "")
            + "): S3's objects were kept; run extract.py (cron does) to fetch their hours "
            "again, then load.py"
        )
    return status


if __name__ == "__main__":
    sys.exit(run(main))
