"""json_data/ → S3 (SSE-KMS), only what is new; `--copy` then loads into Snowflake.

python load.py [--dry-run] [--copy] [--prune]
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from pipeline import upload
from pipeline.cli import ArgumentParser, configure_logging, run
from pipeline.errors import PipelineError
from pipeline.s3 import client, list_held
from pipeline.settings import load_settings


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
    args = parser.parse_args(argv)

    settings = load_settings()
    configure_logging(settings.log_level, settings.secrets())
    bucket = settings.require("S3_BUCKET", "load.py")
    kms_key = settings.require("KMS_KEY_ID", "load.py (it never uploads unencrypted)")
    prefix, gzip_mode, root = settings.s3_prefix, settings.s3_gzip, settings.json_data_dir

    s3 = client(settings, "s3", max_pool_connections=upload.POOL_CONNECTIONS)
    local = upload.walk_local(root)
    held = list_held(s3, bucket, prefix)

    def raw_size_of(key: str) -> int | None:
        return upload.head_raw_size(s3, bucket, key)

    todo = upload.plan(local, held, prefix, gzip_mode, raw_size_of)
    where = f"s3://{bucket}/{prefix}/" if prefix else f"s3://{bucket}/"
    found_bytes = sum(lf.size for lf in local)

    if args.dry_run:
        for u in todo.uploads:
            why = "new" if u.reason == "new" else f"changed: S3 has {u.held_size} bytes"
            print(f"would upload s3://{bucket}/{u.key} ({human(u.local.size)}, {why})")
        print(
            f"dry run: {len(local)} files in {root} ({human(found_bytes)}); would upload "
            f"{len(todo.uploads)} ({human(todo.upload_bytes)}) to {where}, "
            f"skip {len(todo.held)} already there"
            + (f"; --prune would then delete up to {len(local)} local files" if args.prune else "")
            + (f"; --copy would load {len(todo.uploads)} files" if args.copy else "")
            + ". Nothing was changed."
        )
        return 0

    outcome = upload.upload_all(s3, todo.uploads, bucket, kms_key, temp_root=root)
    reuploaded = sum(1 for u in outcome.uploaded if u.reason == "changed")
    rate = len(outcome.uploaded) / outcome.seconds if outcome.seconds else 0.0
    print(
        f"load: {len(local)} files found ({human(found_bytes)}); "
        f"uploaded {len(outcome.uploaded) - reuploaded}, re-uploaded {reuploaded}, "
        f"skipped {len(todo.held)}, failed {len(outcome.failed)}"
        + (f", not attempted {len(outcome.not_attempted)}" if outcome.not_attempted else "")
        + f"; sent {human(outcome.bytes_sent)} to {where} in {outcome.seconds:.1f} s "
        f"({rate:.0f} files/s)"
    )

    if args.prune and outcome.fatal is None:
        confirmed = upload.confirmed_for_prune(todo, outcome, raw_size_of)
        deleted, folders = upload.prune(confirmed, root)
        print(f"prune: deleted {deleted} local files and {folders} emptied folders")

    status = 0
    if args.copy:
        from pipeline.warehouse import run_copy  # Snowflake only when asked for

        status = run_copy(settings, [u.key for u in outcome.uploaded])

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
    return status


if __name__ == "__main__":
    sys.exit(run(main))
