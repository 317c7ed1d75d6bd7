"""json_data/ → S3: what is new (one listing), SSE-KMS uploads through boto3's transfer manager,
the published manifest, and pruning of local files that are confirmed in S3.

What to upload is decided from the listing and the local manifest (pipeline.manifest), with no
request per file:
- a file extract.py recorded (its size and CRC-32 at commit) is uploaded unless the manifest
  says S3 holds exactly those bytes under a key the listing still shows. Before its bytes
  leave, they are checked against the record: a file whose size or CRC-32 differs (a crash,
  a full disk) is *damaged*: it never replaces anything; it is reported, and its hour is
  marked so the next extract.py fetches it again.
- a file with no record (written by an older version, or copied by hand) is uploaded only
  when its key is new; it never replaces an object.
- a key held under the other name (plain vs .gz, after S3_GZIP was switched) counts as
  held; a changed file is re-uploaded under the name already held, so the bucket never
  holds the same hour twice.
Every object carries its raw size, CRC-32 and event count as metadata (`x-amz-meta-raw-size`,
`-crc32`, `-events`). Once all files of an hour are in S3, the hour's record is published to
`<prefix>-manifests/` (outside the stage).
"""

from __future__ import annotations

import logging
import os
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor, as_completed
from contextlib import nullcontext
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from zlib import crc32

from boto3.s3.transfer import TransferConfig, create_transfer_manager
from botocore.exceptions import BotoCoreError, ClientError
from tqdm import tqdm

from pipeline.errors import PipelineError
from pipeline.layout import TEMP_PREFIX, ExportFile, s3_key, scan_local
from pipeline.manifest import DayManifest, FileRecord, LocalManifests, S3Manifests
from pipeline.s3 import HeldObject, explain, is_systemic, object_metadata

log = logging.getLogger("pipeline.upload")

# Tuned with bench/load_bench.py: files in flight at once, and the client's pool to match.
CONCURRENCY = 16
POOL_CONNECTIONS = CONCURRENCY + 4
MB = 1024 * 1024
READ_BLOCK = 256 * 1024  # per file in flight: 16 of them at once
TRANSFER_CONFIG = TransferConfig(
    multipart_threshold=64 * MB,  # hourly files are usually smaller: one PUT each
    multipart_chunksize=16 * MB,
    max_concurrency=CONCURRENCY,
    use_threads=True,
)
EXPECT_CONTINUE_FROM = 8 * MB  # smaller PUTs go without `Expect: 100-continue`
RAW_SIZE = "raw-size"  # object metadata (x-amz-meta-raw-size) on .gz objects
CONTENT_TYPE = "application/json"
# S3_GZIP compression: ISA-L's level 2 (the library extract inflates with) compresses
# Amplitude-shaped events about 10x at ~15x zlib level 6's speed; zlib 6 saves another ~20 %
# of bytes for that CPU, which a laptop compressing 12 GB of a day's events cannot spare
# (measured in README, "Backfill a range"). The standard library's zlib if isal is absent.
try:
    from isal.igzip import GzipFile

    GZIP_LEVEL = 2
except ImportError:  # pragma: no cover - isal is in requirements.txt
    from gzip import GzipFile

    GZIP_LEVEL = 6
LOAD_TEMP = f"{TEMP_PREFIX}load-"  # + pid: gzip temporaries, removed by the next run if left


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
    record: FileRecord | None = None  # what extract verified; None: not recorded
    fetched_at: datetime | None = None  # when Amplitude exported it (from the manifest)


@dataclass(frozen=True)
class Held:
    """A local file whose object is already in S3."""

    local: LocalFile
    key: str
    verified: bool  # the object is known to hold the file's bytes (manifest, or plain size)


@dataclass(frozen=True)
class Damaged:
    """A local file that is not the one extract.py verified: never uploaded."""

    local: LocalFile
    why: str


@dataclass
class Plan:
    uploads: list[Upload] = field(default_factory=list)
    held: list[Held] = field(default_factory=list)
    damaged: list[Damaged] = field(default_factory=list)

    @property
    def upload_bytes(self) -> int:
        return sum(u.local.size for u in self.uploads)


@dataclass
class Outcome:
    uploaded: list[Upload] = field(default_factory=list)
    failed: list[tuple[Upload, str]] = field(default_factory=list)
    not_attempted: list[Upload] = field(default_factory=list)
    damaged: list[Damaged] = field(default_factory=list)
    fatal: PipelineError | None = None
    bytes_sent: int = 0
    seconds: float = 0.0


