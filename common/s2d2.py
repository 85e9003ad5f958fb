"""The family-independent half of one S2D2 step: routing features from the draft, and the commits
that a verification yields. A family supplies the draft distribution p and, when a row routes to
verification, the verifier distribution q (2L trick or shifted causal forward); everything else is
here, so no family carries its own copy (ALGORITHM.md §2.1).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

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
from common.config import chain_post_init
from common.routing import OPTIONAL_FEATURES, RouteFeatures, RoutingConfig, make_policy
from common.sampling import SamplingConfig, logits_to_probs
from common.spans import Span, first_masked_span, span_offsets
from common.stats import (
    COMMIT_ACCEPTED,
    COMMIT_DIFFUSION,
    COMMIT_HIGH_CONF,
    COMMIT_NONE,
    COMMIT_RATIO,
    COMMIT_RESAMPLED,
    DecodeRecorder,
)


@dataclass(frozen=True)
class VerifyConfig:
    """How a verified span turns into commits. Field names are the reference's flags."""

    acceptance: str = field(default="stochastic", metadata={"choices": ACCEPTANCE_MODES,
                                                            "help": "speculative-sampling rule, or argmax match"})
    allow_resample: bool = field(default=True, metadata={"help": "resample the first rejected position from (q-p)+; "
                                                                  "off: leave it masked for the fallback rule"})
    ssd_ratio_tempering_factor: float = field(default=1.0, metadata={"help": "gamma in min(1, (q/p)^gamma)"})
    ssd_ratio_threshold: float = field(default=-1.0, metadata={"help": ">= 0: also commit drafts with ratio >= it"})
    ssd_threshold_all_spans: bool = field(default=False, metadata={"help": "ratio threshold over all masked positions"})

    def __post_init__(self) -> None:
        chain_post_init(self, VerifyConfig)
        if self.acceptance not in ACCEPTANCE_MODES:
            raise ValueError(f"unknown acceptance {self.acceptance!r}; valid: {', '.join(ACCEPTANCE_MODES)}")
        if self.ssd_ratio_tempering_factor <= 0:
            raise ValueError(f"ssd_ratio_tempering_factor must be > 0, got {self.ssd_ratio_tempering_factor}")


@dataclass(frozen=True)
class S2D2Flags(EstimatorConfig, RoutingConfig, VerifyConfig):
    """Every S2D2 option the families share, under the reference's flag names (ALGORITHM.md §4.1-4.2):
    the verification, routing and estimator configs of `common/`, each field written once there.

    A family's S2D2 config is `class S2D2Config(S2D2Flags, FamilyConfig)`: its fields come after the
    family's own, the CLI and the function share these defaults, and the config itself is what the
    routing policy, the estimator and the acceptance rule read. Where the reference's CLI and function
    defaults differ, the CLI's (the paper's runs) are used.
    """


def routing_features(probs: Tensor, confidence: Tensor, masked: Tensor, span: Span, live: Tensor,
                     progress: Tensor | Callable[[], Tensor], context_length: int, confidence_threshold: float,
                     estimator: EstimatorConfig, entropy_source: str,
                     needed: frozenset[str] = frozenset(OPTIONAL_FEATURES)) -> RouteFeatures:
    """Features of one region (block or sub-block) for the routing policy; of the optional ones, only
    those in `needed` (the policy's `reads`) are computed.

    probs: [B, L, V] draft distribution; confidence: [B, L]; masked: [B, L]; progress: [B] in [0, 1],
    or a function computing it (called only when the policy reads it).
    `n_high` counts masked positions above the family's confidence threshold (the dynamic score's
    penalty, ALGORITHM.md §3.3); the UCB entropy is averaged over the span or all masked positions.
    """
    features = RouteFeatures(span_length=span.length, active=live, context_length=context_length)
    if "progress" in needed:
        features.progress = progress() if callable(progress) else progress
    if "expected_length" in needed:
        alpha = token_acceptance(probs, confidence, estimator)  # [B, L]
        features.expected_length = expected_accepted_length(alpha, span.member)
    if "n_high" in needed:
        features.n_high = (masked & (confidence > confidence_threshold)).sum(-1)
    if "n_masked" in needed:
        features.n_masked = masked.sum(-1)
    if "mean_entropy" in needed:
        source = span.member if entropy_source == "span" else masked
        features.mean_entropy = (normalized_entropy(probs) * source).sum(-1) / source.sum(-1).clamp_min(1)
    return features


