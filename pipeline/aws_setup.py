"""The AWS side as code: read what exists, then create what is missing (or only say so).

`reconcile(..., apply=False)` is `plan`: it only calls Get/List/Describe. With `apply=True` it
creates what is missing and corrects settings that differ, resource by resource. A role's
trust relationship is never touched by `apply` once the role exists: `trust` writes it.
"""

from __future__ import annotations

import json
import logging
import os
import re
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    NoCredentialsError,
    NoRegionError,
    PartialCredentialsError,
    ProfileNotFound,
)
from dotenv import dotenv_values

from pipeline import aws_policies
from pipeline.errors import PipelineError, UsageError
from pipeline.s3 import boto_session
from pipeline.s3 import explain as explain_s3
from pipeline.settings import Settings

log = logging.getLogger("pipeline.aws_setup")

DEFAULT_ALIAS = "alias/amplitude-export"
LOADER_POLICY_NAME = "amplitude-loader"  # named in pipeline.s3.LOADER_POLICY's messages
SNOWFLAKE_POLICY_NAME = "amplitude-snowflake-read"
DEFAULT_LOADER_USER = "amplitude-loader"
DEFAULT_SNOWFLAKE_ROLE = "amplitude-snowflake"
MAX_ACCESS_KEYS = 2  # IAM's limit per user

SNOWFLAKE_USER_ARN = re.compile(r"^arn:aws[a-z-]*:iam::\d{12}:(user|role)/\S+$")

# Statuses: plan says what it would do, apply what it did.
EXISTS, CREATE, UPDATE, SKIP = "exists", "create", "update", "skip"
DONE = {CREATE: "created", UPDATE: "updated", EXISTS: "exists", SKIP: "skipped"}


@dataclass(frozen=True)
class Config:
    """What setup_aws.py sets up, from the settings."""

    bucket: str
    prefix: str
    region: str
    key_ref: str  # an alias to create and use, or the id/ARN of an existing key
    loader_user: str = DEFAULT_LOADER_USER
    snowflake_role: str = DEFAULT_SNOWFLAKE_ROLE
    noncurrent_version_days: int = aws_policies.DEFAULT_NONCURRENT_VERSION_DAYS

    @property
    def key_alias(self) -> str | None:
        return self.key_ref if self.key_ref.startswith("alias/") else None


@dataclass
class Change:
    """One resource or setting: what it is, and whether it exists or is (to be) created."""

    kind: str
    name: str
    status: str
    detail: str = ""
    document: dict | None = None

    def line(self, applied: bool) -> str:
        status = DONE[self.status] if applied else self.status
        detail = f"  {self.detail}" if self.detail else ""
        return f"  {status:<8} {self.kind:<26} {self.name}{detail}"


@dataclass
class Clients:
    s3: Any
    kms: Any
    iam: Any
    sts: Any


@dataclass
class Outcome:
    """What reconcile found or did, and the values the user puts in .env."""

    account: str
    changes: list[Change] = field(default_factory=list)
    key_arn: str | None = None

    @property
    def changed(self) -> list[Change]:
        return [c for c in self.changes if c.status in (CREATE, UPDATE)]


def config_from_settings(settings: Settings, session_region: str | None = None) -> Config:
    """The settings setup_aws.py reads; the region may come from the AWS profile."""
    bucket = settings.require("S3_BUCKET", "setup_aws.py")
    region = settings.get("AWS_DEFAULT_REGION") or session_region
    if not region:
        raise UsageError("AWS_DEFAULT_REGION is not set: add the bucket's region to .env")
    return Config(
        bucket=bucket,
        prefix=settings.s3_prefix,
        region=region,
        key_ref=settings.kms_key_id or DEFAULT_ALIAS,
        loader_user=settings.get("AWS_LOADER_USER", DEFAULT_LOADER_USER) or DEFAULT_LOADER_USER,
        snowflake_role=settings.get("SNOWFLAKE_AWS_ROLE", DEFAULT_SNOWFLAKE_ROLE)
        or DEFAULT_SNOWFLAKE_ROLE,
        noncurrent_version_days=noncurrent_version_days(settings),
    )


def noncurrent_version_days(settings: Settings) -> int:
    """S3_NONCURRENT_VERSION_DAYS: how long a replaced object version is kept (default 30)."""
    raw = settings.get("S3_NONCURRENT_VERSION_DAYS")
    if raw is None:
        return aws_policies.DEFAULT_NONCURRENT_VERSION_DAYS
    days = int(raw) if raw.strip().isdigit() else 0
    if days < 1:
        raise UsageError(
            f"S3_NONCURRENT_VERSION_DAYS is {raw!r}: set it to a whole number of days, 1 or more "
            f"(default {aws_policies.DEFAULT_NONCURRENT_VERSION_DAYS})"
        )
    return days


