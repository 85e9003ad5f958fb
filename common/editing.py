"""Threshold decoding with token editing (LLaDA2.1's self-correction), as pure batched tensor rules.

One iteration over the current block draws a token x̂_i and its probability c_i at EVERY position
(the draft forward sees the whole block), then (ALGORITHM.md §1.3; MODEL-FAMILIES.md §8.1, which
states the reference code's rule and overrides the tech report's):

* mask -> token (M2T, `threshold_fill`): commit every masked position with c_i > τ_mask (strict);
  if fewer than n = min(num_to_transfer, #masked) qualify, commit the n most confident instead;
* token -> token (T2T, `token_edits`): rewrite every *editable* position (a non-mask, non-prompt
  position of the current block, judged on the tokens present at the iteration's start) whose
  newly drawn token differs from the one it holds and has c_i > τ_edit (strict).

Both sets come from the same draw, so a mask filled this iteration is only edited from the next
one on, and earlier blocks are never revisited. Editing is the ONLY rule in `common/` that
overwrites a decoded token: every other commit (remasking strategies, speculative acceptance, the
S2D2 top-up) selects among masked positions only. With τ_edit >= 1 no probability passes the
strict test, so a decoder then never edits (LLaDA2.0, or editing off).
"""

from __future__ import annotations

import torch
from torch import Tensor

from common.remasking import select_transfer


def threshold_fill(confidence: Tensor, masked: Tensor, threshold: float, num_to_transfer: int) -> Tensor:
    """M2T commits: [B, L] bool, a subset of `masked`.

    confidence: [B, L] probability of each position's drawn token; masked: [B, L] bool.
    Every masked position with confidence > threshold when there are at least
    n = min(num_to_transfer, #masked) of them, else the n most confident (ties: lower index first).
    A row without masks commits nothing.
    """
    k = masked.sum(-1).clamp(max=num_to_transfer)  # [B]
    return select_transfer("low_confidence_dynamic", confidence, masked, k, threshold=threshold)


def token_edits(drafts: Tensor, confidence: Tensor, current: Tensor, editable: Tensor, threshold: float) -> Tensor:
    """T2T edits: [B, L] bool, a subset of `editable`.

    drafts: [B, L] tokens drawn this iteration; confidence: [B, L] their probabilities; current:
    [B, L] the tokens at the iteration's start; editable: [B, L] bool, decoded (non-mask) generated
    positions of the current block (never a prompt token, never a mask).
    """
    return editable & (drafts != current) & (confidence > threshold)


def apply_edits(current: Tensor, drafts: Tensor, edits: Tensor) -> Tensor:
    """The block with this iteration's edits written: [B, L] (what the S2D2 verifier's first half and
    the next iteration see at edited positions)."""
    return torch.where(edits, drafts, current)
