"""setup_aws.py against moto: apply from nothing, idempotent reruns, plan, trust, secrets.

moto does not evaluate policy conditions, so policies are asserted as documents
(test_aws_policies.py) and evaluated (test_aws_policy_evaluation.py); here they are read back
with the get_* calls and compared.
"""

from __future__ import annotations

import json
import logging
import os
import stat
from pathlib import Path

import boto3
import pytest
from botocore.exceptions import ClientError

import setup_aws
from pipeline import aws_policies, aws_setup, settings
from pipeline.aws_setup import CREATE, EXISTS, UPDATE, Clients, Config
from pipeline.cli import run
from pipeline.errors import PipelineError, UsageError
from tests.iam.legacy import legacy_bucket_policy

REGION = "us-east-1"
BUCKET = "acme-amplitude"
ACCOUNT = "123456789012"
SNOWFLAKE_USER = "arn:aws:iam::987654321098:user/k7m2-s-v2st1234"
EXTERNAL_ID = "AB12345_SFCRole=2_abcdEFGHijklMNOPqrst="


@pytest.fixture
def clients(aws) -> Clients:
    return Clients(*(boto3.client(n, region_name=REGION) for n in ("s3", "kms", "iam", "sts")))


@pytest.fixture
def config() -> Config:
    return Config(
        bucket=BUCKET, prefix="amplitude", region=REGION, key_ref="alias/amplitude-export"
    )


def _strip(response: dict) -> dict:
    return {k: v for k, v in response.items() if k != "ResponseMetadata"}


def _policy_doc(iam, arn: str) -> dict:
    version = iam.get_policy(PolicyArn=arn)["Policy"]["DefaultVersionId"]
    return iam.get_policy_version(PolicyArn=arn, VersionId=version)["PolicyVersion"]["Document"]


def snapshot(clients: Clients) -> dict:
    """Everything setup_aws.py manages, read back with the Get/List calls."""
    s3, kms, iam = clients.s3, clients.kms, clients.iam
    state: dict = {"buckets": sorted(b["Name"] for b in s3.list_buckets()["Buckets"])}
    for name in state["buckets"]:
        for call in (
            "get_public_access_block",
            "get_bucket_ownership_controls",
            "get_bucket_encryption",
            "get_bucket_versioning",
            "get_bucket_policy",
            "get_bucket_lifecycle_configuration",
        ):
            try:
                state[f"{name}:{call}"] = _strip(getattr(s3, call)(Bucket=name))
            except ClientError as exc:
                state[f"{name}:{call}"] = exc.response["Error"]["Code"]
    state["keys"] = {
        k["KeyId"]: (
            _strip(kms.describe_key(KeyId=k["KeyId"])["KeyMetadata"]),
            kms.get_key_rotation_status(KeyId=k["KeyId"])["KeyRotationEnabled"],
        )
        for k in kms.list_keys()["Keys"]
    }
    state["aliases"] = sorted(
        (a["AliasName"], a.get("TargetKeyId"))
        for a in kms.list_aliases()["Aliases"]
        if not a["AliasName"].startswith("alias/aws/")
    )
    state["policies"] = {
        p["PolicyName"]: (p["DefaultVersionId"], _policy_doc(iam, p["Arn"]))
        for p in iam.list_policies(Scope="Local")["Policies"]
    }
    state["users"] = {
        u["UserName"]: (
            sorted(
                p["PolicyArn"]
                for p in iam.list_attached_user_policies(UserName=u["UserName"])["AttachedPolicies"]
            ),
            sorted(
                k["AccessKeyId"]
                for k in iam.list_access_keys(UserName=u["UserName"])["AccessKeyMetadata"]
            ),
        )
        for u in iam.list_users()["Users"]
    }
    state["roles"] = {
        r["RoleName"]: (
            iam.get_role(RoleName=r["RoleName"])["Role"]["AssumeRolePolicyDocument"],
            sorted(
                p["PolicyArn"]
                for p in iam.list_attached_role_policies(RoleName=r["RoleName"])["AttachedPolicies"]
            ),
        )
        for r in iam.list_roles()["Roles"]
    }
    return state


# --- apply from nothing -----------------------------------------------------------------------


