#!/usr/bin/env bash
# The paper's LLaDA2 comparison on the tiny LLaDA2 MoE model, then its table and frontier plot.
#
#   bash scripts/sweep_llada2.sh                               # shipped tiny model, all 400 synthetic items
#   bash scripts/sweep_llada2.sh model=llada2.1_mini task=gsm8k  # the released model (GPU, hub access)
#   bash scripts/sweep_llada2.sh task.limit=25                 # any run_eval.py override applies to every run
#   bash scripts/sweep_llada2.sh sweep_name=llada2_t1 decoding.params.temperature=1.0   # sampled at T=1
#
# Stage 1 (configs/sweep/llada2.yaml): AR mode, static, the conservative preset, the S2D2 counterparts
# of both paper presets, S2D2 with the span and UCB policies, exact S2D2. Stage 2
# (configs/sweep/llada2_threshold_grid.yaml): the threshold decoder at tau_mask 0.3-0.9, each with and
# without editing (tau_mask 0.7 with tau_edit 0.5 is the paper's quality preset). Every decoder runs at the model's block length. Runs whose record exists are
# skipped, so rerunning after an interruption finishes the sweep without repeating work.
exec bash "$(dirname "$0")/sweep_stages.sh" sweep_llada2.sh llada2 "AR mode, static, conservative, S2D2 (8 runs)" llada2_threshold_grid "threshold grid with and without editing (8 runs)" "$@"
