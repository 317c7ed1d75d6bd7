"""The bucket policy's encryption denies as shipped before issue 9, kept to prove the trap.

Their `StringNotEqualsIfExists` is true when the request lacks the header, so every
UploadPart and CompleteMultipartUpload (s3:PutObject, no SSE header) was refused on real S3.
"""

from __future__ import annotations

from pipeline import aws_policies


def legacy_bucket_policy(bucket: str, key_arn: str, alias: str | None = None) -> dict:
    key_names = [key_arn, key_arn.rsplit("/", 1)[-1]]
    if alias:
        key_names += [alias, aws_policies.alias_arn(key_arn, alias)]

    def deny(sid: str, key: str, values: str | list[str]) -> dict:
        return {
            "Sid": sid,
            "Effect": "Deny",
            "Principal": "*",
            "Action": "s3:PutObject",
            "Resource": [f"arn:aws:s3:::{bucket}/*"],
            "Condition": {"StringNotEqualsIfExists": {key: values}},
        }

    return {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Sid": "DenyInsecureTransport",
                "Effect": "Deny",
                "Principal": "*",
                "Action": "s3:*",
                "Resource": [f"arn:aws:s3:::{bucket}", f"arn:aws:s3:::{bucket}/*"],
                "Condition": {"Bool": {"aws:SecureTransport": "false"}},
            },
            deny("DenyUploadsNotSseKms", "s3:x-amz-server-side-encryption", "aws:kms"),
            deny(
                "DenyUploadsWithOtherKmsKey",
                "s3:x-amz-server-side-encryption-aws-kms-key-id",
                key_names,
            ),
        ],
    }