def test_apply_from_nothing_creates_every_resource_with_the_right_settings(clients, config):
    outcome = aws_setup.reconcile(clients, config, apply=True)
    assert {c.status for c in outcome.changes} == {CREATE}
    s3, kms, iam = clients.s3, clients.kms, clients.iam

    meta = kms.describe_key(KeyId="alias/amplitude-export")["KeyMetadata"]
    assert meta["KeyManager"] == "CUSTOMER"
    assert meta["KeySpec"] == "SYMMETRIC_DEFAULT"
    assert meta["KeyUsage"] == "ENCRYPT_DECRYPT"
    assert meta["Arn"] == outcome.key_arn
    assert kms.get_key_rotation_status(KeyId=meta["KeyId"])["KeyRotationEnabled"] is True

    assert s3.get_public_access_block(Bucket=BUCKET)["PublicAccessBlockConfiguration"] == {
        "BlockPublicAcls": True,
        "IgnorePublicAcls": True,
        "BlockPublicPolicy": True,
        "RestrictPublicBuckets": True,
    }
    rules = s3.get_bucket_ownership_controls(Bucket=BUCKET)["OwnershipControls"]["Rules"]
    assert rules == [{"ObjectOwnership": "BucketOwnerEnforced"}]
    (rule,) = s3.get_bucket_encryption(Bucket=BUCKET)["ServerSideEncryptionConfiguration"]["Rules"]
    assert rule["ApplyServerSideEncryptionByDefault"] == {
        "SSEAlgorithm": "aws:kms",
        "KMSMasterKeyID": meta["Arn"],
    }
    assert rule["BucketKeyEnabled"] is True
    assert s3.get_bucket_versioning(Bucket=BUCKET)["Status"] == "Enabled"
    rules = s3.get_bucket_lifecycle_configuration(Bucket=BUCKET)["Rules"]
    assert rules == aws_policies.lifecycle_rules("amplitude", 30)
    policy = json.loads(s3.get_bucket_policy(Bucket=BUCKET)["Policy"])
    assert policy == aws_policies.bucket_policy(BUCKET, meta["Arn"], "alias/amplitude-export")

    loader_arn = f"arn:aws:iam::{ACCOUNT}:policy/amplitude-loader"
    assert _policy_doc(iam, loader_arn) == aws_policies.loader_policy(
        BUCKET, "amplitude", meta["Arn"]
    )
    assert iam.get_user(UserName="amplitude-loader")["User"]["UserName"] == "amplitude-loader"
    attached = iam.list_attached_user_policies(UserName="amplitude-loader")["AttachedPolicies"]
    assert [p["PolicyArn"] for p in attached] == [loader_arn]
    assert iam.list_access_keys(UserName="amplitude-loader")["AccessKeyMetadata"] == []

    snow_arn = f"arn:aws:iam::{ACCOUNT}:policy/amplitude-snowflake-read"
    assert _policy_doc(iam, snow_arn) == aws_policies.snowflake_policy(
        BUCKET, "amplitude", meta["Arn"]
    )
    role = iam.get_role(RoleName="amplitude-snowflake")["Role"]
    assert role["AssumeRolePolicyDocument"] == aws_policies.placeholder_trust_policy(ACCOUNT)
    attached = iam.list_attached_role_policies(RoleName="amplitude-snowflake")["AttachedPolicies"]
    assert [p["PolicyArn"] for p in attached] == [snow_arn]


def test_objects_uploaded_after_apply_are_sse_kms_with_the_key(clients, config):
    """The bucket default encrypts with the key (moto denies every put under a Deny policy)."""
    outcome = aws_setup.reconcile(clients, config, apply=True, bucket_policy=False)
    clients.s3.put_object(
        Bucket=BUCKET, Key="amplitude/1/2026-11-20/1_2026-11-20_5#0.json", Body=b"{}"
    )
    head = clients.s3.head_object(Bucket=BUCKET, Key="amplitude/1/2026-11-20/1_2026-11-20_5#0.json")
    assert head["ServerSideEncryption"] == "aws:kms"
    assert head["SSEKMSKeyId"] == outcome.key_arn
    assert [c.status for c in outcome.changes if c.kind == "s3 bucket policy"] == ["skip"]
    with pytest.raises(ClientError):
        clients.s3.get_bucket_policy(Bucket=BUCKET)


