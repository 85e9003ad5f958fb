"""Baseline Fast-dLLM v2 decoding, the reference's "fast" `generate` (ALGORITHM.md §1.2).

Sub-blocks are decoded left to right. Each draft forward commits, among the sub-block's masked
positions, every draft whose confidence exceeds `threshold` plus the single most confident one, so
every forward makes progress. The forward that stores a finished block's K/V also yields the next
block's first token by argmax.

    python Fast-dLLM-v2/example_v2.py --generate_fn fast     # the command line (both decoders)
"""

from __future__ import annotations

if __name__ == "__main__":  # a decoder module; its command line is the family's example script
    raise SystemExit("error: Fast-dLLM-v2/generate.py holds the decoder, not a command line; run python Fast-dLLM-v2/example_v2.py "
                     "--generate_fn fast (--help lists its flags)")

import torch
from torch import Tensor

from common.cli import dataclass_from_kwargs, takes_config
from common.remasking import select_transfer
from common.stats import COMMIT_DIFFUSION
from fast_dllm_v2.blocks import FastDecodeConfig, FastDLLMBlocks, SubBlockStep, decode_blocks

BASELINE_STRATEGY = "low_confidence_dynamic"
"""The Fast-dLLM commit rule is the dynamic strategy with a budget of one: all masked drafts above the
threshold (strict >) when there is at least one, else the single most confident draft."""


class BaselineStep(SubBlockStep):
    """Draft the sub-block, commit the confident drafts (at least one)."""

    def __call__(self, blocks: FastDLLMBlocks, b: int, s: int, logits: Tensor, sub: Tensor, masked: Tensor,
                 live: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        _, drafts, confidence = self.draft(logits)
        commit = select_transfer(BASELINE_STRATEGY, confidence, masked, live.long(), threshold=self.cfg.threshold)
        return commit, drafts, commit.long() * COMMIT_DIFFUSION


@takes_config(FastDecodeConfig)
def generate(model: torch.nn.Module, input_ids: Tensor, attention_mask: Tensor | None = None,
             generator: torch.Generator | None = None, **kwargs) -> Tensor | tuple[Tensor, list[dict]]:
    """Decode left-padded prompts `input_ids` [B, P]; keyword arguments are the fields of `FastDecodeConfig`
    (unknown names raise TypeError, bad values ValueError, both before any forward). Returns
    [B, P + budget] ids, each row cut after its first stop token (included) and padded with the stop id;
    with `return_forward_stats=True` returns `(ids, stats)`, one stats dict per row. lm-eval
    `custom_generate` entry point (same contract as SDAR's `block_diffusion_generate`)."""
    cfg = dataclass_from_kwargs(FastDecodeConfig, kwargs, "generate").resolved(model)
    ids, stats = decode_blocks(model, input_ids, attention_mask, cfg, BaselineStep(cfg, generator))
    return (ids, stats) if cfg.return_forward_stats else ids