@dataclass
class ResidualDraw:
    """The recovered tokens of a stochastic verification, not drawn yet: the draw needs the number of
    rejected rows on the host, and a caller that reads other counts after the step reads this one with
    them (`S2D2Step(..., count_rows_left=True)`), saving a host sync. Drawing later changes nothing as
    long as no random draw comes in between (the baseline top-up and the policy update draw none).

    first_rejected: [R, L] bool, True at each row's first rejected position (no True: accepted);
    q, p: [R, L, V] verifier and draft distributions; rows: [R] long, the batch rows of the R rows
    (None: the identity)."""

    first_rejected: Tensor
    q: Tensor
    p: Tensor
    mode: str
    rows: Tensor | None = None

    @property
    def rejected(self) -> Tensor:
        """[R] bool: rows whose span was rejected."""
        return self.first_rejected.any(-1)

    def place(self, tokens: Tensor, n_rejected: int, generator: torch.Generator | None = None) -> Tensor:
        """tokens [B, L] with the draws of the `n_rejected` rejected rows (host int) placed at their
        rejected positions: one draw per rejected row, all in one call, in row order."""
        if not n_rejected:
            return tokens
        hit = self.rejected  # [R]
        rejected = (torch.arange(n_rejected, device=hit.device) if n_rejected == hit.numel()  # [N] rows, in order
                    else torch.argsort(hit.to(torch.uint8), descending=True, stable=True)[:n_rejected])
        at = self.first_rejected[rejected].int().argmax(-1)  # [N]
        drawn = recover_tokens(self.q[rejected, at], self.p[rejected, at], self.mode, generator)  # [N]
        return tokens.index_put((rejected if self.rows is None else self.rows[rejected], at), drawn)


def verify_spans(q: Tensor, probs: Tensor, drafts: Tensor, confidence: Tensor, masked: Tensor, span: Span,
                 verify: Tensor | None, widest: int, cfg: VerifyConfig,
                 generator: torch.Generator | None = None
                 ) -> tuple[Tensor, Tensor, Verdict, Tensor, ResidualDraw | None]:
    """`verify_commits` without its residual draw: returns (tokens [B, L] = drafts with greedy_exact's
    recovered tokens placed, kinds, verdict, recovered, the pending residual draw or None). No host sync;
    the rejected rows' tokens are what `ResidualDraw.place` writes."""
    greedy = cfg.acceptance == "greedy_exact"
    thresholded = cfg.ssd_ratio_threshold >= 0
    q_draft = q.gather(-1, drafts.unsqueeze(-1)).squeeze(-1) if not greedy or thresholded else None  # [B, L]
    if greedy:
        q_argmax = q.argmax(-1)  # [B, L]
        ratio = acceptance_ratio(q_draft, confidence, cfg.ssd_ratio_tempering_factor) if thresholded else None
        verdict = greedy_exact_verdict(drafts, q_argmax, span.member, ratio)
    else:
        uniforms = torch.rand(drafts.shape[0], widest, generator=generator, device=q.device)  # [B, widest]
        # Uniform j of a row at its span's j-th position; positions outside the span are never read.
        placed = uniforms.gather(-1, span_offsets(span, widest))  # [B, L]
        verdict = stochastic_verdict(q_draft, confidence, span.member, placed, cfg.ssd_ratio_tempering_factor)
    accepted, rejected_at, rejected = verdict.accepted, verdict.first_rejected, verdict.rejected
    if verify is not None:
        accepted, rejected_at, rejected = accepted & verify[:, None], rejected_at & verify[:, None], rejected & verify
    tokens, residual = drafts, None
    if greedy or cfg.allow_resample:
        recovered = rejected
        kinds = torch.where(accepted, COMMIT_ACCEPTED, torch.where(rejected_at, COMMIT_RESAMPLED, COMMIT_NONE))
        if greedy:
            tokens = torch.where(rejected_at, q_argmax, drafts)
        else:
            residual = ResidualDraw(rejected_at, q, probs, cfg.acceptance)
    else:
        recovered = torch.zeros_like(rejected)
        kinds = torch.where(accepted, COMMIT_ACCEPTED, COMMIT_NONE)
    if thresholded:
        region = masked if cfg.ssd_threshold_all_spans else span.member
        extra = region & (kinds == COMMIT_NONE) & (verdict.ratio >= cfg.ssd_ratio_threshold)
        if verify is not None:
            extra &= verify[:, None]
        kinds = kinds.masked_fill(extra, COMMIT_RATIO)
    return tokens, kinds, verdict, recovered, residual


