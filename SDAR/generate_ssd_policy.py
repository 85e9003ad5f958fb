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

from dataclasses import dataclass, field

import torch
from torch import Tensor

from common.acceptance import (
    ACCEPTANCE_MODES,
    acceptance_ratio,
    greedy_exact_verdict,
    recover_tokens,
    stochastic_verdict,
)
from common.cli import dataclass_from_kwargs, takes_config
from common.estimators import EstimatorConfig, expected_accepted_length, normalized_entropy, token_acceptance
from common.remasking import select_transfer, token_entropy
from common.schedule import num_transfer_tokens
from common.routing import RouteFeatures, RoutingConfig, make_policy
from common.sampling import draft_tokens, logits_to_probs
from common.spans import Span, first_masked_span, scatter_to_span
from common.stats import (
    COMMIT_ACCEPTED,
    COMMIT_DIFFUSION,
    COMMIT_HIGH_CONF,
    COMMIT_RATIO,
    COMMIT_RESAMPLED,
)
from SDAR.blocks import BlockDiffusionConfig, BlockStep, SDARBlocks, decode_blocks


@dataclass(frozen=True)
class S2D2Config(BlockDiffusionConfig):
    """S2D2 decoding. Field names are the reference's flags (ALGORITHM.md §4.1); where the reference's
    CLI and function defaults differ, the CLI's (the paper's runs) are used."""

    acceptance: str = field(default="stochastic", metadata={"help": "|".join(ACCEPTANCE_MODES)})
    allow_resample: bool = field(default=True, metadata={"help": "resample the first rejected position from (q-p)+; "
                                                                  "off: leave it masked for the fallback rule"})
    min_ssd_span_length: int = 1
    ssd_ratio_tempering_factor: float = field(default=1.0, metadata={"help": "gamma in min(1, (q/p)^gamma)"})
    ssd_ratio_threshold: float = field(default=-1.0, metadata={"help": ">= 0: also commit drafts with ratio >= it"})
    ssd_threshold_all_spans: bool = field(default=False, metadata={"help": "ratio threshold over all masked positions"})
    always_check_high_confidence: bool = False
    do_verify_policy: str = "mask_span_length"
    do_verify_score_threshold: float = 0.0
    hysteresis_threshold_on: float = 0.0
    hysteresis_threshold_off: float = -1.0
    do_verify_score_type: str = "difference_dynamic"
    score_penalty_coef: float = 2.0
    ucb_beta: float = 1.0
    ucb_span_length_bins: int = 2
    ucb_block_progress_bins: int = 2
    ucb_entropy_bins: int = 2
    ucb_entropy_source: str = "span"
    token_acceptance_estimator: str = "hard_margin_threshold"
    ssd_confidence_margin_threshold: float = 0.05
    ssd_confidence_power: float = 0.8
    ssd_entropy_threshold: float = 0.1
    ssd_confidence_margin_coef: float = 1.0
    ssd_entropy_temperature: float = 1.0
    legacy_ssd_span_strategy: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.acceptance not in ACCEPTANCE_MODES:
            raise ValueError(f"unknown acceptance {self.acceptance!r}; valid: {', '.join(ACCEPTANCE_MODES)}")
        self.routing()
        self.estimator()

    def routing(self) -> RoutingConfig:
        return RoutingConfig(
            policy=self.do_verify_policy, min_span_length=self.min_ssd_span_length,
            legacy_span_strategy=self.legacy_ssd_span_strategy, score_type=self.do_verify_score_type,
            score_penalty_coef=self.score_penalty_coef, score_threshold=self.do_verify_score_threshold,
            hysteresis_on=self.hysteresis_threshold_on, hysteresis_off=self.hysteresis_threshold_off,
            ucb_beta=self.ucb_beta, ucb_span_length_bins=self.ucb_span_length_bins,
            ucb_block_progress_bins=self.ucb_block_progress_bins, ucb_entropy_bins=self.ucb_entropy_bins,
            ucb_entropy_source=self.ucb_entropy_source,
        )

    def estimator(self) -> EstimatorConfig:
        return EstimatorConfig(
            name=self.token_acceptance_estimator, margin_threshold=self.ssd_confidence_margin_threshold,
            entropy_threshold=self.ssd_entropy_threshold, confidence_power=self.ssd_confidence_power,
            margin_coef=self.ssd_confidence_margin_coef, entropy_temperature=self.ssd_entropy_temperature,
        )


