"""Token-acceptance estimators and the expected accepted prefix length K̂ (ALGORITHM.md §3.2).

Score-based routing (§3.3-§3.5) needs a cheap guess of how many span tokens the verifier would
accept, computed from the draft distributions alone, before paying for a verifier forward. Each
estimator maps a draft distribution to ``α_i ∈ [0, 1]``; ``K̂`` chains them as the expected
length of an accepted prefix under independent per-token acceptance.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import Tensor

from common.config import chain_post_init
from common.remasking import token_entropy

ESTIMATORS = (
    "hard_margin_threshold",
    "hard_entropy_threshold",
    "soft_confidence_power",
    "soft_clipped_linear_margin",
    "soft_entropy_negexp",
    "soft_renyi_2_entropy",
)


@dataclass(frozen=True)
class EstimatorConfig:
    """Which estimator computes ``α_i`` and its parameter (ALGORITHM.md §3.2 table).

    Field names are the reference's flags. Defaults follow the SDAR CLI (``ssd_entropy_threshold`` 0.1,
    ``ssd_confidence_power`` 0.8); the
    reference functions use 0.5 and 1.0 (§5.1 item 14), so callers reproducing lm-eval runs of
    the reference must pass those explicitly.
    """

    token_acceptance_estimator: str = field(default="hard_margin_threshold", metadata={"choices": ESTIMATORS})
    ssd_confidence_margin_threshold: float = 0.05
    ssd_entropy_threshold: float = 0.1
    ssd_confidence_power: float = 0.8
    ssd_confidence_margin_coef: float = 1.0
    ssd_entropy_temperature: float = 1.0

    def __post_init__(self) -> None:
        chain_post_init(self, EstimatorConfig)
        if self.token_acceptance_estimator not in ESTIMATORS:
            raise ValueError(
                f"unknown token acceptance estimator {self.token_acceptance_estimator!r}; valid: {', '.join(ESTIMATORS)}"
            )
        for field_name in (
            "ssd_confidence_margin_threshold",
            "ssd_entropy_threshold",
            "ssd_confidence_power",
            "ssd_confidence_margin_coef",
            "ssd_entropy_temperature",
        ):
            if not math.isfinite(getattr(self, field_name)):
                raise ValueError(f"{field_name} must be finite, got {getattr(self, field_name)}")
        for field_name in ("ssd_confidence_power", "ssd_confidence_margin_coef", "ssd_entropy_temperature"):
            if getattr(self, field_name) < 0:
                raise ValueError(
                    f"{field_name} must be >= 0 so that α stays in [0, 1], "
                    f"got {getattr(self, field_name)}"
                )


def normalized_entropy(probs: Tensor) -> Tensor:
    """Entropy divided by ``log V``: ``H̃(p) = −Σ p log p / log V`` (ALGORITHM.md §0).

    Dividing by the vocabulary's maximal entropy puts ``H̃`` in ``[0, 1]`` so thresholds and UCB
    bins (§3.6) are vocabulary independent. A one-token vocabulary has no uncertainty, so it
    gives 0 rather than ``0 / 0``.

    probs: ``[..., V]``. Returns ``[...]`` float32.
    """
    vocab_size = probs.shape[-1]
    entropy = token_entropy(probs)  # [...]
    if vocab_size <= 1:
        return torch.zeros_like(entropy)
    return entropy / math.log(vocab_size)


def _top_margin(probs: Tensor) -> Tensor:
    """``top1 − top2`` of each distribution (``top1`` alone for a one-token vocabulary).

    probs: ``[..., V]`` float32. Returns ``[...]``.
    """
    if probs.shape[-1] < 2:
        return probs[..., 0]
    top2 = torch.topk(probs, k=2, dim=-1).values  # [..., 2]
    return top2[..., 0] - top2[..., 1]


def _entropy_negexp(probs: Tensor, temperature: float) -> Tensor:
    """``exp(−T · H̃(p))`` in four ops. ``Σ p log p = −H`` exactly (negation is exact), so
    ``(Σ p log p / log V) · T`` is bit for bit ``−T · (H / log V)``; the product is <= 0, so the result
    is already in ``[0, 1]`` and needs no clamp. probs: ``[..., V]`` float32. Returns ``[...]``."""
    vocab_size = probs.shape[-1]
    if vocab_size <= 1:
        return torch.ones(probs.shape[:-1], dtype=torch.float32, device=probs.device)
    scaled = torch.special.xlogy(probs, probs).sum(dim=-1) / math.log(vocab_size)  # [...] = −H̃
    if temperature != 1.0:
        scaled = scaled * temperature
    return torch.exp(scaled)


def token_acceptance(probs: Tensor, confidence: Tensor, cfg: EstimatorConfig) -> Tensor:
    """Per-position acceptance estimate ``α_i ∈ [0, 1]`` (ALGORITHM.md §3.2).

    Args:
        probs: ``[B, L, V]`` draft distributions after the family's sampling transform (§0.1).
        confidence: ``[B, L]`` draft confidence ``c_i`` (used by ``soft_confidence_power``).
        cfg: estimator choice and parameters.

    Returns:
        ``[B, L]`` float32; callers restrict it to the span via ``expected_accepted_length``.
    """
    name = cfg.token_acceptance_estimator
    if name == "soft_confidence_power":
        return confidence.float().clamp(0.0, 1.0) ** cfg.ssd_confidence_power
    if probs.dtype != torch.float32:
        probs = probs.float()
    if name == "hard_margin_threshold":
        return (_top_margin(probs) > cfg.ssd_confidence_margin_threshold).float()
    if name == "soft_clipped_linear_margin":
        return (cfg.ssd_confidence_margin_coef * _top_margin(probs)).clamp(0.0, 1.0)
    if name == "hard_entropy_threshold":
        return (normalized_entropy(probs) < cfg.ssd_entropy_threshold).float()
    if name == "soft_entropy_negexp":
        return _entropy_negexp(probs, cfg.ssd_entropy_temperature)
    if name == "soft_renyi_2_entropy":
        return probs.square().sum(dim=-1).clamp(0.0, 1.0)
    raise ValueError(f"unknown token acceptance estimator {name!r}; valid: {', '.join(ESTIMATORS)}")


def expected_accepted_length(alpha: Tensor, in_span: Tensor) -> Tensor:
    """``K̂ = Σ_{k=1}^{|C|} Π_{i≤k} clip(α_i, 0, 1)`` over the span ``C`` (ALGORITHM.md §3.2).

    The product runs over span positions only: positions outside the span enter the running
    product as 1 and are left out of the sum. For the contiguous first masked span this is
    exactly the formula; an empty span gives 0.

    alpha: ``[B, L]``; in_span: ``[B, L]`` bool. Returns ``[B]`` float32.
    """
    if alpha.dtype != torch.float32:
        alpha = alpha.float()
    if in_span.dtype != torch.bool:
        in_span = in_span.bool()
    prefix_prob = torch.where(in_span, alpha.clamp(0.0, 1.0), 1.0).cumprod(dim=-1)  # [B, L]
    return torch.where(in_span, prefix_prob, 0.0).sum(dim=-1)  # [B]
