#!/usr/bin/env bash
# The D2F comparison (D2F-LLaDA, or D2F-Dream with model=d2f_dream*), then its table and frontier plots.
#
#   bash scripts/sweep_d2f.sh                                     # tiny D2F-LLaDA pair -> results/d2f_llada/
#   bash scripts/sweep_d2f.sh model=d2f_dream_tiny                # tiny D2F-Dream pair -> results/d2f_dream/
#   bash scripts/sweep_d2f.sh model=d2f_llada_8b task=gsm8k       # the released pair (GPU, hub access)
#   bash scripts/sweep_d2f.sh model.pretrained=DIR/base model.lora_dir=DIR/lora task.limit=2   # any run_eval.py override
#
# A `model=d2f_dream...` argument selects the D2F-Dream sweep configs (configs/sweep/d2f_dream*.yaml),
# anything else the D2F-LLaDA ones (configs/sweep/d2f_llada*.yaml). Stage 1: AR mode, the pipelined
# `d2f` decoder with the D2F paper's thresholds, S2D2 with the span (the paper's), score-threshold,
# hysteresis and UCB routing policies, and exact S2D2 (greedy-exact, verify always). Stage 2: `d2f` over
# a grid of skip thresholds. Every preset decodes at the model's block length (model.block_length=N
# changes it). Greedy drafts throughout. Runs whose record exists are skipped, so rerunning after an
# interruption finishes the sweep without repeating work.
sweep=d2f_llada
for arg in "$@"; do
    if [[ $arg == model=d2f_dream* ]]; then sweep=d2f_dream; fi
done
exec bash "$(dirname "$0")/sweep_stages.sh" sweep_d2f.sh "$sweep" "AR mode, d2f, S2D2 (7 runs)" \
    "${sweep}_threshold_grid" "d2f skip-threshold grid (5 runs)" "$@"
