#!/usr/bin/env bash
# Cron runner: extract.py, then load.py --copy, from the repo's venv.
#
#   15 * * * * /path/to/repo/run_pipeline.sh
#
# - Never runs twice at once, nor beside a manual extract.py/load.py/backfill: it takes the
#   data folder's lock (json_data/.lock, the one those commands take) for both steps, and a
#   start while another run holds it logs "skipped" and exits 0.
# - Logs every line with a UTC timestamp to logs/pipeline.log, rotated at 10 MB (5 kept).
# - Exits with the failing step's status (1 failure, 2 settings), so cron mail or a monitor
#   sees it; on failure the last log lines also go to stderr (which cron mails).
# Settings (environment): PIPELINE_LOG_DIR, PIPELINE_LOG_MAX_BYTES, PIPELINE_LOG_KEEP,
# PIPELINE_PYTHON, PIPELINE_LOAD_ARGS (default "--copy"; "" to upload only),
# PIPELINE_LOCK_FILE (default: JSON_DATA_DIR's .lock, as `python -m pipeline.lock` prints),
# PIPELINE_STATUS=1: after a successful load, also run status.py (read-only) with
# PIPELINE_STATUS_ARGS (default none); its exit status then counts (1: a finished hour is not
# complete and reconciled), so cron mail or a monitor sees it.
set -uo pipefail
cd "$(dirname "$(readlink -f "$0")")" || exit 1

log_dir=${PIPELINE_LOG_DIR:-logs}
log_file=$log_dir/pipeline.log
max_bytes=${PIPELINE_LOG_MAX_BYTES:-10485760}
keep=${PIPELINE_LOG_KEEP:-5}
python=${PIPELINE_PYTHON:-.venv/bin/python}
read -r -a load_args <<<"${PIPELINE_LOAD_ARGS---copy}"
read -r -a status_args <<<"${PIPELINE_STATUS_ARGS-}"

export TZ=UTC
mkdir -p "$log_dir" || exit 1

rotate() {
  [ -f "$log_file" ] || return 0
  [ "$(stat -c %s "$log_file")" -ge "$max_bytes" ] || return 0
  rm -f "$log_file.$keep"
  for ((i = keep - 1; i >= 1; i--)); do
    [ -f "$log_file.$i" ] && mv "$log_file.$i" "$log_file.$((i + 1))"
  done
  mv "$log_file" "$log_file.1"
}

stamp() {
  local line
  while IFS= read -r line || [ -n "$line" ]; do
    printf '%(%Y-%m-%dT%H:%M:%SZ)T %s\n' -1 "$line"
  done
}

step() {
  echo "run: $*" | stamp >>"$log_file"
  "$python" "$@" 2>&1 | stamp >>"$log_file"
  return "${PIPESTATUS[0]}"
}

lock_file=${PIPELINE_LOCK_FILE:-$("$python" -m pipeline.lock 2>>"$log_file")} || {
  echo "failed: cannot read the settings to find the lock (see above)" | stamp >>"$log_file"
  tail -n 5 "$log_file" >&2
  exit 2
}
mkdir -p "$(dirname "$lock_file")" || exit 1
exec 9<>"$lock_file"
if ! flock -n 9; then
  echo "skipped: another run holds $lock_file: $(head -c 200 "$lock_file")" | stamp >>"$log_file"
  exit 0
fi
printf 'run_pipeline.sh (pid %s, since %s)\n' "$$" "$(date -u +%Y-%m-%dT%H:%M:%SZ)" >"$lock_file"
export PIPELINE_LOCK_FD=9 # extract.py and load.py run under this lock instead of taking it

rotate
status=0
step extract.py || status=$?
if [ "$status" -eq 0 ]; then
  step load.py "${load_args[@]}" || status=$?
fi
if [ "$status" -eq 0 ] && [ "${PIPELINE_STATUS:-}" = "1" ]; then
  step status.py "${status_args[@]}" || status=$?
fi
if [ "$status" -ne 0 ]; then
  echo "failed with exit status $status" | stamp >>"$log_file"
  tail -n 5 "$log_file" >&2
else
  echo "done" | stamp >>"$log_file"
fi
exit "$status"
