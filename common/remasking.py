"""Remasking strategies: which still-masked positions one denoising step commits.

ALGORITHM.md §1.1 defines the four strategies of the SDAR baseline and §2.3 step 8 reuses them as
the S2D2 fallback with a reduced budget ``k_left``. Everything here works on a batch of rows at
once and stays on device: positions are ranked with sorts and cumulative sums, never with Python
loops or ``.item()``.

Two deliberate deviations from the reference (ALGORITHM.md §5.1 items 7 and 8):

* the number of selected positions per row is capped at that row's number of masked positions,
  so an already-decoded token is never overwritten (the reference baseline's top-k could pick
  ``-inf`` entries, i.e. decoded positions);
* ``entropy_bounded`` uses the per-token vocabulary entropy, sorted ascending with a cumulative
  bound (the fix suggested in §5.2), instead of the reference's scalar pseudo-entropy.
"""

from __future__ import annotations

import torch
from torch import Tensor

REMASKING_STRATEGIES = (
    "low_confidence_dynamic",
    "low_confidence_static",
    "sequential",
    "entropy_bounded",
)


def token_entropy(probs: Tensor) -> Tensor:
    """Shannon entropy in nats of each distribution over the last axis, in float32.

    ``xlogy`` defines ``0 · log 0 = 0``, so top-k/top-p filtered distributions (exact zeros)
    give finite entropies without a clamp that would bias them.

    probs: ``[..., V]`` probabilities. Returns ``[...]``.
    """
    probs = probs.float()
    return -torch.special.xlogy(probs, probs).sum(dim=-1)  # [...]


def _order(key: Tensor, masked: Tensor, descending: bool) -> tuple[Tensor, Tensor]:
    """Masked positions first, by ``key`` (descending or ascending), ties lower index first; the
    decoded positions after them. Returns (sorted keys, NaN at decoded positions; permutation), both
    ``[B, L]``.

    Decoded positions get the key NaN, which a stable ascending sort places after every number
    (``±inf`` included), so one sort ranks them last even when a masked key is itself ``-inf``;
    descending order sorts ``-key``. A masked NaN key ties with the decoded ones (a model that emits
    NaN probabilities decodes garbage anyway).

    key: ``[B, L]`` float; masked: ``[B, L]`` bool.
    """
    values = torch.where(masked, -key if descending else key, float("nan"))  # [B, L]
    return torch.sort(values, dim=-1, stable=True)


def _take_first(order: Tensor, count: Tensor, masked: Tensor) -> Tensor:
    """Select the first ``count[b]`` positions of each row's permutation ``order`` (masked positions
    first), never a decoded one: the count is capped at the row's masked positions.

    order: ``[B, L]`` long permutation; count: ``[B]`` long; masked: ``[B, L]`` bool. Returns
    ``[B, L]`` bool.
    """
    rank = torch.argsort(order, dim=-1)  # [B, L]: each position's place in the order (inverse permutation)
    return (rank < count.unsqueeze(-1)) & masked


def _top_by_key(key: Tensor, masked: Tensor, count: Tensor) -> Tensor:
    """The ``count[b]`` masked positions with the largest key, capped at the masked count.

    key: ``[B, L]``; masked: ``[B, L]`` bool; count: ``[B]`` long. Returns ``[B, L]`` bool.
    """
    return _take_first(_order(key, masked, descending=True)[1], count, masked)


def _sequential(masked: Tensor, k: Tensor) -> Tensor:
    """First ``k`` masked positions left to right (ALGORITHM.md §1.1 ``sequential``, §2.3 step 8).

    Ranking by the running count of masked positions equals the reference's contiguous range
    whenever the masks form a suffix, and never reaches a decoded position otherwise.
    """
    return masked & (masked.cumsum(dim=-1) <= k.unsqueeze(-1))  # [B, L]: running count 1..k


def _low_confidence_dynamic(
    confidence: Tensor, masked: Tensor, k: Tensor, threshold: float
) -> Tensor:
    """All masked positions with ``c > threshold`` if there are at least ``k``, else top-``k``.

    ALGORITHM.md §1.1 (strict ``>``, ``confidence_threshold`` default 0.85). With ``k = 0`` the
    high-confidence set is always taken, exactly as the rule reads; a caller that wants a row to
    commit nothing must pass an all-False ``masked`` row.
    """
    high = masked & (confidence > threshold)  # [B, L]
    use_high = high.sum(dim=-1) >= k  # [B]
    return torch.where(use_high.unsqueeze(-1), high, _top_by_key(confidence, masked, k))


