"""The IAM and bucket policy documents and lifecycle rules, as plain functions returning dicts.

Least privilege: every Allow names its exact actions and resources (no `*` action or
resource); the bucket policy only adds Deny statements. `aws/*.json` holds the same documents
rendered with placeholders (`python setup_aws.py render`), for people who use the console.
The prefix is never empty (settings refuse an empty S3_PREFIX).
"""

from __future__ import annotations

from pipeline.layout import manifest_prefix

VERSION = "2012-10-17"

# Bucket-policy statements this project owns (found and replaced by Sid; others are kept).
SID_TLS = "DenyInsecureTransport"
SID_SSE = "DenyUploadsNotSseKms"
SID_KEY = "DenyUploadsWithOtherKmsKey"
SID_NO_KEY = "DenyKmsUploadsWithoutKeyId"
BUCKET_POLICY_SIDS = (SID_TLS, SID_SSE, SID_KEY, SID_NO_KEY)

# The request headers S3 exposes as condition keys on s3:PutObject.
SSE_HEADER = "s3:x-amz-server-side-encryption"
KEY_ID_HEADER = "s3:x-amz-server-side-encryption-aws-kms-key-id"

# The bucket's lifecycle rules this project owns (found and replaced by ID; others are kept).
LIFECYCLE_DATA_ID = "amplitude-export-data"
LIFECYCLE_MANIFESTS_ID = "amplitude-export-manifests"
ABORT_INCOMPLETE_UPLOAD_DAYS = 1
DEFAULT_NONCURRENT_VERSION_DAYS = 30

# The storage integration's values before `setup_aws.py trust` writes the real ones.
PLACEHOLDER_EXTERNAL_ID = "0000"

# What `render` substitutes for the values only a real account knows.
PLACEHOLDERS = {
    "bucket": "<S3_BUCKET>",
    "prefix": "amplitude",
    "key_arn": "arn:aws:kms:<REGION>:<ACCOUNT_ID>:key/<KEY_ID>",
    "alias": "alias/amplitude-export",
    "snowflake_user_arn": "<STORAGE_AWS_IAM_USER_ARN from DESC INTEGRATION>",
    "external_id": "<STORAGE_AWS_EXTERNAL_ID from DESC INTEGRATION>",
}


def bucket_arn(bucket: str) -> str:
    return f"arn:aws:s3:::{bucket}"


def objects_arn(bucket: str, prefix: str) -> str:
    """The objects under the prefix."""
    return f"arn:aws:s3:::{bucket}/{prefix}/*"


def key_region(key_arn: str) -> str:
    return key_arn.split(":")[3]


def alias_arn(key_arn: str, alias: str) -> str:
    """`arn:aws:kms:REGION:ACCOUNT:alias/NAME` for an alias of the key's account and region."""
    partition_service_region_account = ":".join(key_arn.split(":")[:5])
    return f"{partition_service_region_account}:{alias}"


def key_names(key_arn: str, alias: str | None) -> list[str]:
    """Every way a request may name the key: ARN, key id, alias name, alias ARN."""
    names = [key_arn, key_arn.rsplit("/", 1)[-1]]
    if alias:
        names += [alias, alias_arn(key_arn, alias)]
    return names


def _list_prefix_statement(sid: str, bucket: str, prefixes: list[str]) -> dict:
    """ListBucket, only when the request asks for keys under one of the prefixes."""
    return {
        "Sid": sid,
        "Effect": "Allow",
        "Action": ["s3:ListBucket"],
        "Resource": [bucket_arn(bucket)],
        "Condition": {"StringLike": {"s3:prefix": [f"{p}/*" for p in prefixes]}},
    }


def _key_statement(sid: str, actions: list[str], key_arn: str) -> dict:
    """Use of the key, and only through S3 (kms:ViaService) in the key's region."""
    return {
        "Sid": sid,
        "Effect": "Allow",
        "Action": actions,
        "Resource": [key_arn],
        "Condition": {
            "StringEquals": {"kms:ViaService": f"s3.{key_region(key_arn)}.amazonaws.com"}
        },
    }


