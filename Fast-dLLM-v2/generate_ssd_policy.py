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

from dataclasses import dataclass

import torch
from torch import Tensor

from common.cli import dataclass_from_kwargs, takes_config
from common.routing import make_policy
from common.s2d2 import S2D2Flags, routing_features, top_up, verify_commits
from common.sampling import draft_tokens, logits_to_probs
from common.spans import first_masked_span
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
    """Draft -> route -> (causal verify -> accept / recover) -> baseline rule if nothing was committed."""

    def __init__(self, cfg: S2D2Config, batch: int, device: torch.device,
                 generator: torch.Generator | None = None) -> None:
        self.cfg = cfg
        self.sampling = cfg.sampling()
        self.estimator = cfg.estimator()
        self.verify_cfg = cfg.verification()
        self.policy = make_policy(cfg.routing(), batch, device)
        self.generator = generator

    def __call__(self, blocks: FastDLLMBlocks, b: int, s: int, logits: Tensor, sub: Tensor, masked: Tensor,
                 live: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        cfg, recorder = self.cfg, blocks.recorder
        probs = logits_to_probs(logits, self.sampling)  # p: [B, S, V]
        drafts, confidence = draft_tokens(probs, self.sampling, self.generator)
        drafts = torch.where(masked, drafts, sub)  # [B, S]: the sub-block with every mask drafted
        span = first_masked_span(masked)
        progress = (sub != cfg.mask_id).float().mean(-1)  # known fraction of the sub-block (UCB context)
        features = routing_features(probs, confidence, masked, span, live, progress, cfg.small_block_size,
                                    cfg.threshold, self.estimator, cfg.ucb_entropy_source)
        verify = self.policy.decide(features) & live & (span.length > 0)
        recorder.decision(live)

        tokens, kinds = drafts, torch.zeros_like(sub)
        widest = int((span.length * verify).max())  # one host sync: skip the verifier when no row routes to it
        if widest > 0:
            q = logits_to_probs(blocks.verify(b, s, drafts, verify), self.sampling)  # [B, S, V]
            tokens, kinds, verdict, recovered = verify_commits(
                q, probs, drafts, confidence, masked, span, verify, widest, self.verify_cfg, self.generator)
            recorder.verification(verify, verdict.n_accepted, recovered)
        # Verified steps commit the span result only; where nothing was committed (no verification, or a
        # rejection at the span start without resampling) the baseline rule commits instead.
        kinds = top_up(kinds, masked, confidence, live.long(), live, strategy=BASELINE_STRATEGY,
                       threshold=cfg.threshold, probs=probs, eb_threshold=0.0, high_confidence=False)
        commit = kinds > 0
        self.policy.update(verify, commit.sum(-1), live)
        return commit, tokens, kinds


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
