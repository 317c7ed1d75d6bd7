"""load.py: json_data/ → KMS-encrypted S3, only what is new (moto in-process)."""

from __future__ import annotations

import gzip
import json
import os
import sys
import time
import types
import zlib
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace

import boto3
import pytest
from botocore.awsrequest import AWSResponse
from botocore.exceptions import ClientError
from botocore.parsers import create_parser
from moto.core import DEFAULT_ACCOUNT_ID, set_initial_no_auth_action_count
from moto.s3.models import s3_backends

import load
from pipeline.cli import run
from pipeline.layout import local_path, parse_member
from pipeline.sample_events import export_members, ndjson

from .conftest import BUCKET, REGION, record_like_extract

PROJECT = 123456
START = datetime(2026, 11, 20, 4, tzinfo=UTC)


def write_tree(root: Path, hours: int = 3, shards: int = 2, events: int = 12) -> list[Path]:
    """Amplitude-shaped hourly files under root (one empty hour), as extract.py writes them."""
    end = START + timedelta(hours=hours - 1)
    members = export_members(
        PROJECT, START, end, events_per_hour=events, shards=shards, empty_hours=[START]
    )
    paths = []
    for name, events_ in members:
        path = local_path(root, parse_member(name))
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(ndjson(events_))
        paths.append(path)
    return paths


def key_of(root: Path, path: Path, prefix: str = "amplitude") -> str:
    return f"{prefix}/{path.relative_to(root).as_posix()}"


def all_keys(s3, bucket: str = BUCKET) -> set[str]:
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket=bucket)
    return {o["Key"] for page in pages for o in page.get("Contents", [])}


def manifest_keys(s3, bucket: str = BUCKET) -> set[str]:
    return {k for k in all_keys(s3, bucket) if k.startswith("amplitude-manifests/")}


@pytest.fixture
def env(monkeypatch, tmp_path, data_dir, kms_key) -> dict[str, str]:
    """load.py's settings for the moto bucket; no developer .env is read."""
    monkeypatch.setattr("pipeline.settings.REPO_ROOT", tmp_path)
    values = {"S3_BUCKET": BUCKET, "KMS_KEY_ID": kms_key, "JSON_DATA_DIR": str(data_dir)}
    for name, value in values.items():
        monkeypatch.setenv(name, value)
    return values


@pytest.fixture
def hooks(monkeypatch):
    """Counts the API calls of the S3 clients load.py makes; `add` registers more handlers."""
    registered: list[tuple[str, object]] = []
    calls: Counter[str] = Counter()
    real = load.client

    def counting_client(*args, **kwargs):
        c = real(*args, **kwargs)
        c.meta.events.register("before-call.s3", lambda model, **_: calls.update([model.name]))
        for event, handler in registered:
            c.meta.events.register(event, handler)
        return c

    monkeypatch.setattr(load, "client", counting_client)
    return SimpleNamespace(calls=calls, add=lambda e, h: registered.append((e, h)))


def run_load(capsys, *args: str) -> tuple[int, str, str]:
    code = run(load.main, list(args))
    out, err = capsys.readouterr()
    return code, out, err


def fail_put_for(key_suffix: str):
    """A PutObject handler that fails one key, as S3 does once botocore's retries are spent."""

    def handler(params, **_):
        if params["Key"].endswith(key_suffix):
            raise ClientError(
                {"Error": {"Code": "InternalError", "Message": "We encountered an internal error"}},
                "PutObject",
            )

    return handler


def s3_error_response(status: int, code: str, message: str):
    """A before-call handler answering with S3's own XML error instead of sending the request.

    botocore's own parser turns the XML into the error, as for a real response.
    """
    body = (
        f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{code}</Code>'
        f"<Message>{message}</Message><RequestId>R1</RequestId></Error>"
    ).encode()

    def handler(model, **_):
        raw = {"status_code": status, "headers": {}, "body": body}
        parsed = create_parser("rest-xml").parse(raw, model.output_shape)
        return AWSResponse("https://s3.amazonaws.com", status, {}, None), parsed

    return handler


# --- keys, SSE, skip and re-upload -----------------------------------------------------------