def verify_commits(q: Tensor, probs: Tensor, drafts: Tensor, confidence: Tensor, masked: Tensor, span: Span,
                   verify: Tensor | None, widest: int, cfg: VerifyConfig,
                   generator: torch.Generator | None = None) -> tuple[Tensor, Tensor, Verdict, Tensor]:
    """Acceptance over the first masked span of the rows in `verify` ([B] bool; None: every row).

    q, probs: [B, L, V] verifier and draft distributions (the same sampling transform); drafts,
    confidence: [B, L] (confidence = p at the draft); widest: the longest verified span (host int, used
    for the reference-order uniform draw). Returns (tokens [B, L] = drafts with recovered tokens placed,
    kinds [B, L] COMMIT_* codes of this verification's commits, the verdict, recovered [B] bool).
    Randomness, in the reference's order: one `torch.rand` over the span, then one multinomial draw per
    row whose span was rejected, all in one call (none drawn when every row accepted everything).
    Host syncs: none for greedy_exact (its recovered token is argmax q, placed on device); one for the
    stochastic rule with resampling (the draw needs the number of rejected rows).
    """
    tokens, kinds, verdict, recovered, residual = verify_spans(q, probs, drafts, confidence, masked, span, verify,
                                                               widest, cfg, generator)
    if residual is not None:
        tokens = residual.place(tokens, int(recovered.sum()), generator)  # one host sync
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


class TopUpRule(Protocol):
    """A family's baseline commit rule as S2D2Step applies it after the verified span. `threshold` is
    the family's confidence threshold (the routing features' `N_hi` counts masked drafts above it)."""

    threshold: float

    def apply(self, kinds: Tensor, *, masked: Tensor, confidence: Tensor, probs: Tensor, min_k: Tensor,
              live: Tensor, routed: Tensor) -> Tensor:
        """kinds: [B, L] COMMIT_* codes committed so far this step (by the verification of the `routed`
        rows, [B] bool); returns the updated kinds. A row that did not route must get exactly the
        family's baseline step."""
        ...


@dataclass(frozen=True)
class TopUp:
    """A family's baseline commit rule, applied after the verified span (`top_up`): the remasking
    strategy, its confidence threshold (also the routing features' `N_hi` threshold), the entropy budget
    of `entropy_bounded`, and whether every masked draft above the threshold is committed as well.
    The same rule for every row (routed or not) and one minimum `min_k` per row (SDAR, Fast-dLLM v2);
    a family with a per-block rule supplies its own `TopUpRule`."""

    strategy: str
    threshold: float
    eb_threshold: float = 0.0
    high_confidence: bool = False

    def apply(self, kinds: Tensor, *, masked: Tensor, confidence: Tensor, probs: Tensor, min_k: Tensor,
              live: Tensor, routed: Tensor) -> Tensor:
        return top_up(kinds, masked, confidence, min_k, live, strategy=self.strategy, threshold=self.threshold,
                      probs=probs, eb_threshold=self.eb_threshold, high_confidence=self.high_confidence)

    @property
    def idle_once_met(self) -> bool:
        """A row that already has its `min_k` commits gets nothing more (no high-confidence pass), so
        `S2D2Step` may skip the rule when it knows every row has them."""
        return not self.high_confidence


VerifyFn = Callable[[Tensor, Tensor], Tensor]
"""(drafted tokens [R, L] of the routed rows, their batch indices [R] long) -> verifier logits
[R, L, V]: row i is the AR distribution of position i given the prefix and the drafts left of it (the
2L forward for position-aligned families, a shifted causal forward for shift-aligned ones). The
forward runs over the routed rows only."""


