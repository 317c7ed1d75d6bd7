"""Amplitude → S3 → Snowflake: the logic behind extract.py, load.py and setup_aws.py."""
