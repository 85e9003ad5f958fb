#!/usr/bin/env bash
# Shared body of the family sweep scripts (sweep_sdar.sh, sweep_fast_dllm_v2.sh); not meant to be run
# by hand. Usage: sweep_stages.sh NAME STAGE1_SWEEP STAGE1_LABEL STAGE2_SWEEP STAGE2_LABEL [overrides...]
# Validates the configuration (dry run) before anything long runs, runs both Hydra multiruns with the
# overrides, then writes the table and the frontier plots of the sweep folder. The sweep folder is the
# published results/<sweep_name> only for the documented command; with other overrides the dry run
# names the folder it goes to instead. A failed run does not stop the sweep: each stage lists its
# failures, the table and plots are made from what finished, and the script exits with status 1.
set -euo pipefail
name=$1 stage1=$2 label1=$3 stage2=$4 label2=$5
shift 5
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python}"
if [[ -x .venv/bin/python && -z "${VIRTUAL_ENV:-}" ]]; then PYTHON=.venv/bin/python; fi

start=$(date +%s)
dry_run=$("$PYTHON" scripts/run_eval.py "sweep=$stage1" hydra.mode=RUN dry_run=true "$@") || dry_run=
sweep_dir=$(sed -n 's/^sweep_dir: //p' <<<"$dry_run")
if [[ -z "$sweep_dir" ]]; then echo "$name: the configuration did not validate (see above)" >&2; exit 2; fi
sed -n 's/^note: /'"$name"': /p' <<<"$dry_run"

failed=0
echo "== stage 1/2: $label1 -> $sweep_dir"
"$PYTHON" scripts/run_eval.py "sweep=$stage1" "$@" || failed=1
echo "== stage 2/2: $label2"
"$PYTHON" scripts/run_eval.py "sweep=$stage2" "$@" || failed=1
echo "== table and plots"
"$PYTHON" scripts/make_table.py "$sweep_dir" || failed=1
"$PYTHON" scripts/plot_frontier.py "$sweep_dir" || failed=1
echo "== sweep finished in $(( $(date +%s) - start )) s: $sweep_dir"
if (( failed )); then echo "$name: some runs or the table failed (listed above)" >&2; exit 1; fi
