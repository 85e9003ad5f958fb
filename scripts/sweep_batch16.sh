#!/usr/bin/env bash
# Batched decoding equals batch 1, on the shipped models: the deterministic decoders of both published
# greedy sweeps (AR mode, the baselines over their threshold grids, exact S2D2) rerun at batch size 16,
# then every completion compared with the batch-1 record of the same configuration.
#
#   bash scripts/sweep_batch16.sh      # -> results/sdar_batch16/, results/fast_dllm_v2_batch16/
#
# Each folder gets its records, table and plots (scripts/sweep_stages.sh) and comparison.jsonl
# (scripts/compare_batches.py: per decoder, the items whose completion differs from batch 1; expected: none).
set -euo pipefail
cd "$(dirname "$0")/.."
if (( $# )); then echo "sweep_batch16.sh takes no arguments: it reruns the published greedy sweeps at batch 16" >&2; exit 2; fi
PYTHON="${PYTHON:-python}"
if [[ -x .venv/bin/python && -z "${VIRTUAL_ENV:-}" ]]; then PYTHON=.venv/bin/python; fi
failed=0
bash scripts/sweep_stages.sh sweep_batch16.sh sdar_batch16 "SDAR, batch 16 (4 runs)" sdar_batch16_grid \
    "SDAR dynamic grid, batch 16 (5 runs)" || failed=1
bash scripts/sweep_stages.sh sweep_batch16.sh fast_dllm_v2_batch16 "Fast-dLLM v2, batch 16 (3 runs)" \
    fast_dllm_v2_batch16_grid "Fast-dLLM v2 threshold grid, batch 16 (5 runs)" || failed=1
for family in sdar fast_dllm_v2; do
    "$PYTHON" scripts/compare_batches.py "results/$family" "results/${family}_batch16" \
        --out "results/${family}_batch16/comparison.jsonl" || failed=1
done
exit $failed
