"""run_pipeline.sh: order, lock, timestamped rotated log, exit status."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
STAMP = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z ")

FAKE_STEP = """
import sys, pathlib
name = pathlib.Path(__file__).name
pathlib.Path("calls.txt").open("a").write(name + " " + " ".join(sys.argv[1:]) + "\\n")
print(name + " summary line")
code = int(pathlib.Path(name + ".rc").read_text()) if pathlib.Path(name + ".rc").exists() else 0
if code:
    print("error: " + name + " failed on purpose", file=sys.stderr)
sys.exit(code)
"""


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    shutil.copy(REPO / "run_pipeline.sh", tmp_path / "run_pipeline.sh")
    for name in ("extract.py", "load.py"):
        (tmp_path / name).write_text(FAKE_STEP)
    return tmp_path


def run_script(repo: Path, **env: str) -> subprocess.CompletedProcess:
    full = {
        "PATH": os.environ["PATH"],
        "PIPELINE_PYTHON": sys.executable,
        "PIPELINE_LOCK_FILE": str(repo / "json_data" / ".lock"),
        **env,
    }
    return subprocess.run(
        [str(repo / "run_pipeline.sh")], env=full, capture_output=True, text=True, timeout=30
    )


def test_runs_extract_then_load_copy_and_logs_with_timestamps(repo):
    result = run_script(repo)
    assert result.returncode == 0, result.stderr
    assert (repo / "calls.txt").read_text().splitlines() == ["extract.py ", "load.py --copy"]
    log = (repo / "logs/pipeline.log").read_text().splitlines()
    assert log and all(STAMP.match(line) for line in log)
    assert any(line.endswith("load.py summary line") for line in log)
    assert result.stdout == "" and result.stderr == ""  # cron mails nothing on success


def test_failure_exits_non_zero_stops_and_reports_on_stderr(repo):
    (repo / "extract.py.rc").write_text("2")
    result = run_script(repo)
    assert result.returncode == 2
    assert (repo / "calls.txt").read_text().splitlines() == ["extract.py "]
    assert "error: extract.py failed on purpose" in result.stderr
    (repo / "extract.py.rc").unlink()
    (repo / "load.py.rc").write_text("1")
    assert run_script(repo).returncode == 1


def test_never_runs_twice_at_once_nor_beside_a_manual_run(repo):
    """The data folder's lock, as a manual `load.py --copy` holds it (pipeline.lock)."""
    sys.path.insert(0, str(REPO))
    from pipeline import lock

    with lock.hold(repo / "json_data", "load.py --copy"):
        result = run_script(repo)
    assert result.returncode == 0
    assert not (repo / "calls.txt").exists()
    log = (repo / "logs/pipeline.log").read_text()
    assert "skipped: another run holds" in log and "load.py --copy (pid" in log


STEP_UNDER_LOCK = """
import sys
sys.path.insert(0, {repo!r})
from pathlib import Path
from pipeline import lock
with lock.hold(Path("json_data"), "step"):  # would raise Busy unless inherited
    Path("calls.txt").open("a").write(Path(__file__).name + " held the lock\\n")
"""


def test_the_steps_run_under_the_scripts_lock_and_a_manual_run_is_refused(repo):
    """extract.py and load.py inherit run_pipeline.sh's lock (PIPELINE_LOCK_FD); a manual
    run meanwhile would be refused with a line naming run_pipeline.sh."""
    for name in ("extract.py", "load.py"):
        (repo / name).write_text(STEP_UNDER_LOCK.format(repo=str(REPO)))
    result = run_script(repo)
    assert result.returncode == 0, (repo / "logs/pipeline.log").read_text()
    assert (repo / "calls.txt").read_text().splitlines() == [
        "extract.py held the lock",
        "load.py held the lock",
    ]
    assert "run_pipeline.sh (pid" in (repo / "json_data/.lock").read_text()


def test_the_lock_file_follows_json_data_dir(tmp_path):
    env = {**os.environ, "JSON_DATA_DIR": str(tmp_path / "data")}
    out = subprocess.run(
        [sys.executable, "-m", "pipeline.lock"], cwd=REPO, env=env, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == str(tmp_path / "data" / ".lock")


def test_log_is_rotated_and_bounded(repo):
    (repo / "logs").mkdir()
    (repo / "logs/pipeline.log").write_text("x" * 2000)
    for i in range(1, 3):
        (repo / f"logs/pipeline.log.{i}").write_text(f"old {i}")
    assert run_script(repo, PIPELINE_LOG_MAX_BYTES="1000", PIPELINE_LOG_KEEP="2").returncode == 0
    assert (repo / "logs/pipeline.log.1").read_text() == "x" * 2000
    assert (repo / "logs/pipeline.log.2").read_text() == "old 1"
    assert not (repo / "logs/pipeline.log.3").exists()
    assert len((repo / "logs/pipeline.log").read_text()) < 1000


def test_load_args_can_be_changed(repo):
    assert run_script(repo, PIPELINE_LOAD_ARGS="--prune").returncode == 0
    assert (repo / "calls.txt").read_text().splitlines()[1] == "load.py --prune"


def test_status_runs_after_the_load_when_asked_and_its_exit_status_counts(repo):
    (repo / "status.py").write_text(FAKE_STEP)
    assert run_script(repo).returncode == 0
    assert (repo / "calls.txt").read_text().splitlines() == ["extract.py ", "load.py --copy"]
    (repo / "calls.txt").unlink()

    result = run_script(repo, PIPELINE_STATUS="1", PIPELINE_STATUS_ARGS="--days 1")
    assert result.returncode == 0, result.stderr
    assert (repo / "calls.txt").read_text().splitlines() == [
        "extract.py ",
        "load.py --copy",
        "status.py --days 1",
    ]
    assert any(
        line.endswith("status.py summary line")
        for line in (repo / "logs/pipeline.log").read_text().splitlines()
    )
    (repo / "calls.txt").unlink()

    (repo / "status.py.rc").write_text("1")  # a finished hour not complete
    result = run_script(repo, PIPELINE_STATUS="1")
    assert result.returncode == 1
    assert "error: status.py failed on purpose" in result.stderr
    assert (repo / "calls.txt").read_text().splitlines()[-1] == "status.py "
    (repo / "calls.txt").unlink()

    (repo / "load.py.rc").write_text("1")  # a failed load: no status after it
    assert run_script(repo, PIPELINE_STATUS="1").returncode == 1
    assert (repo / "calls.txt").read_text().splitlines() == ["extract.py ", "load.py --copy"]
