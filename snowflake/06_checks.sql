-- 06  Checks: is every exported event in events, exactly once?
--
-- Read-only; run whenever you like, as the loader role (or any role that can read the tables).
--   snow sql -f snowflake/06_checks.sql -D database=AMPLITUDE -D schema=RAW \
--     -D role=AMPLITUDE_LOADER -D warehouse=AMPLITUDE_WH
-- Each check returns no rows when all is well, except rows_per_hour (a table to eyeball).

-- name: use_role
USE ROLE <% role %>;

-- name: use_warehouse
USE WAREHOUSE <% warehouse %>;

-- name: use_schema
USE SCHEMA <% database %>.<% schema %>;

-- Files COPY could not load (or loaded partly) in the last 14 days, with the first error.
-- A file listed here is retried by the next COPY once it is fixed or re-uploaded.
-- name: copy_errors
SELECT file_name, status, row_parsed, row_count, error_count, first_error_message, last_load_time
FROM TABLE(INFORMATION_SCHEMA.COPY_HISTORY(
  TABLE_NAME => 'RAW_EVENTS',
  START_TIME => DATEADD(day, -14, CURRENT_TIMESTAMP())
))
WHERE status <> 'Loaded'
ORDER BY last_load_time DESC;

-- Events per Amplitude project (the app column holds its id) and export hour (the hour of
-- server_upload_time, UTC), newest first.
-- name: rows_per_hour
SELECT
  app AS project_id,
  DATE_TRUNC('hour', server_upload_time) AS hour,
  COUNT(*) AS events,
  COUNT(DISTINCT source_file) AS files
FROM events
GROUP BY 1, 2
ORDER BY 2 DESC, 1;

-- Must be empty: a uuid that appears more than once in events.
-- name: duplicate_uuids
SELECT uuid, COUNT(*) AS copies
FROM events
GROUP BY uuid
HAVING COUNT(*) > 1;

-- Must be empty: a landed event that the MERGE has not put into events (run 05 again).
-- name: raw_not_in_events
SELECT r.source_file, COUNT(*) AS events_missing
FROM raw_events AS r
LEFT JOIN events AS e ON e.uuid = r.raw:uuid::VARCHAR
WHERE e.uuid IS NULL
GROUP BY r.source_file
ORDER BY r.source_file;

-- The files in the stage; the next check reads this result.
-- name: list_stage_files
LIST @amplitude_stage;

-- Must be empty: an hour with a file in S3 but no event in events (not loaded yet, or a file
-- COPY rejected; see copy_errors). The hour comes from the file name <pid>_<date>_<H>#<n>.json.
-- name: hours_with_files_but_no_rows
WITH files AS (
  SELECT
    DATEADD(
      hour,
      REGEXP_SUBSTR("name", '_([0-9]{4}-[0-9]{2}-[0-9]{2})_([0-9]{1,2})#', 1, 1, 'e', 2)::INT,
      REGEXP_SUBSTR("name", '_([0-9]{4}-[0-9]{2}-[0-9]{2})_([0-9]{1,2})#', 1, 1, 'e', 1)::DATE
    )::TIMESTAMP_NTZ AS hour,
    "name" AS file
  FROM TABLE(RESULT_SCAN(LAST_QUERY_ID()))
),
loaded AS (
  SELECT DISTINCT DATE_TRUNC('hour', server_upload_time) AS hour FROM events
)
SELECT f.hour, COUNT(*) AS files, MIN(f.file) AS example_file
FROM files AS f
LEFT JOIN loaded AS l ON l.hour = f.hour
WHERE l.hour IS NULL
GROUP BY f.hour
ORDER BY f.hour;