def loader_policy(bucket: str, prefix: str, key_arn: str) -> dict:
    """What load.py and extract.py need: the export's objects, the manifests, the key.

    AbortMultipartUpload and ListMultipartUploadParts let boto3's transfer manager clean up
    and resume multipart uploads. The manifests (`<prefix>-manifests/`, outside Snowflake's
    stage) are small single PUTs. No DeleteObject: `load.py --prune` deletes local files only.
    kms:GenerateDataKey encrypts (SSE-KMS never calls kms:Encrypt); kms:Decrypt is needed for
    multipart uploads too (S3 reads earlier parts' data keys) and to read objects back.
    """
    manifests = manifest_prefix(prefix)
    return {
        "Version": VERSION,
        "Statement": [
            _list_prefix_statement("ListExportAndManifestPrefixes", bucket, [prefix, manifests]),
            {
                "Sid": "ReadWriteExportObjects",
                "Effect": "Allow",
                "Action": [
                    "s3:PutObject",
                    "s3:GetObject",
                    "s3:AbortMultipartUpload",
                    "s3:ListMultipartUploadParts",
                ],
                "Resource": [objects_arn(bucket, prefix)],
            },
            {
                "Sid": "ReadWriteManifests",
                "Effect": "Allow",
                "Action": ["s3:PutObject", "s3:GetObject"],
                "Resource": [objects_arn(bucket, manifests)],
            },
            _key_statement("EncryptWithExportKey", ["kms:GenerateDataKey", "kms:Decrypt"], key_arn),
        ],
    }


def snowflake_policy(bucket: str, prefix: str, key_arn: str) -> dict:
    """What Snowflake's storage integration needs to read the export (read only, no manifests).

    s3:GetBucketLocation is on Snowflake's list of required permissions (it finds the bucket's
    region with it); it cannot carry an s3:prefix condition, so it has its own statement.
    """
    return {
        "Version": VERSION,
        "Statement": [
            {
                "Sid": "LocateExportBucket",
                "Effect": "Allow",
                "Action": ["s3:GetBucketLocation"],
                "Resource": [bucket_arn(bucket)],
            },
            _list_prefix_statement("ListExportPrefix", bucket, [prefix]),
            {
                "Sid": "ReadExportObjects",
                "Effect": "Allow",
                "Action": ["s3:GetObject", "s3:GetObjectVersion"],
                "Resource": [objects_arn(bucket, prefix)],
            },
            _key_statement("DecryptWithExportKey", ["kms:Decrypt"], key_arn),
        ],
    }


def snowflake_trust_policy(snowflake_user_arn: str, external_id: str) -> dict:
    """Who may assume the Snowflake role: the integration's IAM user, with its external id."""
    return {
        "Version": VERSION,
        "Statement": [
            {
                "Sid": "SnowflakeStorageIntegration",
                "Effect": "Allow",
                "Principal": {"AWS": snowflake_user_arn},
                "Action": "sts:AssumeRole",
                "Condition": {"StringEquals": {"sts:ExternalId": external_id}},
            }
        ],
    }


def placeholder_trust_policy(account_id: str) -> dict:
    """Until `trust` runs: only this account itself, with a placeholder external id.

    IAM rejects a trust policy whose principal does not exist, so the placeholder names the
    account's own root (as Snowflake's guide does); nobody outside the account can assume it.
    """
    return snowflake_trust_policy(f"arn:aws:iam::{account_id}:root", PLACEHOLDER_EXTERNAL_ID)


def _deny_uploads(sid: str, bucket: str, condition: dict) -> dict:
    """Deny s3:PutObject (also CreateMultipartUpload, UploadPart, CompleteMultipartUpload)."""
    return {
        "Sid": sid,
        "Effect": "Deny",
        "Principal": "*",
        "Action": "s3:PutObject",
        "Resource": [f"{bucket_arn(bucket)}/*"],
        "Condition": condition,
    }


