"""The policies, evaluated: what S3, KMS and STS would allow or deny, request by request.

A real IAM evaluator (tests/iam: npm's @cloud-copilot/iam-simulate, pinned) decides each
request from the caller's identity policy and the resource's policy together, as AWS does:
for S3 the loader's or the Snowflake role's policy plus the bucket policy (same account);
for sts:AssumeRole the Snowflake user's own policy plus the role's trust policy (cross
account); for KMS the caller's policy plus the key's default key policy. All scenarios run
in one node process.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from pipeline import aws_policies as p
from pipeline.layout import manifest_prefix
from tests.iam import simulator
from tests.iam.legacy import legacy_bucket_policy
from tests.iam.simulator import ANONYMOUS, Decision, Request, evaluate, simulation

ACCOUNT = "123456789012"
REGION = "eu-west-1"
BUCKET = "acme-amplitude"
PREFIX = "amplitude"
KEY_ID = "1234abcd-12ab-34cd-56ef-1234567890ab"
KEY = f"arn:aws:kms:{REGION}:{ACCOUNT}:key/{KEY_ID}"
ALIAS = "alias/amplitude-export"
OTHER_KEY = f"arn:aws:kms:{REGION}:{ACCOUNT}:key/99999999-0000-0000-0000-000000000000"

LOADER = f"arn:aws:iam::{ACCOUNT}:user/amplitude-loader"
ROLE = f"arn:aws:iam::{ACCOUNT}:role/amplitude-snowflake"
SNOWFLAKE_SESSION = f"arn:aws:sts::{ACCOUNT}:assumed-role/amplitude-snowflake/snowflake"
SNOWFLAKE_USER = "arn:aws:iam::987654321098:user/k7m2-s-v2st1234"
STRANGER = "arn:aws:iam::111122223333:user/someone"
EXTERNAL_ID = "AB12345_SFCRole=2_abcdEFGHijklMNOPqrst="

DATA = f"arn:aws:s3:::{BUCKET}/{PREFIX}/123456/2026-11-20/123456_2026-11-20_5#0.json"
OUTSIDE = f"arn:aws:s3:::{BUCKET}/elsewhere/123456_2026-11-20_5#0.json"
MANIFESTS = manifest_prefix(PREFIX)
MANIFEST = f"arn:aws:s3:::{BUCKET}/{MANIFESTS}/123456/2026-11-20.json"
LOOKALIKE = f"arn:aws:s3:::{BUCKET}/{PREFIX}x/123456_2026-11-20_5#0.json"
BUCKET_ARN = f"arn:aws:s3:::{BUCKET}"

LOADER_POLICY = p.loader_policy(BUCKET, PREFIX, KEY)
SNOWFLAKE_POLICY = p.snowflake_policy(BUCKET, PREFIX, KEY)
BUCKET_POLICY = p.bucket_policy(BUCKET, KEY, ALIAS)
TRUST_POLICY = p.snowflake_trust_policy(SNOWFLAKE_USER, EXTERNAL_ID)
# AWS's default key policy (setup_aws.py keeps it): IAM policies of the account grant use.
KEY_POLICY = {
    "Version": "2012-10-17",
    "Statement": [
        {
            "Sid": "Enable IAM User Permissions",
            "Effect": "Allow",
            "Principal": {"AWS": f"arn:aws:iam::{ACCOUNT}:root"},
            "Action": "kms:*",
            "Resource": "*",
        }
    ],
}
# Snowflake's own side of the cross-account call: its user may assume roles (not ours to set).
MAY_ASSUME_ANY_ROLE = {
    "Version": "2012-10-17",
    "Statement": [{"Effect": "Allow", "Action": "sts:AssumeRole", "Resource": "*"}],
}

TLS = {"aws:SecureTransport": "true"}
VIA_S3 = {**TLS, "kms:ViaService": f"s3.{REGION}.amazonaws.com"}

ALLOWED = Decision("Allowed")
IMPLICIT = Decision("ImplicitlyDenied")


def denied_by(*sids: str) -> Decision:
    return Decision("ExplicitlyDenied", tuple(sorted(f"resource:{s}" for s in sids)))


def sse(key_id: str | None = KEY, algorithm: str = "aws:kms") -> dict[str, str]:
    """The headers of a PutObject or CreateMultipartUpload, as condition keys."""
    headers = {**TLS, "s3:x-amz-server-side-encryption": algorithm}
    if key_id is not None:
        headers["s3:x-amz-server-side-encryption-aws-kms-key-id"] = key_id
    return headers


def listing(prefix: str) -> dict[str, str]:
    return {**TLS, "s3:prefix": prefix}


def s3(
    principal: str | dict,
    identity: list[dict],
    action: str,
    resource: str,
    context: dict | None = None,
    bucket_policy: dict = BUCKET_POLICY,
) -> dict:
    request = Request(principal, action, resource, ACCOUNT, TLS if context is None else context)
    return simulation(request, identity, bucket_policy)


def loader(action: str, resource: str, context: dict | None = None, **kw) -> dict:
    return s3(LOADER, [LOADER_POLICY], action, resource, context, **kw)


def snowflake(action: str, resource: str, context: dict | None = None) -> dict:
    return s3(SNOWFLAKE_SESSION, [SNOWFLAKE_POLICY], action, resource, context)


def assume_role(principal: str, external_id: str | None, trust: dict = TRUST_POLICY) -> dict:
    context = {**TLS, **({"sts:ExternalId": external_id} if external_id is not None else {})}
    request = Request(principal, "sts:AssumeRole", ROLE, ACCOUNT, context)
    return simulation(request, [MAY_ASSUME_ANY_ROLE], trust)


def kms(principal: str, identity: dict, action: str, context: dict) -> dict:
    return simulation(Request(principal, action, KEY, ACCOUNT, context), [identity], KEY_POLICY)


@dataclass(frozen=True)
class Scenario:
    name: str
    simulation: dict
    expected: Decision


SCENARIOS = [
    # --- the loader's uploads: SSE-KMS with the project's key, however the key is named ---
    Scenario("loader PutObject, key by ARN", loader("s3:PutObject", DATA, sse(KEY)), ALLOWED),
    Scenario("loader PutObject, key by id", loader("s3:PutObject", DATA, sse(KEY_ID)), ALLOWED),
    Scenario("loader PutObject, key by alias", loader("s3:PutObject", DATA, sse(ALIAS)), ALLOWED),
    Scenario(
        "loader PutObject, key by alias ARN",
        loader("s3:PutObject", DATA, sse(p.alias_arn(KEY, ALIAS))),
        ALLOWED,
    ),
    Scenario(
        "loader PutObject, AES256",
        loader("s3:PutObject", DATA, sse(None, "AES256")),
        denied_by(p.SID_SSE),
    ),
    Scenario(
        "loader PutObject, aws:kms:dsse with the key",
        loader("s3:PutObject", DATA, sse(KEY, "aws:kms:dsse")),
        denied_by(p.SID_SSE),
    ),
    Scenario(
        "loader PutObject, aws:kms without a key id (S3 would use aws/s3)",
        loader("s3:PutObject", DATA, sse(None)),
        denied_by(p.SID_NO_KEY),
    ),
    Scenario(
        "loader PutObject, another KMS key",
        loader("s3:PutObject", DATA, sse(OTHER_KEY)),
        denied_by(p.SID_KEY),
    ),
    Scenario(
        "loader PutObject, another key's alias",
        loader("s3:PutObject", DATA, sse("alias/other")),
        denied_by(p.SID_KEY),
    ),
    Scenario(
        "loader PutObject, no SSE header (the bucket default applies)",
        loader("s3:PutObject", DATA),
        ALLOWED,
    ),
    # multipart: CreateMultipartUpload carries the headers; UploadPart and
    # CompleteMultipartUpload are authorised as s3:PutObject and carry none
    Scenario("loader CreateMultipartUpload", loader("s3:PutObject", DATA, sse()), ALLOWED),
    Scenario("loader UploadPart", loader("s3:PutObject", DATA, TLS), ALLOWED),
    Scenario("loader CompleteMultipartUpload", loader("s3:PutObject", DATA, TLS), ALLOWED),
    Scenario("loader AbortMultipartUpload", loader("s3:AbortMultipartUpload", DATA), ALLOWED),
    Scenario(
        "loader ListMultipartUploadParts", loader("s3:ListMultipartUploadParts", DATA), ALLOWED
    ),
    Scenario(
        "loader PutObject without TLS",
        loader("s3:PutObject", DATA, {**sse(KEY), "aws:SecureTransport": "false"}),
        denied_by(p.SID_TLS),
    ),
    Scenario(
        "loader PutObject outside the prefix", loader("s3:PutObject", OUTSIDE, sse()), IMPLICIT
    ),
    Scenario(
        "loader PutObject under a lookalike prefix",
        loader("s3:PutObject", LOOKALIKE, sse()),
        IMPLICIT,
    ),
    # --- the manifests: the loader's own, beside the stage, encrypted like the data ---
    Scenario("loader PutObject, a manifest", loader("s3:PutObject", MANIFEST, sse()), ALLOWED),
    Scenario("loader GetObject, a manifest", loader("s3:GetObject", MANIFEST), ALLOWED),
    Scenario(
        "loader ListBucket of the manifests",
        loader("s3:ListBucket", BUCKET_ARN, listing(f"{MANIFESTS}/123456/")),
        ALLOWED,
    ),
    Scenario(
        "loader ListBucket of the manifests' project folders (status.py)",
        loader("s3:ListBucket", BUCKET_ARN, listing(f"{MANIFESTS}/")),
        ALLOWED,
    ),
    Scenario(
        "loader PutObject, a manifest with AES256",
        loader("s3:PutObject", MANIFEST, sse(None, "AES256")),
        denied_by(p.SID_SSE),
    ),
    Scenario(
        "loader PutObject, a manifest with another key",
        loader("s3:PutObject", MANIFEST, sse(OTHER_KEY)),
        denied_by(p.SID_KEY),
    ),
    Scenario("loader DeleteObject, a manifest", loader("s3:DeleteObject", MANIFEST), IMPLICIT),
    # --- what the loader may not do ---
    Scenario("loader GetObject", loader("s3:GetObject", DATA), ALLOWED),
    Scenario("loader DeleteObject", loader("s3:DeleteObject", DATA), IMPLICIT),
    Scenario("loader PutBucketPolicy", loader("s3:PutBucketPolicy", BUCKET_ARN), IMPLICIT),
    Scenario("loader DeleteBucketPolicy", loader("s3:DeleteBucketPolicy", BUCKET_ARN), IMPLICIT),
    Scenario(
        "loader ListBucket under the prefix",
        loader("s3:ListBucket", BUCKET_ARN, listing(f"{PREFIX}/123456/")),
        ALLOWED,
    ),
    Scenario(
        "loader ListBucket of the whole bucket",
        loader("s3:ListBucket", BUCKET_ARN, listing("")),
        IMPLICIT,
    ),
    # --- Snowflake's role: read only, the prefix only ---
    Scenario("snowflake GetObject under the prefix", snowflake("s3:GetObject", DATA), ALLOWED),
    Scenario("snowflake PutObject", snowflake("s3:PutObject", DATA, sse()), IMPLICIT),
    Scenario(
        "snowflake GetObject outside the prefix", snowflake("s3:GetObject", OUTSIDE), IMPLICIT
    ),
    Scenario(
        "snowflake ListBucket under the prefix",
        snowflake("s3:ListBucket", BUCKET_ARN, listing(f"{PREFIX}/")),
        ALLOWED,
    ),
    Scenario("snowflake GetObject, a manifest", snowflake("s3:GetObject", MANIFEST), IMPLICIT),
    Scenario(
        "snowflake ListBucket of the manifests",
        snowflake("s3:ListBucket", BUCKET_ARN, listing(f"{MANIFESTS}/")),
        IMPLICIT,
    ),
    Scenario(
        "snowflake ListBucket of another prefix",
        snowflake("s3:ListBucket", BUCKET_ARN, listing("elsewhere/")),
        IMPLICIT,
    ),
    Scenario("snowflake GetBucketLocation", snowflake("s3:GetBucketLocation", BUCKET_ARN), ALLOWED),
    Scenario(
        "snowflake GetObject without TLS",
        snowflake("s3:GetObject", DATA, {"aws:SecureTransport": "false"}),
        denied_by(p.SID_TLS),
    ),
    # --- nobody else ---
    Scenario("anonymous GetObject", s3(ANONYMOUS, [], "s3:GetObject", DATA), IMPLICIT),
    # --- the trust policy: sts:AssumeRole from Snowflake's account ---
    Scenario(
        "snowflake user assumes the role with its external id",
        assume_role(SNOWFLAKE_USER, EXTERNAL_ID),
        ALLOWED,
    ),
    Scenario(
        "snowflake user with a wrong external id", assume_role(SNOWFLAKE_USER, "wrong"), IMPLICIT
    ),
    Scenario("snowflake user without an external id", assume_role(SNOWFLAKE_USER, None), IMPLICIT),
    Scenario("another principal", assume_role(STRANGER, EXTERNAL_ID), IMPLICIT),
    Scenario(
        "placeholder trust: snowflake user",
        assume_role(SNOWFLAKE_USER, "0000", p.placeholder_trust_policy(ACCOUNT)),
        IMPLICIT,
    ),
    # --- the key: through S3 only ---
    Scenario(
        "loader GenerateDataKey through S3",
        kms(LOADER, LOADER_POLICY, "kms:GenerateDataKey", VIA_S3),
        ALLOWED,
    ),
    Scenario(
        "loader Decrypt through S3", kms(LOADER, LOADER_POLICY, "kms:Decrypt", VIA_S3), ALLOWED
    ),
    Scenario(
        "loader Encrypt through S3 (SSE-KMS does not need it)",
        kms(LOADER, LOADER_POLICY, "kms:Encrypt", VIA_S3),
        IMPLICIT,
    ),
    Scenario(
        "loader GenerateDataKey directly",
        kms(LOADER, LOADER_POLICY, "kms:GenerateDataKey", TLS),
        IMPLICIT,
    ),
    Scenario(
        "snowflake Decrypt through S3",
        kms(SNOWFLAKE_SESSION, SNOWFLAKE_POLICY, "kms:Decrypt", VIA_S3),
        ALLOWED,
    ),
    Scenario(
        "snowflake GenerateDataKey through S3",
        kms(SNOWFLAKE_SESSION, SNOWFLAKE_POLICY, "kms:GenerateDataKey", VIA_S3),
        IMPLICIT,
    ),
    # --- the trap the old bucket policy fell into: UploadPart has no SSE header ---
    Scenario(
        "old bucket policy: UploadPart",
        loader("s3:PutObject", DATA, TLS, bucket_policy=legacy_bucket_policy(BUCKET, KEY, ALIAS)),
        denied_by(p.SID_SSE, p.SID_KEY),
    ),
]


@pytest.fixture(scope="module")
def decisions() -> dict[str, Decision]:
    """Every scenario's decision, from one run of the evaluator."""
    names = [s.name for s in SCENARIOS]
    assert len(set(names)) == len(names), "scenario names must be unique"
    return dict(zip(names, evaluate([s.simulation for s in SCENARIOS]), strict=True))


@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda s: s.name)
def test_request_is_decided_as_aws_would(scenario: Scenario, decisions: dict[str, Decision]):
    assert decisions[scenario.name] == scenario.expected


def test_a_missing_evaluator_fails_loudly_rather_than_skipping(monkeypatch, tmp_path):
    monkeypatch.setattr(simulator, "PACKAGE", tmp_path / "not-installed")
    with pytest.raises(simulator.EvaluatorMissing, match="npm ci --prefix tests/iam"):
        evaluate([SCENARIOS[0].simulation])


def test_a_request_the_evaluator_cannot_check_is_an_error_not_a_denial():
    bogus = Request(LOADER, "s3:NoSuchAction", DATA, ACCOUNT, TLS)
    with pytest.raises(ValueError, match="iam-simulate refused a request"):
        evaluate([simulation(bogus, [LOADER_POLICY], BUCKET_POLICY)])
