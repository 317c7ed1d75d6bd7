-- 03  The JSON file format and the external stage on the integration.
--
-- Run once, as the loader role (it then owns both).
--   snow sql -f snowflake/03_stage.sql -D database=AMPLITUDE -D schema=RAW \
--     -D role=AMPLITUDE_LOADER -D warehouse=AMPLITUDE_WH -D s3_bucket=acme-amplitude -D s3_prefix=amplitude

-- name: use_role
USE ROLE <% role %>;

-- name: use_warehouse
USE WAREHOUSE <% warehouse %>;

-- name: use_schema
USE SCHEMA <% database %>.<% schema %>;

-- Amplitude's files are newline-delimited JSON, one event a line. COMPRESSION = AUTO reads
-- the extension, so objects stored as .json (S3_GZIP=false) and .json.gz (S3_GZIP=true) both load.
-- name: create_file_format
CREATE FILE FORMAT IF NOT EXISTS amplitude_json
  TYPE = JSON
  COMPRESSION = AUTO
  COMMENT = 'Amplitude export: newline-delimited JSON, plain or gzip';

-- The stage's URL is exactly the prefix load.py uploads under (S3_BUCKET, S3_PREFIX).
-- name: create_stage
CREATE STAGE IF NOT EXISTS amplitude_stage
  URL = 's3://<% s3_bucket %>/<% s3_prefix %>/'
  STORAGE_INTEGRATION = amplitude_s3
  FILE_FORMAT = (FORMAT_NAME = 'amplitude_json')
  COMMENT = 'Amplitude exports, one object per hour and shard';

-- Should list the uploaded files. "Access Denied" here means the AWS role's trust relationship
-- or policy is wrong (see 02 and `python setup_aws.py trust`).
-- name: list_stage
LIST @amplitude_stage;
