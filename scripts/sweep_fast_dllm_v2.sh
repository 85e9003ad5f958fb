#!/usr/bin/env bash
# The paper's Fast-dLLM v2 comparison, then its table and frontier plots.
#
#   bash scripts/sweep_fast_dllm_v2.sh                                   # tiny Fast-dLLM v2 model, all 400 synthetic items
#   bash scripts/sweep_fast_dllm_v2.sh model=fast_dllm_v2_7b task=gsm8k  # the released 7B (GPU, hub access)
#   bash scripts/sweep_fast_dllm_v2.sh model.block_length=8 task.limit=25   # any run_eval.py override applies to every run
#   bash scripts/sweep_fast_dllm_v2.sh hydra/launcher=slurm model=fast_dllm_v2_7b   # one Slurm job per run
#
# Stage 1 (configs/sweep/fast_dllm_v2.yaml): AR mode, the threshold baseline (0.9), S2D2 configs A, B
# and C, the score-threshold and UCB routing policies, and Config-A with greedy-exact acceptance.
# Stage 2 (configs/sweep/fast_dllm_v2_threshold_grid.yaml): the threshold baseline over more thresholds.
# Every preset decodes at the model's block length (model.block_length=N changes it; the top-level
# block_length rescales SDAR decoders only and is refused here). Greedy throughout. Runs whose record
# exists are skipped, so rerunning after an interruption finishes the sweep without repeating work.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python}"
if [[ -x .venv/bin/python && -z "${VIRTUAL_ENV:-}" ]]; then PYTHON=.venv/bin/python; fi

start=$(date +%s)
# Validate the configuration and find the record folder before anything long runs.
sweep_dir=$("$PYTHON" scripts/run_eval.py sweep=fast_dllm_v2 hydra.mode=RUN dry_run=true "$@" | sed -n 's/^sweep_dir: //p')
if [[ -z "$sweep_dir" ]]; then echo "sweep_fast_dllm_v2.sh: the configuration did not validate (see above)" >&2; exit 2; fi

echo "== stage 1/2: AR mode, threshold baseline, S2D2 (8 runs) -> $sweep_dir"
"$PYTHON" scripts/run_eval.py sweep=fast_dllm_v2 "$@"
echo "== stage 2/2: threshold grid (5 runs)"
"$PYTHON" scripts/run_eval.py sweep=fast_dllm_v2_threshold_grid "$@"
echo "== table and plots"
"$PYTHON" scripts/make_table.py "$sweep_dir"
"$PYTHON" scripts/plot_frontier.py "$sweep_dir"
echo "== sweep finished in $(( $(date +%s) - start )) s: $sweep_dir"