def test_uploads_every_file_under_its_contract_key_with_sse_kms(env, s3, data_dir, capsys):
    paths = write_tree(data_dir)
    code, out, err = run_load(capsys)
    assert code == 0, err
    expected = {key_of(data_dir, p) for p in paths}
    assert "amplitude/123456/2026-11-20/123456_2026-11-20_5#0.json" in expected
    assert all_keys(s3) == expected
    for path in paths:
        key = key_of(data_dir, path)
        head = s3.head_object(Bucket=BUCKET, Key=key)
        assert head["ServerSideEncryption"] == "aws:kms"
        assert head["SSEKMSKeyId"] == env["KMS_KEY_ID"]
        assert head["BucketKeyEnabled"] is True
        assert head["ContentType"] == "application/json"
        assert "ContentEncoding" not in head
        assert s3.get_object(Bucket=BUCKET, Key=key)["Body"].read() == path.read_bytes()
    assert f"{len(paths)} files found" in out
    assert f"uploaded {len(paths)}, re-uploaded 0, skipped 0, failed 0" in out
    assert "files/s" in out


def test_rerun_skips_what_is_held_and_reuploads_a_changed_file(env, s3, data_dir, capsys, hooks):
    paths = write_tree(data_dir)
    record_like_extract(data_dir, paths)
    assert run_load(capsys)[0] == 0
    hooks.calls.clear()

    code, out, _ = run_load(capsys)
    assert code == 0
    assert f"uploaded 0, re-uploaded 0, skipped {len(paths)}" in out
    assert hooks.calls == Counter({"ListObjectsV2": 1})

    # extract.py fetched the hour again and committed a longer file (late events)
    changed = paths[1]
    changed.write_bytes(
        changed.read_bytes() + ndjson([json.loads(changed.read_text().split("\n")[0])])
    )
    record_like_extract(data_dir, [changed])
    code, out, err = run_load(capsys)
    assert code == 0, err
    assert f"uploaded 0, re-uploaded 1, skipped {len(paths) - 1}" in out
    body = s3.get_object(Bucket=BUCKET, Key=key_of(data_dir, changed))["Body"].read()
    assert body == changed.read_bytes()


