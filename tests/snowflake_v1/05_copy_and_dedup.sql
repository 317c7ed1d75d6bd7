-- 05  Load: COPY new files into raw_events, then MERGE new events into events.
--
-- `python load.py --copy` runs exactly these statements after each upload. By hand:
--   snow sql -f snowflake/05_copy_and_dedup.sql -D database=AMPLITUDE -D schema=RAW \
--     -D role=AMPLITUDE_LOADER -D warehouse=AMPLITUDE_WH
-- Safe to run at any time, as often as you like, and from several places at once.

-- name: use_role
USE ROLE <% role %>;

-- name: use_warehouse
USE WAREHOUSE <% warehouse %>;

-- name: use_schema
USE SCHEMA <% database %>.<% schema %>;

-- COPY over the whole stage, not a list of files: COPY keeps load metadata per table (each file's
-- name, ETag, load time) and skips every file it loaded before and that has not changed since, so
-- this one statement loads the files uploaded just now plus any earlier ones a failed or skipped
-- run left behind.
-- That metadata expires after 64 days. A file whose LAST_MODIFIED date (its upload to S3, not the
-- date in its name) is older than 64 days has an unknown load status when neither its own load nor
-- raw_events' first load happened in the last 64 days, and COPY skips it without an error
-- (LOAD_UNCERTAIN_FILES defaults to FALSE). So a file that stayed unloaded for more than 64 days
-- (uploaded, but no COPY ran or its COPY kept failing) is never loaded by this statement. Load that
-- file by hand, naming its S3 key without the stage's prefix (S3_PREFIX and the slash after it):
--   COPY INTO raw_events (raw, source_file)
--     FROM (SELECT $1, METADATA$FILENAME FROM @amplitude_stage)
--     FILES = ('123456/2026-11-20/123456_2026-11-20_4#0.json')
--     FILE_FORMAT = (FORMAT_NAME = 'amplitude_json') ON_ERROR = SKIP_FILE
--     FORCE = TRUE;
-- then run this worksheet again to merge it. FORCE = TRUE loads the file even if it was loaded
-- before; LOAD_UNCERTAIN_FILES = TRUE instead loads it only if the metadata still present does not
-- say it was. A file loaded twice is harmless: the MERGE below keeps events free of duplicates.
-- ON_ERROR = SKIP_FILE: a corrupt file is not loaded at all (never half), the others still
-- load, and COPY reports it as LOAD_FAILED (load.py then exits 1); it is retried next time.
-- name: copy_raw
COPY INTO raw_events (raw, source_file)
  FROM (SELECT $1, METADATA$FILENAME FROM @amplitude_stage)
  FILE_FORMAT = (FORMAT_NAME = 'amplitude_json')
  ON_ERROR = SKIP_FILE;

-- Only one load MERGEs at a time. Loads can overlap in Snowflake (two machines, a person running
-- this worksheet beside load.py --copy, worksheet 07's task), and statements run at READ
-- COMMITTED: each sees only data committed before it began. Two MERGEs that both began before
-- either committed would both insert the same new uuid. So the MERGE runs in a transaction that
-- first UPDATEs merge_lock's one row. UPDATE, DELETE and MERGE hold a lock on their table until
-- COMMIT or ROLLBACK, so the other load's take_merge_lock waits (up to LOCK_TIMEOUT, 12 hours by
-- default) until this transaction ends; its MERGE begins after this COMMIT and sees every uuid
-- inserted here. (Snowflake documentation, "Transactions": READ COMMITTED isolation level,
-- Resource locking.)
-- Nothing is half-applied: the MERGE is the only statement here that changes data, and its rows
-- become visible at COMMIT, all together. If the connection drops before COMMIT, Snowflake rolls
-- the open transaction back when the session ends (after an abrupt disconnect it is left
-- detached, then aborted and rolled back once it has blocked another load while idle for 5
-- minutes, or after 4 hours; SYSTEM$ABORT_TRANSACTION ends it at once). Its rows stay in
-- raw_events, and the next run merges them. By hand: Snowsight stops at the first error and
-- leaves the transaction open, holding the lock, so run ROLLBACK; if a statement below fails.
-- merge_lock comes from worksheet 04; these two statements create it and its row for tables made
-- before it existed. They are DDL and an INSERT of their own, so they come before the BEGIN (DDL
-- would commit an open transaction).
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

-- name: begin_merge
BEGIN TRANSACTION;

-- name: take_merge_lock
UPDATE merge_lock SET taken_at = SYSDATE() WHERE name = 'events';

-- Dedup by MERGE on uuid, inserting only uuids that events does not hold yet.
-- Why MERGE: it is one atomic statement, so no reader ever sees a duplicate (unlike INSERT then
-- DELETE), it is idempotent (rerunning it inserts nothing), and events stays a plain table that
-- is cheap to query (unlike a QUALIFY view over raw_events, which dedups on every query).
-- copy_number keeps one row per uuid from the batch itself (a file loaded twice in one window),
-- which MERGE needs: two source rows with the same new uuid would both be inserted. (A nested
-- SELECT rather than QUALIFY: the same in Snowflake, and the local stand-in runs it too.)
-- Only raw rows from the last day before the newest merged row are read (a cheap, pruned
-- scan); rows loaded earlier were merged by an earlier run. To re-merge everything after a
-- repair, drop the loaded_at condition once.
-- The typed columns come from the view raw_events_typed (worksheet 04).
-- name: merge_events
MERGE INTO events AS t
USING (
  SELECT *
  FROM (
    SELECT
      *,
      ROW_NUMBER() OVER (PARTITION BY uuid ORDER BY loaded_at, source_file) AS copy_number
    FROM raw_events_typed
    WHERE uuid IS NOT NULL
      AND loaded_at >= (
        SELECT DATEADD(day, -1, COALESCE(MAX(loaded_at), '1970-01-01'::TIMESTAMP_NTZ)) FROM events
      )
  )
  WHERE copy_number = 1
) AS s
ON t.uuid = s.uuid
WHEN NOT MATCHED THEN INSERT (
  uuid, insert_id, event_type, event_time, server_upload_time, client_event_time, user_id,
  device_id, amplitude_id, session_id, app, platform, os_name, country, city, event_properties,
  user_properties, groups, raw, source_file, loaded_at
) VALUES (
  s.uuid, s.insert_id, s.event_type, s.event_time, s.server_upload_time, s.client_event_time,
  s.user_id, s.device_id, s.amplitude_id, s.session_id, s.app, s.platform, s.os_name, s.country,
  s.city, s.event_properties, s.user_properties, s.groups, s.raw, s.source_file, s.loaded_at
);

-- name: commit_merge
COMMIT;
