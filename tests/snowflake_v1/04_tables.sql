-- 04  The tables: raw_events (landing, append-only), events (what analysts query), merge_lock.
--
-- Run once, as the loader role.
--   snow sql -f snowflake/04_tables.sql -D database=AMPLITUDE -D schema=RAW \
--     -D role=AMPLITUDE_LOADER -D warehouse=AMPLITUDE_WH

-- name: use_role
USE ROLE <% role %>;

-- name: use_warehouse
USE WAREHOUSE <% warehouse %>;

-- name: use_schema
USE SCHEMA <% database %>.<% schema %>;

-- Every line of every file COPY loads, as is. A file loaded twice (re-uploaded, or COPY ...
-- FORCE = TRUE) appears twice here; 05's MERGE keeps events free of duplicates.
-- name: create_raw_events
CREATE TABLE IF NOT EXISTS raw_events (
  raw VARIANT NOT NULL COMMENT 'one exported event, as Amplitude wrote it',
  source_file VARCHAR NOT NULL COMMENT 'S3 key of the file it came from (METADATA$FILENAME)',
  loaded_at TIMESTAMP_NTZ NOT NULL DEFAULT SYSDATE() COMMENT 'UTC time of the COPY'
)
COMMENT = 'Landing table for Amplitude exports; query events instead';

-- One row per event uuid. Timestamps are Amplitude's UTC wall-clock times, as TIMESTAMP_NTZ.
-- name: create_events
CREATE TABLE IF NOT EXISTS events (
  uuid VARCHAR NOT NULL COMMENT 'Amplitude event uuid; unique in this table',
  insert_id VARCHAR COMMENT 'the sender''s dedup key (JSON field "$insert_id")',
  event_type VARCHAR,
  event_time TIMESTAMP_NTZ COMMENT 'UTC',
  server_upload_time TIMESTAMP_NTZ COMMENT 'UTC; the export hour is the hour of this time',
  client_event_time TIMESTAMP_NTZ COMMENT 'UTC',
  user_id VARCHAR,
  device_id VARCHAR,
  amplitude_id NUMBER(38, 0),
  session_id NUMBER(38, 0) COMMENT 'session start, epoch milliseconds; -1 outside sessions',
  app NUMBER(38, 0) COMMENT 'Amplitude project id',
  platform VARCHAR,
  os_name VARCHAR,
  country VARCHAR,
  city VARCHAR,
  event_properties VARIANT,
  user_properties VARIANT,
  groups VARIANT,
  raw VARIANT NOT NULL COMMENT 'the full event',
  source_file VARCHAR NOT NULL COMMENT 'S3 key of the file it was first loaded from',
  loaded_at TIMESTAMP_NTZ NOT NULL COMMENT 'UTC time of the COPY that first loaded it'
)
COMMENT = 'Amplitude events, one row per uuid';

-- One row that 05's merge (and 07's task) UPDATE first, inside their transaction, so that two
-- loads never MERGE at the same time (05 says why). 05 also runs these two statements, for tables
-- made before this one existed.
-- name: create_merge_lock
CREATE TABLE IF NOT EXISTS merge_lock (
  name VARCHAR NOT NULL COMMENT 'what the lock guards: events',
  taken_at TIMESTAMP_NTZ COMMENT 'UTC time a load last took the lock'
)
COMMENT = 'Serialises the MERGE into events; see worksheet 05';

-- name: seed_merge_lock
INSERT INTO merge_lock (name)
SELECT 'events'
WHERE NOT EXISTS (SELECT 1 FROM merge_lock WHERE name = 'events');

-- raw_events with analysts' typed columns: the projection 05's MERGE inserts into events.
-- Timestamps use TRY_TO_TIMESTAMP_NTZ with Amplitude's format (UTC, microseconds), numbers
-- TRY_TO_NUMBER: a bad value becomes NULL instead of failing the load.
-- OR REPLACE: rerunning this worksheet updates the definition; the view holds no data.
-- name: create_raw_events_typed
CREATE OR REPLACE VIEW raw_events_typed AS
SELECT
  raw:uuid::VARCHAR AS uuid,
  raw:"$insert_id"::VARCHAR AS insert_id,
  raw:event_type::VARCHAR AS event_type,
  TRY_TO_TIMESTAMP_NTZ(raw:event_time::VARCHAR, 'YYYY-MM-DD HH24:MI:SS.FF') AS event_time,
  TRY_TO_TIMESTAMP_NTZ(raw:server_upload_time::VARCHAR, 'YYYY-MM-DD HH24:MI:SS.FF')
    AS server_upload_time,
  TRY_TO_TIMESTAMP_NTZ(raw:client_event_time::VARCHAR, 'YYYY-MM-DD HH24:MI:SS.FF')
    AS client_event_time,
  raw:user_id::VARCHAR AS user_id,
  raw:device_id::VARCHAR AS device_id,
  TRY_TO_NUMBER(raw:amplitude_id::VARCHAR) AS amplitude_id,
  TRY_TO_NUMBER(raw:session_id::VARCHAR) AS session_id,
  TRY_TO_NUMBER(raw:app::VARCHAR) AS app,
  raw:platform::VARCHAR AS platform,
  raw:os_name::VARCHAR AS os_name,
  raw:country::VARCHAR AS country,
  raw:city::VARCHAR AS city,
  raw:event_properties AS event_properties,
  raw:user_properties AS user_properties,
  raw:groups AS groups,
  raw,
  source_file,
  loaded_at
FROM raw_events;
