"""The whole chain, as `make demo` runs it: real extract.py and load.py --copy subprocesses
against the local stand-ins (two Amplitude projects, moto's S3/KMS server, fakesnow's
server)."""

from __future__ import annotations

from datetime import timedelta

from local_stack.demo import run_demo
from pipeline.extraction import DEFAULT_LOOKBACK_HOURS
from pipeline.hours import parse_hour


def test_every_event_lands_once_and_a_rerun_adds_nothing(capsys):
    result = run_demo(events_per_hour=3, shards=1)
    out = capsys.readouterr().out
    assert len(result.first) == 2  # two projects, one EU and one US, one bucket and folder
    for pid, first in result.first.items():
        second = result.second[pid]
        # events served = events in json_data/ = rows in the table, with no duplicate uuid
        assert first.served > 0
        assert first.local == first.served
        assert first.rows == first.served
        assert first.distinct_uuids == first.rows
        # every local file is one object in S3, each one SSE-KMS encrypted
        assert first.objects == result.files[pid]
        assert first.encrypted == first.objects
        # the rerun asks only for its own newest hour held and the lookback, adds nothing
        assert len(result.second_requests[pid]) == 1
        start, end = (parse_hour(h, as_end=False) for h in result.second_requests[pid][0])
        assert end - start == timedelta(hours=DEFAULT_LOOKBACK_HOURS)
        assert second == first
    assert result.all_rows == result.all_uuids == sum(c.served for c in result.first.values())
    # status.py's calendar of what was loaded: every finished hour complete and reconciled
    assert "project eu_app (123456)" in result.status
    assert "project us_app (654321)" in result.status
    assert "no mismatch: every finished hour is complete and reconciled" in result.status
    assert out.split("second run")[1].count("files written:     0") == 2
    assert result.ok