class S2D2Step(BlockStep):
    """Draft -> route -> (2L verify -> accept/recover) -> high-confidence and fallback commits."""

    def __init__(self, cfg: S2D2Config, batch: int, device: torch.device,
                 generator: torch.Generator | None = None) -> None:
        self.cfg = cfg
        self.sampling = cfg.sampling()
        self.schedule = num_transfer_tokens(cfg.block_length, cfg.denoising_steps)
        self.estimator = cfg.estimator()
        self.policy = make_policy(cfg.routing(), batch, device)
        self.generator = generator
        self.decoded_in_block = torch.zeros(batch, dtype=torch.long, device=device)

    def begin_block(self, b: int, masked: Tensor) -> None:
        self.decoded_in_block.zero_()

    def _features(self, probs: Tensor, confidence: Tensor, masked: Tensor, span_member: Tensor,
                  span_length: Tensor, live: Tensor) -> RouteFeatures:
        cfg = self.cfg
        alpha = token_acceptance(probs, confidence, self.estimator)  # [B, L]
        entropy = normalized_entropy(probs)  # [B, L]
        source = span_member if cfg.ucb_entropy_source == "span" else masked
        mean_entropy = (entropy * source).sum(-1) / source.sum(-1).clamp_min(1)
        return RouteFeatures(
            span_length=span_length,
            expected_length=expected_accepted_length(alpha, span_member),
            n_high=(masked & (confidence > cfg.confidence_threshold)).sum(-1),
            n_masked=masked.sum(-1),
            progress=self.decoded_in_block.float() / cfg.block_length,
            mean_entropy=mean_entropy,
            active=live,
            context_length=cfg.block_length,
        )

    def __call__(self, blocks: SDARBlocks, b: int, step: int, blk: Tensor, masked: Tensor,
                 live: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        cfg, recorder = self.cfg, blocks.recorder
        first_masked = masked.int().argmax(-1) if cfg.draft_ver else None
        probs = logits_to_probs(blocks.draft(b, live, first_masked), self.sampling)  # p: [B, L, V]
        drafts, confidence = draft_tokens(probs, self.sampling, self.generator)
        drafts = torch.where(masked, drafts, blk)
        span = first_masked_span(masked)
        verify = self.policy.decide(
            self._features(probs, confidence, masked, span.member, span.length, live)
        ) & live & (span.length > 0)
        recorder.decision(live)

        tokens = drafts.clone()
        kinds = torch.zeros_like(blk)
        widest = int((span.length * verify).max())  # one host sync: skip the verifier when no row routes to it
        if widest > 0:
            self._verify(blocks, b, blk, masked, drafts, probs, confidence, span, verify, widest, tokens, kinds)
        commit = kinds > 0
        if cfg.always_check_high_confidence:
            high = masked & ~commit & (confidence > cfg.confidence_threshold) & live[:, None]
            kinds = torch.where(high, COMMIT_HIGH_CONF, kinds)
            commit |= high
        min_k = torch.clamp(masked.sum(-1), max=self.schedule[step])
        need = (min_k - commit.sum(-1)).clamp_min(0)  # [B]
        entropy = token_entropy(probs) if cfg.remasking_strategy == "entropy_bounded" else None
        fallback = select_transfer(
            cfg.remasking_strategy, confidence, masked & ~commit, need,
            threshold=cfg.confidence_threshold, entropy=entropy, eb_threshold=cfg.eb_threshold,
        ) & (need > 0)[:, None]
        kinds = torch.where(fallback, COMMIT_DIFFUSION, kinds)
        commit |= fallback
        decoded = commit.sum(-1)
        self.policy.update(verify, decoded, live)
        self.decoded_in_block += decoded
        return commit, tokens, kinds

    def _verify(self, blocks: SDARBlocks, b: int, blk: Tensor, masked: Tensor, drafts: Tensor, probs: Tensor,
                confidence: Tensor, span: Span, verify: Tensor, widest: int, tokens: Tensor, kinds: Tensor) -> None:
        """One 2L forward and the acceptance rule; writes commits into `tokens`/`kinds` in place."""
        cfg = self.cfg
        q = logits_to_probs(blocks.verify(b, drafts, verify), self.sampling)  # [B, L, V]
        q_draft = q.gather(-1, drafts.unsqueeze(-1)).squeeze(-1)  # [B, L]
        gamma = cfg.ssd_ratio_tempering_factor
        if cfg.acceptance == "stochastic":
            # The reference draws torch.rand(span_len) per verification; one [B, widest span] draw keeps
            # the same stream for batch 1.
            uniforms = torch.rand(verify.shape[0], widest, generator=self.generator, device=q.device)
            verdict = stochastic_verdict(q_draft, confidence, span.member,
                                         scatter_to_span(uniforms, span, blk.shape[1], fill=1.0), gamma)
        else:
            verdict = greedy_exact_verdict(drafts, q.argmax(-1), span.member,
                                           acceptance_ratio(q_draft, confidence, gamma))
        accepted = verdict.accepted & verify[:, None]
        kinds.masked_fill_(accepted, COMMIT_ACCEPTED)
        recover = verdict.rejected & verify & (cfg.allow_resample or cfg.acceptance == "greedy_exact")
        rows = recover.nonzero().squeeze(-1)  # one host sync; the residual draw happens only on rejection
        if rows.numel():
            at = verdict.reject_index[rows]
            tokens[rows, at] = recover_tokens(q[rows, at], probs[rows, at], cfg.acceptance, self.generator)
            kinds[rows, at] = COMMIT_RESAMPLED
        if cfg.ssd_ratio_threshold >= 0:
            region = masked if cfg.ssd_threshold_all_spans else span.member
            extra = region & (kinds == 0) & verify[:, None] & (verdict.ratio >= cfg.ssd_ratio_threshold)
            kinds.masked_fill_(extra, COMMIT_RATIO)
        blocks.recorder.verification(verify, verdict.n_accepted, recover)


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
