-- 05  Load: COPY new files into raw_events, then MERGE new events into events.
--
-- `python load.py --copy` runs exactly these statements after each upload, copy_raw once for each
-- stage folder it picks (see newest_day_per_project). By hand, give the folder to COPY:
--   snow sql -f snowflake/05_copy_and_dedup.sql -D database=AMPLITUDE -D schema=RAW \
--     -D role=AMPLITUDE_LOADER -D warehouse=AMPLITUDE_WH -D copy_path=/123456/2026-11-20/
-- copy_path is a folder of the stage: the part of an S3 key after S3_PREFIX, up to a slash:
--   /<project_id>/<YYYY-MM-DD>/   one day of one project (what load.py --copy copies, day by day)
--   /<project_id>/                every file of one project: a sweep, which lists all of them
--   /                             every file of the stage (lists all of them)
-- Safe to run at any time, as often as you like, and from several places at once.

-- name: use_role
USE ROLE <% role %>;

-- name: use_warehouse
USE WAREHOUSE <% warehouse %>;

-- name: use_schema
USE SCHEMA <% database %>.<% schema %>;

-- Which folders to COPY. A COPY lists every file under the path it is given and checks each one
-- against the table's load history: over the whole stage that grows with every file ever uploaded
-- (about 26,000 a year for one project with 3 shards an hour), on every run. Snowflake's guidance
-- is to organise files by path and COPY by path; the keys are <project_id>/<YYYY-MM-DD>/..., so
-- load.py --copy COPYs day folders: for each project in the result below or in this run's
-- uploads, the folders from its newest day in events minus one through today (UTC), plus the
-- folder of every file it uploaded. A project without a day below (new, or silent for a week)
-- gets its whole folder, and the whole stage is COPYed while events is empty. Files older than
-- that which a failed run left unloaded wait for a sweep: `load.py --copy --sweep-days N` adds the
-- folders of the last N days of every project below and uploaded; this worksheet with
-- copy_path=/<project_id>/ sweeps everything of one project.
-- recent_floor: a week before the newest event in events. MAX of a column comes from the
-- micro-partitions' metadata, without reading the table.
-- name: set_recent_floor
SET recent_floor = (
  SELECT TO_VARCHAR(
    DATE_TRUNC(
      'second', DATEADD(day, -7, COALESCE(MAX(server_upload_time), '1970-01-08'::TIMESTAMP_NTZ))
    ),
    'YYYY-MM-DD HH24:MI:SS'
  )
  FROM events
);

-- Each project's newest day among the events of that last week: a constant bound, so Snowflake
-- reads only the micro-partitions of that week (see merge_events for why a constant).
-- name: newest_day_per_project
SELECT app AS project_id, MAX(server_upload_time)::DATE AS newest_day
FROM events
WHERE server_upload_time >= TO_TIMESTAMP_NTZ($recent_floor, 'YYYY-MM-DD HH24:MI:SS')
GROUP BY app
ORDER BY app;