def admin_session(settings: Settings) -> boto3.Session:
    """The administrator's session: AWS_PROFILE if set (the keys in .env may be the loader's)."""
    profile = settings.get("AWS_PROFILE")
    if profile:
        try:
            return boto3.Session(
                profile_name=profile, region_name=settings.get("AWS_DEFAULT_REGION")
            )
        except ProfileNotFound as exc:
            raise UsageError(f"{exc}: fix AWS_PROFILE or ~/.aws/config") from exc
    return boto_session(settings)


def make_clients(settings: Settings) -> Clients:
    session = admin_session(settings)
    endpoint = settings.get("AWS_ENDPOINT_URL")
    try:
        return Clients(
            *(session.client(name, endpoint_url=endpoint) for name in ("s3", "kms", "iam", "sts"))
        )
    except NoRegionError as exc:
        raise UsageError("no AWS region: set AWS_DEFAULT_REGION in .env") from exc


def explain(exc: Exception, doing: str) -> PipelineError:
    """One line for a failure while setting up: what failed, and what to do."""
    if isinstance(exc, ClientError):
        code = exc.response.get("Error", {}).get("Code", "")
        message = exc.response.get("Error", {}).get("Message", "")
        if code in {"AccessDenied", "AccessDeniedException", "UnauthorizedOperation", "403"}:
            return PipelineError(
                f"AWS denied {doing} ({code}): run setup_aws.py with administrator credentials "
                "(AWS_PROFILE, or AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY in the environment)"
            )
        if code in {
            "InvalidAccessKeyId",
            "SignatureDoesNotMatch",
            "ExpiredToken",
            "InvalidClientTokenId",
        }:
            return UsageError(
                f"AWS refused the credentials ({code}) while {doing}: check AWS_PROFILE or "
                "AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY and AWS_SESSION_TOKEN"
            )
        return PipelineError(f"AWS failed while {doing}: {code}: {message}")
    if isinstance(exc, NoCredentialsError | PartialCredentialsError):
        return UsageError(
            "no AWS credentials: set AWS_PROFILE to an administrator profile (or "
            "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY in the environment)"
        )
    return explain_s3(exc, action=doing)


def _call(doing: str, fn: Callable[..., Any], **kwargs: Any) -> Any:
    try:
        return fn(**kwargs)
    except (ClientError, BotoCoreError) as exc:
        raise explain(exc, doing) from exc


def _error_code(exc: ClientError) -> str:
    return exc.response.get("Error", {}).get("Code", "")


def _get_or_none(doing: str, missing: set[str], fn: Callable[..., Any], **kwargs: Any) -> Any:
    """The Get call's answer, or None when the code says the thing does not exist."""
    try:
        return fn(**kwargs)
    except ClientError as exc:
        if _error_code(exc) in missing:
            return None
        raise explain(exc, doing) from exc
    except BotoCoreError as exc:
        raise explain(exc, doing) from exc


def canonical(document: Any) -> Any:
    """A policy in a form where equal meaning compares equal (one-item lists, list order)."""
    if isinstance(document, str):
        try:
            parsed = json.loads(document)
        except ValueError:
            return document
        return canonical(parsed) if isinstance(parsed, dict | list) else document
    if isinstance(document, Mapping):
        return {k: canonical(v) for k, v in document.items()}
    if isinstance(document, list):
        items = [canonical(v) for v in document]
        if len(items) == 1:
            return items[0]
        return sorted(items, key=lambda v: json.dumps(v, sort_keys=True))
    return document


def same_policy(a: Any, b: Any) -> bool:
    return canonical(a) == canonical(b)


# --- KMS ------------------------------------------------------------------------------------