class DamagedFile(Exception):
    """Raised by an upload whose bytes are not the ones extract.py recorded."""


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
    manifests: LocalManifests,
) -> Plan:
    """What to upload, what S3 already holds, and which local files are damaged."""
    result = Plan()
    for lf in local:
        names = [s3_key(prefix, lf.file, gzip_mode), s3_key(prefix, lf.file, not gzip_mode)]
        present = [held[k] for k in names if k in held]
        day = manifests.get(lf.file.project, lf.file.date)
        record = day.file(lf.file)
        if record is None:
            _plan_unrecorded(result, lf, names[0], gzip_mode, present)
            continue
        if lf.size != record.size:
            result.damaged.append(
                Damaged(lf, f"{lf.size} bytes, but extract.py verified {record.size}")
            )
            continue
        if record.key is not None and record.key in held:
            result.held.append(Held(lf, record.key, verified=True))
            continue
        fetched_at = day.hours[lf.file.hour].fetched_at
        if present:
            target = present[0]
            log.info("%s: S3 holds other bytes; uploading the verified file", target.key)
            result.uploads.append(
                Upload(lf, target.key, target.gzip, "changed", target.size, record, fetched_at)
            )
        else:
            result.uploads.append(Upload(lf, names[0], gzip_mode, "new", None, record, fetched_at))
    return result


def _plan_unrecorded(
    result: Plan, lf: LocalFile, key: str, gzip_mode: bool, present: list[HeldObject]
) -> None:
    """A file extract.py did not record: uploaded when new, never over an object."""
    if not present:
        log.warning(
            "%s was not recorded by extract.py (an older version, or copied by hand): "
            "uploading it as it is",
            lf.path,
        )
        result.uploads.append(Upload(lf, key, gzip_mode, "new"))
        return
    obj = present[0]
    same = None if obj.gzip else obj.size == lf.size
    if same is False:
        log.warning(
            "%s was not recorded by extract.py and differs from %s (%d vs %d bytes): S3's "
            "object is kept; `extract.py --start` over its hour refreshes both",
            lf.path,
            obj.key,
            lf.size,
            obj.size,
        )
    result.held.append(Held(lf, obj.key, verified=same is True))


def head_raw_size(s3, bucket: str, key: str) -> int | None:
    """The raw (uncompressed) size stored in a .gz object's metadata, or None."""
    meta = object_metadata(s3, bucket, key) or {}
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


class Tally:
    """Size, CRC-32 and events (lines; a last line without its newline counts) of a stream of
    blocks: what a file is checked against and what its object carries."""

    def __init__(self) -> None:
        self.size = self._crc = self._lines = 0
        self._last = b"\n"

    def add(self, block: bytes) -> None:
        self._crc = crc32(block, self._crc)
        self.size += len(block)
        self._lines += block.count(b"\n")
        self._last = block[-1:]

    @property
    def crc32(self) -> str:
        return f"{self._crc:08x}"

    @property
    def events(self) -> int:
        return self._lines + (1 if self.size and self._last != b"\n" else 0)


def checksum(path: Path) -> tuple[int, str, int]:
    """(size, CRC-32, events) of a file, read once."""
    tally = Tally()
    with open(path, "rb") as src:
        while block := src.read(READ_BLOCK):
            tally.add(block)
    return tally.size, tally.crc32, tally.events


def gzip_to_temp(src: Path, folder: Path) -> tuple[Path, int, str, int]:
    """Compress `src` into a new `.tmp-*.json.gz` in `folder`, streaming.

    Returns (path, raw size, CRC-32 of the raw bytes, events).
    """
    fd, name = tempfile.mkstemp(prefix=TEMP_PREFIX, suffix=".json.gz", dir=folder)
    tally = Tally()
    try:
        with (
            os.fdopen(fd, "wb") as out,
            GzipFile(filename="", mode="wb", fileobj=out, compresslevel=GZIP_LEVEL, mtime=0) as gz,
            open(src, "rb") as inp,
        ):
            while block := inp.read(READ_BLOCK):
                gz.write(block)
                tally.add(block)
    except BaseException:
        Path(name).unlink(missing_ok=True)
        raise
    return Path(name), tally.size, tally.crc32, tally.events


