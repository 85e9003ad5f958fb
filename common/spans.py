"""The first contiguous masked span of each row, found without host synchronisation."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass
class Span:
    """The first contiguous run of masked positions per row (ALGORITHM.md §0, `C_t`)."""

    member: Tensor  # [B, L] bool, True inside the span
    start: Tensor  # [B] long, index of the span's first position (0 when the row has no mask)
    length: Tensor  # [B] long, 0 when the row has no mask


def first_masked_span(masked: Tensor) -> Span:
    """masked: [B, L] bool. The span starts at the left-most masked position and extends right while
    positions stay masked: positions after the first unmasked position past the start are excluded."""
    length_l = masked.shape[-1]
    idx = torch.arange(length_l, device=masked.device)
    start = torch.where(masked.any(-1), masked.int().argmax(-1), torch.zeros_like(masked[:, 0], dtype=torch.long))
    after = idx >= start[:, None]  # [B, L]
    broken = torch.cumsum((~masked & after).int(), dim=-1) > 0
    member = masked & after & ~broken
    return Span(member=member, start=start.long(), length=member.sum(-1))


def scatter_to_span(values: Tensor, span: Span, length_l: int, fill: float = 0.0) -> Tensor:
    """Place per-span values [B, S] (S >= every span length) at the span positions of a [B, L] row.

    Used to lay the verifier's uniforms (drawn as `torch.rand(span_len)` in the reference) onto block
    positions: uniform j of a row goes to position start + j.
    """
    rows = values.shape[0]
    idx = torch.arange(length_l, device=values.device).expand(rows, length_l)
    offset = (idx - span.start[:, None]).clamp(0, values.shape[-1] - 1)
    placed = values.gather(-1, offset)
    return torch.where(span.member, placed, torch.full_like(placed, fill))
