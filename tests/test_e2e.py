"""The whole chain, as `make demo` runs it: real extract.py and load.py --copy subprocesses
against the local stand-ins (Amplitude, moto's S3/KMS server, fakesnow's server)."""

from __future__ import annotations

from datetime import timedelta

from local_stack.demo import run_demo
from pipeline.extraction import DEFAULT_LOOKBACK_HOURS
from pipeline.hours import parse_hour


def test_every_event_lands_once_and_a_rerun_adds_nothing(capsys):
    result = run_demo(events_per_hour=5, shards=2)
    out = capsys.readouterr().out
    first, second = result.first, result.second
    # events served = events in json_data/ = rows in the table, with no duplicate uuid
    assert first.served > 0
    assert first.local == first.served
    assert first.rows == first.served
    assert first.distinct_uuids == first.rows
    # every local file is one object in S3, each one SSE-KMS encrypted
    assert first.objects == result.files
    assert first.encrypted == first.objects
    # the incremental rerun asks only for the newest hour held and the lookback, adds nothing
    assert len(result.second_requests) == 1
    start, end = (parse_hour(h, as_end=False) for h in result.second_requests[0])
    assert end - start == timedelta(hours=DEFAULT_LOOKBACK_HOURS)
    assert second == first
    assert "files written:     0" in out.split("second run")[1]
    assert result.ok