def ensure_key(clients: Clients, config: Config, out: Outcome, apply: bool) -> None:
    kms = clients.kms
    alias = config.key_alias
    ref = config.key_ref
    meta = _get_or_none(
        f"kms:DescribeKey on {ref}", {"NotFoundException"}, kms.describe_key, KeyId=ref
    )
    meta = meta["KeyMetadata"] if meta else None
    if meta is None and alias is None:
        raise UsageError(
            f"KMS key {ref} does not exist: set KMS_KEY_ID to an existing key, or to an alias "
            f"(e.g. {DEFAULT_ALIAS}) that setup_aws.py creates"
        )
    if meta is not None and meta.get("KeyManager") == "AWS":
        raise UsageError(
            f"KMS key {ref} is AWS-managed: set KMS_KEY_ID to a customer-managed key or an alias"
        )
    if meta is not None and meta.get("KeySpec", "SYMMETRIC_DEFAULT") != "SYMMETRIC_DEFAULT":
        raise UsageError(
            f"KMS key {ref} is {meta['KeySpec']}: S3 needs a symmetric key (SYMMETRIC_DEFAULT)"
        )
    if meta is not None and meta.get("KeyState") not in (None, "Enabled"):
        raise PipelineError(
            f"KMS key {ref} is {meta['KeyState']}: enable it, or set another KMS_KEY_ID"
        )
    created = meta is None
    if meta is None:
        out.changes.append(Change("kms key", alias, CREATE, "customer-managed, symmetric"))
        if apply:
            meta = _call(
                "kms:CreateKey",
                kms.create_key,
                Description=f"Amplitude export: objects in s3://{config.bucket}",
                KeyUsage="ENCRYPT_DECRYPT",
                KeySpec="SYMMETRIC_DEFAULT",
                Tags=[{"TagKey": "project", "TagValue": "amplitude-export"}],
            )["KeyMetadata"]
            _call(
                f"kms:CreateAlias {alias}",
                kms.create_alias,
                AliasName=alias,
                TargetKeyId=meta["KeyId"],
            )
        out.changes.append(Change("kms alias", alias, CREATE))
    else:
        out.changes.append(Change("kms key", ref, EXISTS, meta["Arn"]))
        if alias:
            out.changes.append(Change("kms alias", alias, EXISTS))
    out.key_arn = meta["Arn"] if meta else None
    enabled = False
    if meta is not None and not created:
        enabled = bool(
            _call("kms:GetKeyRotationStatus", kms.get_key_rotation_status, KeyId=meta["KeyId"]).get(
                "KeyRotationEnabled"
            )
        )
        out.changes.append(Change("kms key rotation", ref, EXISTS if enabled else UPDATE, "yearly"))
    else:
        out.changes.append(Change("kms key rotation", ref, CREATE, "yearly"))
    if apply and not enabled:
        _call("kms:EnableKeyRotation", kms.enable_key_rotation, KeyId=meta["KeyId"])


# --- S3 -------------------------------------------------------------------------------------


def _bucket_exists(clients: Clients, config: Config) -> bool:
    try:
        clients.s3.head_bucket(Bucket=config.bucket)
        return True
    except ClientError as exc:
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        code = _error_code(exc)
        if code in {"404", "NoSuchBucket", "NotFound"}:
            return False
        if code in {"403", "AccessDenied"} or status == 403:
            raise PipelineError(
                f"bucket {config.bucket} exists but this account cannot read it (another account "
                "owns the name, or your credentials lack s3:ListBucket): choose another S3_BUCKET"
            ) from exc
        if code in {"301", "PermanentRedirect"} or status == 301:
            raise UsageError(
                f"bucket {config.bucket} is in another region: set AWS_DEFAULT_REGION to its region"
            ) from exc
        raise explain(exc, f"s3:ListBucket on {config.bucket}") from exc
    except BotoCoreError as exc:
        raise explain(exc, f"s3:ListBucket on {config.bucket}") from exc


def _bucket_region(clients: Clients, bucket: str) -> str:
    location = _call(
        f"s3:GetBucketLocation {bucket}", clients.s3.get_bucket_location, Bucket=bucket
    )
    constraint = location.get("LocationConstraint")
    return {None: "us-east-1", "": "us-east-1", "EU": "eu-west-1"}.get(constraint, constraint)


def _create_bucket(clients: Clients, config: Config) -> None:
    b = config.bucket
    kwargs: dict[str, Any] = {"Bucket": b, "ObjectOwnership": "BucketOwnerEnforced"}
    if config.region != "us-east-1":
        kwargs["CreateBucketConfiguration"] = {"LocationConstraint": config.region}
    try:
        clients.s3.create_bucket(**kwargs)
    except ClientError as exc:
        if _error_code(exc) == "BucketAlreadyExists":
            raise PipelineError(
                f"bucket name {b} is taken by another AWS account: choose another S3_BUCKET"
            ) from exc
        if _error_code(exc) != "BucketAlreadyOwnedByYou":
            raise explain(exc, f"s3:CreateBucket {b}") from exc


