#!/usr/bin/env bash
# The paper's SDAR comparison, then its table and frontier plots.
#
#   bash scripts/sweep_sdar.sh                                # shipped tiny model, all 400 synthetic items
#   bash scripts/sweep_sdar.sh model=sdar_8b_chat task=gsm8k  # a released checkpoint (GPU, hub access)
#   bash scripts/sweep_sdar.sh block_length=4 task.limit=25   # any run_eval.py override applies to every run
#   bash scripts/sweep_sdar.sh hydra/launcher=slurm model=sdar_8b_chat   # one Slurm job per run
#
# Stage 1 (configs/sweep/sdar.yaml): AR mode, static, dynamic (tau 0.9), S2D2 configs A and B, the
# span, hysteresis and UCB routing policies, and Config-A with greedy-exact acceptance. Stage 2 (configs/sweep/sdar_dynamic_grid.yaml): the
# dynamic baseline over more thresholds. Every block decoder runs at the model's block length
# (block_length=N overrides it). Runs whose record exists are skipped, so rerunning after an
# interruption finishes the sweep without repeating work.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python}"
if [[ -x .venv/bin/python && -z "${VIRTUAL_ENV:-}" ]]; then PYTHON=.venv/bin/python; fi

start=$(date +%s)
# Validate the configuration and find the record folder before anything long runs.
sweep_dir=$("$PYTHON" scripts/run_eval.py sweep=sdar hydra.mode=RUN dry_run=true "$@" | sed -n 's/^sweep_dir: //p')
if [[ -z "$sweep_dir" ]]; then echo "sweep_sdar.sh: the configuration did not validate (see above)" >&2; exit 2; fi

echo "== stage 1/2: AR mode, static, dynamic, S2D2 (9 runs) -> $sweep_dir"
"$PYTHON" scripts/run_eval.py sweep=sdar "$@"
echo "== stage 2/2: dynamic-threshold grid (5 runs)"
"$PYTHON" scripts/run_eval.py sweep=sdar_dynamic_grid "$@"
echo "== table and plots"
"$PYTHON" scripts/make_table.py "$sweep_dir"
"$PYTHON" scripts/plot_frontier.py "$sweep_dir"
echo "== sweep finished in $(( $(date +%s) - start )) s: $sweep_dir"