def bucket_policy(bucket: str, key_arn: str, alias: str | None = None) -> dict:
    """Deny anything not sent over TLS; deny uploads that ask for another encryption or key.

    Each encryption deny applies only when its header is in the request (`Null: false`).
    UploadPart and CompleteMultipartUpload are authorised as s3:PutObject and carry no SSE
    header; with `StringNotEqualsIfExists` they would be refused (a missing key makes an
    IfExists test true). A request without any SSE header gets the bucket's default
    encryption: SSE-KMS with this key. `aws:kms` without a key id is refused, as S3 would use
    the AWS-managed aws/s3 key. The key may be named by ARN, id, alias name or alias ARN.
    """
    return {
        "Version": VERSION,
        "Statement": [
            {
                "Sid": SID_TLS,
                "Effect": "Deny",
                "Principal": "*",
                "Action": "s3:*",
                "Resource": [bucket_arn(bucket), f"{bucket_arn(bucket)}/*"],
                "Condition": {"Bool": {"aws:SecureTransport": "false"}},
            },
            _deny_uploads(
                SID_SSE,
                bucket,
                {"StringNotEquals": {SSE_HEADER: "aws:kms"}, "Null": {SSE_HEADER: "false"}},
            ),
            _deny_uploads(
                SID_KEY,
                bucket,
                {
                    "StringNotEquals": {KEY_ID_HEADER: key_names(key_arn, alias)},
                    "Null": {KEY_ID_HEADER: "false"},
                },
            ),
            _deny_uploads(
                SID_NO_KEY,
                bucket,
                {"StringEquals": {SSE_HEADER: "aws:kms"}, "Null": {KEY_ID_HEADER: "true"}},
            ),
        ],
    }


def _lifecycle_rule(rule_id: str, prefix: str, noncurrent_days: int) -> dict:
    return {
        "ID": rule_id,
        "Filter": {"Prefix": f"{prefix}/"},
        "Status": "Enabled",
        "AbortIncompleteMultipartUpload": {"DaysAfterInitiation": ABORT_INCOMPLETE_UPLOAD_DAYS},
        "NoncurrentVersionExpiration": {"NoncurrentDays": noncurrent_days},
    }


def lifecycle_rules(prefix: str, noncurrent_days: int) -> list[dict]:
    """Under the data prefix and the manifests': abort multipart uploads left incomplete for a
    day (their parts are billed until then), and delete versions `noncurrent_days` after they
    were replaced, so versioning keeps the last month of overwrites, not every one for ever.

    Scoped to the two prefixes, not the whole bucket: expiring old versions deletes data, and
    the bucket may hold others' (their rules are kept too).
    """
    return [
        _lifecycle_rule(LIFECYCLE_DATA_ID, prefix, noncurrent_days),
        _lifecycle_rule(LIFECYCLE_MANIFESTS_ID, manifest_prefix(prefix), noncurrent_days),
    ]


def console_documents() -> dict[str, dict]:
    """The documents as `aws/` holds them: file name → document, with placeholders."""
    p = PLACEHOLDERS
    return {
        "loader-policy.json": loader_policy(p["bucket"], p["prefix"], p["key_arn"]),
        "snowflake-role-policy.json": snowflake_policy(p["bucket"], p["prefix"], p["key_arn"]),
        "snowflake-trust-policy.json": snowflake_trust_policy(
            p["snowflake_user_arn"], p["external_id"]
        ),
        "bucket-policy.json": bucket_policy(p["bucket"], p["key_arn"], p["alias"]),
        "bucket-lifecycle.json": {
            "Rules": lifecycle_rules(p["prefix"], DEFAULT_NONCURRENT_VERSION_DAYS)
        },
    }
