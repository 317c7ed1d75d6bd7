-- 01  Database, schema, warehouse, and the loader role with the grants it needs.
--
-- Run once, as ACCOUNTADMIN (or SYSADMIN for the objects plus SECURITYADMIN for the role).
--   snow sql -f snowflake/01_database.sql -D database=AMPLITUDE -D schema=RAW \
--     -D warehouse=AMPLITUDE_WH -D role=AMPLITUDE_LOADER -D user=AMPLITUDE_LOADER
-- In Snowsight, replace each <% ... %> by hand (or use the same values as in .env).
-- Every statement is idempotent (IF NOT EXISTS; grants can be repeated).
-- Each statement carries a `-- name:` line: tests and load.py refer to statements by it.

-- name: use_admin_role
USE ROLE ACCOUNTADMIN;

-- name: create_database
CREATE DATABASE IF NOT EXISTS <% database %>;

-- name: create_schema
CREATE SCHEMA IF NOT EXISTS <% database %>.<% schema %>;

-- A small warehouse that suspends after a minute: COPY and MERGE of hourly files need no more.
-- name: create_warehouse
CREATE WAREHOUSE IF NOT EXISTS <% warehouse %>
  WAREHOUSE_SIZE = XSMALL
  AUTO_SUSPEND = 60
  AUTO_RESUME = TRUE
  INITIALLY_SUSPENDED = TRUE;

-- The role load.py --copy connects with (SNOWFLAKE_ROLE). It owns the stage and tables it
-- creates in 03 and 04, so it needs no grants on them.
-- name: create_role
CREATE ROLE IF NOT EXISTS <% role %>;

-- name: grant_role_to_sysadmin
GRANT ROLE <% role %> TO ROLE SYSADMIN;

-- name: grant_role_to_user
GRANT ROLE <% role %> TO USER <% user %>;

-- name: grant_warehouse
GRANT USAGE, OPERATE ON WAREHOUSE <% warehouse %> TO ROLE <% role %>;

-- name: grant_database
GRANT USAGE ON DATABASE <% database %> TO ROLE <% role %>;

-- name: grant_schema
GRANT USAGE, CREATE TABLE, CREATE FILE FORMAT, CREATE STAGE, CREATE PIPE, CREATE TASK
  ON SCHEMA <% database %>.<% schema %> TO ROLE <% role %>;