def _ensure_bucket_exists(clients: Clients, config: Config, out: Outcome, apply: bool) -> bool:
    """Whether the bucket existed before; creates it with apply. Refuses another region."""
    b = config.bucket
    exists = _bucket_exists(clients, config)
    if exists and (region := _bucket_region(clients, b)) != config.region:
        raise UsageError(
            f"bucket {b} is in {region}, not {config.region}: set AWS_DEFAULT_REGION={region} "
            "(the KMS key must be in the bucket's region)"
        )
    out.changes.append(Change("s3 bucket", b, EXISTS if exists else CREATE, config.region))
    if not exists and apply:
        _create_bucket(clients, config)
    return exists


@dataclass(frozen=True)
class BucketContext:
    """What every bucket setting reads and writes with."""

    s3: Any
    config: Config
    exists: bool  # False: the bucket is (to be) created, so there is nothing to read
    key_arn: str | None  # None while the key is still to be created (plan)
    planned_key_arn: str  # the key's ARN, or a placeholder for it in a plan

    def get(self, doing: str, missing: set[str], method: str) -> Any:
        """The Get call's answer; None when the setting (or the bucket) does not exist."""
        if not self.exists:
            return None
        return _get_or_none(doing, missing, getattr(self.s3, method), Bucket=self.config.bucket)

    def put(self, doing: str, method: str, **kwargs: Any) -> None:
        _call(doing, getattr(self.s3, method), Bucket=self.config.bucket, **kwargs)


@dataclass(frozen=True)
class Reading:
    """A setting as found, as wanted, and whether the two agree."""

    current: Any  # None: not set at all (create); otherwise what is set (update if not ok)
    desired: Any
    ok: bool
    detail: str | None = None  # the plan line's detail when it depends on the settings


@dataclass(frozen=True)
class BucketSetting:
    """One bucket setting: its plan line, how to read and compare it, how to write it."""

    kind: str
    detail: str
    read: Callable[[BucketContext], Reading]
    write: Callable[[BucketContext, Any], None]
    shows_document: bool = False  # plan prints the desired value


PUBLIC_ACCESS_BLOCK = {
    "BlockPublicAcls": True,
    "IgnorePublicAcls": True,
    "BlockPublicPolicy": True,
    "RestrictPublicBuckets": True,
}


def _read_public_access(ctx: BucketContext) -> Reading:
    got = ctx.get(
        "s3:GetBucketPublicAccessBlock",
        {"NoSuchPublicAccessBlockConfiguration"},
        "get_public_access_block",
    )
    current = got["PublicAccessBlockConfiguration"] if got else None
    return Reading(current, PUBLIC_ACCESS_BLOCK, current == PUBLIC_ACCESS_BLOCK)


def _write_public_access(ctx: BucketContext, desired: dict) -> None:
    ctx.put(
        "s3:PutBucketPublicAccessBlock",
        "put_public_access_block",
        PublicAccessBlockConfiguration=desired,
    )


def _read_ownership(ctx: BucketContext) -> Reading:
    got = ctx.get(
        "s3:GetBucketOwnershipControls",
        {"OwnershipControlsNotFoundError"},
        "get_bucket_ownership_controls",
    )
    rules = got["OwnershipControls"]["Rules"] if got else None
    ok = bool(rules) and rules[0].get("ObjectOwnership") == "BucketOwnerEnforced"
    return Reading(rules, {"Rules": [{"ObjectOwnership": "BucketOwnerEnforced"}]}, ok)


def _write_ownership(ctx: BucketContext, desired: dict) -> None:
    ctx.put(
        "s3:PutBucketOwnershipControls", "put_bucket_ownership_controls", OwnershipControls=desired
    )


def _read_encryption(ctx: BucketContext) -> Reading:
    got = ctx.get(
        "s3:GetEncryptionConfiguration",
        {"ServerSideEncryptionConfigurationNotFoundError"},
        "get_bucket_encryption",
    )
    rules = got["ServerSideEncryptionConfiguration"]["Rules"] if got else None
    ok = bool(rules) and ctx.key_arn is not None and _encryption_ok(rules[0], ctx.key_arn)
    default = {"SSEAlgorithm": "aws:kms", "KMSMasterKeyID": ctx.planned_key_arn}
    desired = {"Rules": [{"ApplyServerSideEncryptionByDefault": default, "BucketKeyEnabled": True}]}
    return Reading(rules, desired, ok)


