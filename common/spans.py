"""The first contiguous masked span of each row, found without host synchronisation."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass
class Span:
    """The first contiguous run of masked positions per row (ALGORITHM.md §0, `C_t`)."""

    member: Tensor  # [B, L] bool, True inside the span
    length: Tensor  # [B] long, 0 when the row has no mask

    @property
    def start(self) -> Tensor:
        """[B] long, index of the span's first position (0 when the row has no mask). Derived on demand:
        most steps never read it."""
        return self.member.int().argmax(-1)


def first_masked_span(masked: Tensor) -> Span:
    """masked: [B, L] bool. The span starts at the left-most masked position and extends right while
    positions stay masked: positions after the first unmasked position past the start are excluded.

    A masked run starts where a masked position follows an unmasked one (or the row's start); the span
    is the masked positions of the first run (running count of run starts = 1)."""
    before = torch.nn.functional.pad(masked[:, :-1], (1, 0))  # [B, L]: is the position to the left masked
    runs = (masked > before).cumsum(-1)  # [B, L] long: runs started up to here
    member = masked & (runs == 1)
    return Span(member=member, length=member.sum(-1))


def span_offsets(span: Span, width: int) -> Tensor:
    """[B, L] long: each span position's index within its span (0 for the first), clamped to
    [0, width - 1] outside it, so a gather from per-span values [B, width] (S >= every span length) is
    in range everywhere. Lays the verifier's uniforms (drawn as `torch.rand(span_len)` in the reference)
    onto block positions: uniform j of a row goes to position start + j."""
    return (span.member.cumsum(-1) - 1).clamp(0, width - 1)
