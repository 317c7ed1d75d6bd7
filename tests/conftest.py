"""Shared fixtures: settings without the developer's .env, moto S3/KMS, Amplitude-shaped data."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest
from moto import mock_aws

from pipeline.settings import Settings

REGION = "us-east-1"
BUCKET = "acme-amplitude"
API_KEY = "amp-api-key-0123456789abcdef"  # a made-up Amplitude key pair
SECRET = "amp-secret-key-fedcba9876543210"


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


@pytest.fixture(autouse=True, scope="session")
def _one_botocore_loader() -> Iterator[None]:
    """Every boto3 session of the test run shares one loader of botocore's service models.

    Each command builds its own boto3 session, as a real run does; reading S3's model anew
    each time costs ~0.4 s, and the scenario tests run the commands dozens of times.
    """
    import botocore.loaders
    import botocore.session

    real = botocore.session.create_loader
    loaders: dict = {}

    def shared(search_path_string=None):
        if search_path_string not in loaders:
            loaders[search_path_string] = real(search_path_string)
        return loaders[search_path_string]

    botocore.session.create_loader = shared
    yield
    botocore.session.create_loader = real


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


@pytest.fixture
def pipeline_env(monkeypatch, s3, kms_key, data_dir, service, gzip_mode) -> Iterator[None]:
    """Everything extract.py and load.py need, against the module's own `service` (an
    Amplitude stand-in) and `gzip_mode`, and moto's in-process S3."""
    from local_stack.amplitude_server import running

    with running(service) as url:
        for name, value in {
            "AMPLITUDE_API_KEY": API_KEY,
            "AMPLITUDE_SECRET_KEY": SECRET,
            "AMPLITUDE_EXPORT_URL": url,
            "JSON_DATA_DIR": str(data_dir),
            "S3_BUCKET": BUCKET,
            "KMS_KEY_ID": kms_key,
            "S3_GZIP": str(gzip_mode).lower(),
        }.items():
            monkeypatch.setenv(name, value)
        yield


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch, data_dir: Path) -> pytest.MonkeyPatch:
    """extract.py's settings: the key pair and the data folder (test_load has its own)."""
    monkeypatch.setenv("AMPLITUDE_API_KEY", API_KEY)
    monkeypatch.setenv("AMPLITUDE_SECRET_KEY", SECRET)
    monkeypatch.setenv("JSON_DATA_DIR", str(data_dir))
    return monkeypatch


def make_settings(**values: str) -> Settings:
    """Settings from exactly these values plus the test AWS environment."""
    merged = {k: v for k, v in os.environ.items() if k.startswith("AWS_")}
    merged.update(values)
    return Settings(values=merged)


@pytest.fixture(autouse=True)
def _no_repo_dotenv(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """In-process runs never read the developer's own .env."""
    monkeypatch.setattr("pipeline.settings.REPO_ROOT", tmp_path / "no-repo")


@pytest.fixture(scope="session")
def moto_server() -> Iterator[str]:
    """moto's S3/KMS/IAM as a real HTTP server on a free local port; yields its endpoint URL."""
    from moto.server import ThreadedMotoServer

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()


def record_like_extract(root: Path, paths, fetched_at=None) -> None:
    """Record files in the local manifest as extract.py does when it commits them."""
    from datetime import UTC, datetime

    from pipeline.layout import parse_relpath
    from pipeline.manifest import FileRecord, HourRecord, LocalManifests
    from pipeline.upload import checksum

    fetched_at = fetched_at or datetime(2026, 11, 28, 10, 30, tzinfo=UTC)
    manifests = LocalManifests(root)
    days = {}
    for path in paths:
        f = parse_relpath(Path(path).relative_to(root).as_posix())
        day = days.setdefault((f.project, f.date), manifests.get(f.project, f.date))
        if f.hour not in day.hours:
            day.hours[f.hour] = HourRecord(fetched_at)
        size, crc, events = checksum(Path(path))
        day.set_file(f, FileRecord(size, crc, events))
    for day in days.values():
        manifests.save(day)