def _write_encryption(ctx: BucketContext, desired: dict) -> None:
    ctx.put(
        "s3:PutEncryptionConfiguration",
        "put_bucket_encryption",
        ServerSideEncryptionConfiguration=desired,
    )


def _read_versioning(ctx: BucketContext) -> Reading:
    status = (ctx.get("s3:GetBucketVersioning", set(), "get_bucket_versioning") or {}).get("Status")
    return Reading(status, "Enabled", status == "Enabled")


def _write_versioning(ctx: BucketContext, desired: str) -> None:
    ctx.put(
        "s3:PutBucketVersioning",
        "put_bucket_versioning",
        VersioningConfiguration={"Status": desired},
    )


def _read_policy(ctx: BucketContext) -> Reading:
    """Ours (TLS only, SSE-KMS with this key only) merged into the bucket's, others kept."""
    ours = aws_policies.bucket_policy(ctx.config.bucket, ctx.planned_key_arn, ctx.config.key_alias)
    got = ctx.get("s3:GetBucketPolicy", {"NoSuchBucketPolicy"}, "get_bucket_policy")
    existing = json.loads(got["Policy"]) if got else None
    desired = merge_bucket_policy(existing, ours)
    return Reading(existing, desired, existing is not None and same_policy(existing, desired))


def _write_policy(ctx: BucketContext, desired: dict) -> None:
    ctx.put("s3:PutBucketPolicy", "put_bucket_policy", Policy=json.dumps(desired))


def _read_lifecycle(ctx: BucketContext) -> Reading:
    """Our rules (by ID) merged into the bucket's; others' rules and settings are kept."""
    got = ctx.get(
        "s3:GetLifecycleConfiguration",
        {"NoSuchLifecycleConfiguration"},
        "get_bucket_lifecycle_configuration",
    )
    existing = got["Rules"] if got else None
    ours = aws_policies.lifecycle_rules(ctx.config.prefix, ctx.config.noncurrent_version_days)
    desired: dict[str, Any] = {"Rules": merge_lifecycle_rules(existing, ours)}
    if got and got.get("TransitionDefaultMinimumObjectSize"):  # a PUT without it resets it
        desired["TransitionDefaultMinimumObjectSize"] = got["TransitionDefaultMinimumObjectSize"]
    ok = existing is not None and same_policy(existing, desired["Rules"])
    days = ctx.config.noncurrent_version_days
    detail = f"abort incomplete uploads after 1 day; delete old versions after {days} days"
    return Reading(existing, desired, ok, detail)


def _write_lifecycle(ctx: BucketContext, desired: dict) -> None:
    extra = {k: v for k, v in desired.items() if k != "Rules"}
    ctx.put(
        "s3:PutLifecycleConfiguration",
        "put_bucket_lifecycle_configuration",
        LifecycleConfiguration={"Rules": desired["Rules"]},
        **extra,
    )


def merge_lifecycle_rules(existing: list[dict] | None, ours: list[dict]) -> list[dict]:
    """Our rules replace those with the same ID; everyone else's are kept, in their order."""
    own_ids = {rule["ID"] for rule in ours}
    return [r for r in existing or [] if r.get("ID") not in own_ids] + ours


# In plan order. A new bucket setting is one more entry here.
BUCKET_SETTINGS = (
    BucketSetting(
        "s3 block public access", "all four on", _read_public_access, _write_public_access
    ),
    BucketSetting(
        "s3 object ownership",
        "BucketOwnerEnforced (ACLs disabled)",
        _read_ownership,
        _write_ownership,
    ),
    BucketSetting(
        "s3 default encryption",
        "SSE-KMS with the key, bucket key on",
        _read_encryption,
        _write_encryption,
    ),
    BucketSetting("s3 versioning", "Enabled", _read_versioning, _write_versioning),
    BucketSetting(
        "s3 lifecycle",
        "abort incomplete uploads; delete old versions",
        _read_lifecycle,
        _write_lifecycle,
        shows_document=True,
    ),
)
BUCKET_POLICY = BucketSetting(
    "s3 bucket policy",
    "deny non-TLS; deny uploads not SSE-KMS with the key",
    _read_policy,
    _write_policy,
    shows_document=True,
)


def ensure_setting(ctx: BucketContext, setting: BucketSetting, out: Outcome, apply: bool) -> None:
    """Read one setting, record exists/create/update, and write it with apply if it differs."""
    reading = setting.read(ctx)
    document = reading.desired if setting.shows_document else None
    detail = reading.detail or setting.detail
    _record(out, setting.kind, ctx.config.bucket, reading.current, reading.ok, detail, document)
    if apply and not reading.ok:
        setting.write(ctx, reading.desired)