def _entropy_bounded(entropy: Tensor, masked: Tensor, k: Tensor, eb_threshold: float) -> Tensor:
    """Lowest-entropy masked positions while their cumulative entropy stays within the bound.

    Masked positions are sorted by per-token entropy ascending; ``n_eb`` counts sorted positions
    whose inclusive cumulative entropy is ``<= eb_threshold``. The row then commits the
    ``max(n_eb, k, 1)`` lowest-entropy masked positions (capped at the masked count).

    Deliberate deviation from the reference (ALGORITHM.md §1.1, §5.1 item 7): taking at least
    the schedule count ``k`` makes the block finish within its step budget, like the dynamic
    strategy, whereas the reference could leave masks after ``S + 1`` iterations (uncommitted
    K/V in the baseline, an IndexError in S2D2). The floor of 1 guarantees progress even when a
    caller passes ``k = 0``.
    """
    if entropy.dtype != torch.float32:
        entropy = entropy.float()
    entropy_sorted, order = _order(entropy, masked, descending=False)  # [B, L], lowest entropy first
    # Decoded positions sort last with NaN entropy: no running sum through them is <= the bound.
    n_eb = (entropy_sorted.cumsum(dim=-1) <= eb_threshold).sum(dim=-1)  # [B]
    count = torch.maximum(n_eb, k).clamp_min(1)  # [B]
    return _take_first(order, count, masked)


def select_transfer(
    strategy: str,
    confidence: Tensor,
    masked: Tensor,
    k: Tensor,
    *,
    threshold: float = 0.85,
    entropy: Tensor | None = None,
    eb_threshold: float = 0.35,
) -> Tensor:
    """Positions to commit this step under ``strategy`` (ALGORITHM.md §1.1; fallback §2.3 step 8).

    The result is always a subset of ``masked`` and, for the top-k style rules, holds at most
    ``min(k, #masked)`` positions per row, so nothing already decoded is ever overwritten.

    Args:
        strategy: one of ``REMASKING_STRATEGIES``.
        confidence: ``[B, L]`` draft confidence ``c_i`` (probability of the drafted token).
        masked: ``[B, L]`` bool, True where the position is still ``[m]``.
        k: ``[B]`` long, per-row budget (schedule count, or ``k_left`` in the S2D2 fallback).
        threshold: confidence threshold of ``low_confidence_dynamic`` (strict ``>``).
        entropy: ``[B, L]`` per-token entropy in nats of the full draft distribution; required
            by ``entropy_bounded`` (see ``token_entropy``).
        eb_threshold: cumulative entropy bound of ``entropy_bounded``.

    Returns:
        ``[B, L]`` bool transfer mask.
    """
    if confidence.shape != masked.shape:
        raise ValueError(
            f"confidence {tuple(confidence.shape)} and masked {tuple(masked.shape)} must match"
        )
    if masked.dtype != torch.bool:
        masked = masked.bool()
    if k.dtype != torch.long or k.device != masked.device:
        k = k.to(device=masked.device, dtype=torch.long)  # [B]
    if strategy == "sequential":
        return _sequential(masked, k)
    if strategy == "low_confidence_static":
        return _top_by_key(confidence, masked, k)
    if strategy == "low_confidence_dynamic":
        return _low_confidence_dynamic(confidence, masked, k, threshold)
    if strategy == "entropy_bounded":
        if entropy is None:
            raise ValueError("entropy_bounded needs the per-token entropy tensor `entropy` [B, L]")
        if entropy.shape != masked.shape:
            raise ValueError(
                f"entropy {tuple(entropy.shape)} and masked {tuple(masked.shape)} must match"
            )
        return _entropy_bounded(entropy, masked, k, eb_threshold)
    raise ValueError(
        f"unknown remasking strategy {strategy!r}; valid: {', '.join(REMASKING_STRATEGIES)}"
    )
