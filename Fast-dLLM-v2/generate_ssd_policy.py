r"""S2D2 for Fast-dLLM v2: sub-block drafts verified in AR mode by the same model (ALGORITHM.md §2.4).

Each step drafts the current sub-block. A routing policy decides whether to verify its first contiguous
masked span. Verification is ONE causal forward (block_size=1) over the block up to the end of the
sub-block with the drafts filled in; thanks to the shift, row t - 1 of it is the AR distribution of
position t. Accepted drafts, and the recovered token at the first rejection, are committed. A step that
does not verify, or whose verification commits nothing, is exactly the baseline step, so a policy that
never verifies reproduces `generate.py` token for token.

    python Fast-dLLM-v2/example_v2.py --generate_fn ssd_policy --small_block_size 4 \
        --do_verify_policy score_hysteresis --hysteresis_threshold_on 1 --hysteresis_threshold_off -5 \
        --score_penalty_coef 1 --token_acceptance_estimator soft_entropy_negexp   # the paper's config A
"""

from __future__ import annotations

if __name__ == "__main__":  # a decoder module; its command line is the family's example script
    raise SystemExit("error: Fast-dLLM-v2/generate_ssd_policy.py holds the decoder, not a command line; run python Fast-dLLM-v2/example_v2.py "
                     "--generate_fn ssd_policy (--help lists its flags)")

from dataclasses import dataclass

import torch
from torch import Tensor

from common.cli import dataclass_from_kwargs, takes_config
from common import s2d2
from common.s2d2 import S2D2Flags, TopUp
from fast_dllm_v2.blocks import FastDecodeConfig, FastDLLMBlocks, SubBlockStep, decode_blocks
from fast_dllm_v2.generate import BASELINE_STRATEGY


@dataclass(frozen=True)
class S2D2Config(S2D2Flags, FastDecodeConfig):
    """S2D2 decoding for Fast-dLLM v2: the baseline's fields and the shared S2D2 flags
    (common.s2d2.S2D2Flags; ALGORITHM.md §4.2 names, the reference CLI's defaults).

    `allow_resample=False` leaves the first rejected position masked, for the baseline rule to fill when
    nothing else was committed (as the Fast-dLLM reference and our SDAR do).
    """


class S2D2Step(SubBlockStep):
    """Fast-dLLM v2's adapter to the shared step (common.s2d2.S2D2Step): shifted sub-block drafts, the
    causal verifier, the baseline rule (at least one commit) as top-up, and the sub-block's known
    fraction as routing context. Verified steps commit the span result only; where nothing was committed
    (no verification, or a rejection at the span start without resampling) the baseline rule commits."""

    def __init__(self, cfg: S2D2Config, batch: int, device: torch.device,
                 generator: torch.Generator | None = None) -> None:
        super().__init__(cfg, generator)
        self.core = s2d2.S2D2Step(cfg, self.sampling, batch, device, generator)
        self.rule = TopUp(BASELINE_STRATEGY, cfg.threshold)

    def select(self, keep: Tensor) -> None:
        self.core.select(keep)

    def __call__(self, blocks: FastDLLMBlocks, b: int, s: int, logits: Tensor, sub: Tensor, masked: Tensor,
                 live: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        probs, drafts, confidence = self.draft(logits)
        return self.core(probs, drafts, confidence, sub, masked, live,
                         progress=lambda: (sub != self.cfg.mask_id).float().mean(-1),
                         context_length=self.cfg.small_block_size, min_k=live.long(), min_k_max=1, top_up_rule=self.rule,
                         verify=lambda drafted, rows: blocks.verify(b, s, drafted, rows), recorder=blocks.recorder)


@takes_config(S2D2Config)
def generate_ssd_policy(model: torch.nn.Module, input_ids: Tensor, attention_mask: Tensor | None = None,
                        generator: torch.Generator | None = None, **kwargs) -> Tensor | tuple[Tensor, list[dict]]:
    """S2D2 decoding of left-padded prompts `input_ids` [B, P]; keyword arguments are the fields of
    `S2D2Config` (unknown names raise TypeError, bad values ValueError, both before any forward).
    Same return contract as `fast_dllm_v2.generate.generate`."""
    cfg = dataclass_from_kwargs(S2D2Config, kwargs, "generate_ssd_policy").resolved(model)
    step = S2D2Step(cfg, input_ids.shape[0], input_ids.device, generator)
    ids, stats = decode_blocks(model, input_ids, attention_mask, cfg, step)
    return (ids, stats) if cfg.return_forward_stats else ids