def ensure_bucket(
    clients: Clients, config: Config, out: Outcome, apply: bool, with_policy: bool = True
) -> None:
    """The bucket, then each of its settings; the policy unless `--skip-bucket-policy`."""
    exists = _ensure_bucket_exists(clients, config, out, apply)
    planned = out.key_arn or _pending_key(config, out)
    ctx = BucketContext(clients.s3, config, exists, out.key_arn, planned)
    for setting in BUCKET_SETTINGS:
        ensure_setting(ctx, setting, out, apply)
    if with_policy:
        ensure_setting(ctx, BUCKET_POLICY, out, apply)
    else:
        out.changes.append(Change("s3 bucket policy", config.bucket, SKIP, "--skip-bucket-policy"))


def _encryption_ok(rule: dict, key_arn: str) -> bool:
    default = rule.get("ApplyServerSideEncryptionByDefault", {})
    key = default.get("KMSMasterKeyID", "")
    return (
        default.get("SSEAlgorithm") == "aws:kms"
        and key in (key_arn, key_arn.rsplit("/", 1)[-1])
        and bool(rule.get("BucketKeyEnabled"))
    )


def merge_bucket_policy(existing: dict | None, ours: dict) -> dict:
    """Our statements replace those with the same Sid; everyone else's are kept."""
    if not existing:
        return ours
    own_sids = {s["Sid"] for s in ours["Statement"]}
    statements = existing.get("Statement", [])
    if isinstance(statements, dict):
        statements = [statements]
    kept = [s for s in statements if s.get("Sid") not in own_sids]
    return {**existing, "Statement": kept + ours["Statement"]}


def _pending_key(config: Config, out: Outcome) -> str:
    """The key's ARN before it exists (plan only): shown as a placeholder."""
    return f"arn:aws:kms:{config.region}:{out.account}:key/<created-by-apply>"


def _record(
    out: Outcome,
    kind: str,
    name: str,
    current: Any,
    ok: bool,
    detail: str,
    document: dict | None = None,
) -> None:
    status = EXISTS if ok else (CREATE if current is None else UPDATE)
    out.changes.append(Change(kind, name, status, detail, None if ok else document))


# --- IAM ------------------------------------------------------------------------------------


def ensure_managed_policy(
    clients: Clients, out: Outcome, name: str, document: dict, apply: bool
) -> str:
    """A customer-managed policy with exactly this document; returns its ARN."""
    iam = clients.iam
    arn = f"arn:aws:iam::{out.account}:policy/{name}"
    policy = _get_or_none(f"iam:GetPolicy {name}", {"NoSuchEntity"}, iam.get_policy, PolicyArn=arn)
    if policy is None:
        out.changes.append(Change("iam policy", name, CREATE, arn, document))
        if apply:
            _call(
                f"iam:CreatePolicy {name}",
                iam.create_policy,
                PolicyName=name,
                PolicyDocument=json.dumps(document),
                Description="Amplitude export pipeline (setup_aws.py)",
            )
        return arn
    version_id = policy["Policy"]["DefaultVersionId"]
    current = _call(
        f"iam:GetPolicyVersion {name}", iam.get_policy_version, PolicyArn=arn, VersionId=version_id
    )["PolicyVersion"]["Document"]
    if same_policy(current, document):
        out.changes.append(Change("iam policy", name, EXISTS, arn))
        return arn
    out.changes.append(Change("iam policy", name, UPDATE, arn, document))
    if apply:
        versions = _call(f"iam:ListPolicyVersions {name}", iam.list_policy_versions, PolicyArn=arn)[
            "Versions"
        ]
        old = sorted(
            (v for v in versions if not v["IsDefaultVersion"]), key=lambda v: v["CreateDate"]
        )
        if len(versions) >= 5 and old:  # IAM keeps at most five versions
            _call(
                f"iam:DeletePolicyVersion {name}",
                iam.delete_policy_version,
                PolicyArn=arn,
                VersionId=old[0]["VersionId"],
            )
        _call(
            f"iam:CreatePolicyVersion {name}",
            iam.create_policy_version,
            PolicyArn=arn,
            PolicyDocument=json.dumps(document),
            SetAsDefault=True,
        )
    return arn


