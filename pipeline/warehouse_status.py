"""What Snowflake holds of a range of hours, in two read-only queries (status.py).

- `raw_events`, per file (`source_file`, the S3 key) and per hour of files (the key up to its
  `#`): distinct `raw:uuid`. Distinct, not rows: a file re-uploaded with more events (late
  data) is loaded again, so raw_events holds both versions' rows under one source_file; their
  distinct uuids are the newer version's events (late data only adds events). A file loaded
  twice (COPY ... FORCE) counts once too.
- `events`, per project (`app`) and hour of `server_upload_time`: rows and distinct uuids.

Both are limited to the range: raw_events by key ranges `<prefix>/<pid>/<first date>/` to
`<prefix>/<pid>/<day after the last>/` (plain comparisons, which Snowflake prunes on), events
by `server_upload_time` and `app`. Only raw_events(raw, source_file) and events(uuid,
server_upload_time, app) are relied upon. Nothing here needs COPY_HISTORY.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from snowflake.connector.errors import Error as SnowflakeError

from pipeline import warehouse
from pipeline.hours import HOUR
from pipeline.layout import parse_key
from pipeline.settings import Settings

log = logging.getLogger("pipeline.warehouse_status")

RAW_SQL = """
SELECT source_file AS name, COUNT(DISTINCT raw:uuid::VARCHAR) AS uuids
FROM raw_events WHERE {ranges}
GROUP BY source_file
UNION ALL
SELECT SPLIT_PART(source_file, '#', 1) AS name, COUNT(DISTINCT raw:uuid::VARCHAR) AS uuids
FROM raw_events WHERE {ranges}
GROUP BY SPLIT_PART(source_file, '#', 1)
"""

EVENTS_SQL = """
SELECT app, DATE_TRUNC('hour', server_upload_time) AS hour, COUNT(*) AS row_count,
  COUNT(DISTINCT uuid) AS uuids
FROM events
WHERE app IN ({apps}) AND server_upload_time >= %(first)s AND server_upload_time < %(after)s
GROUP BY 1, 2
"""


@dataclass
class Loaded:
    files: dict[str, int] = field(default_factory=dict)  # S3 key → distinct uuids loaded
    hours: dict[tuple[str, datetime], int] = field(default_factory=dict)  # over its files
    events: dict[tuple[str, datetime], tuple[int, int]] = field(default_factory=dict)


def counts(
    settings: Settings, prefix: str, projects: list[str], first: datetime, last: datetime
) -> Loaded:
    """Per file and hour of the projects, first..last: what raw_events and events hold."""
    result = Loaded()
    if not projects:
        return result
    after_last = (last + timedelta(days=1)).strftime("%Y-%m-%d")
    params: dict[str, Any] = {
        "first": first.strftime("%Y-%m-%d %H:%M:%S"),
        "after": (last + HOUR).strftime("%Y-%m-%d %H:%M:%S"),
    }
    ranges = []
    for n, pid in enumerate(projects):
        params[f"lo{n}"] = f"{prefix}/{pid}/{first:%Y-%m-%d}/"
        params[f"hi{n}"] = f"{prefix}/{pid}/{after_last}/"
        params[f"app{n}"] = int(pid)
        ranges.append(f"(source_file >= %(lo{n})s AND source_file < %(hi{n})s)")
    raw_sql = RAW_SQL.format(ranges=" OR ".join(ranges))
    events_sql = EVENTS_SQL.format(apps=", ".join(f"%(app{n})s" for n in range(len(projects))))
    with warehouse.connect(settings) as conn:
        cursor = conn.cursor()
        for name, row in _rows(cursor, "status_raw_events", raw_sql, params, settings):
            if "#" in name:
                result.files[name] = int(row)
            elif (parsed := parse_key(prefix, f"{name}#0.json")) is not None:
                result.hours[(parsed[0].project, parsed[0].hour_start)] = int(row)
        for app, hour, rows, uuids in _rows(cursor, "status_events", events_sql, params, settings):
            start = hour.replace(tzinfo=UTC)
            result.events[(str(app), start)] = (int(rows), int(uuids))
    log.debug(
        "Snowflake: %d files, %d hours in raw_events, %d hours in events",
        len(result.files),
        len(result.hours),
        len(result.events),
    )
    return result


def _rows(cursor: Any, name: str, sql: str, params: dict, settings: Settings) -> list[tuple]:
    try:
        cursor.execute(sql, params)
        return cursor.fetchall()
    except SnowflakeError as exc:
        raise warehouse.explain_statement(exc, name, settings) from None