def test_second_apply_changes_nothing(clients, config):
    aws_setup.reconcile(clients, config, apply=True)
    before = snapshot(clients)
    again = aws_setup.reconcile(clients, config, apply=True)
    assert [c for c in again.changes if c.status != EXISTS] == []
    assert snapshot(clients) == before


# --- plan -------------------------------------------------------------------------------------


def test_plan_from_nothing_lists_everything_and_creates_nothing(clients, config):
    empty = snapshot(clients)
    outcome = aws_setup.reconcile(clients, config, apply=False)
    kinds = [c.kind for c in outcome.changes]
    assert kinds == [
        "kms key",
        "kms alias",
        "kms key rotation",
        "s3 bucket",
        "s3 block public access",
        "s3 object ownership",
        "s3 default encryption",
        "s3 versioning",
        "s3 lifecycle",
        "s3 bucket policy",
        "iam policy",
        "iam user",
        "iam user policy attachment",
        "iam policy",
        "iam role",
        "iam role policy attachment",
    ]
    assert {c.status for c in outcome.changes} == {CREATE}
    documents = {c.kind: c.document for c in outcome.changes if c.document}
    assert set(documents) == {"s3 lifecycle", "s3 bucket policy", "iam policy", "iam role"}
    assert snapshot(clients) == empty
    assert empty["buckets"] == [] and empty["keys"] == {} and empty["users"] == {}


def test_plan_after_apply_shows_exists_and_drift_without_fixing_it(clients, config):
    aws_setup.reconcile(clients, config, apply=True)
    clients.s3.put_bucket_versioning(Bucket=BUCKET, VersioningConfiguration={"Status": "Suspended"})
    clients.s3.delete_public_access_block(Bucket=BUCKET)
    drifted = snapshot(clients)

    outcome = aws_setup.reconcile(clients, config, apply=False)
    statuses = {c.kind: c.status for c in outcome.changes}
    assert statuses["s3 versioning"] == UPDATE
    assert statuses["s3 block public access"] == CREATE
    assert [c.kind for c in outcome.changes if c.status != EXISTS] == [
        "s3 block public access",
        "s3 versioning",
    ]
    assert snapshot(clients) == drifted

    aws_setup.reconcile(clients, config, apply=True)
    assert clients.s3.get_bucket_versioning(Bucket=BUCKET)["Status"] == "Enabled"
    assert all(
        clients.s3.get_public_access_block(Bucket=BUCKET)["PublicAccessBlockConfiguration"].values()
    )


