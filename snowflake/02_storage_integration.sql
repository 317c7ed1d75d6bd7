-- 02  The storage integration: how Snowflake reads the bucket without any AWS secret.
--
-- Run once, as ACCOUNTADMIN (only it, or a role with CREATE INTEGRATION, may create one).
--   snow sql -f snowflake/02_storage_integration.sql -D s3_bucket=acme-amplitude \
--     -D s3_prefix=amplitude -D aws_role_arn=arn:aws:iam::123456789012:role/snowflake-amplitude \
--     -D role=AMPLITUDE_LOADER
--
-- aws_role_arn is the IAM role Snowflake assumes (`python setup_aws.py plan` prints it); it
-- may read only s3://<bucket>/<prefix>/ and decrypt with the bucket's KMS key.
-- IF NOT EXISTS matters: CREATE OR REPLACE would generate a new external id and break the
-- trust relationship set up from DESC INTEGRATION below.

-- name: use_admin_role
USE ROLE ACCOUNTADMIN;

-- name: create_integration
CREATE STORAGE INTEGRATION IF NOT EXISTS amplitude_s3
  TYPE = EXTERNAL_STAGE
  STORAGE_PROVIDER = 'S3'
  ENABLED = TRUE
  STORAGE_AWS_ROLE_ARN = '<% aws_role_arn %>'
  STORAGE_ALLOWED_LOCATIONS = ('s3://<% s3_bucket %>/<% s3_prefix %>/')
  COMMENT = 'Amplitude exports uploaded by load.py';

-- name: grant_integration
GRANT USAGE ON INTEGRATION amplitude_s3 TO ROLE <% role %>;

-- Two values of this output go into the AWS role's trust relationship
-- (`python setup_aws.py trust` writes it from them):
--   STORAGE_AWS_IAM_USER_ARN  the principal allowed to assume the role (AWS "Principal")
--   STORAGE_AWS_EXTERNAL_ID   the sts:ExternalId the assume-role call must carry (a "Condition")
-- name: describe_integration
DESC INTEGRATION amplitude_s3;
