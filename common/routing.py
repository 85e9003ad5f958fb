"""Routing policies: whether an S2D2 step pays for a verifier forward (ALGORITHM.md §3).

Each policy is a small stateful object with two methods (HOUSE-STYLE habit 5): ``decide`` maps
per-row features of the current step to a verify flag, ``update`` feeds back what the step
achieved. Policies know nothing about model families: decoders compute ``RouteFeatures`` (span
length, K̂, confidence counts, progress, entropy) and pass them in. All state lives in tensors
on the decoder's device and every operation is batched over rows, so routing never forces a
host synchronisation (the reference syncs dozens of times per step, §5.1 item 2).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor

from common.config import chain_post_init

ROUTING_POLICIES = (
    "mask_span_length",
    "score_threshold",
    "score_hysteresis",
    "contextual_bandit_ucb",
)
SCORE_TYPES = ("difference_static", "difference_dynamic")
UCB_ENTROPY_SOURCES = ("span", "masked")


@dataclass(frozen=True)
class RoutingConfig:
    """Routing policy choice and parameters (ALGORITHM.md §3.1-§3.6).

    Field names are the reference's flags, so a family's S2D2 config inherits them unchanged (one
    default per flag). Validation is pure Python so decoders can check a configuration before
    loading a model.
    ``ucb_entropy_source`` is consumed by the decoders (they compute ``mean_entropy`` over the
    span or over all masked positions); it is validated here so a typo fails early.
    """

    do_verify_policy: str = field(default="mask_span_length", metadata={"choices": ROUTING_POLICIES})
    min_ssd_span_length: int = field(default=1, metadata={"bounds": (1, None)})
    legacy_ssd_span_strategy: bool = False
    do_verify_score_type: str = field(default="difference_dynamic", metadata={"choices": SCORE_TYPES})
    score_penalty_coef: float = 2.0
    do_verify_score_threshold: float = 0.0
    hysteresis_threshold_on: float = 0.0
    hysteresis_threshold_off: float = -1.0
    ucb_beta: float = field(default=1.0, metadata={"bounds": (0.0, None)})
    ucb_span_length_bins: int = field(default=2, metadata={"bounds": (1, None)})
    ucb_block_progress_bins: int = field(default=2, metadata={"bounds": (1, None)})
    ucb_entropy_bins: int = field(default=2, metadata={"bounds": (1, None)})
    ucb_entropy_source: str = field(default="span", metadata={"choices": UCB_ENTROPY_SOURCES})

    def __post_init__(self) -> None:
        chain_post_init(self, RoutingConfig)
        if self.do_verify_policy not in ROUTING_POLICIES:
            raise ValueError(
                f"unknown routing policy {self.do_verify_policy!r}; valid: {', '.join(ROUTING_POLICIES)}"
            )
        if self.do_verify_score_type not in SCORE_TYPES:
            raise ValueError(
                f"unknown score type {self.do_verify_score_type!r}; valid: {', '.join(SCORE_TYPES)}"
            )
        if self.ucb_entropy_source not in UCB_ENTROPY_SOURCES:
            raise ValueError(
                f"unknown ucb_entropy_source {self.ucb_entropy_source!r}; "
                f"valid: {', '.join(UCB_ENTROPY_SOURCES)}"
            )
        if not self.hysteresis_threshold_on > self.hysteresis_threshold_off:
            raise ValueError(
                "hysteresis_threshold_on must be > hysteresis_threshold_off, got "
                f"on={self.hysteresis_threshold_on}, off={self.hysteresis_threshold_off}"
            )
        if self.min_ssd_span_length < 1:
            raise ValueError(f"min_ssd_span_length must be >= 1, got {self.min_ssd_span_length}")
        for field_name in ("ucb_span_length_bins", "ucb_block_progress_bins", "ucb_entropy_bins"):
            if getattr(self, field_name) < 1:
                raise ValueError(f"{field_name} must be >= 1, got {getattr(self, field_name)}")
        if not (math.isfinite(self.ucb_beta) and self.ucb_beta >= 0):
            raise ValueError(f"ucb_beta must be finite and >= 0, got {self.ucb_beta}")


@dataclass
class RouteFeatures:
    """What a decoder knows about each row when it must decide (all tensors ``[B]``). The optional
    ones are None unless the policy reads them (``RoutingPolicy.reads``): each costs work per step.

    span_length: long, ``|C|`` of the first contiguous masked span (0 when none).
    progress: float in ``[0, 1]``, ``u / L_ctx`` (§3.6).
    expected_length: float, ``K̂`` over the span (§3.2, ``expected_accepted_length``).
    n_high: long, masked positions of the block/sub-block with confidence above the family's
        threshold (``N_hi`` of §3.3; also the legacy span rule of §2.3).
    n_masked: long, masked positions of the block/sub-block.
    mean_entropy: float, normalised entropy averaged over ``ucb_entropy_source`` positions.
    active: bool, rows that actually decide this step; inactive rows get False and leave every
        policy state untouched.
    context_length: ``L_ctx``, block length (SDAR) or sub-block length (Fast-dLLM v2).
    """

    span_length: Tensor
    active: Tensor
    context_length: int
    progress: Tensor | None = None
    expected_length: Tensor | None = None
    n_high: Tensor | None = None
    n_masked: Tensor | None = None
    mean_entropy: Tensor | None = None


OPTIONAL_FEATURES = ("progress", "expected_length", "n_high", "n_masked", "mean_entropy")
"""Features computed only when the chosen policy reads them (`RoutingPolicy.reads`)."""


def score(features: RouteFeatures, cfg: RoutingConfig) -> Tensor:
    """Verification score ``s`` of ALGORITHM.md §3.3; ``−inf`` where the span is empty.

    ``difference_static``: ``K̂ − c``; ``difference_dynamic``: ``K̂ − c·N_hi``, which charges
    verification for the high-confidence tokens the baseline rule would have committed anyway.

    Returns ``[B]`` float32.
    """
    return torch.where(features.span_length > 0, _raw_score(features, cfg), float("-inf"))  # [B]


def _raw_score(features: RouteFeatures, cfg: RoutingConfig) -> Tensor:
    """``score`` before empty spans are set to ``−inf`` (a caller that masks them out anyway skips that
    op). Returns ``[B]`` float32."""
    k_hat = features.expected_length  # [B]
    if k_hat.dtype != torch.float32:
        k_hat = k_hat.float()
    if cfg.do_verify_score_type == "difference_static":
        return k_hat - cfg.score_penalty_coef
    return k_hat - cfg.score_penalty_coef * features.n_high.float()


def _bool(t: Tensor) -> Tensor:
    """``t`` as bool, without dispatching a no-op conversion when it already is."""
    return t if t.dtype == torch.bool else t.bool()


def linear_bin(value: Tensor, lo: float, hi: float, n_bins: int) -> Tensor:
    """``min(n−1, max(0, floor((clip(v, lo, hi) − lo) / (hi − lo) · n)))`` (ALGORITHM.md §3.6).

    Degenerate settings (``n ≤ 1`` or ``hi ≤ lo``) map everything to bin 0. The arithmetic is
    float64, the precision of the reference's Python floats, so bin edges agree exactly.

    value: ``[B]``. Returns ``[B]`` long.
    """
    if n_bins <= 1 or hi <= lo:
        return torch.zeros(value.shape, dtype=torch.long, device=value.device)
    clipped = value.double().clamp(lo, hi)  # [B]
    idx = torch.floor((clipped - lo) / (hi - lo) * n_bins).long()  # [B]
    return idx.clamp(0, n_bins - 1)


def ucb_bucket(
    span_length: Tensor,
    progress: Tensor,
    mean_entropy: Tensor,
    *,
    context_length: int,
    span_bins: int,
    progress_bins: int,
    entropy_bins: int,
) -> Tensor:
    """Context bucket of the UCB bandit (ALGORITHM.md §3.6).

    Span length is binned over ``[1, L_ctx]``, progress and mean normalised entropy over
    ``[0, 1]``; the bucket is ``(span_bin·Np + prog_bin)·Ne + ent_bin``.

    span_length, progress, mean_entropy: ``[B]``. Returns ``[B]`` long in
    ``[0, span_bins·progress_bins·entropy_bins)``.
    """
    span_bin = linear_bin(span_length, 1.0, float(max(1, context_length)), span_bins)  # [B]
    prog_bin = linear_bin(progress, 0.0, 1.0, progress_bins)  # [B]
    ent_bin = linear_bin(mean_entropy, 0.0, 1.0, entropy_bins)  # [B]
    return (span_bin * progress_bins + prog_bin) * entropy_bins + ent_bin


class RoutingPolicy:
    """Two-method routing interface; one object per generate call (state spans its blocks)."""

    learns = False
    """Whether ``update`` does anything: a decoder skips computing its arguments when it does not."""

    def __init__(self, cfg: RoutingConfig, batch_size: int, device: torch.device | str) -> None:
        self.cfg = cfg
        self.batch_size = batch_size
        self.device = torch.device(device)

    @property
    def reads(self) -> frozenset[str]:
        """The optional ``RouteFeatures`` this policy reads (the decoder computes only those)."""
        return frozenset()

    def decide(self, f: RouteFeatures) -> Tensor:
        """``[B]`` bool: verify this step. Always False for inactive rows and empty spans."""
        raise NotImplementedError

    def update(self, verified: Tensor, decoded: Tensor, active: Tensor) -> None:
        """Feed back the step outcome (``[B]`` bool, ``[B]`` long, ``[B]`` bool); default no-op."""
        return None

    def select(self, keep: Tensor) -> None:
        """Keep the state of rows ``keep`` only (``[K]`` long indices): the decoder dropped the others.
        Every per-row state tensor (first dimension = batch) is indexed."""
        for name, value in vars(self).items():
            if isinstance(value, Tensor) and value.dim() and value.shape[0] == self.batch_size:
                setattr(self, name, value[keep])
        self.batch_size = int(keep.numel())


_POLICY_REGISTRY: dict[str, type[RoutingPolicy]] = {}


def register_policy(name: str) -> Callable[[type[RoutingPolicy]], type[RoutingPolicy]]:
    """Class decorator adding a policy to the name registry used by ``make_policy``."""

    def add(cls: type[RoutingPolicy]) -> type[RoutingPolicy]:
        if name in _POLICY_REGISTRY:
            raise ValueError(f"routing policy {name!r} registered twice")
        _POLICY_REGISTRY[name] = cls
        return cls

    return add


def make_policy(
    cfg: RoutingConfig, batch_size: int, device: torch.device | str = "cpu"
) -> RoutingPolicy:
    """Fresh policy (fresh state) for one generate call over ``batch_size`` rows."""
    if cfg.do_verify_policy not in _POLICY_REGISTRY:
        raise ValueError(
            f"unknown routing policy {cfg.do_verify_policy!r}; valid: {', '.join(sorted(_POLICY_REGISTRY))}"
        )
    return _POLICY_REGISTRY[cfg.do_verify_policy](cfg, batch_size, device)


@register_policy("mask_span_length")
class MaskSpanLengthPolicy(RoutingPolicy):
    """Verify iff ``|C| ≥ τ_span`` (ALGORITHM.md §3.1); stateless.

    With ``legacy_span_strategy`` (§2.3) a short span is skipped only when the block already
    has ``N_hi ≥ min(τ_span, #masked)`` high-confidence positions to commit instead; otherwise
    it is verified anyway. An empty span is never verified.
    """

    @property
    def reads(self) -> frozenset[str]:
        return frozenset({"n_high", "n_masked"} if self.cfg.legacy_ssd_span_strategy else ())

    def decide(self, f: RouteFeatures) -> Tensor:
        long_enough = f.span_length >= self.cfg.min_ssd_span_length  # [B]
        if self.cfg.legacy_ssd_span_strategy:
            enough_high = f.n_high >= f.n_masked.clamp(max=self.cfg.min_ssd_span_length)  # [B]
            long_enough = long_enough | ~enough_high
        return long_enough & (f.span_length > 0) & _bool(f.active)


def score_reads(cfg: RoutingConfig) -> frozenset[str]:
    """The features ``score`` reads: ``K̂``, and ``N_hi`` for the dynamic score."""
    return frozenset({"expected_length", "n_high"} if cfg.do_verify_score_type == "difference_dynamic"
                     else {"expected_length"})


@register_policy("score_threshold")
class ScoreThresholdPolicy(RoutingPolicy):
    """Verify iff ``s ≥ τ_score`` (ALGORITHM.md §3.4); stateless."""

    @property
    def reads(self) -> frozenset[str]:
        return score_reads(self.cfg)

    def decide(self, f: RouteFeatures) -> Tensor:
        # An empty span scores −inf (never verified): the span test below stands for it.
        verify = _raw_score(f, self.cfg) >= self.cfg.do_verify_score_threshold  # [B]
        return verify & (f.span_length > 0) & _bool(f.active)


@register_policy("score_hysteresis")
class ScoreHysteresisPolicy(RoutingPolicy):
    """Two-threshold switch on the score (ALGORITHM.md §3.5).

    Per-row state ``on`` starts False and persists for the whole generate call. When on, keep
    verifying unless ``s < τ_off`` (then switch off and skip this step). When off, switch on and
    verify iff ``s > τ_on``: strict, as in all three reference families (the paper writes
    ``≥``). An empty span scores ``−inf``, which switches an "on" row off, as the reference's
    LLaDA2 post-steps do; it is never verified even if the state stays on (``τ_off = −inf``).
    """

    def __init__(self, cfg: RoutingConfig, batch_size: int, device: torch.device | str) -> None:
        super().__init__(cfg, batch_size, device)
        self.on = torch.zeros(batch_size, dtype=torch.bool, device=self.device)  # [B]

    @property
    def reads(self) -> frozenset[str]:
        return score_reads(self.cfg)

    def decide(self, f: RouteFeatures) -> Tensor:
        s = score(f, self.cfg)  # [B]
        stay_on = ~(s < self.cfg.hysteresis_threshold_off)  # [B]
        switch_on = s > self.cfg.hysteresis_threshold_on  # [B]
        verify = torch.where(self.on, stay_on, switch_on)  # [B]
        active = _bool(f.active)
        self.on.copy_(torch.where(active, verify, self.on))
        return verify & (f.span_length > 0) & active


@register_policy("contextual_bandit_ucb")
class ContextualBanditUCBPolicy(RoutingPolicy):
    """Two-armed UCB1 bandit per context bucket (ALGORITHM.md §3.6).

    Arms: 0 = skip verification, 1 = verify. Each row owns counts ``n[a][b]``, reward sums and a
    decision counter ``t`` (incremented before scoring, so the first decision has ``ln t = 0``).
    An untried arm scores ``+inf`` and ties go to verify, so verify is tried first in every
    bucket. The reward of a step is tokens committed per forward: ``decoded / cost`` with cost 2
    when verified (draft + verifier) and 1 otherwise. Counts and sums are float64/long to match
    the reference's Python arithmetic at tie boundaries.
    """

    learns = True

    def __init__(self, cfg: RoutingConfig, batch_size: int, device: torch.device | str) -> None:
        super().__init__(cfg, batch_size, device)
        self.n_buckets = (
            cfg.ucb_span_length_bins * cfg.ucb_block_progress_bins * cfg.ucb_entropy_bins
        )
        shape = (batch_size, 2, self.n_buckets)
        self.count = torch.zeros(shape, dtype=torch.long, device=self.device)  # [B, 2, NB]
        self.reward_sum = torch.zeros(shape, dtype=torch.float64, device=self.device)  # [B, 2, NB]
        self.t = torch.zeros(batch_size, dtype=torch.long, device=self.device)  # [B]
        self.last_bucket = torch.zeros(batch_size, dtype=torch.long, device=self.device)  # [B]
        self._decided = False

    @property
    def reads(self) -> frozenset[str]:
        return frozenset({"mean_entropy", "progress"})

    def bucket(self, f: RouteFeatures) -> Tensor:
        """``[B]`` long context bucket of each row for these features."""
        return ucb_bucket(
            f.span_length,
            f.progress,
            f.mean_entropy,
            context_length=f.context_length,
            span_bins=self.cfg.ucb_span_length_bins,
            progress_bins=self.cfg.ucb_block_progress_bins,
            entropy_bins=self.cfg.ucb_entropy_bins,
        )

    def arm_scores(self, bucket: Tensor) -> Tensor:
        """``[B, 2]`` float64 UCB score of (skip, verify) in ``bucket`` at the current ``t``."""
        index = bucket.view(-1, 1, 1).expand(-1, 2, 1)  # [B, 2, 1]
        n = self.count.gather(-1, index).squeeze(-1).double()  # [B, 2]
        total = self.reward_sum.gather(-1, index).squeeze(-1)  # [B, 2]
        n_safe = n.clamp_min(1.0)  # [B, 2]; only read where n > 0
        log_t = torch.log(self.t.clamp_min(1).double()).unsqueeze(-1)  # [B, 1]
        bonus = self.cfg.ucb_beta * torch.sqrt(log_t / n_safe)  # [B, 2]
        bonus = torch.where(log_t > 0, bonus, torch.zeros_like(bonus))
        value = total / n_safe + bonus  # [B, 2]
        return torch.where(n > 0, value, torch.full_like(value, float("inf")))

    def decide(self, f: RouteFeatures) -> Tensor:
        active = f.active.bool()  # [B]
        bucket = self.bucket(f)  # [B]
        self.t.add_(active.long())
        self.last_bucket.copy_(torch.where(active, bucket, self.last_bucket))
        self._decided = True
        ucb = self.arm_scores(bucket)  # [B, 2]
        return (ucb[:, 1] >= ucb[:, 0]) & (f.span_length > 0) & active

    def update(self, verified: Tensor, decoded: Tensor, active: Tensor) -> None:
        """Credit ``decoded / cost`` to the arm taken (``verified``) in the bucket last decided.

        ``active`` must be the mask of the preceding ``decide`` call; inactive rows are unchanged.
        """
        if not self._decided:
            raise RuntimeError("update() called before decide(): no bucket to credit")
        verified = verified.bool()
        weight = active.bool()  # [B]
        cost = torch.where(
            verified,
            torch.full(verified.shape, 2.0, dtype=torch.float64, device=verified.device),
            torch.ones(verified.shape, dtype=torch.float64, device=verified.device),
        )  # [B]
        reward = decoded.double() / cost  # [B]
        slot = (verified.long() * self.n_buckets + self.last_bucket).unsqueeze(-1)  # [B, 1]
        flat_count = self.count.view(self.batch_size, 2 * self.n_buckets)  # [B, 2·NB]
        flat_reward = self.reward_sum.view(self.batch_size, 2 * self.n_buckets)  # [B, 2·NB]
        flat_count.scatter_add_(-1, slot, weight.long().unsqueeze(-1))
        flat_reward.scatter_add_(-1, slot, torch.where(weight, reward, 0.0).unsqueeze(-1))
