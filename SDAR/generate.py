"""Baseline block-diffusion decoding for SDAR (ALGORITHM.md §1.1) and its command line.

Each step drafts every masked position of the current block and commits the positions the
remasking strategy picks, never overwriting a decoded token (the reference baseline can, §1.1).
Block length 1 with one step is AR mode: one forward per token with `fold_commit`.

    python SDAR/generate.py                       # the shipped tiny model, a sample problem
    python SDAR/generate.py --model_dir JetLM/SDAR-8B-Chat --prompt "..."  # a released checkpoint
"""

from __future__ import annotations

if __name__ == "__main__":  # before the imports below: flags are parsed and checked without torch
    import sys

    from families.sdar_cli import main

    main("SDAR.generate:block_diffusion_generate", description=__doc__)
    sys.exit(0)

import torch
from torch import Tensor

from common.cli import dataclass_from_kwargs, takes_config
from common.remasking import select_transfer, token_entropy
from common.stats import COMMIT_DIFFUSION
from SDAR.blocks import BlockDiffusionConfig, BlockStep, SDARBlocks, decode_blocks


class BaselineStep(BlockStep):
    """Draft, then commit the strategy's choice among masked positions."""

    def __call__(self, blocks: SDARBlocks, b: int, step: int, blk: Tensor, masked: Tensor,
                 live: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        probs, drafts, confidence = self.draft(blocks, b, masked, live)
        entropy = token_entropy(probs) if self.cfg.remasking_strategy == "entropy_bounded" else None
        k = torch.full_like(live, self.schedule[step], dtype=torch.long)
        commit = select_transfer(
            self.cfg.remasking_strategy, confidence, masked, k,
            threshold=self.cfg.confidence_threshold, entropy=entropy, eb_threshold=self.cfg.eb_threshold,
        )
        return commit, drafts, commit.long() * COMMIT_DIFFUSION


@takes_config(BlockDiffusionConfig)
def block_diffusion_generate(model: torch.nn.Module, input_ids: Tensor, attention_mask: Tensor | None = None,
                             generator: torch.Generator | None = None, **kwargs):
    """Decode left-padded prompts `input_ids` [B, P]; keyword arguments are the fields of
    `BlockDiffusionConfig` (unknown names raise TypeError). Returns [B, P + budget] ids, each row
    trimmed before its first stop token and padded after it; with `return_forward_stats=True`
    returns `(ids, stats)`, one stats dict per row. `custom_generate` entry point for lm-eval."""
    cfg = dataclass_from_kwargs(BlockDiffusionConfig, kwargs, "block_diffusion_generate").resolved(model)
    ids, stats = decode_blocks(model, input_ids, attention_mask, cfg, BaselineStep(cfg, generator))
    return (ids, stats) if cfg.return_forward_stats else ids

