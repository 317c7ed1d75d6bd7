"""load.py as a user runs it: a subprocess against moto's server over real HTTP."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import boto3
import pytest

from .conftest import REGION
from .test_load import key_of, write_tree

REPO = Path(__file__).resolve().parent.parent
ACCESS_KEY = "e2e-test-access-key-id-7QZXW1"
SECRET_KEY = "e2e/Secret+Value/do-not-print-9f8e7d6c5b4a"


@pytest.fixture
def server_env(moto_server, data_dir, tmp_path) -> dict[str, str]:
    """A fresh bucket and KMS key on the moto server, and load.py's environment for them."""
    bucket = f"load-e2e-{uuid.uuid4().hex[:12]}"
    kw = {"endpoint_url": moto_server, "region_name": REGION}
    boto3.client("s3", **kw).create_bucket(Bucket=bucket)
    key_id = boto3.client("kms", **kw).create_key()["KeyMetadata"]["KeyId"]
    return {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(tmp_path),
        "AWS_ENDPOINT_URL": moto_server,
        "AWS_ACCESS_KEY_ID": ACCESS_KEY,
        "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
        "AWS_DEFAULT_REGION": REGION,
        "AWS_CONFIG_FILE": str(tmp_path / "none"),
        "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "none"),
        "S3_BUCKET": bucket,
        "S3_PREFIX": "amplitude",
        "S3_GZIP": "false",
        "KMS_KEY_ID": key_id,
        "JSON_DATA_DIR": str(data_dir),
        "LOG_LEVEL": "DEBUG",
    }


def load(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    result = subprocess.run(
        [sys.executable, "load.py", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
    )
    for secret in (ACCESS_KEY, SECRET_KEY):
        assert secret not in result.stdout and secret not in result.stderr, "a secret leaked"
    return result


def test_load_over_http_encrypts_every_object_then_skips_on_rerun(server_env, data_dir):
    paths = write_tree(data_dir)
    first = load(server_env)
    assert first.returncode == 0, first.stderr
    assert f"uploaded {len(paths)}, re-uploaded 0, skipped 0, failed 0" in first.stdout
    assert "DEBUG pipeline." in first.stderr  # LOG_LEVEL=DEBUG reached the project's loggers

    s3 = boto3.client("s3", endpoint_url=server_env["AWS_ENDPOINT_URL"], region_name=REGION)
    bucket = server_env["S3_BUCKET"]
    for path in paths:
        head = s3.head_object(Bucket=bucket, Key=key_of(data_dir, path))
        assert head["ServerSideEncryption"] == "aws:kms"
        assert head["SSEKMSKeyId"] == server_env["KMS_KEY_ID"]
        assert head["BucketKeyEnabled"] is True
        assert head["ContentLength"] == path.stat().st_size

    again = load(server_env, "--prune")
    assert again.returncode == 0, again.stderr
    assert f"uploaded 0, re-uploaded 0, skipped {len(paths)}" in again.stdout
    assert f"deleted {len(paths)} local files" in again.stdout
    assert not any(p.exists() for p in paths)


def test_failure_over_http_is_one_error_line_without_secrets(server_env, data_dir):
    write_tree(data_dir)
    env = {**server_env, "S3_BUCKET": "no-such-bucket-e2e"}
    result = load(env)
    assert result.returncode == 1
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert errors == [
        "error: bucket no-such-bucket-e2e does not exist: check S3_BUCKET, or create it with "
        "`python setup_aws.py apply`"
    ]
    assert "Traceback" in result.stderr  # LOG_LEVEL=DEBUG shows it, redacted