class S2D2Step:
    """One batched S2D2 step, the same for every family (ALGORITHM.md §2.1):

    drafts -> first masked span -> routing features -> policy decision -> (one host sync: the routed
    rows' span lengths) -> verifier forward over the routed rows -> acceptance and recovery -> baseline
    top-up -> policy update. The family supplies the draft distribution, the verifier forward and its
    baseline rule; a step where no row verifies is exactly the family's baseline step.

    The stochastic rule's residual draw needs the number of rejected rows on the host (a second sync).
    With `count_rows_left`, that draw is made last and its count is read together with the number of
    rows that still have masks in the region after the step, left in `rows_left` for the family's loop
    (None after a step that read nothing of it), which then need not read that number itself.
    """

    def __init__(self, flags: S2D2Flags, sampling: SamplingConfig, batch: int, device: torch.device | str,
                 generator: torch.Generator | None = None, count_rows_left: bool = False) -> None:
        self.flags, self.sampling, self.generator = flags, sampling, generator
        self.policy = make_policy(flags, batch, device)
        self.every_row = torch.arange(batch, device=device)  # [B] the verifier's rows when all of them route
        self.count_rows_left = count_rows_left
        self.rows_left: int | None = None  # rows with masks left after the last step, where it was read
        self.routing_reads: list[int] = []  # the host values of `read_with_routing`, this step

    def select(self, keep: Tensor) -> None:
        """The decoder keeps rows `keep` only (`RoutingPolicy.select`)."""
        self.policy.select(keep)
        self.every_row = self.every_row[: keep.numel()]

    def __call__(self, probs: Tensor, drafts: Tensor, confidence: Tensor, current: Tensor, masked: Tensor,
                 live: Tensor, *, progress: Tensor | Callable[[], Tensor], context_length: int, min_k: Tensor,
                 top_up_rule: TopUpRule, verify: VerifyFn, recorder: DecodeRecorder,
                 span_region: Tensor | None = None, min_k_max: int | None = None,
                 read_with_routing: Callable[[Tensor], Tensor] | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """probs: [B, L, V] draft distribution p; drafts, confidence: [B, L]; current: [B, L] tokens of the
        region (masks where undecided; a family that edits decoded tokens passes the region with this
        step's edits written, so the verifier's first half holds them); masked: [B, L]; live: [B];
        progress: [B] decoded fraction of the routing context (or a function computing it, called only
        when the policy reads it); min_k: [B] the baseline's minimum commits this step; span_region:
        [B, L] bool, the routing context inside the region (the span is its first masked span, the
        routing features are its masked positions; default: the whole region); min_k_max: a host-side
        bound on `min_k` where the family knows one (the schedule count): when it is at most 1, every row
        verified and the rule is `idle_once_met`, the top-up is skipped, as every verified span commits
        at least one token (an accepted draft or the recovered one). read_with_routing: a function of the
        routed rows ([B] bool) giving a 1-D long tensor that is read in the routing's host sync; its
        values are in `routing_reads` when `verify` runs (a family's own verifier sizes, say).
        Only masked positions are ever committed here.
        Returns (commit [B, L] bool, tokens [B, L], kinds [B, L] COMMIT_* codes)."""
        self.rows_left = None
        drafts = torch.where(masked, drafts, current)  # [B, L]: the region with every mask drafted
        context = masked if span_region is None else masked & span_region  # [B, L]
        span = first_masked_span(context)
        flags = self.flags
        features = routing_features(probs, confidence, context, span, live, progress, context_length,
                                    top_up_rule.threshold, flags, flags.ucb_entropy_source, self.policy.reads)
        routed = self.policy.decide(features)  # [B]; False for idle rows and empty spans (the policy contract)
        recorder.decision(live)
        lengths = torch.where(routed, span.length, 0)  # [B] each routed row's span length
        if read_with_routing is not None:
            values = torch.cat([lengths, read_with_routing(routed)]).tolist()  # one host sync for both
            lengths, self.routing_reads = values[: routed.shape[0]], values[routed.shape[0]:]
        else:
            lengths = lengths.tolist()  # one host sync
        widest = max(lengths)
        if widest:  # the verifier runs over the routed rows only
            n_routed = len(lengths) - lengths.count(0)
            every = n_routed == len(lengths)
            idx = (self.every_row if every  # [R] routed rows, in order
                   else torch.argsort(routed.to(torch.uint8), descending=True, stable=True)[:n_routed])

            def rows(t: Tensor) -> Tensor:
                return t if every else t[idx]

            q = logits_to_probs(verify(rows(drafts), idx), self.sampling)  # [R, L, V]
            sub_span = Span(member=rows(span.member), length=rows(span.length))
            sub_tokens, sub_kinds, verdict, recovered, residual = verify_spans(
                q, rows(probs), rows(drafts), rows(confidence), rows(masked), sub_span, None, widest, flags,
                self.generator)
            if residual is not None and not self.count_rows_left:  # draw now: one host sync
                sub_tokens, residual = residual.place(sub_tokens, int(recovered.sum()), self.generator), None
            elif residual is not None and not every:
                residual.rows = idx
            if every:
                tokens, kinds = sub_tokens, sub_kinds
            else:
                tokens = drafts.index_copy(0, idx, sub_tokens)
                kinds = torch.zeros_like(current).index_copy_(0, idx, sub_kinds)
            recorder.verification(idx, verdict.n_accepted, recovered)
        else:
            every, residual = False, None
            tokens, kinds = drafts, torch.zeros_like(current)
        met = (every and min_k_max is not None and min_k_max <= 1 and getattr(top_up_rule, "idle_once_met", False)
               and (flags.acceptance == "greedy_exact" or flags.allow_resample))
        if not met:
            kinds = top_up_rule.apply(kinds, masked=masked, confidence=confidence, probs=probs, min_k=min_k,
                                      live=live, routed=routed)
        commit = kinds > 0
        if self.policy.learns:
            self.policy.update(routed, commit.sum(-1), live)
        if residual is not None:  # one host sync for the draw and the family's loop
            left = (masked > commit).any(-1)  # [B]: a mask not committed now (True > False only)
            n_rejected, self.rows_left = torch.stack([residual.rejected.sum(), left.sum()]).tolist()
            tokens = residual.place(tokens, n_rejected, self.generator)
        return commit, tokens, kinds