class Progress:
    """A tqdm bar over bytes on a terminal; plain log lines about every 10% otherwise."""

    def __init__(
        self, files: int, total_bytes: int, enabled: bool | None = None, lines: bool = True
    ) -> None:
        self.files, self.done = files, 0
        self.enabled = sys.stderr.isatty() if enabled is None else enabled
        self.lines = lines  # backfill logs one line per window instead
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
        if (
            self.lines
            and not self.enabled
            and (self.done >= self._next_log or self.done == self.files)
        ):
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

    A recorded file's bytes are checked against its record first (while it is gzipped, or
    in one read before a plain upload): a mismatch is `Outcome.damaged`, never uploaded.
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
        tempfile.TemporaryDirectory(prefix=f"{LOAD_TEMP}{os.getpid()}-", dir=temp_root)
        if need_temp
        else nullcontext() as temp_dir,
        create_transfer_manager(s3, config) as tm,
        ThreadPoolExecutor(config.max_request_concurrency, "upload") as pool,
    ):
        folder = Path(temp_dir) if temp_dir else None

        def one(item: Upload) -> int:
            tmp = None
            try:
                if item.gzip:
                    assert folder is not None
                    tmp, raw, crc, events = gzip_to_temp(item.local.path, folder)
                else:
                    raw, crc, events = checksum(item.local.path)
                _check(item, raw, crc)
                extra = {**base_args, "Metadata": metadata(item, raw, crc, events)}
                source = tmp if tmp is not None else item.local.path
                tm.upload(str(source), bucket, item.key, extra_args=extra).result()
                return source.stat().st_size
            finally:
                if tmp is not None:
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
            if isinstance(exc, DamagedFile):
                outcome.damaged.append(Damaged(item.local, str(exc)))
                continue
            _record_failure(outcome, item, exc, bucket, kms_key)
            if outcome.fatal is not None:
                for other in futures:
                    other.cancel()  # those not started yet
    progress.close()
    outcome.seconds = time.monotonic() - started
    return outcome


def _check(item: Upload, raw: int, crc: str) -> None:
    """Refuse bytes that are not the ones extract.py verified."""
    record = item.record
    if record is not None and not record.same_content(raw, crc):
        raise DamagedFile(
            f"{raw} bytes with CRC-32 {crc}, but extract.py verified {record.size} bytes "
            f"with CRC-32 {record.crc32}"
        )


def metadata(item: Upload, raw: int, crc: str, events: int) -> dict[str, str]:
    """What every object carries about its content (x-amz-meta-*)."""
    meta = {RAW_SIZE: str(raw), "crc32": crc, "events": str(events)}
    if item.fetched_at is not None:
        meta["fetched-at"] = item.fetched_at.strftime("%Y-%m-%dT%H:%M:%SZ")
    return meta


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


def record_outcome(
    manifests: LocalManifests, uploaded: Iterable[Upload], damaged: Iterable[Damaged]
) -> None:
    """Mark in the local manifest what S3 now holds, and which hours must be fetched again."""
    touched: dict[tuple[str, str], DayManifest] = {}
    for item in uploaded:
        if item.record is None:
            continue
        f = item.local.file
        day = touched.setdefault((f.project, f.date), manifests.get(f.project, f.date))
        current = day.file(f)
        if current is not None and current.same_content(item.record.size, item.record.crc32):
            day.set_file(f, replace(current, key=item.key))
    for bad in damaged:
        f = bad.local.file
        day = touched.setdefault((f.project, f.date), manifests.get(f.project, f.date))
        if f.hour in day.hours:
            why = f"damaged local file {f.filename}: {bad.why}"
            day.hours[f.hour] = replace(day.hours[f.hour], refetch=why, published=False)
    for day in touched.values():
        manifests.save(day)


def publish(
    manifests: LocalManifests, remote: S3Manifests, held_keys: set[str], kms_key: str
) -> int:
    """Publish every hour whose files are all in S3 to the S3 manifest; returns how many.

    One GET and one PUT per day with something new; hours already published cost nothing.
    A later fetch wins over an earlier one already published (never the other way round).
    """
    count = 0
    for project in manifests.projects():
        for day in manifests.each(project):
            ready = {
                hour: rec
                for hour, rec in day.hours.items()
                if not rec.published and not rec.refetch and rec.in_s3(held_keys)
            }
            if not ready:
                continue
            published = remote.get(project, day.date) or DayManifest(project, day.date)
            published = DayManifest(project, day.date, dict(published.hours))
            for hour, rec in ready.items():
                current = published.hours.get(hour)
                if current is None or rec.fetched_at >= current.fetched_at:
                    published.hours[hour] = replace(rec, published=False)
                day.hours[hour] = replace(rec, published=True)
            remote.put(published, kms_key)
            manifests.save(day)
            count += len(ready)
    return count


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
