"""S2D2 for SDAR: block-diffusion drafts verified in AR mode by the same model (ALGORITHM.md §2.3).

Each step drafts the block; a routing policy decides whether to verify the first contiguous masked
span with one 2L forward; accepted drafts (and the recovered token at the first rejection) are
committed; the baseline remasking rule tops the step up to its scheduled count. A policy that never
verifies reproduces `generate.py` exactly.

    python SDAR/generate_ssd_policy.py            # the shipped tiny model, a sample problem
    python SDAR/generate_ssd_policy.py --do_verify_policy score_threshold --do_verify_score_type difference_static \
        --score_penalty_coef 1 --token_acceptance_estimator soft_entropy_negexp --cache_ver --draft_ver   # paper config A
"""

from __future__ import annotations

if __name__ == "__main__":  # before the imports below: flags are parsed and checked without torch
    import sys

    from families.sdar_cli import main

    main("SDAR.generate_ssd_policy:block_diffusion_generate", description=__doc__,
         aliases={"return_forward_stats": ["--forward_stats"]}, negations={"allow_resample": "--no_resample"})
    sys.exit(0)

from dataclasses import dataclass

import torch
from torch import Tensor

from common.cli import dataclass_from_kwargs, takes_config
from common import s2d2
from common.s2d2 import S2D2Flags, TopUp
from SDAR.blocks import BlockDiffusionConfig, BlockStep, SDARBlocks, decode_blocks


@dataclass(frozen=True)
class S2D2Config(S2D2Flags, BlockDiffusionConfig):
    """S2D2 decoding for SDAR: the baseline's fields, the shared S2D2 flags (common.s2d2.S2D2Flags), and
    the SDAR reference's high-confidence option (ALGORITHM.md §2.3 step 7)."""

    always_check_high_confidence: bool = False


class S2D2Step(BlockStep):
    """SDAR's adapter to the shared step (common.s2d2.S2D2Step): block drafts, the 2L verifier, the
    scheduled baseline top-up, and block progress for the routing context."""

    def __init__(self, cfg: S2D2Config, batch: int, device: torch.device,
                 generator: torch.Generator | None = None) -> None:
        super().__init__(cfg, generator)
        self.core = s2d2.S2D2Step(cfg, self.sampling, batch, device, generator, count_rows_left=True)
        self.rule = TopUp(cfg.remasking_strategy, cfg.confidence_threshold, cfg.eb_threshold,
                          cfg.always_check_high_confidence)
        self.masked_at_start = torch.zeros(batch, dtype=torch.long, device=device)  # [B] of the current block

    def begin_block(self, b: int, masked: Tensor) -> None:
        self.masked_at_start = masked.sum(-1)

    @property
    def rows_left(self) -> int | None:
        return self.core.rows_left

    def select(self, keep: Tensor) -> None:
        self.core.select(keep)
        self.masked_at_start = self.masked_at_start[keep]

    def __call__(self, blocks: SDARBlocks, b: int, step: int, blk: Tensor, masked: Tensor,
                 live: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        probs, drafts, confidence = self.draft(blocks, b, masked, live)
        n_masked = masked.sum(-1)  # [B]

        def progress() -> Tensor:  # [B] decoded fraction of the block: every commit unmasks one position
            return (self.masked_at_start - n_masked).float() / self.cfg.block_length

        return self.core(
            probs, drafts, confidence, blk, masked, live, progress=progress, context_length=self.cfg.block_length,
            min_k=n_masked.clamp(max=self.schedule[step]), min_k_max=self.schedule[step], top_up_rule=self.rule,
            verify=lambda drafted, rows: blocks.verify(b, drafted, rows), recorder=blocks.recorder)


@takes_config(S2D2Config)
def block_diffusion_generate(model: torch.nn.Module, input_ids: Tensor, attention_mask: Tensor | None = None,
                             generator: torch.Generator | None = None, **kwargs):
    """S2D2 decoding of left-padded prompts `input_ids` [B, P]; keyword arguments are the fields of
    `S2D2Config` (unknown names raise TypeError). Same return contract as `SDAR.generate`."""
    cfg = dataclass_from_kwargs(S2D2Config, kwargs, "block_diffusion_generate").resolved(model)
    step = S2D2Step(cfg, input_ids.shape[0], input_ids.device, generator)
    ids, stats = decode_blocks(model, input_ids, attention_mask, cfg, step)
    return (ids, stats) if cfg.return_forward_stats else ids

