"""The S3 side both commands share: a configured client, one listing, and clear AWS errors."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime

import boto3
from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    EndpointConnectionError,
    NoCredentialsError,
    NoRegionError,
    PartialCredentialsError,
    ProfileNotFound,
)

from pipeline.errors import PipelineError, UsageError
from pipeline.layout import ExportFile, parse_key
from pipeline.settings import Settings

log = logging.getLogger("pipeline.s3")

# The loader policy that grants what load.py and extract.py need (see setup_aws.py / aws/).
LOADER_POLICY = "amplitude-loader (aws/loader-policy.json)"


def boto_session(settings: Settings) -> boto3.Session:
    """A boto3 session from the settings; anything unset falls back to boto3's own chain."""
    try:
        return boto3.Session(
            aws_access_key_id=settings.get("AWS_ACCESS_KEY_ID"),
            aws_secret_access_key=settings.get("AWS_SECRET_ACCESS_KEY"),
            aws_session_token=settings.get("AWS_SESSION_TOKEN"),
            profile_name=settings.get("AWS_PROFILE"),
            region_name=settings.get("AWS_DEFAULT_REGION"),
        )
    except ProfileNotFound as exc:
        raise UsageError(f"{exc}: fix AWS_PROFILE or ~/.aws/config") from exc


def client(settings: Settings, service: str = "s3", max_pool_connections: int = 10):
    """A client with botocore's standard retries and enough pooled connections."""
    config = Config(
        retries={"mode": "standard", "max_attempts": 5},
        max_pool_connections=max_pool_connections,
        connect_timeout=10,
        read_timeout=120,
    )
    try:
        return boto_session(settings).client(
            service, endpoint_url=settings.get("AWS_ENDPOINT_URL"), config=config
        )
    except NoRegionError as exc:
        raise UsageError("no AWS region: set AWS_DEFAULT_REGION in .env") from exc


@dataclass(frozen=True)
class HeldObject:
    key: str
    size: int
    file: ExportFile
    gzip: bool
    last_modified: datetime | None = None


def list_held(s3, bucket: str, prefix: str) -> dict[str, HeldObject]:
    """Every export object under the prefix, by key: one ListObjectsV2 request per 1,000 keys."""
    held: dict[str, HeldObject] = {}
    paginator = s3.get_paginator("list_objects_v2")
    try:
        for page in paginator.paginate(Bucket=bucket, Prefix=f"{prefix}/" if prefix else ""):
            for obj in page.get("Contents", []):
                parsed = parse_key(prefix, obj["Key"])
                if parsed is not None:
                    held[obj["Key"]] = HeldObject(
                        obj["Key"], obj["Size"], *parsed, obj.get("LastModified")
                    )
    except (ClientError, BotoCoreError) as exc:
        raise explain(exc, action="s3:ListBucket", bucket=bucket) from exc
    log.debug("s3://%s/%s holds %d export objects", bucket, prefix, len(held))
    return held


def object_metadata(s3, bucket: str, key: str) -> dict[str, str] | None:
    """An object's user metadata (`x-amz-meta-*`, names lowercased), or None if it is gone."""
    try:
        head = s3.head_object(Bucket=bucket, Key=key)
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") in {"404", "NoSuchKey", "NotFound"}:
            log.debug("%s is gone since the listing", key)
            return None
        raise explain(exc, action="s3:GetObject", bucket=bucket) from exc
    except BotoCoreError as exc:
        raise explain(exc, action="s3:GetObject", bucket=bucket) from exc
    return {k.lower(): v for k, v in head.get("Metadata", {}).items()}


# Errors that every other request of the run would hit as well: stop instead of going on.
_SYSTEMIC_CODES = {
    "NoSuchBucket",
    "AccessDenied",
    "AllAccessDisabled",
    "403",
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "ExpiredToken",
    "PermanentRedirect",
    "AuthorizationHeaderMalformed",
}


def is_systemic(exc: Exception) -> bool:
    """True for a failure that is not about one object (credentials, access, KMS, network)."""
    if isinstance(exc, NoCredentialsError | PartialCredentialsError | EndpointConnectionError):
        return True
    if isinstance(exc, ClientError):
        error = exc.response.get("Error", {})
        code, message = error.get("Code", ""), error.get("Message", "")
        return code in _SYSTEMIC_CODES or "KMS" in code or "kms" in message.lower()
    return False


def explain(
    exc: Exception, *, action: str, bucket: str | None = None, kms_key: str | None = None
) -> PipelineError:
    """One line that says what to fix, for an AWS failure."""
    if isinstance(exc, NoCredentialsError | PartialCredentialsError):
        return UsageError(
            "no AWS credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY "
            "(or AWS_PROFILE) in .env"
        )
    if isinstance(exc, EndpointConnectionError):
        return PipelineError(f"cannot reach AWS ({exc}): check the network and AWS_DEFAULT_REGION")
    if isinstance(exc, ClientError):
        code = exc.response.get("Error", {}).get("Code", "")
        message = exc.response.get("Error", {}).get("Message", "")
        if code == "NoSuchBucket":
            return PipelineError(
                f"bucket {bucket} does not exist: check S3_BUCKET, or create it with "
                "`python setup_aws.py apply`"
            )
        if code in {"InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken"}:
            return UsageError(
                f"AWS refused the credentials ({code}): check AWS_ACCESS_KEY_ID, "
                "AWS_SECRET_ACCESS_KEY and AWS_SESSION_TOKEN"
            )
        if code == "PermanentRedirect" or code == "AuthorizationHeaderMalformed":
            return UsageError(
                f"bucket {bucket} is in another region ({code}): set AWS_DEFAULT_REGION to "
                "the bucket's region"
            )
        if "KMS" in code or "kms" in message.lower():
            return PipelineError(
                f"KMS refused key {kms_key or '(bucket default)'} ({code}): grant "
                f"kms:GenerateDataKey and kms:Decrypt on it to the loader ({LOADER_POLICY})"
            )
        if code in {"AccessDenied", "AllAccessDisabled", "403"}:
            return PipelineError(
                f"AWS denied {action} on bucket {bucket}: attach the loader policy "
                f"{LOADER_POLICY}, which grants it"
            )
        return PipelineError(f"AWS {action} failed on bucket {bucket}: {code}: {message}")
    return PipelineError(f"AWS {action} failed: {exc}")
