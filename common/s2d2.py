"""The family-independent half of one S2D2 step: routing features from the draft, and the commits
that a verification yields. A family supplies the draft distribution p and, when a row routes to
verification, the verifier distribution q (2L trick or shifted causal forward); everything else is
here, so no family carries its own copy (ALGORITHM.md §2.1).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from common.acceptance import (
    ACCEPTANCE_MODES,
    Verdict,
    acceptance_ratio,
    greedy_exact_verdict,
    recover_tokens,
    stochastic_verdict,
)
from common.estimators import EstimatorConfig, expected_accepted_length, normalized_entropy, token_acceptance
from common.remasking import select_transfer, token_entropy
from common.routing import RouteFeatures, RoutingConfig
from common.spans import Span, scatter_to_span
from common.stats import COMMIT_ACCEPTED, COMMIT_DIFFUSION, COMMIT_HIGH_CONF, COMMIT_RATIO, COMMIT_RESAMPLED


@dataclass(frozen=True)
class VerifyConfig:
    """How a verified span turns into commits."""

    acceptance: str = "stochastic"
    allow_resample: bool = True
    gamma: float = 1.0
    ratio_threshold: float = -1.0
    threshold_all_spans: bool = False

    def __post_init__(self) -> None:
        if self.acceptance not in ACCEPTANCE_MODES:
            raise ValueError(f"unknown acceptance {self.acceptance!r}; valid: {', '.join(ACCEPTANCE_MODES)}")
        if self.gamma <= 0:
            raise ValueError(f"ssd_ratio_tempering_factor must be > 0, got {self.gamma}")


@dataclass(frozen=True)
class S2D2Flags:
    """The S2D2 options every family shares, under the reference's flag names (ALGORITHM.md §4.1-4.2).

    A family's S2D2 config is `class S2D2Config(S2D2Flags, FamilyConfig)`: its fields then come after
    the family's own, the CLI and the function share these defaults, and `routing()`, `estimator()`
    and `verification()` build the configs of `common/`. Where the reference's CLI and function
    defaults differ, the CLI's (the paper's runs) are used.
    """

    acceptance: str = field(default="stochastic", metadata={"help": "|".join(ACCEPTANCE_MODES)})
    allow_resample: bool = field(default=True, metadata={"help": "resample the first rejected position from (q-p)+; "
                                                                  "off: leave it masked for the fallback rule"})
    min_ssd_span_length: int = 1
    ssd_ratio_tempering_factor: float = field(default=1.0, metadata={"help": "gamma in min(1, (q/p)^gamma)"})
    ssd_ratio_threshold: float = field(default=-1.0, metadata={"help": ">= 0: also commit drafts with ratio >= it"})
    ssd_threshold_all_spans: bool = field(default=False, metadata={"help": "ratio threshold over all masked positions"})
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
        parent = super()
        if hasattr(parent, "__post_init__"):
            parent.__post_init__()  # the family config's own checks
        self.verification()
        self.routing()
        self.estimator()

    def verification(self) -> VerifyConfig:
        return VerifyConfig(
            acceptance=self.acceptance, allow_resample=self.allow_resample, gamma=self.ssd_ratio_tempering_factor,
            ratio_threshold=self.ssd_ratio_threshold, threshold_all_spans=self.ssd_threshold_all_spans,
        )

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


def routing_features(probs: Tensor, confidence: Tensor, masked: Tensor, span: Span, live: Tensor,
                     progress: Tensor, context_length: int, confidence_threshold: float,
                     estimator: EstimatorConfig, entropy_source: str) -> RouteFeatures:
    """Features of one region (block or sub-block) for the routing policy.

    probs: [B, L, V] draft distribution; confidence: [B, L]; masked: [B, L]; progress: [B] in [0, 1].
    `n_high` counts masked positions above the family's confidence threshold (the dynamic score's
    penalty, ALGORITHM.md §3.3); the UCB entropy is averaged over the span or all masked positions.
    """
    alpha = token_acceptance(probs, confidence, estimator)  # [B, L]
    entropy = normalized_entropy(probs)  # [B, L]
    source = span.member if entropy_source == "span" else masked
    mean_entropy = (entropy * source).sum(-1) / source.sum(-1).clamp_min(1)
    return RouteFeatures(
        span_length=span.length,
        expected_length=expected_accepted_length(alpha, span.member),
        n_high=(masked & (confidence > confidence_threshold)).sum(-1),
        n_masked=masked.sum(-1),
        progress=progress,
        mean_entropy=mean_entropy,
        active=live,
        context_length=context_length,
    )


def verify_commits(q: Tensor, probs: Tensor, drafts: Tensor, confidence: Tensor, masked: Tensor, span: Span,
                   verify: Tensor, widest: int, cfg: VerifyConfig,
                   generator: torch.Generator | None = None) -> tuple[Tensor, Tensor, Verdict, Tensor]:
    """Acceptance over the first masked span of the rows in `verify` ([B] bool).

    q, probs: [B, L, V] verifier and draft distributions (the same sampling transform); drafts,
    confidence: [B, L] (confidence = p at the draft); widest: the longest verified span (host int, used
    for the reference-order uniform draw). Returns (tokens [B, L] = drafts with recovered tokens placed,
    kinds [B, L] COMMIT_* codes of this verification's commits, the verdict, recovered [B] bool).
    Randomness, in the reference's order: one `torch.rand` over the span, then one multinomial over the
    rows whose span was rejected (none drawn when every row accepted everything).
    """
    q_draft = q.gather(-1, drafts.unsqueeze(-1)).squeeze(-1)  # [B, L]
    if cfg.acceptance == "stochastic":
        uniforms = torch.rand(verify.shape[0], widest, generator=generator, device=q.device)
        verdict = stochastic_verdict(q_draft, confidence, span.member,
                                     scatter_to_span(uniforms, span, drafts.shape[1], fill=1.0), cfg.gamma)
    else:
        verdict = greedy_exact_verdict(drafts, q.argmax(-1), span.member,
                                       acceptance_ratio(q_draft, confidence, cfg.gamma))
    tokens = drafts.clone()
    kinds = torch.zeros_like(drafts).masked_fill(verdict.accepted & verify[:, None], COMMIT_ACCEPTED)
    recovered = verdict.rejected & verify & (cfg.allow_resample or cfg.acceptance == "greedy_exact")
    rows = recovered.nonzero().squeeze(-1)  # one host sync; the residual draw happens only on rejection
    if rows.numel():
        at = verdict.reject_index[rows]
        tokens[rows, at] = recover_tokens(q[rows, at], probs[rows, at], cfg.acceptance, generator)
        kinds[rows, at] = COMMIT_RESAMPLED
    if cfg.ratio_threshold >= 0:
        region = masked if cfg.threshold_all_spans else span.member
        extra = region & (kinds == 0) & verify[:, None] & (verdict.ratio >= cfg.ratio_threshold)
        kinds.masked_fill_(extra, COMMIT_RATIO)
    return tokens, kinds, verdict, recovered


def top_up(kinds: Tensor, masked: Tensor, confidence: Tensor, min_k: Tensor, live: Tensor, *, strategy: str,
           threshold: float, probs: Tensor, eb_threshold: float, high_confidence: bool) -> Tensor:
    """Commits beyond the verified span (ALGORITHM.md §2.3 steps 7-8).

    kinds: [B, L] COMMIT_* codes committed so far this step; min_k: [B] the step's minimum commit count.
    With `high_confidence`, every remaining masked position with confidence > threshold is committed
    too. Then, where fewer than min_k were committed, the remasking strategy picks the rest among the
    remaining masked positions (never a decoded one). A step that verifies nothing is therefore exactly
    the family's baseline step. Returns the updated kinds.
    """
    if high_confidence:
        high = masked & (kinds == 0) & (confidence > threshold) & live[:, None]
        kinds = torch.where(high, COMMIT_HIGH_CONF, kinds)
    need = (min_k - (kinds > 0).sum(-1)).clamp_min(0)  # [B]
    entropy = token_entropy(probs) if strategy == "entropy_bounded" else None
    fallback = select_transfer(strategy, confidence, masked & (kinds == 0), need, threshold=threshold,
                               entropy=entropy, eb_threshold=eb_threshold) & (need > 0)[:, None]
    return torch.where(fallback, COMMIT_DIFFUSION, kinds)
