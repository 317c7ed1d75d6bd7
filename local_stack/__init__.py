"""Local stand-ins for Amplitude, S3/KMS and Snowflake: the demo and the tests run on them."""
