r"""S2D2 for LLaDA2: block drafts verified in AR mode by the same model, with token editing kept
(ALGORITHM.md §2.5; the cached decoder of `generate.py` underneath).

Each iteration drafts the block and computes its T2T edits exactly as the threshold decoder does;
the edits are always applied. The verifier's first half is the block with those edits written and
every mask drafted. A routing policy decides whether to verify the first contiguous masked span with
one 2L forward (common.masks.verifier_2l); accepted drafts and the recovered token at the first
rejection are committed, and where fewer than `min(num_to_transfer, #masked)` masks were committed,
the threshold rule tops the iteration up (all remaining masks above `threshold` if enough, else the
most confident). As in the paper's code, confident masks outside the span wait on verified
iterations. A policy that never verifies reproduces `generate_cached` token for token.

Differences from the reference, deliberate: all four routing policies (the reference's LLaDA2 has no
UCB bandit), `allow_resample` (the reference always resamples the first rejection), greedy-exact
acceptance and `cache_ver` are available, through the core shared with SDAR and Fast-dLLM v2
(common.s2d2.S2D2Step). Iterations of a block without masks (post steps) are routing decisions with
an empty span: never verified, and a hysteresis policy switches off there, as in the reference.

    python LLaDA2/example_llada.py --generate_fn ssd_policy --threshold 0.95 --editing_threshold 0.9 \
        --do_verify_policy score_threshold --do_verify_score_threshold -5 --do_verify_score_type difference_static \
        --score_penalty_coef 4 --token_acceptance_estimator soft_entropy_negexp   # the paper's conservative setting
"""

from __future__ import annotations

if __name__ == "__main__":  # a decoder module; its command line is the family's example script
    raise SystemExit("error: LLaDA2/generate_ssd_policy.py holds the decoder, not a command line; run python LLaDA2/example_llada.py "
                     "--generate_fn ssd_policy (--help lists its flags)")

from dataclasses import dataclass

import torch
from torch import Tensor

from common import s2d2
from common.cli import dataclass_from_kwargs, takes_config
from common.editing import apply_edits
from common.s2d2 import S2D2Flags, TopUp
from common.stats import COMMIT_EDIT
from LLaDA2.blocks import CachedDecodeConfig, IterationStep, LLaDA2Blocks, decode_blocks

TOP_UP_STRATEGY = "low_confidence_dynamic"
"""The M2T rule as a remasking strategy: every mask above the threshold when there are at least k of
them, else the k most confident (common.editing.threshold_fill)."""


@dataclass(frozen=True)
class S2D2Config(S2D2Flags, CachedDecodeConfig):
    """S2D2 decoding for LLaDA2: the cached decoder's fields and the shared S2D2 flags
    (common.s2d2.S2D2Flags; ALGORITHM.md §4.3 names)."""


class S2D2Step(IterationStep):
    """LLaDA2's adapter to the shared step: block drafts, edits applied before verification, the 2L
    verifier, the M2T rule as top-up, and the block's decoded fraction as routing context."""

    def __init__(self, cfg: S2D2Config, batch: int, device: torch.device,
                 generator: torch.Generator | None = None) -> None:
        super().__init__(cfg, generator)
        self.core = s2d2.S2D2Step(cfg, self.sampling, batch, device, generator)
        self.rule = TopUp(TOP_UP_STRATEGY, cfg.threshold)

    def select(self, keep: Tensor) -> None:
        self.core.select(keep)

    def __call__(self, blocks: LLaDA2Blocks, b: int, blk: Tensor, masked: Tensor, editable: Tensor,
                 live: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        probs, drafts, confidence = self.draft(blocks, b, live)
        edit = self.edits(drafts, confidence, blk, editable, live)  # [B, L]
        edited = apply_edits(blk, drafts, edit)  # [B, L]: what the verifier's first half holds besides drafts
        commit, tokens, kinds = self.core(
            probs, drafts, confidence, edited, masked, live, progress=(blk != self.cfg.mask_id).float().mean(-1),
            context_length=self.cfg.block_length, min_k=masked.sum(-1).clamp(max=self.cfg.num_to_transfer),
            top_up_rule=self.rule, verify=lambda drafted, rows: blocks.verify(b, drafted, rows),
            recorder=blocks.recorder)
        # The core commits masked positions only; the edits are this iteration's other commits.
        return commit | edit, tokens, torch.where(edit, COMMIT_EDIT, kinds)


@takes_config(S2D2Config)
def generate_ssd_policy(model: torch.nn.Module, input_ids: Tensor, attention_mask: Tensor | None = None,
                        generator: torch.Generator | None = None, **kwargs) -> Tensor | tuple[Tensor, list[dict]]:
    """S2D2 decoding of left-padded prompts `input_ids` [B, P]; keyword arguments are the fields of
    `S2D2Config` (unknown names raise TypeError, bad values ValueError, both before any forward).
    Same return contract as `LLaDA2.generate.generate_cached`."""
    cfg = dataclass_from_kwargs(S2D2Config, kwargs, "generate_ssd_policy").resolved(model)
    step = S2D2Step(cfg, input_ids.shape[0], input_ids.device, generator)
    ids, stats = decode_blocks(model, input_ids, attention_mask, cfg, step)
    return (ids, stats) if cfg.return_forward_stats else ids
