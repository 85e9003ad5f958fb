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
exec bash "$(dirname "$0")/sweep_stages.sh" sweep_fast_dllm_v2.sh fast_dllm_v2 "AR mode, threshold baseline, S2D2 (8 runs)" fast_dllm_v2_threshold_grid "threshold grid (5 runs)" "$@"
