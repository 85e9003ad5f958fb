"""Speculative acceptance over the first masked span: the stochastic rule and a greedy-exact rule.

Vocabulary (as in vLLM's rejection sampler): drafts are *accepted* left to right until the first
rejection; the rejected position is *recovered* by a resample from the residual (q - p)+. There is
no bonus token (the verifier has no logit past the span end that is conditioned on all drafts).
Everything is batched over rows; randomness comes in as tensors or a torch.Generator.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from common.sampling import sample_rows

PROB_FLOOR = 1e-12
ACCEPTANCE_MODES = ("stochastic", "greedy_exact")


@dataclass
class Verdict:
    """Outcome of verifying one span per row."""

    accepted: Tensor  # [B, L] bool, the accepted draft prefix of the span
    n_accepted: Tensor  # [B] long
    rejected: Tensor  # [B] bool, a span position was rejected (span not fully accepted)
    first_rejected: Tensor  # [B, L] bool, True at the first rejected position (all False where none)
    ratio: Tensor | None  # [B, L] float, min(1, (q/p)^gamma) (None where the rule did not need it)

    @property
    def reject_index(self) -> Tensor:
        """[B] long, block index of the first rejected position (valid where rejected), derived on
        demand (the residual draw finds the rejected rows' positions itself, for those rows only)."""
        return self.first_rejected.int().argmax(-1)


def acceptance_ratio(q_draft: Tensor, p_draft: Tensor, gamma: float = 1.0) -> Tensor:
    """r_i = min(1, (q_i(x_i) / max(p_i(x_i), 1e-12)) ** gamma); gamma is the ratio tempering factor
    (paper App. A.8). q_draft, p_draft: [B, L]."""
    ratio = q_draft / p_draft.clamp_min(PROB_FLOOR)
    if gamma != 1.0:  # x ** 1 is x exactly: skip the op
        ratio = ratio ** gamma
    return torch.clamp(ratio, max=1.0)


def _prefix_verdict(ok: Tensor, in_span: Tensor, ratio: Tensor | None) -> Verdict:
    """Accept the span prefix before the first position where `ok` is False. ok, in_span: [B, L] bool.

    Counting the span positions that fail (`bad`) left to right: the accepted prefix is the span
    positions before the first failure (running count 0), the first rejection the one where the count
    first reaches 1."""
    bad = in_span > ok  # [B, L]: in the span and not ok
    failures = bad.cumsum(-1)  # [B, L] long
    accepted = in_span & (failures == 0)
    return Verdict(accepted, accepted.sum(-1), bad.any(-1), bad & (failures == 1), ratio)


def stochastic_verdict(
    q_draft: Tensor, p_draft: Tensor, in_span: Tensor, uniforms: Tensor, gamma: float = 1.0
) -> Verdict:
    """Speculative sampling: accept x_i iff u_i < r_i, left to right over the span.

    q_draft, p_draft: [B, L] probabilities of the draft tokens under verifier and drafter.
    uniforms: [B, L] U(0,1) draws, meaningful at span positions.
    """
    ratio = acceptance_ratio(q_draft, p_draft, gamma)
    return _prefix_verdict(uniforms < ratio, in_span, ratio)


def greedy_exact_verdict(drafts: Tensor, q_argmax: Tensor, in_span: Tensor, ratio: Tensor | None = None) -> Verdict:
    """Accept x_i iff it equals argmax q_i. With the correction below, the committed tokens are exactly
    what greedy AR (block size 1) decoding would produce from the same prefix. `ratio` is only carried
    (for the ratio-threshold option); the rule does not read it."""
    return _prefix_verdict(drafts == q_argmax, in_span, ratio)


def residual_distribution(q: Tensor, p: Tensor) -> Tensor:
    """norm((q - p)+) per row, falling back to q where that mass is 0 or not finite. q, p: [N, V]."""
    residual = (q - p).clamp_min(0.0)
    mass = residual.sum(-1, keepdim=True)
    usable = torch.isfinite(mass) & (mass > 0)
    return torch.where(usable, residual / torch.where(usable, mass, 1.0), q)


def recover_tokens(
    q_rows: Tensor, p_rows: Tensor, mode: str, generator: torch.Generator | None = None
) -> Tensor:
    """The token committed at the first rejected position. q_rows, p_rows: [N, V] -> [N] long.

    stochastic: one draw per row from the residual, all N rows in one call, in row order (the
    reference draws one per rejection; with batch 1 this is the same single draw). greedy_exact:
    argmax q.
    """
    if mode == "greedy_exact":
        return q_rows.argmax(-1)
    return sample_rows(residual_distribution(q_rows, p_rows), generator)
