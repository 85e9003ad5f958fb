#!/usr/bin/env bash
# The paper's SDAR comparison, then its table and frontier plots.
#
#   bash scripts/sweep_sdar.sh                                # shipped tiny model, all 400 synthetic items
#   bash scripts/sweep_sdar.sh model=sdar_8b_chat task=gsm8k  # a released checkpoint (GPU, hub access)
#   bash scripts/sweep_sdar.sh block_length=4 task.limit=25   # any run_eval.py override applies to every run
#   bash scripts/sweep_sdar.sh sweep_name=sdar_t1 decoding.params.do_sample=true decoding.params.temperature=1.0   # sampled at T=1
#   bash scripts/sweep_sdar.sh hydra/launcher=slurm model=sdar_8b_chat   # one Slurm job per run
#
# Stage 1 (configs/sweep/sdar.yaml): AR mode, static, dynamic (tau 0.9), S2D2 configs A and B, the
# span, hysteresis and UCB routing policies, and Config-A with greedy-exact acceptance. Stage 2 (configs/sweep/sdar_dynamic_grid.yaml): the
# dynamic baseline over more thresholds. Every block decoder runs at the model's block length
# (block_length=N overrides it). Runs whose record exists are skipped, so rerunning after an
# interruption finishes the sweep without repeating work.
exec bash "$(dirname "$0")/sweep_stages.sh" sweep_sdar.sh sdar "AR mode, static, dynamic, S2D2 (9 runs)" sdar_dynamic_grid "dynamic-threshold grid (5 runs)" "$@"
