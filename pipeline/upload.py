"""json_data/ → S3: what is new (one listing), SSE-KMS uploads through boto3's transfer manager,
and pruning of local files that are confirmed in S3.

How "already held" is decided, with the listing alone on the common path:
- `<key>` (plain .json): the listing's size is the file's size; equal → skip, else re-upload.
- `<key>.gz` (S3_GZIP=true): the listing's size is the compressed size, so it says nothing
  about the local file. Every .gz object this module writes carries the raw size in its
  metadata (`x-amz-meta-raw-size`), and the listing gives LastModified. A local file last
  written before the object was stored (mtime < LastModified + 1 s, the listing's
  resolution) is the file that was uploaded: skip, no request. Only a file written after
  its object (a re-export, a restored folder) costs one HEAD to read the raw size.
- A key held under the other name (plain vs .gz, after S3_GZIP was switched) counts as
  held; a changed file is re-uploaded under the name already held, so the bucket never
  holds the same hour twice.
"""

from __future__ import annotations

import gzip
import logging
import os
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor, as_completed
from contextlib import nullcontext
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

from boto3.s3.transfer import TransferConfig, create_transfer_manager
from botocore.exceptions import BotoCoreError, ClientError
from tqdm import tqdm

from pipeline.errors import PipelineError
from pipeline.layout import TEMP_PREFIX, ExportFile, s3_key, scan_local
from pipeline.s3 import HeldObject, explain, is_systemic

log = logging.getLogger("pipeline.upload")

# Tuned with bench/load_bench.py: files in flight at once, and the client's pool to match.
CONCURRENCY = 16
POOL_CONNECTIONS = CONCURRENCY + 4
MB = 1024 * 1024
TRANSFER_CONFIG = TransferConfig(
    multipart_threshold=64 * MB,  # hourly files are usually smaller: one PUT each
    multipart_chunksize=16 * MB,
    max_concurrency=CONCURRENCY,
    use_threads=True,
)
EXPECT_CONTINUE_FROM = 8 * MB  # smaller PUTs go without `Expect: 100-continue`
RAW_SIZE = "raw-size"  # object metadata (x-amz-meta-raw-size) on .gz objects
CONTENT_TYPE = "application/json"
GZIP_LEVEL = 6
# ListObjectsV2 reports LastModified in whole seconds.
_LISTING_RESOLUTION = timedelta(seconds=1)


@dataclass(frozen=True)
class LocalFile:
    """An export file under json_data/, with its size and mtime when it was scanned."""

    file: ExportFile
    path: Path
    size: int
    mtime_ns: int

    def unchanged(self) -> bool:
        """True while the file still has the size and mtime it was scanned with."""
        try:
            st = self.path.stat()
        except FileNotFoundError:
            return False
        return (st.st_size, st.st_mtime_ns) == (self.size, self.mtime_ns)


@dataclass(frozen=True)
class Upload:
    local: LocalFile
    key: str
    gzip: bool
    reason: str  # "new" or "changed"
    held_size: int | None = None  # what S3 had, for "changed"


@dataclass(frozen=True)
class Held:
    """A local file whose object is already in S3."""

    local: LocalFile
    key: str
    verified: bool  # its size was compared (plain size, or raw-size metadata)


@dataclass
class Plan:
    uploads: list[Upload] = field(default_factory=list)
    held: list[Held] = field(default_factory=list)

    @property
    def upload_bytes(self) -> int:
        return sum(u.local.size for u in self.uploads)


@dataclass
class Outcome:
    uploaded: list[Upload] = field(default_factory=list)
    failed: list[tuple[Upload, str]] = field(default_factory=list)
    not_attempted: list[Upload] = field(default_factory=list)
    fatal: PipelineError | None = None
    bytes_sent: int = 0
    seconds: float = 0.0


def walk_local(root: Path) -> list[LocalFile]:
    """Every export file under `root` (layout.scan_local), with its size and mtime."""
    found: list[LocalFile] = []
    if not root.is_dir():
        log.info("%s does not exist: nothing to upload", root)
        return found
    for f, path in scan_local(root):
        try:
            st = path.stat()
        except FileNotFoundError:  # removed since the folder was read
            continue
        found.append(LocalFile(f, path, st.st_size, st.st_mtime_ns))
    return found


