"""Issue 10: several Amplitude projects in one bucket, prefix and json_data/.

Two key pairs, two stand-ins (one "EU", one "US"), one moto bucket. Each project keeps its
own place: its newest hour, its lookback and its manifests; a run learns its project id from
the first export with data; one failing project does not stop the others.
"""

from __future__ import annotations

import base64
import shutil
from collections.abc import Iterator
from contextlib import ExitStack
from datetime import UTC, datetime, timedelta

import pytest
import time_machine

import extract
import load
from local_stack.amplitude_server import ExportService, running
from pipeline.cli import run

from .conftest import BUCKET
from .test_extract import error_line, files_under

DAY = datetime(2026, 11, 28, tzinfo=UTC)
EU, US = 111111, 222222
KEYS = {
    EU: ("eu-api-key-0123456789abcdef0123", "eu-secret-fedcba9876543210fedc"),
    US: ("us-api-key-89abcdef0123456789ab", "us-secret-76543210fedcba987654"),
}


def at(hour: int, minute: int = 15, days: int = 0) -> datetime:
    return DAY + timedelta(days=days, hours=hour, minutes=minute)


@pytest.fixture
def services() -> dict[int, ExportService]:
    return {
        pid: ExportService(
            api_key=KEYS[pid][0],
            secret_key=KEYS[pid][1],
            project_id=pid,
            first=DAY - timedelta(days=3),
            last=DAY + timedelta(days=3),
            events_per_hour=2,
            shards=1,
        )
        for pid in (EU, US)
    }


@pytest.fixture
def urls(services) -> Iterator[dict[int, str]]:
    with ExitStack() as stack:
        yield {pid: stack.enter_context(running(svc)) for pid, svc in services.items()}


@pytest.fixture
def shared(monkeypatch, s3, kms_key, data_dir):
    """What the two cron lines share: bucket, prefix, json_data/."""
    monkeypatch.setenv("JSON_DATA_DIR", str(data_dir))
    monkeypatch.setenv("S3_BUCKET", BUCKET)
    monkeypatch.setenv("KMS_KEY_ID", kms_key)


def cron_line(monkeypatch, urls, pid: int, moment: datetime, *argv: str) -> int:
    """One project's own cron line: its key pair in the environment, extract then load."""
    with monkeypatch.context() as m:
        m.setenv("AMPLITUDE_API_KEY", KEYS[pid][0])
        m.setenv("AMPLITUDE_SECRET_KEY", KEYS[pid][1])
        m.setenv("AMPLITUDE_EXPORT_URL", urls[pid])
        with time_machine.travel(moment, tick=False):
            code = run(extract.main, list(argv))
            return code if code else run(load.main, [])


def first_request(service: ExportService, since: int) -> tuple[str, str]:
    """The earliest window asked since then (windows go out several at once, in any order)."""
    return min(service.requests[since:])


# --- two cron lines, one bucket ----------------------------------------------------------------


def test_a_new_project_starts_days_back_not_at_the_other_ones_newest_hour(
    monkeypatch, shared, services, urls
):
    assert cron_line(monkeypatch, urls, EU, at(10)) == 0
    assert cron_line(monkeypatch, urls, EU, at(11)) == 0
    # US's first run ever: its id is unknown, so it starts 00 UTC --days (1) back, whatever EU
    # already holds in the same bucket, prefix and folder
    assert cron_line(monkeypatch, urls, US, at(11), "--days", "1") == 0
    assert first_request(services[US], 0) == ("20261127T00", "20261127T23")