-- COPY keeps load metadata per table (each file's name, checksum, load time) and skips every file
-- it loaded before and that has not changed since, so a folder COPYed again loads only its new and
-- re-uploaded files.
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
  FROM (SELECT $1, METADATA$FILENAME FROM @amplitude_stage<% copy_path %>)
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

-- The batch: raw rows loaded from one day before the newest merged row on (rows loaded earlier
-- were merged by an earlier run). To re-merge everything after a repair, run
-- SET batch_start = '1970-01-01 00:00:00'; instead of this statement, once.
-- name: set_batch_start
SET batch_start = (
  SELECT TO_VARCHAR(
    DATE_TRUNC('second', DATEADD(day, -1, COALESCE(MAX(loaded_at), '1970-01-02'::TIMESTAMP_NTZ))),
    'YYYY-MM-DD HH24:MI:SS'
  )
  FROM events
);

-- The batch's earliest server_upload_time, to the second (rounded down). An empty batch gives
-- the year 9999: the MERGE then reads no micro-partition of events.
-- name: set_merge_floor
SET merge_floor = (
  SELECT TO_VARCHAR(
    DATE_TRUNC('second', COALESCE(MIN(server_upload_time), '9999-12-31'::TIMESTAMP_NTZ)),
    'YYYY-MM-DD HH24:MI:SS'
  )
  FROM raw_events_typed
  WHERE uuid IS NOT NULL
    AND loaded_at >= TO_TIMESTAMP_NTZ($batch_start, 'YYYY-MM-DD HH24:MI:SS')
);

-- Dedup by MERGE on uuid, inserting only uuids that events does not hold yet.
-- Why MERGE: it is one atomic statement, so no reader ever sees a duplicate (unlike INSERT then
-- DELETE), it is idempotent (rerunning it inserts nothing), and events stays a plain table that
-- is cheap to query (unlike a QUALIFY view over raw_events, which dedups on every query).
-- copy_number keeps one row per uuid from the batch itself (a file loaded twice in one window),
-- which MERGE needs: two source rows with the same new uuid would both be inserted. (A nested
-- SELECT rather than QUALIFY: the same in Snowflake, and the local stand-in runs it too.)
-- Why a range on server_upload_time: joined on uuid alone (random values), the MERGE would read
-- every micro-partition of events on every run, a cost that grows with history. Snowflake skips
-- a micro-partition when the min and max it keeps of a column rule out a predicate, and only for
-- a predicate with constants (not a subquery's result, even a constant one): hence the session
-- variables set above, which are constants here. events grows in server_upload_time order (each
-- run merges the newest export hours), so the range keeps only the newest micro-partitions, and
-- raw_events grows in loaded_at order, so batch_start does the same for it.
-- The margin: the MERGE takes only batch rows from merge_floor on (a row that COPY commits after
-- set_merge_floor with an earlier time waits for the next run, whose batch holds it) and compares
-- them with the events from 2 days before merge_floor on. So a uuid already in events is found
-- whenever its first copy is at most 2 days older than the new one. The same file loaded again
-- (re-uploaded with more events, or as .json and .json.gz) carries the same server_upload_time;
-- the 2 days are for an event that Amplitude exports again in a later hour. A first copy older
-- than that would be inserted again: worksheet 06's duplicate_uuids shows it; widen the margin
-- here and in 07 if it ever does. Rows whose server_upload_time is unreadable (NULL) are always
-- compared. Per hourly run the MERGE reads about one day of raw_events (the batch) and about
-- three days of events (the batch's own day, plus the margin), however old the table is.
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
      AND loaded_at >= TO_TIMESTAMP_NTZ($batch_start, 'YYYY-MM-DD HH24:MI:SS')
      AND (
        server_upload_time >= TO_TIMESTAMP_NTZ($merge_floor, 'YYYY-MM-DD HH24:MI:SS')
        OR server_upload_time IS NULL
      )
  )
  WHERE copy_number = 1
) AS s
ON t.uuid = s.uuid
  AND (
    t.server_upload_time
      >= DATEADD(day, -2, TO_TIMESTAMP_NTZ($merge_floor, 'YYYY-MM-DD HH24:MI:SS'))
    OR t.server_upload_time IS NULL
  )
WHEN NOT MATCHED THEN INSERT (
  uuid, insert_id, event_id, event_type, amplitude_event_type, event_time, client_event_time,
  client_upload_time, server_received_time, server_upload_time, processed_time,
  user_creation_time, app, amplitude_id, user_id, device_id, session_id, event_properties,
  user_properties, group_properties, global_user_properties, groups, data, plan, platform,
  os_name, os_version, device_brand, device_carrier, device_family, device_manufacturer,
  device_model, device_type, version_name, start_version, library, language, country, region,
  city, dma, location_lat, location_lng, ip_address, adid, idfa, amplitude_attribution_ids,
  is_attribution_event, followed_an_identify, partner_id, source_id, paying, sample_rate,
  data_type, raw, source_file, loaded_at
) VALUES (
  s.uuid, s.insert_id, s.event_id, s.event_type, s.amplitude_event_type, s.event_time,
  s.client_event_time, s.client_upload_time, s.server_received_time, s.server_upload_time,
  s.processed_time, s.user_creation_time, s.app, s.amplitude_id, s.user_id, s.device_id,
  s.session_id, s.event_properties, s.user_properties, s.group_properties,
  s.global_user_properties, s.groups, s.data, s.plan, s.platform, s.os_name, s.os_version,
  s.device_brand, s.device_carrier, s.device_family, s.device_manufacturer, s.device_model,
  s.device_type, s.version_name, s.start_version, s.library, s.language, s.country, s.region,
  s.city, s.dma, s.location_lat, s.location_lng, s.ip_address, s.adid, s.idfa,
  s.amplitude_attribution_ids, s.is_attribution_event, s.followed_an_identify, s.partner_id,
  s.source_id, s.paying, s.sample_rate, s.data_type, s.raw, s.source_file, s.loaded_at
);

-- name: commit_merge
COMMIT;