def ensure_loader(
    clients: Clients,
    config: Config,
    out: Outcome,
    apply: bool,
    key_arn: str,
    access_key_env: Path | None,
) -> None:
    iam = clients.iam
    document = aws_policies.loader_policy(config.bucket, config.prefix, key_arn)
    policy_arn = ensure_managed_policy(clients, out, LOADER_POLICY_NAME, document, apply)
    user = config.loader_user
    found = _get_or_none(f"iam:GetUser {user}", {"NoSuchEntity"}, iam.get_user, UserName=user)
    out.changes.append(
        Change("iam user", user, EXISTS if found else CREATE, "runs load.py and extract.py")
    )
    if apply and not found:
        _call(f"iam:CreateUser {user}", iam.create_user, UserName=user)
    ensure_attached(clients, out, "user", user, found is not None, policy_arn, apply)
    if access_key_env is not None:
        ensure_access_key(clients, user, found is not None, out, apply, access_key_env)


def ensure_access_key(
    clients: Clients, user: str, user_exists: bool, out: Outcome, apply: bool, env_file: Path
) -> None:
    """An access key for the loader, written only to .env (mode 600), never printed."""
    iam = clients.iam
    keys = (
        _call(f"iam:ListAccessKeys {user}", iam.list_access_keys, UserName=user)[
            "AccessKeyMetadata"
        ]
        if user_exists
        else []
    )
    in_env = dotenv_values(env_file).get("AWS_ACCESS_KEY_ID") if env_file.is_file() else None
    if in_env and any(k["AccessKeyId"] == in_env for k in keys):
        out.changes.append(Change("iam access key", user, EXISTS, f"its id is in {env_file.name}"))
        return
    if len(keys) >= MAX_ACCESS_KEYS:
        raise PipelineError(
            f"user {user} already has {len(keys)} access keys and none is in {env_file}: "
            "delete one in the IAM console (Users → Security credentials), then rerun"
        )
    out.changes.append(
        Change(
            "iam access key", user, CREATE, f"written to {env_file.name} (mode 600), never printed"
        )
    )
    if apply:
        created = _call(f"iam:CreateAccessKey {user}", iam.create_access_key, UserName=user)[
            "AccessKey"
        ]
        write_env(
            env_file,
            {
                "AWS_ACCESS_KEY_ID": created["AccessKeyId"],
                "AWS_SECRET_ACCESS_KEY": created["SecretAccessKey"],
            },
        )


def ensure_snowflake_role(
    clients: Clients, config: Config, out: Outcome, apply: bool, key_arn: str
) -> None:
    iam = clients.iam
    document = aws_policies.snowflake_policy(config.bucket, config.prefix, key_arn)
    policy_arn = ensure_managed_policy(clients, out, SNOWFLAKE_POLICY_NAME, document, apply)
    role = config.snowflake_role
    found = _get_or_none(f"iam:GetRole {role}", {"NoSuchEntity"}, iam.get_role, RoleName=role)
    if found:
        trust = found["Role"].get("AssumeRolePolicyDocument")
        placeholder = aws_policies.placeholder_trust_policy(out.account)
        detail = (
            "trust: placeholder; run `setup_aws.py trust` after DESC INTEGRATION"
            if same_policy(trust, placeholder)
            else f"trust: {trusted_principal(trust)} (`setup_aws.py trust` changes it)"
        )
        out.changes.append(Change("iam role", role, EXISTS, detail))
    else:
        placeholder = aws_policies.placeholder_trust_policy(out.account)
        out.changes.append(
            Change(
                "iam role",
                role,
                CREATE,
                "placeholder trust until `setup_aws.py trust`",
                placeholder,
            )
        )
        if apply:
            _call(
                f"iam:CreateRole {role}",
                iam.create_role,
                RoleName=role,
                AssumeRolePolicyDocument=json.dumps(placeholder),
                Description="Snowflake storage integration: reads the Amplitude export",
            )
    ensure_attached(clients, out, "role", role, found is not None, policy_arn, apply)


def ensure_attached(
    clients: Clients, out: Outcome, kind: str, name: str, exists: bool, policy_arn: str, apply: bool
) -> None:
    """Attach a managed policy to an IAM user or role ("user"/"role") unless it already is."""
    iam = clients.iam
    title = kind.capitalize()
    attached = (
        _call(
            f"iam:ListAttached{title}Policies {name}",
            getattr(iam, f"list_attached_{kind}_policies"),
            **{f"{title}Name": name},
        )["AttachedPolicies"]
        if exists
        else []
    )
    is_attached = any(p["PolicyArn"] == policy_arn for p in attached)
    out.changes.append(
        Change(
            f"iam {kind} policy attachment",
            name,
            EXISTS if is_attached else CREATE,
            policy_arn.rsplit("/", 1)[-1],
        )
    )
    if apply and not is_attached:
        _call(
            f"iam:Attach{title}Policy {name}",
            getattr(iam, f"attach_{kind}_policy"),
            **{f"{title}Name": name},
            PolicyArn=policy_arn,
        )