@pytest.mark.parametrize("behind", [EU, US])
def test_a_project_behind_resumes_from_its_own_newest_hour(
    monkeypatch, shared, services, urls, data_dir, behind
):
    ahead = US if behind == EU else EU
    for pid in (EU, US):
        assert cron_line(monkeypatch, urls, pid, at(6), "--days", "1") == 0
    # `behind`'s cron is down for two days while `ahead` keeps running
    for days in (1, 2):
        assert cron_line(monkeypatch, urls, ahead, at(6, days=days)) == 0
    since = len(services[behind].requests)
    assert cron_line(monkeypatch, urls, behind, at(9, days=2)) == 0
    # its newest hour was 20261128T03 (finished at 06:15); with the 2-hour lookback:
    assert first_request(services[behind], since)[0] == "20261128T01"
    assert {path.split("/")[0] for path in files_under(data_dir)} == {str(EU), str(US)}


def test_a_wrong_key_pair_with_project_id_set_is_refused_and_keeps_nothing(
    monkeypatch, shared, services, urls, data_dir, capsys
):
    monkeypatch.setenv("AMPLITUDE_PROJECT_ID", str(EU))
    # the US project's key pair pasted where EU's belongs
    code = cron_line(
        monkeypatch, urls, US, at(10), "--start", "20261128T00", "--end", "20261128T03"
    )
    assert code == 1
    line = error_line(capsys.readouterr().err)
    assert f"the export is of project {US}, but AMPLITUDE_PROJECT_ID is {EU}" in line
    assert "nothing of it was kept" in line
    assert files_under(data_dir) == []
    assert not (data_dir / ".manifests" / str(US)).exists()


def test_a_learned_project_id_is_kept_per_key_pair(
    monkeypatch, shared, services, urls, data_dir, capsys
):
    assert cron_line(monkeypatch, urls, EU, at(10), "--days", "0") == 0
    assert f"exports project id {EU} (remembered)" in capsys.readouterr().err
    # a new laptop: only S3 is left; the key pair's project is found there
    shutil.rmtree(data_dir)
    since = len(services[EU].requests)
    assert cron_line(monkeypatch, urls, EU, at(11)) == 0
    assert first_request(services[EU], since)[0] == "20261128T05"  # 07 held, less lookback


# --- several projects in one run ---------------------------------------------------------------


@pytest.fixture
def listed(monkeypatch, shared, urls):
    monkeypatch.setenv("AMPLITUDE_PROJECTS", "eu_app, us_app")
    monkeypatch.setenv("AMPLITUDE_EU_APP_API_KEY", KEYS[EU][0])
    monkeypatch.setenv("AMPLITUDE_EU_APP_SECRET_KEY", KEYS[EU][1])
    monkeypatch.setenv("AMPLITUDE_EU_APP_EXPORT_URL", urls[EU])
    monkeypatch.setenv("AMPLITUDE_US_APP_API_KEY", KEYS[US][0])
    monkeypatch.setenv("AMPLITUDE_US_APP_SECRET_KEY", KEYS[US][1])
    monkeypatch.setenv("AMPLITUDE_US_APP_EXPORT_URL", urls[US])
    return monkeypatch


def run_at(moment: datetime, command, *argv: str) -> int:
    with time_machine.travel(moment, tick=False):
        return run(command, list(argv))


def test_one_run_exports_every_listed_project(listed, services, data_dir, capsys):
    assert run_at(at(10), extract.main, "--days", "0") == 0
    out = capsys.readouterr().out
    assert "project eu_app:" in out and "project us_app:" in out
    assert {p.split("/")[0] for p in files_under(data_dir)} == {str(EU), str(US)}
    assert run_at(at(10), load.main) == 0
    assert run_at(at(11), extract.main, "--project", "us_app", "--dry-run") == 0
    out = capsys.readouterr().out
    assert "project eu_app" not in out and f"{KEYS[EU][0]}" not in out
    assert "would request 1 window(s), 20261128T05 to 20261128T08" in out