def plan(
    local: Iterable[LocalFile],
    held: dict[str, HeldObject],
    prefix: str,
    gzip_mode: bool,
    raw_size_of: Callable[[str], int | None],
) -> Plan:
    """What to upload and what S3 already holds; `raw_size_of(key)` is a HEAD, rarely called."""
    result = Plan()
    for lf in local:
        names = [s3_key(prefix, lf.file, gzip_mode), s3_key(prefix, lf.file, not gzip_mode)]
        candidates = [held[k] for k in names if k in held]
        if not candidates:
            result.uploads.append(Upload(lf, names[0], gzip_mode, "new"))
            continue
        for obj in candidates:
            verdict = _same_size(lf, obj, raw_size_of)
            if verdict is not False:
                result.held.append(Held(lf, obj.key, verified=verdict is True))
                break
        else:
            target = candidates[0]
            log.warning(
                "%s changed since it was uploaded (re-exported?): uploading it again to %s",
                lf.path,
                target.key,
            )
            result.uploads.append(Upload(lf, target.key, target.gzip, "changed", target.size))
    return result


def _same_size(
    lf: LocalFile, obj: HeldObject, raw_size_of: Callable[[str], int | None]
) -> bool | None:
    """True: same size; False: differs; None: same by mtime (written before the upload)."""
    if not obj.gzip:
        return obj.size == lf.size
    modified = obj.last_modified
    if modified is not None and lf.mtime_ns < (modified + _LISTING_RESOLUTION).timestamp() * 1e9:
        return None
    raw = raw_size_of(obj.key)
    if raw is None:
        log.warning("%s has no %s metadata: cannot compare, uploading again", obj.key, RAW_SIZE)
        return False
    return raw == lf.size


def head_raw_size(s3, bucket: str, key: str) -> int | None:
    """The raw (uncompressed) size stored in a .gz object's metadata, or None."""
    try:
        meta = s3.head_object(Bucket=bucket, Key=key).get("Metadata", {})
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") in {"404", "NoSuchKey"}:
            log.debug("%s is gone since the listing", key)
            return None
        raise explain(exc, action="s3:GetObject", bucket=bucket) from exc
    except BotoCoreError as exc:
        raise explain(exc, action="s3:GetObject", bucket=bucket) from exc
    raw = meta.get(RAW_SIZE)
    return int(raw) if raw is not None and raw.isdigit() else None


def prepare_client(s3) -> None:
    """Two request tweaks, registered once on the client that uploads.

    - BucketKeyEnabled=True on every PutObject and CreateMultipartUpload: boto3's transfer
      manager does not accept it in ExtraArgs, so it is added where botocore builds the
      request.
    - No `Expect: 100-continue` on small PUTs: botocore adds it to every file body, which
      costs a round trip per file; it only pays off for bodies worth not sending twice.
    """
    if getattr(s3.meta, "_amplitude_loader_ready", False):
        return

    def bucket_key(params: dict, **_: object) -> None:
        params["BucketKeyEnabled"] = True

    def no_continue_for_small_bodies(request, **_: object) -> None:
        headers = request.headers
        size = headers.get("X-Amz-Decoded-Content-Length") or headers.get("Content-Length")
        if size is not None and int(size) < EXPECT_CONTINUE_FROM:
            headers.pop("Expect", None)

    for op in ("PutObject", "CreateMultipartUpload"):
        s3.meta.events.register(f"before-parameter-build.s3.{op}", bucket_key)
    s3.meta.events.register("before-send.s3.PutObject", no_continue_for_small_bodies)
    s3.meta._amplitude_loader_ready = True


def gzip_to_temp(src: Path, folder: Path) -> tuple[Path, int]:
    """Compress `src` into a new `.tmp-*.json.gz` in `folder`, streaming; (path, raw size)."""
    fd, name = tempfile.mkstemp(prefix=TEMP_PREFIX, suffix=".json.gz", dir=folder)
    raw = 0
    try:
        with (
            os.fdopen(fd, "wb") as out,
            gzip.GzipFile(
                filename="", mode="wb", fileobj=out, compresslevel=GZIP_LEVEL, mtime=0
            ) as gz,
            open(src, "rb") as inp,
        ):
            while chunk := inp.read(MB):
                gz.write(chunk)
                raw += len(chunk)
    except BaseException:
        Path(name).unlink(missing_ok=True)
        raise
    return Path(name), raw


class Progress:
    """A tqdm bar over bytes on a terminal; plain log lines about every 10% otherwise."""

    def __init__(self, files: int, total_bytes: int, enabled: bool | None = None) -> None:
        self.files, self.done = files, 0
        self.enabled = sys.stderr.isatty() if enabled is None else enabled
        self.bar = tqdm(
            total=total_bytes,
            unit="B",
            unit_scale=True,
            unit_divisor=1024,
            desc="uploading",
            disable=not self.enabled,
            file=sys.stderr,
        )
        self._step = files // 10 if files >= 20 else files  # small runs: the last line only
        self._next_log = self._step

    def file_done(self, raw_bytes: int) -> None:
        self.done += 1
        self.bar.update(raw_bytes)
        self.bar.set_postfix_str(f"{self.done}/{self.files} files", refresh=False)
        if not self.enabled and (self.done >= self._next_log or self.done == self.files):
            log.info("uploaded %d/%d files", self.done, self.files)
            self._next_log = self.done + self._step

    def close(self) -> None:
        self.bar.close()


