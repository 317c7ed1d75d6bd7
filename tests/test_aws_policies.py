"""The policies as documents: the exact actions, resources and conditions.

moto does not evaluate conditions; test_aws_policy_evaluation.py evaluates these documents
with a real IAM evaluator."""

from __future__ import annotations

import json

import pytest

from pipeline import aws_policies as p
from pipeline import layout

BUCKET = "acme-amplitude"
KEY = "arn:aws:kms:eu-west-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab"
ALIAS = "alias/amplitude-export"


def _as_list(value) -> list:
    return value if isinstance(value, list) else [value]


def _grants(document: dict) -> list[tuple[str, str, dict | None]]:
    """(action, resource, condition) for every Allow statement, flattened."""
    return sorted(
        (action, resource, statement.get("Condition"))
        for statement in document["Statement"]
        if statement["Effect"] == "Allow"
        for action in _as_list(statement["Action"])
        for resource in _as_list(statement["Resource"])
    )


def _all_documents() -> list[dict]:
    return [
        p.loader_policy(BUCKET, "amplitude", KEY),
        p.snowflake_policy(BUCKET, "amplitude", KEY),
        p.snowflake_trust_policy("arn:aws:iam::987654321098:user/abc", "ext"),
        p.placeholder_trust_policy("123456789012"),
        p.bucket_policy(BUCKET, KEY, ALIAS),
        *(d for d in p.console_documents().values() if "Statement" in d),
    ]


VIA_S3 = {"StringEquals": {"kms:ViaService": "s3.eu-west-1.amazonaws.com"}}
LIST_PREFIX = {"StringLike": {"s3:prefix": ["amplitude/*"]}}
LIST_BOTH = {"StringLike": {"s3:prefix": ["amplitude/*", "amplitude-manifests/*"]}}


def test_loader_policy_grants_exactly_what_load_and_extract_need():
    assert _grants(p.loader_policy(BUCKET, "amplitude", KEY)) == sorted(
        [
            ("s3:ListBucket", f"arn:aws:s3:::{BUCKET}", LIST_BOTH),
            ("s3:PutObject", f"arn:aws:s3:::{BUCKET}/amplitude/*", None),
            ("s3:GetObject", f"arn:aws:s3:::{BUCKET}/amplitude/*", None),
            ("s3:AbortMultipartUpload", f"arn:aws:s3:::{BUCKET}/amplitude/*", None),
            ("s3:ListMultipartUploadParts", f"arn:aws:s3:::{BUCKET}/amplitude/*", None),
            ("s3:PutObject", f"arn:aws:s3:::{BUCKET}/amplitude-manifests/*", None),
            ("s3:GetObject", f"arn:aws:s3:::{BUCKET}/amplitude-manifests/*", None),
            ("kms:GenerateDataKey", KEY, VIA_S3),
            ("kms:Decrypt", KEY, VIA_S3),
        ]
    )


def test_loader_policy_never_deletes():
    actions = {a for a, _, _ in _grants(p.loader_policy(BUCKET, "amplitude", KEY))}
    assert not {a for a in actions if "Delete" in a}


def test_the_manifests_are_outside_the_stage_and_snowflake_never_sees_them():
    manifests = layout.manifest_prefix("amplitude")
    assert not manifests.startswith("amplitude/")  # the stage is s3://bucket/amplitude/
    assert manifests not in json.dumps(p.snowflake_policy(BUCKET, "amplitude", KEY))


def test_snowflake_policy_is_read_only_on_the_prefix():
    assert _grants(p.snowflake_policy(BUCKET, "amplitude", KEY)) == sorted(
        [
            ("s3:GetBucketLocation", f"arn:aws:s3:::{BUCKET}", None),
            ("s3:ListBucket", f"arn:aws:s3:::{BUCKET}", LIST_PREFIX),
            ("s3:GetObject", f"arn:aws:s3:::{BUCKET}/amplitude/*", None),
            ("s3:GetObjectVersion", f"arn:aws:s3:::{BUCKET}/amplitude/*", None),
            ("kms:Decrypt", KEY, VIA_S3),
        ]
    )


def test_trust_policy_is_assume_role_for_the_snowflake_user_with_the_external_id():
    user = "arn:aws:iam::987654321098:user/k7m2-s-v2st1234"
    document = p.snowflake_trust_policy(user, "AB12345_SFCRole=2_x=")
    assert document["Statement"] == [
        {
            "Sid": "SnowflakeStorageIntegration",
            "Effect": "Allow",
            "Principal": {"AWS": user},
            "Action": "sts:AssumeRole",
            "Condition": {"StringEquals": {"sts:ExternalId": "AB12345_SFCRole=2_x="}},
        }
    ]


def test_placeholder_trust_is_this_account_only():
    (statement,) = p.placeholder_trust_policy("123456789012")["Statement"]
    assert statement["Principal"] == {"AWS": "arn:aws:iam::123456789012:root"}
    assert statement["Condition"] == {"StringEquals": {"sts:ExternalId": "0000"}}


