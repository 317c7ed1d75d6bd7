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

-- One row per event uuid: every field Amplitude's own Snowflake export types, with its types
-- (docs/snowflake.md lists them against Amplitude's table), plus raw, the whole event: a field
-- Amplitude adds later is there. Timestamps are Amplitude's UTC wall-clock times, TIMESTAMP_NTZ.
-- name: create_events
CREATE TABLE IF NOT EXISTS events (
  uuid VARCHAR NOT NULL COMMENT 'Amplitude event uuid; unique in this table',
  insert_id VARCHAR COMMENT 'the sender''s dedup key (JSON field "$insert_id")',
  event_id NUMBER(38, 0),
  event_type VARCHAR,
  amplitude_event_type VARCHAR,
  event_time TIMESTAMP_NTZ COMMENT 'UTC, as all timestamps here',
  client_event_time TIMESTAMP_NTZ,
  client_upload_time TIMESTAMP_NTZ,
  server_received_time TIMESTAMP_NTZ,
  server_upload_time TIMESTAMP_NTZ COMMENT 'UTC; the export hour is the hour of this time',
  processed_time TIMESTAMP_NTZ,
  user_creation_time TIMESTAMP_NTZ,
  app NUMBER(38, 0) COMMENT 'Amplitude project id',
  amplitude_id NUMBER(38, 0),
  user_id VARCHAR,
  device_id VARCHAR,
  session_id NUMBER(38, 0) COMMENT 'session start, epoch milliseconds; -1 outside sessions',
  event_properties VARIANT,
  user_properties VARIANT,
  group_properties VARIANT,
  global_user_properties VARIANT,
  groups VARIANT,
  data VARIANT,
  plan VARIANT,
  platform VARCHAR,
  os_name VARCHAR,
  os_version VARCHAR,
  device_brand VARCHAR,
  device_carrier VARCHAR,
  device_family VARCHAR,
  device_manufacturer VARCHAR,
  device_model VARCHAR,
  device_type VARCHAR,
  version_name VARCHAR,
  start_version VARCHAR,
  library VARCHAR,
  language VARCHAR,
  country VARCHAR,
  region VARCHAR,
  city VARCHAR,
  dma VARCHAR,
  location_lat FLOAT,
  location_lng FLOAT,
  ip_address VARCHAR,
  adid VARCHAR,
  idfa VARCHAR,
  amplitude_attribution_ids ARRAY COMMENT 'NULL unless a JSON array (raw keeps it)',
  is_attribution_event BOOLEAN,
  followed_an_identify BOOLEAN COMMENT 'in Amplitude''s table, not in the Export API''s docs',
  partner_id VARCHAR,
  source_id VARCHAR,
  paying VARCHAR COMMENT '''true'' once the user logged revenue, as in Amplitude''s table',
  sample_rate NUMBER(38, 9),
  data_type VARCHAR,
  raw VARIANT NOT NULL COMMENT 'the full event',
  source_file VARCHAR NOT NULL COMMENT 'S3 key of the file it was first loaded from',
  loaded_at TIMESTAMP_NTZ NOT NULL COMMENT 'UTC time of the COPY that first loaded it'
)
COMMENT = 'Amplitude events, one row per uuid';

-- Upgrade: an events table made by an older version of this worksheet had 18 typed columns.
-- Each statement below adds one of the others, and does nothing where it exists (a table made
-- by create_events above has them all). Rows are kept; backfill_new_columns fills them.
-- name: add_event_id
ALTER TABLE events ADD COLUMN IF NOT EXISTS event_id NUMBER(38, 0);

-- name: add_amplitude_event_type
ALTER TABLE events ADD COLUMN IF NOT EXISTS amplitude_event_type VARCHAR;

-- name: add_client_upload_time
ALTER TABLE events ADD COLUMN IF NOT EXISTS client_upload_time TIMESTAMP_NTZ;

-- name: add_server_received_time
ALTER TABLE events ADD COLUMN IF NOT EXISTS server_received_time TIMESTAMP_NTZ;

-- name: add_processed_time
ALTER TABLE events ADD COLUMN IF NOT EXISTS processed_time TIMESTAMP_NTZ;

-- name: add_user_creation_time
ALTER TABLE events ADD COLUMN IF NOT EXISTS user_creation_time TIMESTAMP_NTZ;

-- name: add_group_properties
ALTER TABLE events ADD COLUMN IF NOT EXISTS group_properties VARIANT;

-- name: add_global_user_properties
ALTER TABLE events ADD COLUMN IF NOT EXISTS global_user_properties VARIANT;

-- name: add_data
ALTER TABLE events ADD COLUMN IF NOT EXISTS data VARIANT;

-- name: add_plan
ALTER TABLE events ADD COLUMN IF NOT EXISTS plan VARIANT;

-- name: add_os_version
ALTER TABLE events ADD COLUMN IF NOT EXISTS os_version VARCHAR;

-- name: add_device_brand
ALTER TABLE events ADD COLUMN IF NOT EXISTS device_brand VARCHAR;

-- name: add_device_carrier
ALTER TABLE events ADD COLUMN IF NOT EXISTS device_carrier VARCHAR;

-- name: add_device_family
ALTER TABLE events ADD COLUMN IF NOT EXISTS device_family VARCHAR;

-- name: add_device_manufacturer
ALTER TABLE events ADD COLUMN IF NOT EXISTS device_manufacturer VARCHAR;

-- name: add_device_model
ALTER TABLE events ADD COLUMN IF NOT EXISTS device_model VARCHAR;

-- name: add_device_type
ALTER TABLE events ADD COLUMN IF NOT EXISTS device_type VARCHAR;

-- name: add_version_name
ALTER TABLE events ADD COLUMN IF NOT EXISTS version_name VARCHAR;

-- name: add_start_version
ALTER TABLE events ADD COLUMN IF NOT EXISTS start_version VARCHAR;

-- name: add_library
ALTER TABLE events ADD COLUMN IF NOT EXISTS library VARCHAR;

-- name: add_language
ALTER TABLE events ADD COLUMN IF NOT EXISTS language VARCHAR;

-- name: add_region
ALTER TABLE events ADD COLUMN IF NOT EXISTS region VARCHAR;

-- name: add_dma
ALTER TABLE events ADD COLUMN IF NOT EXISTS dma VARCHAR;

-- name: add_location_lat
ALTER TABLE events ADD COLUMN IF NOT EXISTS location_lat FLOAT;

-- name: add_location_lng
ALTER TABLE events ADD COLUMN IF NOT EXISTS location_lng FLOAT;

-- name: add_ip_address
ALTER TABLE events ADD COLUMN IF NOT EXISTS ip_address VARCHAR;

-- name: add_adid
ALTER TABLE events ADD COLUMN IF NOT EXISTS adid VARCHAR;

-- name: add_idfa
ALTER TABLE events ADD COLUMN IF NOT EXISTS idfa VARCHAR;

-- name: add_amplitude_attribution_ids
ALTER TABLE events ADD COLUMN IF NOT EXISTS amplitude_attribution_ids ARRAY;

-- name: add_is_attribution_event
ALTER TABLE events ADD COLUMN IF NOT EXISTS is_attribution_event BOOLEAN;

-- name: add_followed_an_identify
ALTER TABLE events ADD COLUMN IF NOT EXISTS followed_an_identify BOOLEAN;

-- name: add_partner_id
ALTER TABLE events ADD COLUMN IF NOT EXISTS partner_id VARCHAR;

-- name: add_source_id
ALTER TABLE events ADD COLUMN IF NOT EXISTS source_id VARCHAR;

-- name: add_paying
ALTER TABLE events ADD COLUMN IF NOT EXISTS paying VARCHAR;

-- name: add_sample_rate
ALTER TABLE events ADD COLUMN IF NOT EXISTS sample_rate NUMBER(38, 9);

-- name: add_data_type
ALTER TABLE events ADD COLUMN IF NOT EXISTS data_type VARCHAR;

-- Upgrade, once: rows merged before those columns existed get them from raw, with the same
-- expressions as raw_events_typed below (a test checks they are the same). Rows merged by this
-- version have server_received_time, client_upload_time or processed_time (every Amplitude
-- event carries all three), so rerunning this worksheet updates almost nothing: only rows
-- whose three are all missing or unreadable, again to the same values.
-- name: backfill_new_columns
UPDATE events SET
  event_id = TRY_TO_NUMBER(raw:event_id::VARCHAR),
  amplitude_event_type = raw:amplitude_event_type::VARCHAR,
  client_upload_time =
    TRY_TO_TIMESTAMP_NTZ(raw:client_upload_time::VARCHAR, 'YYYY-MM-DD HH24:MI:SS.FF'),
  server_received_time =
    TRY_TO_TIMESTAMP_NTZ(raw:server_received_time::VARCHAR, 'YYYY-MM-DD HH24:MI:SS.FF'),
  processed_time = TRY_TO_TIMESTAMP_NTZ(raw:processed_time::VARCHAR, 'YYYY-MM-DD HH24:MI:SS.FF'),
  user_creation_time =
    TRY_TO_TIMESTAMP_NTZ(raw:user_creation_time::VARCHAR, 'YYYY-MM-DD HH24:MI:SS.FF'),
  group_properties = raw:group_properties,
  global_user_properties = raw:global_user_properties,
  data = raw:data,
  plan = raw:plan,
  os_version = raw:os_version::VARCHAR,
  device_brand = raw:device_brand::VARCHAR,
  device_carrier = raw:device_carrier::VARCHAR,
  device_family = raw:device_family::VARCHAR,
  device_manufacturer = raw:device_manufacturer::VARCHAR,
  device_model = raw:device_model::VARCHAR,
  device_type = raw:device_type::VARCHAR,
  version_name = raw:version_name::VARCHAR,
  start_version = raw:start_version::VARCHAR,
  library = raw:library::VARCHAR,
  language = raw:language::VARCHAR,
  region = raw:region::VARCHAR,
  dma = raw:dma::VARCHAR,
  location_lat = TRY_TO_DOUBLE(raw:location_lat::VARCHAR),
  location_lng = TRY_TO_DOUBLE(raw:location_lng::VARCHAR),
  ip_address = raw:ip_address::VARCHAR,
  adid = raw:adid::VARCHAR,
  idfa = raw:idfa::VARCHAR,
  amplitude_attribution_ids =
    IFF(IS_ARRAY(raw:amplitude_attribution_ids), raw:amplitude_attribution_ids, NULL)::ARRAY,
  is_attribution_event = TRY_TO_BOOLEAN(raw:is_attribution_event::VARCHAR),
  followed_an_identify = TRY_TO_BOOLEAN(raw:followed_an_identify::VARCHAR),
  partner_id = raw:partner_id::VARCHAR,
  source_id = raw:source_id::VARCHAR,
  paying = raw:paying::VARCHAR,
  sample_rate = TRY_TO_NUMBER(raw:sample_rate::VARCHAR, 38, 9),
  data_type = raw:data_type::VARCHAR
WHERE server_received_time IS NULL
  AND client_upload_time IS NULL
  AND processed_time IS NULL;

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

-- raw_events with events' typed columns: the projection 05's MERGE inserts into events.
-- A bad value becomes NULL instead of failing the load (the event stays whole in raw):
-- timestamps use TRY_TO_TIMESTAMP_NTZ with Amplitude's format (UTC, microseconds), numbers
-- TRY_TO_NUMBER, floats TRY_TO_DOUBLE, booleans TRY_TO_BOOLEAN; an attribution id list that is
-- not a JSON array is NULL.
-- OR REPLACE: rerunning this worksheet updates the definition; the view holds no data.
-- name: create_raw_events_typed
CREATE OR REPLACE VIEW raw_events_typed AS
SELECT
  raw:uuid::VARCHAR AS uuid,
  raw:"$insert_id"::VARCHAR AS insert_id,
  TRY_TO_NUMBER(raw:event_id::VARCHAR) AS event_id,
  raw:event_type::VARCHAR AS event_type,
  raw:amplitude_event_type::VARCHAR AS amplitude_event_type,
  TRY_TO_TIMESTAMP_NTZ(raw:event_time::VARCHAR, 'YYYY-MM-DD HH24:MI:SS.FF') AS event_time,
  TRY_TO_TIMESTAMP_NTZ(raw:client_event_time::VARCHAR, 'YYYY-MM-DD HH24:MI:SS.FF')
    AS client_event_time,
  TRY_TO_TIMESTAMP_NTZ(raw:client_upload_time::VARCHAR, 'YYYY-MM-DD HH24:MI:SS.FF')
    AS client_upload_time,
  TRY_TO_TIMESTAMP_NTZ(raw:server_received_time::VARCHAR, 'YYYY-MM-DD HH24:MI:SS.FF')
    AS server_received_time,
  TRY_TO_TIMESTAMP_NTZ(raw:server_upload_time::VARCHAR, 'YYYY-MM-DD HH24:MI:SS.FF')
    AS server_upload_time,
  TRY_TO_TIMESTAMP_NTZ(raw:processed_time::VARCHAR, 'YYYY-MM-DD HH24:MI:SS.FF') AS processed_time,
  TRY_TO_TIMESTAMP_NTZ(raw:user_creation_time::VARCHAR, 'YYYY-MM-DD HH24:MI:SS.FF')
    AS user_creation_time,
  TRY_TO_NUMBER(raw:app::VARCHAR) AS app,
  TRY_TO_NUMBER(raw:amplitude_id::VARCHAR) AS amplitude_id,
  raw:user_id::VARCHAR AS user_id,
  raw:device_id::VARCHAR AS device_id,
  TRY_TO_NUMBER(raw:session_id::VARCHAR) AS session_id,
  raw:event_properties AS event_properties,
  raw:user_properties AS user_properties,
  raw:group_properties AS group_properties,
  raw:global_user_properties AS global_user_properties,
  raw:groups AS groups,
  raw:data AS data,
  raw:plan AS plan,
  raw:platform::VARCHAR AS platform,
  raw:os_name::VARCHAR AS os_name,
  raw:os_version::VARCHAR AS os_version,
  raw:device_brand::VARCHAR AS device_brand,
  raw:device_carrier::VARCHAR AS device_carrier,
  raw:device_family::VARCHAR AS device_family,
  raw:device_manufacturer::VARCHAR AS device_manufacturer,
  raw:device_model::VARCHAR AS device_model,
  raw:device_type::VARCHAR AS device_type,
  raw:version_name::VARCHAR AS version_name,
  raw:start_version::VARCHAR AS start_version,
  raw:library::VARCHAR AS library,
  raw:language::VARCHAR AS language,
  raw:country::VARCHAR AS country,
  raw:region::VARCHAR AS region,
  raw:city::VARCHAR AS city,
  raw:dma::VARCHAR AS dma,
  TRY_TO_DOUBLE(raw:location_lat::VARCHAR) AS location_lat,
  TRY_TO_DOUBLE(raw:location_lng::VARCHAR) AS location_lng,
  raw:ip_address::VARCHAR AS ip_address,
  raw:adid::VARCHAR AS adid,
  raw:idfa::VARCHAR AS idfa,
  IFF(IS_ARRAY(raw:amplitude_attribution_ids), raw:amplitude_attribution_ids, NULL)::ARRAY
    AS amplitude_attribution_ids,
  TRY_TO_BOOLEAN(raw:is_attribution_event::VARCHAR) AS is_attribution_event,
  TRY_TO_BOOLEAN(raw:followed_an_identify::VARCHAR) AS followed_an_identify,
  raw:partner_id::VARCHAR AS partner_id,
  raw:source_id::VARCHAR AS source_id,
  raw:paying::VARCHAR AS paying,
  TRY_TO_NUMBER(raw:sample_rate::VARCHAR, 38, 9) AS sample_rate,
  raw:data_type::VARCHAR AS data_type,
  raw,
  source_file,
  loaded_at
FROM raw_events;