def trusted_principal(trust: Any) -> str:
    """Who the trust policy lets assume the role (for the plan's listing)."""
    document = json.loads(trust) if isinstance(trust, str) else trust or {}
    statements = document.get("Statement", [])
    statements = [statements] if isinstance(statements, dict) else statements
    principals = [
        s.get("Principal", {}).get("AWS")
        for s in statements
        if isinstance(s.get("Principal"), dict)
    ]
    return ", ".join(str(p) for p in principals if p) or "no AWS principal"


# --- The three commands' work ----------------------------------------------------------------


def account_id(clients: Clients) -> str:
    return _call("sts:GetCallerIdentity", clients.sts.get_caller_identity)["Account"]


def reconcile(
    clients: Clients,
    config: Config,
    *,
    apply: bool,
    access_key_env: Path | None = None,
    bucket_policy: bool = True,
) -> Outcome:
    """Every resource in order: KMS, bucket, loader, Snowflake role. plan when apply=False."""
    out = Outcome(account=account_id(clients))
    ensure_key(clients, config, out, apply)
    ensure_bucket(clients, config, out, apply, with_policy=bucket_policy)
    key_arn = out.key_arn or _pending_key(config, out)
    ensure_loader(clients, config, out, apply, key_arn, access_key_env)
    ensure_snowflake_role(clients, config, out, apply, key_arn)
    return out


def write_trust(
    clients: Clients, config: Config, snowflake_user_arn: str, external_id: str
) -> Change:
    """Write the role's trust relationship from DESC INTEGRATION's two values."""
    if not SNOWFLAKE_USER_ARN.match(snowflake_user_arn):
        raise UsageError(
            f"--snowflake-user-arn {snowflake_user_arn!r} is not an IAM ARN: copy "
            "STORAGE_AWS_IAM_USER_ARN from DESC INTEGRATION (arn:aws:iam::123456789012:user/...)"
        )
    if not external_id.strip() or external_id == aws_policies.PLACEHOLDER_EXTERNAL_ID:
        raise UsageError(
            "--external-id is empty or the placeholder: copy STORAGE_AWS_EXTERNAL_ID from "
            "DESC INTEGRATION"
        )
    iam = clients.iam
    role = config.snowflake_role
    found = _get_or_none(f"iam:GetRole {role}", {"NoSuchEntity"}, iam.get_role, RoleName=role)
    if found is None:
        raise UsageError(f"role {role} does not exist: run `python setup_aws.py apply` first")
    document = aws_policies.snowflake_trust_policy(snowflake_user_arn, external_id.strip())
    arn = found["Role"]["Arn"]
    if same_policy(found["Role"].get("AssumeRolePolicyDocument"), document):
        return Change("iam role trust", role, EXISTS, arn)
    _call(
        f"iam:UpdateAssumeRolePolicy {role}",
        iam.update_assume_role_policy,
        RoleName=role,
        PolicyDocument=json.dumps(document),
    )
    return Change("iam role trust", role, UPDATE, arn, document)


def role_arn(account: str, config: Config) -> str:
    return f"arn:aws:iam::{account}:role/{config.snowflake_role}"


# --- .env and aws/ ---------------------------------------------------------------------------


def write_env(path: Path, values: Mapping[str, str]) -> None:
    """Set these names in .env (replacing their lines), atomically, readable by the owner only."""
    lines = path.read_text(encoding="utf-8").splitlines() if path.is_file() else []
    pending = dict(values)
    result = []
    for line in lines:
        name = line.split("=", 1)[0].strip().removeprefix("export ").strip()
        if "=" in line and not line.lstrip().startswith("#") and name in values:
            if name in pending:
                result.append(f"{name}={pending.pop(name)}")
            continue
        result.append(line)
    result += [f"{name}={value}" for name, value in pending.items()]
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=path.parent)  # created with mode 600
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write("\n".join(result) + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def render_documents(directory: Path) -> list[Path]:
    """Write aws/*.json from the policy functions (placeholders for account values)."""
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name, document in aws_policies.console_documents().items():
        path = directory / name
        path.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
        written.append(path)
    return written
