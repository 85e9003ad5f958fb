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

from dataclasses import dataclass

import torch
from torch import Tensor

from common.cli import dataclass_from_kwargs, takes_config
from common.routing import make_policy
from common.s2d2 import S2D2Flags, routing_features, top_up, verify_commits
from common.sampling import draft_tokens, logits_to_probs
from common.schedule import num_transfer_tokens
from common.spans import first_masked_span
from SDAR.blocks import BlockDiffusionConfig, BlockStep, SDARBlocks, decode_blocks


@dataclass(frozen=True)
class S2D2Config(S2D2Flags, BlockDiffusionConfig):
    """S2D2 decoding for SDAR: the baseline's fields, the shared S2D2 flags (common.s2d2.S2D2Flags), and
    the SDAR reference's high-confidence option (ALGORITHM.md §2.3 step 7)."""

    always_check_high_confidence: bool = False


class S2D2Step(BlockStep):
    """Draft -> route -> (2L verify -> accept/recover) -> high-confidence and fallback commits."""

    def __init__(self, cfg: S2D2Config, batch: int, device: torch.device,
                 generator: torch.Generator | None = None) -> None:
        self.cfg = cfg
        self.sampling = cfg.sampling()
        self.schedule = num_transfer_tokens(cfg.block_length, cfg.denoising_steps)
        self.estimator = cfg.estimator()
        self.verify_cfg = cfg.verification()
        self.policy = make_policy(cfg.routing(), batch, device)
        self.generator = generator
        self.decoded_in_block = torch.zeros(batch, dtype=torch.long, device=device)

    def begin_block(self, b: int, masked: Tensor) -> None:
        self.decoded_in_block.zero_()

    def __call__(self, blocks: SDARBlocks, b: int, step: int, blk: Tensor, masked: Tensor,
                 live: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        cfg, recorder = self.cfg, blocks.recorder
        first_masked = masked.int().argmax(-1) if cfg.draft_ver else None
        probs = logits_to_probs(blocks.draft(b, live, first_masked), self.sampling)  # p: [B, L, V]
        drafts, confidence = draft_tokens(probs, self.sampling, self.generator)
        drafts = torch.where(masked, drafts, blk)
        span = first_masked_span(masked)
        features = routing_features(
            probs, confidence, masked, span, live, self.decoded_in_block.float() / cfg.block_length,
            cfg.block_length, cfg.confidence_threshold, self.estimator, cfg.ucb_entropy_source,
        )
        verify = self.policy.decide(features) & live & (span.length > 0)
        recorder.decision(live)

        tokens = drafts
        kinds = torch.zeros_like(blk)
        widest = int((span.length * verify).max())  # one host sync: skip the verifier when no row routes to it
        if widest > 0:
            q = logits_to_probs(blocks.verify(b, drafts, verify), self.sampling)  # [B, L, V]
            tokens, kinds, verdict, recovered = verify_commits(
                q, probs, drafts, confidence, masked, span, verify, widest, self.verify_cfg, self.generator)
            recorder.verification(verify, verdict.n_accepted, recovered)
        kinds = top_up(kinds, masked, confidence, torch.clamp(masked.sum(-1), max=self.schedule[step]), live,
                       strategy=cfg.remasking_strategy, threshold=cfg.confidence_threshold, probs=probs,
                       eb_threshold=cfg.eb_threshold, high_confidence=cfg.always_check_high_confidence)
        commit = kinds > 0
        decoded = commit.sum(-1)
        self.policy.update(verify, decoded, live)
        self.decoded_in_block += decoded
        return commit, tokens, kinds


@takes_config(S2D2Config)
def block_diffusion_generate(model: torch.nn.Module, input_ids: Tensor, attention_mask: Tensor | None = None,
                             generator: torch.Generator | None = None, **kwargs):
    """S2D2 decoding of left-padded prompts `input_ids` [B, P]; keyword arguments are the fields of
    `S2D2Config` (unknown names raise TypeError). Same return contract as `SDAR.generate`."""
    cfg = dataclass_from_kwargs(S2D2Config, kwargs, "block_diffusion_generate").resolved(model)
    step = S2D2Step(cfg, input_ids.shape[0], input_ids.device, generator)
    ids, stats = decode_blocks(model, input_ids, attention_mask, cfg, step)
    return (ids, stats) if cfg.return_forward_stats else ids


if __name__ == "__main__":
    from SDAR.run import main

    main(S2D2Config, block_diffusion_generate, description=__doc__,
         aliases={"return_forward_stats": ["--forward_stats"]}, negations={"allow_resample": "--no_resample"})
