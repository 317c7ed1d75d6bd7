"""Issue 11: windows download at once, yet commit in time order; a 429 lowers the pace."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

import pytest
import time_machine

import extract
import modules
from local_stack.amplitude_server import ExportService, running
from pipeline.cli import run

from .conftest import API_KEY, SECRET
from .test_extract import error_line, files_under

DAY = datetime(2026, 11, 20, tzinfo=UTC)
NOW = datetime(2026, 11, 28, 10, 30, tzinfo=UTC)


@pytest.fixture
def service() -> ExportService:
    return ExportService(
        api_key=API_KEY,
        secret_key=SECRET,
        first=DAY,
        last=DAY + timedelta(days=4),
        events_per_hour=2,
        shards=1,
    )


@pytest.fixture
def url(env, service):
    with running(service) as export_url:
        env.setenv("AMPLITUDE_EXPORT_URL", export_url)
        yield export_url


def extract_days(*argv: str) -> int:
    with time_machine.travel(NOW, tick=False):
        return run(extract.main, ["--start", "2026-11-20", "--end", "2026-11-23", *argv])


def test_a_fast_later_window_waits_for_a_slow_earlier_one(url, service, monkeypatch, data_dir):
    service.delay_for = lambda start, end: 0.6 if start == "20261120T00" else 0.0
    commits: list[tuple[str, float]] = []
    real_commit = modules.commit

    def recording_commit(staged, root, keep=lambda s: True):
        staged = list(staged)
        commits.append((staged[0].file.date, time.monotonic()))
        return real_commit(staged, root, keep)

    monkeypatch.setattr(modules, "commit", recording_commit)
    assert extract_days("--parallel", "3") == 0
    assert [date for date, _ in commits] == ["2026-11-20", "2026-11-21", "2026-11-22", "2026-11-23"]
    answered = {start: when for start, _, when in service.answered}
    # the later windows were answered first, yet committed after the slow first one
    assert answered["20261121T00"] < answered["20261120T00"]
    assert commits[1][1] > answered["20261120T00"]
    assert service.most_in_flight >= 2
    assert len(files_under(data_dir)) == 4 * 24


def test_a_failing_earlier_window_leaves_no_later_window_visible(url, service, data_dir, capsys):
    service.delay_for = lambda start, end: 0.5 if start == "20261120T00" else 0.0
    service.answer_for = lambda start, end: (
        (200, {"Content-Type": "application/zip"}, b"PK\x03\x04 not really a zip")
        if start == "20261120T00"
        else None
    )
    assert extract_days("--parallel", "3") == 1
    line = error_line(capsys.readouterr().err)
    assert line.startswith("error: window 20261120T00..20261120T23: the download is corrupt")
    assert len(service.answered) >= 2  # later windows did arrive meanwhile
    assert files_under(data_dir) == []  # ... and none of them became visible
    assert not [p for p in data_dir.iterdir() if p.name.startswith(".tmp-")]


def test_429_lowers_the_concurrency_for_the_rest_of_the_run(
    url, service, data_dir, monkeypatch, capsys
):
    real_sleep = time.sleep  # Retry-After: 1, shortened to keep the test fast
    monkeypatch.setattr("urllib3.util.retry.time.sleep", lambda s: real_sleep(min(s, 0.1)))
    service.max_concurrent = 1
    service.delay_for = lambda start, end: 0.1
    assert extract_days("--parallel", "3") == 0
    err = capsys.readouterr().err
    assert service.throttled > 0
    assert "Amplitude answered 429 (too many requests): 2 window(s) at once" in err
    assert len(files_under(data_dir)) == 4 * 24  # nothing lost on the way


@pytest.mark.parametrize("value", ["0", "5"])
def test_parallel_is_1_to_4(env, capsys, value):
    assert run(extract.main, ["--parallel", value, "--dry-run"]) == 2
    assert "--parallel must be 1 to 4" in error_line(capsys.readouterr().err)