def test_bucket_policy_denies_plain_http_for_everything():
    statements = {s["Sid"]: s for s in p.bucket_policy(BUCKET, KEY, ALIAS)["Statement"]}
    assert statements["DenyInsecureTransport"] == {
        "Sid": "DenyInsecureTransport",
        "Effect": "Deny",
        "Principal": "*",
        "Action": "s3:*",
        "Resource": [f"arn:aws:s3:::{BUCKET}", f"arn:aws:s3:::{BUCKET}/*"],
        "Condition": {"Bool": {"aws:SecureTransport": "false"}},
    }


def test_bucket_policy_encryption_denies_apply_only_when_their_header_is_sent():
    statements = {s["Sid"]: s for s in p.bucket_policy(BUCKET, KEY, ALIAS)["Statement"]}
    assert list(statements) == list(p.BUCKET_POLICY_SIDS)
    sse = "s3:x-amz-server-side-encryption"
    key_id = "s3:x-amz-server-side-encryption-aws-kms-key-id"
    conditions = {
        "DenyUploadsNotSseKms": {
            "StringNotEquals": {sse: "aws:kms"},
            "Null": {sse: "false"},
        },
        "DenyUploadsWithOtherKmsKey": {
            "StringNotEquals": {
                key_id: [
                    KEY,
                    "1234abcd-12ab-34cd-56ef-1234567890ab",
                    ALIAS,
                    "arn:aws:kms:eu-west-1:123456789012:alias/amplitude-export",
                ]
            },
            "Null": {key_id: "false"},
        },
        "DenyKmsUploadsWithoutKeyId": {
            "StringEquals": {sse: "aws:kms"},
            "Null": {key_id: "true"},
        },
    }
    for sid, condition in conditions.items():
        assert statements[sid] == {
            "Sid": sid,
            "Effect": "Deny",
            "Principal": "*",
            "Action": "s3:PutObject",
            "Resource": [f"arn:aws:s3:::{BUCKET}/*"],
            "Condition": condition,
        }
    assert "IfExists" not in str(statements)
    assert [s["Effect"] for s in statements.values()] == ["Deny"] * 4


def test_bucket_policy_without_an_alias_names_the_key_by_arn_and_id_only():
    statements = {s["Sid"]: s for s in p.bucket_policy(BUCKET, KEY)["Statement"]}
    condition = statements["DenyUploadsWithOtherKmsKey"]["Condition"]["StringNotEquals"]
    assert condition == {
        "s3:x-amz-server-side-encryption-aws-kms-key-id": [
            KEY,
            "1234abcd-12ab-34cd-56ef-1234567890ab",
        ]
    }


@pytest.mark.parametrize("document", _all_documents())
def test_no_wildcard_action_or_resource_anywhere(document):
    for statement in document["Statement"]:
        assert "NotAction" not in statement and "NotResource" not in statement
        actions = _as_list(statement["Action"])
        resources = _as_list(statement.get("Resource", []))
        assert "*" not in actions and "*" not in resources
        if statement["Effect"] == "Allow":
            # an Allow names each action; wildcards only in object paths under the prefix
            assert not any("*" in a for a in actions)
            assert all(r.endswith(("/*",)) or "*" not in r for r in resources)
            assert statement.get("Principal") != "*"


def test_console_documents_use_placeholders_not_real_values():
    docs = p.console_documents()
    assert set(docs) == {
        "loader-policy.json",
        "snowflake-role-policy.json",
        "snowflake-trust-policy.json",
        "bucket-policy.json",
        "bucket-lifecycle.json",
    }
    text = str(docs)
    assert "<S3_BUCKET>" in text and "<ACCOUNT_ID>" in text
    assert "STORAGE_AWS_EXTERNAL_ID" in str(docs["snowflake-trust-policy.json"])


def test_lifecycle_rules_cover_the_data_and_the_manifests_only():
    assert p.lifecycle_rules("amplitude", 30) == [
        {
            "ID": "amplitude-export-data",
            "Filter": {"Prefix": "amplitude/"},
            "Status": "Enabled",
            "AbortIncompleteMultipartUpload": {"DaysAfterInitiation": 1},
            "NoncurrentVersionExpiration": {"NoncurrentDays": 30},
        },
        {
            "ID": "amplitude-export-manifests",
            "Filter": {"Prefix": "amplitude-manifests/"},
            "Status": "Enabled",
            "AbortIncompleteMultipartUpload": {"DaysAfterInitiation": 1},
            "NoncurrentVersionExpiration": {"NoncurrentDays": 30},
        },
    ]
    days = {r["NoncurrentVersionExpiration"]["NoncurrentDays"] for r in p.lifecycle_rules("x", 7)}
    assert days == {7}