def upload_all(
    s3,
    uploads: list[Upload],
    bucket: str,
    kms_key: str,
    temp_root: Path,
    config: TransferConfig = TRANSFER_CONFIG,
    progress: Progress | None = None,
) -> Outcome:
    """Upload every file, SSE-KMS; one failure does not stop the others.

    A failure that every other file would hit as well (credentials, AccessDenied, KMS,
    missing bucket, no network) stops the run: `Outcome.fatal` says what to fix.
    """
    outcome = Outcome()
    if not uploads:
        return outcome
    prepare_client(s3)
    base_args = {
        "ServerSideEncryption": "aws:kms",
        "SSEKMSKeyId": kms_key,
        "ContentType": CONTENT_TYPE,
    }
    progress = progress or Progress(len(uploads), sum(u.local.size for u in uploads))
    started = time.monotonic()
    need_temp = any(u.gzip for u in uploads)
    with (
        tempfile.TemporaryDirectory(prefix=f"{TEMP_PREFIX}load-", dir=temp_root)
        if need_temp
        else nullcontext() as temp_dir,
        create_transfer_manager(s3, config) as tm,
        ThreadPoolExecutor(config.max_request_concurrency, "upload") as pool,
    ):
        folder = Path(temp_dir) if temp_dir else None

        def one(item: Upload) -> int:
            if not item.gzip:
                tm.upload(str(item.local.path), bucket, item.key, extra_args=base_args).result()
                return item.local.size
            assert folder is not None
            tmp, raw = gzip_to_temp(item.local.path, folder)
            try:
                extra = {**base_args, "Metadata": {RAW_SIZE: str(raw)}}
                tm.upload(str(tmp), bucket, item.key, extra_args=extra).result()
                return tmp.stat().st_size
            finally:
                tmp.unlink(missing_ok=True)

        futures: dict[Future, Upload] = {pool.submit(one, u): u for u in uploads}
        for fut in as_completed(futures):
            item = futures[fut]
            if fut.cancelled():
                outcome.not_attempted.append(item)
                continue
            exc = fut.exception()
            if exc is None:
                outcome.uploaded.append(item)
                outcome.bytes_sent += fut.result()
                progress.file_done(item.local.size)
                continue
            _record_failure(outcome, item, exc, bucket, kms_key)
            if outcome.fatal is not None:
                for other in futures:
                    other.cancel()  # those not started yet
    progress.close()
    outcome.seconds = time.monotonic() - started
    return outcome


def _record_failure(
    outcome: Outcome, item: Upload, exc: BaseException, bucket: str, kms_key: str
) -> None:
    if isinstance(exc, ClientError | BotoCoreError):
        err = explain(exc, action="s3:PutObject", bucket=bucket, kms_key=kms_key)
        if is_systemic(exc) and outcome.fatal is None:
            outcome.fatal = err
        reason = str(err)
    elif isinstance(exc, OSError):
        reason = f"cannot read {item.local.path}: {exc.strerror or exc}"
    else:
        reason = f"{type(exc).__name__}: {exc}"
    log.error("upload of %s failed: %s", item.key, reason)
    log.debug("upload of %s failed", item.key, exc_info=exc)
    outcome.failed.append((item, reason))


def confirmed_for_prune(
    plan_: Plan, outcome: Outcome, raw_size_of: Callable[[str], int | None]
) -> list[LocalFile]:
    """Local files whose key is confirmed in S3 with the right size.

    Uploaded in this run, or held with a compared size; a .gz object held on the mtime rule
    alone is checked with one HEAD (its raw-size metadata) before its file may go.
    """
    confirmed = [u.local for u in outcome.uploaded]
    for h in plan_.held:
        if h.verified or raw_size_of(h.key) == h.local.size:
            confirmed.append(h.local)
        else:
            log.warning("%s: size in S3 not confirmed, local file kept", h.key)
    return confirmed


def prune(files: Iterable[LocalFile], root: Path) -> tuple[int, int]:
    """Delete the files (only if unchanged since they were checked), then emptied folders.

    Returns (files deleted, folders removed).
    """
    deleted, folders = 0, set()
    for lf in files:
        if not lf.unchanged():
            log.warning("%s changed since it was checked: kept", lf.path)
            continue
        lf.path.unlink()
        deleted += 1
        folders.add(lf.path.parent)
    removed = 0
    root = root.resolve()
    for folder in sorted(folders, key=lambda p: len(p.parts), reverse=True):
        current = folder.resolve()
        while current != root and root in current.parents:
            try:
                current.rmdir()
            except OSError:  # not empty (or gone): keep it and its parents
                break
            removed += 1
            current = current.parent
    return deleted, removed
