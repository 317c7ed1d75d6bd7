"""run_pipeline.sh: order, lock, timestamped rotated log, exit status."""

from __future__ import annotations

import fcntl
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
    full = {"PATH": os.environ["PATH"], "PIPELINE_PYTHON": sys.executable, **env}
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


def test_never_runs_twice_at_once(repo):
    (repo / "logs").mkdir()
    with open(repo / "logs/.pipeline.lock", "a") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        result = run_script(repo)
    assert result.returncode == 0
    assert not (repo / "calls.txt").exists()
    assert "skipped: a previous run still holds" in (repo / "logs/pipeline.log").read_text()


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