def test_an_unrecorded_file_never_replaces_an_object(env, s3, data_dir, capsys):
    """A file extract.py did not record (an older version, a copy by hand) is uploaded when
    its key is new, but never over an object."""
    paths = write_tree(data_dir, hours=2)
    assert run_load(capsys)[0] == 0
    before = s3.get_object(Bucket=BUCKET, Key=key_of(data_dir, paths[0]))["Body"].read()
    paths[0].write_bytes(before[: len(before) // 2])
    code, out, err = run_load(capsys)
    assert code == 0
    assert f"uploaded 0, re-uploaded 0, skipped {len(paths)}" in out
    assert "not recorded by extract.py and differs" in err
    assert s3.get_object(Bucket=BUCKET, Key=key_of(data_dir, paths[0]))["Body"].read() == before


def test_temporary_and_stray_files_are_logged_and_left_alone(env, s3, data_dir, capsys):
    paths = write_tree(data_dir, hours=2)
    day = paths[0].parent
    temp = day / ".tmp-123456_2026-11-20_5#0.json"
    temp.write_text("{}\n")
    stray = day / "notes.txt"
    stray.write_text("hello")
    (data_dir / ".tmp-extract-1").mkdir()
    (data_dir / ".tmp-extract-1" / "x.json").write_text("{}\n")
    deep = data_dir / "123456" / "2026-11-20" / "nested" / "123456_2026-11-20_5#0.json"
    deep.parent.mkdir()
    deep.write_text("{}\n")

    code, _, err = run_load(capsys)
    assert code == 0
    assert all_keys(s3) == {key_of(data_dir, p) for p in paths}
    assert f"leaving temporary file {temp} alone" in err
    assert f"{stray} is not in the json_data layout" in err
    assert f"{deep} is not in the json_data layout" in err
    assert "leaving temporary folder" in err
    assert temp.exists() and stray.exists() and deep.exists()


def test_progress_is_plain_log_lines_when_not_on_a_terminal(env, s3, data_dir, capsys):
    paths = write_tree(data_dir)
    code, _, err = run_load(capsys)
    assert code == 0
    assert f"uploaded {len(paths)}/{len(paths)} files" in err
    assert "%|" not in err  # no tqdm bar under cron


# --- listing cost -----------------------------------------------------------------------------


@pytest.mark.parametrize("gzip_mode", [False, True])
def test_skip_check_of_2500_held_keys_costs_3_listings_and_no_head(
    env, s3, data_dir, capsys, hooks, monkeypatch, gzip_mode
):
    monkeypatch.setenv("S3_GZIP", str(gzip_mode).lower())
    paths = write_tree(data_dir, hours=251, shards=10, events=10)  # one hour is empty
    assert len(paths) == 2500
    # Held already, as load.py stores them; seeded through moto's backend for speed
    # (moto's in-process PUT costs ~5 ms; the uploads themselves are tested above).
    backend = s3_backends[DEFAULT_ACCOUNT_ID]["aws"]
    for path in paths:
        raw = path.read_bytes()
        key = key_of(data_dir, path) + (".gz" if gzip_mode else "")
        body = gzip.compress(raw, mtime=0) if gzip_mode else raw
        obj = backend.put_object(BUCKET, key, body, encryption="aws:kms", kms_key_id="k")
        if gzip_mode:
            obj.set_metadata({"x-amz-meta-raw-size": str(len(raw))})

    code, out, err = run_load(capsys)
    assert code == 0, err
    assert "uploaded 0, re-uploaded 0, skipped 2500" in out  # past 1,000: the listing pages
    assert hooks.calls == Counter({"ListObjectsV2": 3})


# --- gzip -------------------------------------------------------------------------------------


def test_gzip_mode_stores_key_gz_with_raw_size_and_reuploads_a_changed_file(
    env, s3, data_dir, capsys, hooks, monkeypatch
):
    monkeypatch.setenv("S3_GZIP", "true")
    paths = write_tree(data_dir)
    record_like_extract(data_dir, paths)
    code, out, err = run_load(capsys)
    assert code == 0, err
    assert all_keys(s3) - manifest_keys(s3) == {key_of(data_dir, p) + ".gz" for p in paths}
    for path in paths:
        key = key_of(data_dir, path) + ".gz"
        head = s3.head_object(Bucket=BUCKET, Key=key)
        assert head["ContentType"] == "application/json"
        assert "ContentEncoding" not in head  # Snowflake must see a .gz file
        raw = path.read_bytes()
        assert head["Metadata"] == {
            "raw-size": str(len(raw)),
            "crc32": f"{zlib.crc32(raw):08x}",
            "events": str(raw.count(b"\n")),
            "fetched-at": "2026-11-28T10:30:00Z",
        }
        assert (head["ServerSideEncryption"], head["BucketKeyEnabled"]) == ("aws:kms", True)
        assert head["SSEKMSKeyId"] == env["KMS_KEY_ID"]
        body = s3.get_object(Bucket=BUCKET, Key=key)["Body"].read()
        assert gzip.decompress(body) == raw
        assert len(body) < len(raw) / 3
    assert not [p for p in data_dir.rglob("*") if p.name.startswith(".tmp-")]

    # Re-exported later with other content (extract.py recorded it): re-uploaded, no HEAD.
    changed = paths[0]
    changed.write_bytes(changed.read_bytes()[:-200].rsplit(b"\n", 1)[0] + b"\n")
    record_like_extract(data_dir, [changed])
    hooks.calls.clear()
    code, out, err = run_load(capsys)
    assert code == 0
    assert "re-uploaded 1" in out and f"skipped {len(paths) - 1}" in out
    assert hooks.calls["HeadObject"] == 0
    body = s3.get_object(Bucket=BUCKET, Key=key_of(data_dir, changed) + ".gz")["Body"].read()
    assert gzip.decompress(body) == changed.read_bytes()

    # Touched, same bytes: nothing to do, whatever its mtime says.
    later = time.time() + 3600
    os.utime(paths[1], (later, later))
    hooks.calls.clear()
    code, out, _ = run_load(capsys)
    assert "uploaded 0, re-uploaded 0" in out and hooks.calls["HeadObject"] == 0


@pytest.mark.parametrize("first,second", [("false", "true"), ("true", "false")])
def test_a_key_under_the_other_name_counts_as_held(
    env, s3, data_dir, capsys, monkeypatch, first, second
):
    paths = write_tree(data_dir)
    monkeypatch.setenv("S3_GZIP", first)
    assert run_load(capsys)[0] == 0
    before = all_keys(s3)
    monkeypatch.setenv("S3_GZIP", second)
    code, out, _ = run_load(capsys)
    assert code == 0
    assert f"uploaded 0, re-uploaded 0, skipped {len(paths)}" in out
    assert all_keys(s3) == before


# --- dry run, prune, failures -----------------------------------------------------------------


def test_dry_run_lists_what_would_be_uploaded_and_changes_nothing(env, s3, data_dir, capsys):
    paths = write_tree(data_dir)
    before = {p: p.read_bytes() for p in paths}
    code, out, _ = run_load(capsys, "--dry-run", "--prune")
    assert code == 0
    for p in paths:
        assert f"would upload s3://{BUCKET}/{key_of(data_dir, p)} (" in out
    assert "Nothing was changed" in out
    assert all_keys(s3) == set()
    assert {p: p.read_bytes() for p in data_dir.rglob("*.json")} == before


def test_prune_deletes_only_files_confirmed_in_s3(env, s3, data_dir, capsys, hooks):
    paths = write_tree(data_dir, hours=3)
    failing = paths[-1]
    hooks.add("before-parameter-build.s3.PutObject", fail_put_for(failing.name))
    code, out, err = run_load(capsys, "--prune")

    assert code == 1
    assert "failed 1" in out
    assert err.strip().splitlines()[-1].startswith("error: 1 of ")
    assert key_of(data_dir, failing) in err.strip().splitlines()[-1]
    assert failing.exists(), "a file whose upload failed is never deleted"
    assert [p for p in paths if p.exists()] == [failing]
    assert not paths[0].parent.exists() or paths[0].parent == failing.parent
    assert all_keys(s3) == {key_of(data_dir, p) for p in paths[:-1]}


def test_prune_after_rerun_removes_emptied_folders(env, s3, data_dir, capsys, hooks):
    paths = write_tree(data_dir)
    (data_dir / "123456" / "2026-11-20" / ".tmp-partial.json").write_text("{}\n")
    assert run_load(capsys)[0] == 0
    hooks.calls.clear()
    code, out, _ = run_load(capsys, "--prune")
    assert code == 0
    assert f"deleted {len(paths)} local files" in out
    assert hooks.calls == Counter({"ListObjectsV2": 1})
    assert not any(p.exists() for p in paths)
    # The day folder still holds a temporary file, so it and its parent stay.
    assert (data_dir / "123456" / "2026-11-20").is_dir()
    assert data_dir.is_dir()


def test_prune_removes_empty_folders_up_to_json_data(env, s3, data_dir, capsys):
    record_like_extract(data_dir, write_tree(data_dir))
    code, out, _ = run_load(capsys, "--prune")
    assert code == 0
    assert "2 emptied folders" in out
    # json_data/ itself stays, with the pipeline's own lock and manifests
    assert sorted(p.name for p in data_dir.iterdir()) == [".lock", ".manifests"]


def test_prune_in_gzip_mode_confirms_raw_size_with_one_head(
    env, s3, data_dir, capsys, hooks, monkeypatch
):
    monkeypatch.setenv("S3_GZIP", "true")
    paths = write_tree(data_dir)
    assert run_load(capsys)[0] == 0
    # One object was stored by another tool, without raw-size metadata: its file stays.
    odd = paths[0]
    s3.put_object(
        Bucket=BUCKET,
        Key=key_of(data_dir, odd) + ".gz",
        Body=gzip.compress(odd.read_bytes()),
        ServerSideEncryption="aws:kms",
    )
    hooks.calls.clear()
    code, out, err = run_load(capsys, "--prune")
    assert code == 0
    assert hooks.calls["HeadObject"] == len(paths)
    assert f"deleted {len(paths) - 1} local files" in out
    assert [p for p in paths if p.exists()] == [odd]
    assert "size in S3 not confirmed, local file kept" in err


# --- multipart: no partial object -------------------------------------------------------------


@pytest.mark.parametrize("operation", ["UploadPart", "CompleteMultipartUpload"])
def test_failed_multipart_upload_is_aborted(s3, kms_key, data_dir, operation):
    from boto3.s3.transfer import TransferConfig

    from pipeline import upload
    from pipeline.layout import ExportFile

    f = ExportFile("2026-11-20", 5, 0, str(PROJECT))
    path = local_path(data_dir, f)
    path.parent.mkdir(parents=True)
    line = ndjson(export_members(PROJECT, START, START, events_per_hour=1, shards=1)[0][1])
    with path.open("wb") as out:
        while out.tell() < 11 * 1024 * 1024:
            out.write(line * 200)
    lf = upload.LocalFile(f, path, path.stat().st_size, path.stat().st_mtime_ns)
    item = upload.Upload(lf, "amplitude/" + f.relpath, False, "new")
    calls: Counter[str] = Counter()

    fail_at = {"UploadPart": 2, "CompleteMultipartUpload": 1}[operation]  # after some parts

    def fail(model, **_):
        calls.update([model.name])
        if model.name == operation and calls[operation] == fail_at:
            raise ClientError({"Error": {"Code": "InternalError", "Message": "boom"}}, operation)

    s3.meta.events.register("before-call.s3", fail)
    config = TransferConfig(multipart_threshold=5 * 1024 * 1024, max_concurrency=2)
    outcome = upload.upload_all(s3, [item], BUCKET, kms_key, data_dir, config=config)

    assert [u.key for u, _ in outcome.failed] == [item.key]
    assert calls["CreateMultipartUpload"] == 1 and calls["AbortMultipartUpload"] == 1
    assert s3.list_multipart_uploads(Bucket=BUCKET).get("Uploads", []) == []
    assert all_keys(s3) == set()


def test_multipart_upload_carries_sse_kms_and_bucket_key(s3, kms_key, data_dir):
    from boto3.s3.transfer import TransferConfig

    from pipeline import upload
    from pipeline.layout import ExportFile

    f = ExportFile("2026-11-20", 6, 0, str(PROJECT))
    path = local_path(data_dir, f)
    path.parent.mkdir(parents=True)
    path.write_bytes(b'{"event_type": "page_view"}\n' * 400_000)  # ~11 MiB, 3 parts
    lf = upload.LocalFile(f, path, path.stat().st_size, path.stat().st_mtime_ns)
    item = upload.Upload(lf, "amplitude/" + f.relpath, False, "new")
    sent = {}
    s3.meta.events.register(
        "request-created.s3.CreateMultipartUpload",
        lambda request, **_: sent.update(request.headers),
    )
    config = TransferConfig(multipart_threshold=5 * 1024 * 1024, max_concurrency=2)
    outcome = upload.upload_all(s3, [item], BUCKET, kms_key, data_dir, config=config)
    assert outcome.failed == [] and outcome.uploaded == [item]
    head = s3.head_object(Bucket=BUCKET, Key=item.key)
    assert head["ContentLength"] == path.stat().st_size
    assert (head["ServerSideEncryption"], head["SSEKMSKeyId"]) == ("aws:kms", kms_key)
    # moto drops BucketKeyEnabled on CreateMultipartUpload: check the request carried it.
    assert sent["x-amz-server-side-encryption-bucket-key-enabled"] == "true"


# --- errors: one clear line each --------------------------------------------------------------


def test_no_kms_key_exits_2_and_uploads_nothing(env, s3, data_dir, capsys, monkeypatch):
    write_tree(data_dir)
    monkeypatch.delenv("KMS_KEY_ID")
    code, _, err = run_load(capsys)
    assert code == 2
    assert err.strip() == (
        "error: KMS_KEY_ID is not set: add it to .env (see .env.example); "
        "load.py (it never uploads unencrypted) needs it"
    )
    assert all_keys(s3) == set()


def test_missing_bucket_is_one_line(env, s3, data_dir, capsys, monkeypatch):
    write_tree(data_dir)
    monkeypatch.setenv("S3_BUCKET", "no-such-bucket-here")
    code, _, err = run_load(capsys)
    assert code == 1
    assert err.strip().splitlines() == [
        "error: bucket no-such-bucket-here does not exist: check S3_BUCKET, or create it with "
        "`python setup_aws.py apply`"
    ]


def test_no_aws_credentials(env, data_dir, capsys, monkeypatch):
    write_tree(data_dir)
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    code, _, err = run_load(capsys)
    assert code == 2
    assert (
        err.strip().splitlines()[-1].startswith("error: no AWS credentials: set AWS_ACCESS_KEY_ID")
    )


@pytest.mark.parametrize(
    "allowed,action",
    [(["s3:PutObject"], "s3:ListBucket"), (["s3:ListBucket"], "s3:PutObject")],
)
def test_access_denied_names_the_action_and_the_loader_policy(
    env, s3, data_dir, capsys, monkeypatch, allowed, action
):
    """moto enforces IAM here: a loader whose policy lacks one action."""
    write_tree(data_dir)
    iam = boto3.client("iam", region_name=REGION)

    @set_initial_no_auth_action_count(3)
    def make_user():
        iam.create_user(UserName="loader")
        policy = {
            "Version": "2012-10-17",
            "Statement": [{"Effect": "Allow", "Action": allowed, "Resource": "*"}],
        }
        iam.put_user_policy(UserName="loader", PolicyName="p", PolicyDocument=json.dumps(policy))
        key = iam.create_access_key(UserName="loader")["AccessKey"]
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", key["AccessKeyId"])
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", key["SecretAccessKey"])
        return run_load(capsys)

    code, out, err = make_user()
    assert code == 1
    assert err.strip().splitlines()[-1] == (
        f"error: AWS denied {action} on bucket {BUCKET}: attach the loader policy "
        "amplitude-loader (aws/loader-policy.json), which grants it"
    )
    assert all_keys(s3) == set()
    assert len([line for line in err.splitlines() if line.startswith("error:")]) == 1


def test_a_systemic_failure_stops_the_run(s3, kms_key, data_dir):
    """AccessDenied would hit every file alike: the files not started yet are not tried."""
    from boto3.s3.transfer import TransferConfig

    from pipeline import upload

    write_tree(data_dir, hours=6)
    items = [
        upload.Upload(lf, key_of(data_dir, lf.path), False, "new")
        for lf in upload.walk_local(data_dir)
    ]
    denied = {"Error": {"Code": "AccessDenied", "Message": "Access Denied"}}

    def deny(**_):
        time.sleep(0.05)  # as a real request takes a while: the run notices in between
        raise ClientError(denied, "PutObject")

    s3.meta.events.register("before-call.s3.PutObject", deny)
    outcome = upload.upload_all(
        s3, items, BUCKET, kms_key, data_dir, config=TransferConfig(max_concurrency=1)
    )
    assert str(outcome.fatal).startswith(f"AWS denied s3:PutObject on bucket {BUCKET}")
    assert 1 <= len(outcome.failed) <= 3  # the first, and what was in flight meanwhile
    assert len(outcome.not_attempted) == len(items) - len(outcome.failed)


def test_kms_refused_names_the_key_and_generate_data_key(env, s3, data_dir, capsys, hooks):
    """S3's own answer when the caller may not use the key (moto accepts any key id)."""
    write_tree(data_dir)
    hooks.add(
        "before-call.s3.PutObject",
        s3_error_response(
            403,
            "AccessDenied",
            "User: arn:aws:iam::123456789012:user/loader is not authorized to perform: "
            "kms:GenerateDataKey on this resource because no identity-based policy allows "
            "the kms:GenerateDataKey action",
        ),
    )
    code, _, err = run_load(capsys)
    assert code == 1
    line = err.strip().splitlines()[-1]
    assert line.startswith(f"error: KMS refused key {env['KMS_KEY_ID']} (AccessDenied)")
    assert "kms:GenerateDataKey" in line
    assert all_keys(s3) == set()


def test_kms_key_not_found_is_one_line(env, s3, data_dir, capsys, hooks):
    write_tree(data_dir)
    hooks.add(
        "before-call.s3.PutObject",
        s3_error_response(400, "KMS.NotFoundException", "Invalid keyId 'alias/nope'"),
    )
    code, _, err = run_load(capsys)
    assert code == 1
    assert (
        err.strip()
        .splitlines()[-1]
        .startswith(
            f"error: KMS refused key {env['KMS_KEY_ID']} (KMS.NotFoundException): grant "
            "kms:GenerateDataKey"
        )
    )


# --- --copy -----------------------------------------------------------------------------------


@pytest.fixture
def fake_warehouse(monkeypatch):
    """Stands in for pipeline.warehouse (written separately): records each run_copy call."""
    module = types.ModuleType("pipeline.warehouse")
    module.calls = []
    module.sweeps = []
    module.status = 0

    def run_copy(settings, uploaded_keys, sweep_days=None):
        module.calls.append(list(uploaded_keys))
        module.sweeps.append(sweep_days)
        return module.status

    module.run_copy = run_copy
    monkeypatch.setitem(sys.modules, "pipeline.warehouse", module)
    return module


@pytest.mark.parametrize("status", [0, 1])
def test_copy_gets_the_uploaded_keys_and_sets_the_exit_status(
    env, s3, data_dir, capsys, fake_warehouse, status
):
    paths = write_tree(data_dir)
    fake_warehouse.status = status
    code, _, _ = run_load(capsys, "--copy")
    assert code == status
    assert sorted(fake_warehouse.calls[0]) == sorted(key_of(data_dir, p) for p in paths)


def test_copy_after_a_failed_upload_copies_the_rest_and_exits_1(
    env, s3, data_dir, capsys, fake_warehouse, hooks
):
    paths = write_tree(data_dir)
    hooks.add("before-parameter-build.s3.PutObject", fail_put_for(paths[0].name))
    code, _, _ = run_load(capsys, "--copy")
    assert code == 1
    assert sorted(fake_warehouse.calls[0]) == sorted(key_of(data_dir, p) for p in paths[1:])


def test_sweep_days_goes_to_the_copy_and_needs_it(env, s3, data_dir, capsys, fake_warehouse):
    write_tree(data_dir)
    assert run_load(capsys, "--copy", "--sweep-days", "30")[0] == 0
    assert fake_warehouse.sweeps == [30]
    for argv in (["--sweep-days", "30"], ["--copy", "--sweep-days", "-1"]):
        code, _, err = run_load(capsys, *argv)
        assert code == 2 and "--sweep-days N needs --copy" in err
    assert fake_warehouse.sweeps == [30]


def test_without_copy_the_warehouse_is_not_imported(env, s3, data_dir, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "pipeline.warehouse", None)  # import would fail
    write_tree(data_dir)
    assert run_load(capsys)[0] == 0


def test_bad_flag_is_usage_error(env, capsys):
    code, _, err = run_load(capsys, "--bogus")
    assert code == 2 and err.startswith("error: unrecognized arguments: --bogus")


def test_puts_carry_bucket_key_and_no_expect_continue_for_small_bodies(s3, kms_key, data_dir):
    from pipeline import upload

    write_tree(data_dir, hours=2)
    items = [
        upload.Upload(lf, key_of(data_dir, lf.path), False, "new")
        for lf in upload.walk_local(data_dir)
    ]
    upload.prepare_client(s3)
    sent: list[dict] = []
    s3.meta.events.register(
        "before-send.s3.PutObject", lambda request, **_: sent.append(dict(request.headers))
    )
    outcome = upload.upload_all(s3, items, BUCKET, kms_key, data_dir)
    assert len(outcome.uploaded) == len(items) == len(sent)
    for headers in sent:
        assert "Expect" not in headers  # one round trip less per file
        assert headers["x-amz-server-side-encryption-bucket-key-enabled"] == b"true"
        assert headers["x-amz-server-side-encryption"] == b"aws:kms"