def test_one_failing_project_does_not_stop_the_others(listed, urls, data_dir, capsys):
    listed.setenv("AMPLITUDE_PROJECTS", "broken,eu_app,us_app")
    listed.setenv("AMPLITUDE_BROKEN_API_KEY", "broken-api-key-000000000000")
    listed.setenv("AMPLITUDE_BROKEN_SECRET_KEY", "broken-secret-1111111111111")
    listed.setenv("AMPLITUDE_BROKEN_EXPORT_URL", urls[EU])
    assert run_at(at(10), extract.main, "--days", "0") == 1
    err = capsys.readouterr().err
    line = error_line(err)
    assert line.startswith("error: 1 of 3 projects failed (broken: Amplitude refused the key pair")
    assert "the others completed" in line
    assert line.endswith("Rerun one alone with: python extract.py --project broken")
    assert {p.split("/")[0] for p in files_under(data_dir)} == {str(EU), str(US)}


def test_no_secret_of_any_project_in_any_output_at_debug(listed, services, capsys):
    listed.setenv("LOG_LEVEL", "DEBUG")
    listed.setenv("AMPLITUDE_US_APP_SECRET_KEY", "us-secret-wrong-000000000000")
    assert run_at(at(10), extract.main, "--days", "0") == 1
    assert run_at(at(10), load.main) == 0
    assert run_at(at(10), extract.main, "--dry-run") == 0
    out, err = capsys.readouterr()
    assert "DEBUG" in err
    for key, secret in KEYS.values():
        token = base64.b64encode(f"{key}:{secret}".encode()).decode()
        for text in (out, err):
            assert key not in text and secret not in text and token not in text
    assert "us-secret-wrong-000000000000" not in out + err


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"AMPLITUDE_PROJECTS": "prod,,Prod"}, "names a project twice"),
        ({"AMPLITUDE_PROJECTS": "prod,9lives"}, "list project names separated by commas"),
        (
            {"AMPLITUDE_PROJECTS": "prod", "AMPLITUDE_PROD_API_KEY": "k" * 20},
            "AMPLITUDE_PROD_SECRET_KEY is not set",
        ),
        (
            {"AMPLITUDE_PROJECTS": "prod", "AMPLITUDE_PROD_REGION": "apac"},
            "AMPLITUDE_PROD_REGION is 'apac'",
        ),
        (
            {"AMPLITUDE_PROJECTS": "prod", "AMPLITUDE_PROD_PROJECT_ID": "12a"},
            "AMPLITUDE_PROD_PROJECT_ID is '12a'",
        ),
    ],
)
def test_project_settings_errors_exit_2(monkeypatch, data_dir, capsys, values, message):
    monkeypatch.setenv("JSON_DATA_DIR", str(data_dir))
    for name, value in values.items():
        monkeypatch.setenv(name, value)
    assert run(extract.main, []) == 2
    assert message in error_line(capsys.readouterr().err)


def test_an_unknown_project_name_is_a_usage_error(listed, capsys):
    assert run(extract.main, ["--project", "staging", "--dry-run"]) == 2
    line = error_line(capsys.readouterr().err)
    assert line == "error: --project 'staging' is not configured (projects: eu_app, us_app)"


def test_the_key_map_is_published_once(monkeypatch, shared, services, urls, s3):
    """Which project a key pair exports goes to S3 once, as a fingerprint, never the key."""
    monkeypatch.setenv("AMPLITUDE_PROJECT_ID", str(EU))
    assert cron_line(monkeypatch, urls, EU, at(10), "--days", "0") == 0
    listed = s3.list_objects_v2(Bucket=BUCKET, Prefix="amplitude-manifests/keys/")["Contents"]
    assert len(listed) == 1
    body = s3.get_object(Bucket=BUCKET, Key=listed[0]["Key"])["Body"].read().decode()
    assert body == f'{{"project": "{EU}"}}'
    assert KEYS[EU][0] not in listed[0]["Key"] + body
    assert cron_line(monkeypatch, urls, EU, at(11)) == 0
    again = s3.list_objects_v2(Bucket=BUCKET, Prefix="amplitude-manifests/keys/")["Contents"]
    assert again[0]["LastModified"] == listed[0]["LastModified"]  # not put again at 11:15