def test_plan_command_prints_exists_and_create(aws, monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(settings, "REPO_ROOT", tmp_path)
    monkeypatch.setenv("S3_BUCKET", BUCKET)
    boto3.client("s3", region_name=REGION).create_bucket(Bucket=BUCKET)
    assert run(setup_aws.main, ["plan"]) == 0
    out = capsys.readouterr().out
    assert "plan (nothing is changed)" in out
    assert "exists   s3 bucket" in out
    assert "create   kms key" in out
    assert "create   iam policy                 amplitude-loader" in out
    assert '"sts:ExternalId": "0000"' in out  # the documents that would be created are shown
    assert boto3.client("iam").list_users()["Users"] == []


def test_changed_prefix_updates_the_policies_in_place(clients, config):
    aws_setup.reconcile(clients, config, apply=True)
    moved = Config(bucket=BUCKET, prefix="events", region=REGION, key_ref=config.key_ref)
    planned = aws_setup.reconcile(clients, moved, apply=False)
    assert [(c.kind, c.name) for c in planned.changes if c.status == UPDATE] == [
        ("s3 lifecycle", BUCKET),
        ("iam policy", "amplitude-loader"),
        ("iam policy", "amplitude-snowflake-read"),
    ]
    aws_setup.reconcile(clients, moved, apply=True)
    doc = _policy_doc(clients.iam, f"arn:aws:iam::{ACCOUNT}:policy/amplitude-loader")
    assert doc["Statement"][1]["Resource"] == [f"arn:aws:s3:::{BUCKET}/events/*"]
    rules = clients.s3.get_bucket_lifecycle_configuration(Bucket=BUCKET)["Rules"]
    assert [r["Filter"] for r in rules] == [{"Prefix": "events/"}, {"Prefix": "events-manifests/"}]
    assert aws_setup.reconcile(clients, moved, apply=False).changed == []


def test_an_existing_bucket_policy_keeps_other_statements(clients, config):
    clients.s3.create_bucket(Bucket=BUCKET)
    theirs = {
        "Sid": "AuditReadOnly",
        "Effect": "Allow",
        "Principal": {"AWS": f"arn:aws:iam::{ACCOUNT}:role/audit"},
        "Action": "s3:GetBucketLocation",
        "Resource": f"arn:aws:s3:::{BUCKET}",
    }
    clients.s3.put_bucket_policy(
        Bucket=BUCKET, Policy=json.dumps({"Version": "2012-10-17", "Statement": [theirs]})
    )
    aws_setup.reconcile(clients, config, apply=True)
    statements = json.loads(clients.s3.get_bucket_policy(Bucket=BUCKET)["Policy"])["Statement"]
    assert statements[0] == theirs
    assert [s["Sid"] for s in statements[1:]] == list(aws_policies.BUCKET_POLICY_SIDS)
    assert aws_setup.reconcile(clients, config, apply=False).changed == []


def test_the_old_encryption_denies_are_replaced_by_sid(clients, config):
    """A bucket set up before the fix: its IfExists denies refused every UploadPart."""
    aws_setup.reconcile(clients, config, apply=True)
    key_arn = clients.kms.describe_key(KeyId=config.key_ref)["KeyMetadata"]["Arn"]
    old = legacy_bucket_policy(BUCKET, key_arn, config.key_alias)
    clients.s3.put_bucket_policy(Bucket=BUCKET, Policy=json.dumps(old))
    planned = aws_setup.reconcile(clients, config, apply=False)
    assert [(c.kind, c.status) for c in planned.changed] == [("s3 bucket policy", UPDATE)]
    aws_setup.reconcile(clients, config, apply=True)
    policy = json.loads(clients.s3.get_bucket_policy(Bucket=BUCKET)["Policy"])
    assert policy == aws_policies.bucket_policy(BUCKET, key_arn, config.key_alias)
    assert "IfExists" not in json.dumps(policy)


THEIR_RULE = {
    "ID": "their-logs",
    "Filter": {"Prefix": "logs/"},
    "Status": "Enabled",
    "Expiration": {"Days": 90},
}


def test_lifecycle_keeps_other_rules_and_replaces_ours_by_id(clients, config):
    clients.s3.create_bucket(Bucket=BUCKET)
    stale = aws_policies.lifecycle_rules("amplitude", 5)[0]  # ours, with other days
    clients.s3.put_bucket_lifecycle_configuration(
        Bucket=BUCKET, LifecycleConfiguration={"Rules": [THEIR_RULE, stale]}
    )
    planned = aws_setup.reconcile(clients, config, apply=False)
    (change,) = [c for c in planned.changes if c.kind == "s3 lifecycle"]
    assert change.status == UPDATE
    assert change.document["Rules"] == [THEIR_RULE, *aws_policies.lifecycle_rules("amplitude", 30)]

    aws_setup.reconcile(clients, config, apply=True)
    rules = clients.s3.get_bucket_lifecycle_configuration(Bucket=BUCKET)["Rules"]
    assert rules == [THEIR_RULE, *aws_policies.lifecycle_rules("amplitude", 30)]

    before = snapshot(clients)
    again = aws_setup.reconcile(clients, config, apply=True)
    assert [c for c in again.changes if c.status != EXISTS] == []
    assert snapshot(clients) == before


class LifecycleOnly:
    """An S3 client with one lifecycle configuration, recording the PUT."""

    def __init__(self, got: dict) -> None:
        self.got = got
        self.put: dict | None = None

    def get_bucket_lifecycle_configuration(self, Bucket: str) -> dict:
        return self.got

    def put_bucket_lifecycle_configuration(self, **kwargs) -> None:
        self.put = kwargs


def test_lifecycle_write_keeps_the_buckets_transition_default(config):
    """A PUT without TransitionDefaultMinimumObjectSize would reset it (moto ignores it)."""
    s3 = LifecycleOnly(
        {"Rules": [THEIR_RULE], "TransitionDefaultMinimumObjectSize": "varies_by_storage_class"}
    )
    ctx = aws_setup.BucketContext(s3, config, True, None, "arn:aws:kms:us-east-1:1:key/k")
    out = aws_setup.Outcome(account=ACCOUNT)
    (setting,) = [s for s in aws_setup.BUCKET_SETTINGS if s.kind == "s3 lifecycle"]
    aws_setup.ensure_setting(ctx, setting, out, apply=True)
    assert s3.put == {
        "Bucket": BUCKET,
        "LifecycleConfiguration": {
            "Rules": [THEIR_RULE, *aws_policies.lifecycle_rules("amplitude", 30)]
        },
        "TransitionDefaultMinimumObjectSize": "varies_by_storage_class",
    }
    assert [c.status for c in out.changes] == [UPDATE]


def test_noncurrent_version_days_come_from_the_setting(clients, config, monkeypatch, capsys):
    aws_setup.reconcile(clients, config, apply=True)
    monkeypatch.setenv("S3_BUCKET", BUCKET)
    monkeypatch.setenv("S3_NONCURRENT_VERSION_DAYS", "45")
    assert run(setup_aws.main, ["plan"]) == 0
    out = capsys.readouterr().out
    assert "update   s3 lifecycle" in out
    assert "delete old versions after 45 days" in out
    assert '"NoncurrentDays": 45' in out
    assert "1 to create or update" in out

    assert run(setup_aws.main, ["apply"]) == 0
    rules = clients.s3.get_bucket_lifecycle_configuration(Bucket=BUCKET)["Rules"]
    assert [r["NoncurrentVersionExpiration"] for r in rules] == [{"NoncurrentDays": 45}] * 2


@pytest.mark.parametrize("value", ["0", "-3", "thirty", "1.5"])
def test_a_bad_noncurrent_version_days_is_a_usage_error(aws, monkeypatch, capsys, value):
    monkeypatch.setenv("S3_BUCKET", BUCKET)
    monkeypatch.setenv("S3_NONCURRENT_VERSION_DAYS", value)
    assert run(setup_aws.main, ["plan"]) == 2
    assert capsys.readouterr().err == (
        f"error: S3_NONCURRENT_VERSION_DAYS is {value!r}: set it to a whole number of days, "
        "1 or more (default 30)\n"
    )


def test_an_existing_key_named_by_arn_is_used_and_not_aliased(clients):
    key = clients.kms.create_key(Description="theirs")["KeyMetadata"]
    config = Config(bucket=BUCKET, prefix="amplitude", region=REGION, key_ref=key["Arn"])
    outcome = aws_setup.reconcile(clients, config, apply=True)
    assert outcome.key_arn == key["Arn"]
    assert [c.status for c in outcome.changes[:2]] == [EXISTS, UPDATE]  # key, rotation turned on
    assert clients.kms.get_key_rotation_status(KeyId=key["KeyId"])["KeyRotationEnabled"] is True
    assert len(clients.kms.list_keys()["Keys"]) == 1
    missing = Config(
        bucket=BUCKET,
        prefix="amplitude",
        region=REGION,
        key_ref="1234abcd-0000-0000-0000-000000000000",
    )
    with pytest.raises(UsageError, match="does not exist"):
        aws_setup.reconcile(clients, missing, apply=False)


# --- trust ------------------------------------------------------------------------------------


def test_trust_changes_only_the_trust_policy(clients, config):
    aws_setup.reconcile(clients, config, apply=True)
    before = snapshot(clients)
    change = aws_setup.write_trust(clients, config, SNOWFLAKE_USER, EXTERNAL_ID)
    assert change.status == UPDATE
    after = snapshot(clients)

    expected = aws_policies.snowflake_trust_policy(SNOWFLAKE_USER, EXTERNAL_ID)
    assert after["roles"]["amplitude-snowflake"][0] == expected
    before["roles"]["amplitude-snowflake"] = (expected, before["roles"]["amplitude-snowflake"][1])
    assert after == before

    assert aws_setup.write_trust(clients, config, SNOWFLAKE_USER, EXTERNAL_ID).status == EXISTS
    # apply never puts the placeholder back
    again = aws_setup.reconcile(clients, config, apply=True)
    assert again.changed == []
    assert snapshot(clients) == after
    role_line = next(c for c in again.changes if c.kind == "iam role")
    assert SNOWFLAKE_USER in role_line.detail


def test_trust_command_prints_the_role_arn(aws, monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(settings, "REPO_ROOT", tmp_path)
    monkeypatch.setenv("S3_BUCKET", BUCKET)
    assert run(setup_aws.main, ["apply"]) == 0
    args = ["trust", "--snowflake-user-arn", SNOWFLAKE_USER, "--external-id", EXTERNAL_ID]
    assert run(setup_aws.main, args) == 0
    out = capsys.readouterr().out
    assert f"arn:aws:iam::{ACCOUNT}:role/amplitude-snowflake" in out
    assert "updated  iam role trust" in out


@pytest.mark.parametrize(
    ("user_arn", "external_id", "message"),
    [
        ("arn:aws:iam::12345:user/x", EXTERNAL_ID, "is not an IAM ARN"),
        ("snowflake", EXTERNAL_ID, "is not an IAM ARN"),
        (SNOWFLAKE_USER, " ", "--external-id is empty or the placeholder"),
    ],
)
def test_trust_refuses_values_that_are_not_desc_integrations(
    clients, config, user_arn, external_id, message
):
    with pytest.raises(UsageError, match=message):
        aws_setup.write_trust(clients, config, user_arn, external_id)


def test_trust_before_apply_says_to_apply_first(aws, monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(settings, "REPO_ROOT", tmp_path)
    monkeypatch.setenv("S3_BUCKET", BUCKET)
    args = ["trust", "--snowflake-user-arn", SNOWFLAKE_USER, "--external-id", EXTERNAL_ID]
    assert run(setup_aws.main, args) == 2
    err = capsys.readouterr().err
    assert (
        err
        == "error: role amplitude-snowflake does not exist: run `python setup_aws.py apply` first\n"
    )


# --- the access key and secrets -------------------------------------------------------------------


def test_access_key_goes_only_to_env_with_mode_600_and_is_never_printed(
    aws, monkeypatch, tmp_path, capsys, caplog
):
    monkeypatch.setattr(settings, "REPO_ROOT", tmp_path)
    monkeypatch.setenv("S3_BUCKET", BUCKET)
    monkeypatch.setenv("LOG_LEVEL", "DEBUG")
    env = tmp_path / ".env"
    env.write_text("# mine\nS3_PREFIX=amplitude\nAWS_ACCESS_KEY_ID=\nAWS_SECRET_ACCESS_KEY=\n")
    env.chmod(0o644)
    caplog.set_level(logging.DEBUG)

    assert run(setup_aws.main, ["apply", "--create-access-key"]) == 0
    assert stat.S_IMODE(env.stat().st_mode) == 0o600
    lines = env.read_text().splitlines()
    assert lines[:2] == ["# mine", "S3_PREFIX=amplitude"]
    values = dict(line.split("=", 1) for line in lines[1:])
    key_id, secret = values["AWS_ACCESS_KEY_ID"], values["AWS_SECRET_ACCESS_KEY"]
    assert key_id.startswith("AKIA") and len(secret) >= 40
    iam = boto3.client("iam")
    keys = iam.list_access_keys(UserName="amplitude-loader")["AccessKeyMetadata"]
    assert [k["AccessKeyId"] for k in keys] == [key_id]

    # rerun: the key in .env is the user's, so no second key
    assert run(setup_aws.main, ["apply", "--create-access-key"]) == 0
    assert run(setup_aws.main, ["plan", "--create-access-key"]) == 0
    assert len(iam.list_access_keys(UserName="amplitude-loader")["AccessKeyMetadata"]) == 1
    assert env.read_text().splitlines() == lines

    captured = capsys.readouterr()
    everything = captured.out + captured.err + caplog.text
    assert "created  iam access key" in captured.out
    assert "exists   iam access key" in captured.out
    assert secret not in everything
    assert key_id not in everything
    assert "testing-secret-key" not in everything
    assert not list(tmp_path.glob(".tmp-*"))


def test_access_key_not_written_when_user_already_has_two_elsewhere(clients, config, tmp_path):
    aws_setup.reconcile(clients, config, apply=True)
    for _ in range(2):
        clients.iam.create_access_key(UserName="amplitude-loader")
    env = tmp_path / ".env"
    with pytest.raises(PipelineError, match="already has 2 access keys"):
        aws_setup.reconcile(clients, config, apply=True, access_key_env=env)
    assert not env.exists()


def test_write_env_appends_and_replaces_and_keeps_the_rest(tmp_path):
    env = tmp_path / ".env"
    env.write_text(
        "A=1\n# AWS_ACCESS_KEY_ID=commented\nAWS_ACCESS_KEY_ID=old\nB=2\nAWS_ACCESS_KEY_ID=dup\n"
    )
    aws_setup.write_env(env, {"AWS_ACCESS_KEY_ID": "new", "AWS_SECRET_ACCESS_KEY": "s"})
    assert env.read_text() == (
        "A=1\n# AWS_ACCESS_KEY_ID=commented\nAWS_ACCESS_KEY_ID=new\nB=2\nAWS_SECRET_ACCESS_KEY=s\n"
    )
    assert stat.S_IMODE(env.stat().st_mode) == 0o600


# --- errors ---------------------------------------------------------------------------


def test_missing_bucket_setting_is_a_usage_error(aws, monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(settings, "REPO_ROOT", tmp_path)
    assert run(setup_aws.main, ["plan"]) == 2
    assert capsys.readouterr().err.startswith("error: S3_BUCKET is not set")


def test_unknown_command_is_a_usage_error(capsys):
    assert run(setup_aws.main, ["destroy"]) == 2
    assert capsys.readouterr().err.startswith(
        "error: argument plan|apply|trust|render: invalid choice"
    )


def test_access_denied_says_to_use_administrator_credentials():
    exc = ClientError({"Error": {"Code": "AccessDenied", "Message": "no"}}, "CreateUser")
    error = aws_setup.explain(exc, "iam:CreateUser amplitude-loader")
    assert isinstance(error, PipelineError) and not isinstance(error, UsageError)
    assert "administrator credentials" in str(error)
    assert "iam:CreateUser amplitude-loader" in str(error)


def test_admin_profile_wins_over_loader_keys_in_env(tmp_path, monkeypatch):
    config_file = tmp_path / "aws-config"
    config_file.write_text(
        "[profile admin]\naws_access_key_id = AKIAADMIN\naws_secret_access_key = s\n"
    )
    monkeypatch.setenv("AWS_CONFIG_FILE", str(config_file))
    current = settings.Settings(
        values={
            **{k: v for k, v in os.environ.items() if k.startswith("AWS_")},
            "AWS_PROFILE": "admin",
        }
    )
    session = aws_setup.admin_session(current)
    assert session.get_credentials().access_key == "AKIAADMIN"


def test_rendered_documents_in_aws_dir_match_the_functions():
    """aws/*.json never drift from pipeline/aws_policies.py (`python setup_aws.py render`)."""
    aws_dir = Path(setup_aws.__file__).resolve().parent / "aws"
    expected = aws_policies.console_documents()
    assert sorted(p.name for p in aws_dir.glob("*.json")) == sorted(expected)
    for name, document in expected.items():
        text = (aws_dir / name).read_text(encoding="utf-8")
        assert json.loads(text) == document, (
            f"aws/{name} is stale: run `python setup_aws.py render`"
        )
        assert text == json.dumps(document, indent=2) + "\n"


def test_bucket_in_another_region_is_a_usage_error(clients, config):
    clients.s3.create_bucket(
        Bucket=BUCKET, CreateBucketConfiguration={"LocationConstraint": "eu-west-1"}
    )
    with pytest.raises(UsageError, match="is in eu-west-1, not us-east-1: set AWS_DEFAULT_REGION"):
        aws_setup.reconcile(clients, config, apply=False)


def test_bucket_outside_us_east_1_is_created_in_its_region(aws):
    regional = Clients(
        *(boto3.client(n, region_name="eu-west-1") for n in ("s3", "kms", "iam", "sts"))
    )
    config = Config(bucket=BUCKET, prefix="amplitude", region="eu-west-1", key_ref="alias/x")
    aws_setup.reconcile(regional, config, apply=True)
    location = regional.s3.get_bucket_location(Bucket=BUCKET)["LocationConstraint"]
    assert location == "eu-west-1"
    assert aws_setup.reconcile(regional, config, apply=False).changed == []
