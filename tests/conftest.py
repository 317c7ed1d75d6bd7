"""Shared fixtures: settings without the developer's .env, moto S3/KMS, Amplitude-shaped data."""

from __future__ import annotations

import os
from pathlib import Path

import boto3
import pytest
from moto import mock_aws

from pipeline.settings import Settings

REGION = "us-east-1"
BUCKET = "acme-amplitude"


@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No test sees the developer's own AWS, Amplitude or Snowflake settings."""
    for name in list(os.environ):
        if name.startswith(("AWS_", "AMPLITUDE_", "SNOWFLAKE_", "S3_", "KMS_")):
            monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing-access-key")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing-secret-key")
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))


@pytest.fixture
def aws():
    """moto in-process for S3, KMS and IAM."""
    with mock_aws():
        yield


@pytest.fixture
def s3(aws):
    client = boto3.client("s3", region_name=REGION)
    client.create_bucket(Bucket=BUCKET)
    return client


@pytest.fixture
def kms_key(aws) -> str:
    return boto3.client("kms", region_name=REGION).create_key()["KeyMetadata"]["KeyId"]


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    path = tmp_path / "json_data"
    path.mkdir()
    return path


def make_settings(**values: str) -> Settings:
    """Settings from exactly these values plus the test AWS environment."""
    merged = {k: v for k, v in os.environ.items() if k.startswith("AWS_")}
    merged.update(values)
    return Settings(values=merged)


@pytest.fixture(scope="session")
def moto_server():
    """moto's server over real HTTP on 127.0.0.1 and a free port; yields the endpoint URL."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()
