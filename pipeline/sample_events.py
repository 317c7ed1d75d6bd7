"""Amplitude-shaped sample exports, for tests, benchmarks and the local demo.

Events carry Amplitude's export field names and its timestamp format
(`YYYY-MM-DD HH:MM:SS.ffffff`, UTC); archives follow Amplitude's zip layout
`<pid>/<pid>_<YYYY-MM-DD>_<H>#<n>.json.gz` with several shards an hour.
"""

from __future__ import annotations

import gzip
import json
import random
import uuid
import zipfile
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

TS_FORMAT = "%Y-%m-%d %H:%M:%S.%f"
_EVENT_TYPES = ["session_start", "page_view", "add_to_cart", "checkout", "söme_ëvent", "検索"]
_PLACES = [
    ("United States", "California", "San Francisco"),
    ("Brazil", "São Paulo", "São Paulo"),
    ("Switzerland", "Zurich", "Zürich"),
    ("Japan", "Tokyo", "東京"),
    ("Germany", "Berlin", "Berlin"),
]
_PLATFORMS = [("iOS", "ios", "17.1"), ("Android", "android", "14"), ("Web", "Chrome", "131")]


def ts(moment: datetime) -> str:
    return moment.strftime(TS_FORMAT)


def make_event(project_id: int, upload: datetime, rng: random.Random) -> dict:
    """One event as Amplitude's export writes it; `upload` is its server_upload_time."""
    client_time = upload - timedelta(seconds=rng.randint(0, 600), microseconds=rng.randint(0, 999))
    country, region, city = rng.choice(_PLACES)
    platform, os_name, os_version = rng.choice(_PLATFORMS)
    user = rng.randint(1, 5000)
    session = int(client_time.timestamp() * 1000) - rng.randint(0, 10**6)
    return {
        "$insert_id": str(uuid.UUID(int=rng.getrandbits(128), version=4)),
        "$schema": 12,
        "adid": None,
        "amplitude_attribution_ids": None,
        "amplitude_event_type": None,
        "amplitude_id": 100000000 + user,
        "app": project_id,
        "city": city,
        "client_event_time": ts(client_time),
        "client_upload_time": ts(upload - timedelta(milliseconds=rng.randint(50, 900))),
        "country": country,
        "data": {"group_first_event": {}, "group_ids": {}, "path": "/2/httpapi"},
        "data_type": "event",
        "device_brand": None,
        "device_carrier": None,
        "device_family": None,
        "device_id": str(uuid.UUID(int=rng.getrandbits(128), version=4)),
        "device_manufacturer": None,
        "device_model": None,
        "device_type": None,
        "dma": None,
        "event_id": rng.randint(1, 10**6),
        "event_properties": {"plan": rng.choice(["free", "pro"]), "note": "naïve café ✓"},
        "event_time": ts(client_time),
        "event_type": rng.choice(_EVENT_TYPES),
        "global_user_properties": {},
        "group_properties": {},
        "groups": {"company": [f"acme-{user % 7}"]} if user % 3 == 0 else {},
        "idfa": None,
        "ip_address": f"203.0.113.{user % 250}",
        "is_attribution_event": False,
        "language": rng.choice(["English", "Português", "日本語"]),
        "library": "http/2.0",
        "location_lat": None,
        "location_lng": None,
        "os_name": os_name,
        "os_version": os_version,
        "partner_id": None,
        "paying": None,
        "plan": {},
        "platform": platform,
        "processed_time": ts(upload + timedelta(seconds=rng.randint(1, 30))),
        "region": region,
        "sample_rate": None,
        "server_received_time": ts(upload - timedelta(milliseconds=rng.randint(1, 40))),
        "server_upload_time": ts(upload),
        "session_id": session,
        "source_id": None,
        "start_version": None,
        "user_creation_time": ts(client_time - timedelta(days=rng.randint(0, 400))),
        "user_id": f"user-{user}" if user % 5 else None,
        "user_properties": {"cohort": f"2026-W{user % 52:02d}", "name": "Zoë"},
        "uuid": str(uuid.UUID(int=rng.getrandbits(128), version=4)),
        "version_name": None,
    }


def member_name(project_id: int, hour: datetime, shard: int) -> str:
    day = hour.strftime("%Y-%m-%d")
    return f"{project_id}/{project_id}_{day}_{hour.hour}#{shard}.json.gz"


def hourly_events(
    project_id: int,
    hour: datetime,
    count: int,
    shards: int,
    seed: int,
) -> Iterator[tuple[str, list[dict]]]:
    """(member name, events) for each shard of one hour; `count` events spread over shards."""
    rng = random.Random(f"{seed}-{project_id}-{hour.isoformat()}")
    per_shard = [count // shards + (1 if i < count % shards else 0) for i in range(shards)]
    for shard, n in enumerate(per_shard):
        events = [
            make_event(project_id, hour + timedelta(microseconds=rng.randint(0, 3599999999)), rng)
            for _ in range(n)
        ]
        yield member_name(project_id, hour, shard), events


def export_members(
    project_id: int,
    start: datetime,
    end: datetime,
    events_per_hour: int = 20,
    shards: int = 2,
    empty_hours: Iterable[datetime] = (),
    seed: int = 0,
) -> list[tuple[str, list[dict]]]:
    """The members Amplitude would export for the inclusive hour range start..end."""
    skip = {h.astimezone(UTC) for h in empty_hours}
    members: list[tuple[str, list[dict]]] = []
    hour = start
    while hour <= end:
        if hour not in skip:
            members.extend(hourly_events(project_id, hour, events_per_hour, shards, seed))
        hour += timedelta(hours=1)
    return members


def ndjson(events: Iterable[dict]) -> bytes:
    """Newline-delimited JSON, UTF-8, one event a line (as Amplitude writes it)."""
    return b"".join(json.dumps(e, ensure_ascii=False).encode() + b"\n" for e in events)


def write_zip(path: Path, members: Iterable[tuple[str, bytes]]) -> Path:
    """A zip of gzipped members, as the export API serves it."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as zf:
        for name, raw in members:
            zf.writestr(name, gzip.compress(raw, compresslevel=6, mtime=0))
    return path


def export_zip(path: Path, members: Iterable[tuple[str, list[dict]]]) -> Path:
    return write_zip(path, ((name, ndjson(events)) for name, events in members))
