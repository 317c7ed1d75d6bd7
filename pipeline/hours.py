"""Hours and windows: parsing `YYYYMMDDTHH` / `YYYY-MM-DD`, defaults, and request windows."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from pipeline.errors import UsageError

HOUR = timedelta(hours=1)
MAX_WINDOW_HOURS = 365 * 24  # Amplitude refuses a longer export range
# Amplitude's data for an hour is complete once the hour ended at least this long ago.
FINISHED_AFTER = timedelta(hours=2)


# Exactly these shapes, ASCII digits: strptime alone accepts `2026111T05` as 2026-11-01.
_FORMS = (
    (re.compile(r"[0-9]{8}T[0-9]{2}"), "%Y%m%dT%H", False),
    (re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}"), "%Y-%m-%d", True),
)


def parse_hour(text: str, *, as_end: bool, option: str = "--start") -> datetime:
    """`YYYYMMDDTHH` as is; `YYYY-MM-DD` as T00 for a start, T23 for an end (UTC)."""
    for shape, fmt, is_day in _FORMS:
        if not shape.fullmatch(text):
            continue
        try:
            parsed = datetime.strptime(text, fmt).replace(tzinfo=UTC)
        except ValueError:
            break
        return parsed.replace(hour=23) if is_day and as_end else parsed
    raise UsageError(f"{option} {text!r} is not an hour: use YYYYMMDDTHH (UTC) or YYYY-MM-DD")


def format_hour(moment: datetime) -> str:
    """Amplitude's own hour format, `YYYYMMDDTHH`."""
    return moment.astimezone(UTC).strftime("%Y%m%dT%H")


def floor_hour(moment: datetime) -> datetime:
    return moment.astimezone(UTC).replace(minute=0, second=0, microsecond=0)


def default_end(now: datetime) -> datetime:
    """The newest hour whose data Amplitude has finished: it ended at least 2 hours ago."""
    return floor_hour(now - FINISHED_AFTER) - HOUR


def default_start(now: datetime, days: int, newest_held: datetime | None) -> datetime:
    """The newest hour already held (re-fetched), else 00 UTC of the day `days` days ago."""
    if newest_held is not None:
        return newest_held
    return floor_hour(now).replace(hour=0) - timedelta(days=days)


@dataclass(frozen=True)
class Window:
    """An inclusive range of hours, as Amplitude's `start` and `end` parameters mean it."""

    start: datetime
    end: datetime

    @property
    def hours(self) -> int:
        return int((self.end - self.start) / HOUR) + 1

    def halves(self) -> tuple[Window, Window]:
        first = self.start + HOUR * (self.hours // 2 - 1)
        return Window(self.start, first), Window(first + HOUR, self.end)

    def __str__(self) -> str:
        return f"{format_hour(self.start)}..{format_hour(self.end)}"


def split_windows(start: datetime, end: datetime, window_hours: int) -> list[Window]:
    """Consecutive windows of at most `window_hours` hours covering start..end, in time order."""
    if not 1 <= window_hours <= MAX_WINDOW_HOURS:
        raise UsageError(f"the window size must be 1 to {MAX_WINDOW_HOURS} hours")
    windows = []
    cursor = start
    while cursor <= end:
        last = min(cursor + HOUR * (window_hours - 1), end)
        windows.append(Window(cursor, last))
        cursor = last + HOUR
    return windows
