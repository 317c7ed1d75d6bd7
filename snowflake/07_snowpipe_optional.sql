-- 07  Optional: Snowpipe auto-ingest instead of `load.py --copy`.
--
-- Snowpipe loads each file seconds after it lands in S3, with no warehouse of yours and no
-- cron; load.py then only uploads (run it without --copy). Use one or the other: a pipe and
-- COPY keep separate load histories, so running both loads every file twice into raw_events
-- (events stays free of duplicates, but you pay twice).
--   snow sql -f snowflake/07_snowpipe_optional.sql -D database=AMPLITUDE -D schema=RAW \
--     -D role=AMPLITUDE_LOADER -D warehouse=AMPLITUDE_WH -D s3_bucket=acme-amplitude -D s3_prefix=amplitude

-- name: use_role
USE ROLE <% role %>;

-- name: use_warehouse
USE WAREHOUSE <% warehouse %>;

-- name: use_schema
USE SCHEMA <% database %>.<% schema %>;

-- The same COPY as 05's copy_raw, over the whole stage: a pipe loads each file S3 announces and
-- never lists the stage, so it needs no folder (and always skips a bad file: ON_ERROR = SKIP_FILE).
-- name: create_pipe
CREATE PIPE IF NOT EXISTS amplitude_pipe
  AUTO_INGEST = TRUE
  COMMENT = 'Loads Amplitude exports as S3 announces them'
  AS
COPY INTO raw_events (raw, source_file)
  FROM (SELECT $1, METADATA$FILENAME FROM @amplitude_stage)
  FILE_FORMAT = (FORMAT_NAME = 'amplitude_json');

-- The S3 event notification the pipe needs. The notification_channel column of this output is
-- an SQS queue ARN. In the S3 console: bucket > Properties > Event notifications > Create:
--   event types: All object create events (s3:ObjectCreated:*)
--   prefix: <% s3_prefix %>/        destination: SQS queue, the notification_channel ARN
-- or with the AWS CLI (this replaces the bucket's notification configuration):
--   aws s3api put-bucket-notification-configuration --bucket <% s3_bucket %> \
--     --notification-configuration '{"QueueConfigurations": [{"QueueArn": "<notification_channel>",
--       "Events": ["s3:ObjectCreated:*"],
--       "Filter": {"Key": {"FilterRules": [{"Name": "prefix", "Value": "<% s3_prefix %>/"}]}}}]}'
-- name: show_pipe
SHOW PIPES LIKE 'AMPLITUDE_PIPE';

-- Files uploaded before the notification existed: queue them once (last 7 days only).
-- name: refresh_pipe
ALTER PIPE amplitude_pipe REFRESH;

-- The dedup still has to run: a task runs 05's merge every 15 minutes, in the same transaction as
-- 05 (begin_merge .. commit_merge), so that it never MERGEs at the same time as a load.py --copy
-- or a person running 05 (05 says why). Resuming a task needs EXECUTE TASK: as ACCOUNTADMIN,
-- GRANT EXECUTE TASK ON ACCOUNT TO ROLE <% role %>;
-- merge_lock and its row, as in 04 and 05, for tables made before they existed.
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

-- The task's body is a Snowflake Scripting block, dollar-quoted so that snow sql and Snowsight pass
-- it on whole. On any error it rolls back and fails the run (task history shows it); the next run
-- merges what this one did not. Keep its statements identical to 05's begin_merge,
-- take_merge_lock, set_batch_start, set_merge_floor, merge_events and commit_merge (a test checks
-- that they are; 05 says why the MERGE reads only recent micro-partitions of events, and what
-- its 2-day margin is for).
-- OR REPLACE, unlike the pipe (whose load history a replacement would lose): the task holds no
-- data, and rerunning this worksheet updates a task created by an older version of it, which
-- merged without the lock. A replaced task starts suspended; resume_merge_task resumes it.
-- name: create_merge_task
CREATE OR REPLACE TASK amplitude_merge
  WAREHOUSE = <% warehouse %>
  SCHEDULE = '15 MINUTE'
  COMMENT = 'Dedups raw_events into events (05 begin_merge .. commit_merge)'
  AS
EXECUTE IMMEDIATE $$
BEGIN
  BEGIN TRANSACTION;
  UPDATE merge_lock SET taken_at = SYSDATE() WHERE name = 'events';
  SET batch_start = (
    SELECT TO_VARCHAR(
      DATE_TRUNC('second', DATEADD(day, -1, COALESCE(MAX(loaded_at), '1970-01-02'::TIMESTAMP_NTZ))),
      'YYYY-MM-DD HH24:MI:SS'
    )
    FROM events
  );
  SET merge_floor = (
    SELECT TO_VARCHAR(
      DATE_TRUNC('second', COALESCE(MIN(server_upload_time), '9999-12-31'::TIMESTAMP_NTZ)),
      'YYYY-MM-DD HH24:MI:SS'
    )
    FROM raw_events_typed
    WHERE uuid IS NOT NULL
      AND loaded_at >= TO_TIMESTAMP_NTZ($batch_start, 'YYYY-MM-DD HH24:MI:SS')
  );
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
  COMMIT;
EXCEPTION
  WHEN OTHER THEN
    ROLLBACK;
    RAISE;
END;
$$;

-- name: resume_merge_task
ALTER TASK amplitude_merge RESUME;

-- Is the pipe running, and what did it load in the last day?
-- name: pipe_status
SELECT SYSTEM$PIPE_STATUS('amplitude_pipe') AS status;
