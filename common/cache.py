"""Row subsets of a K/V cache, for forwards that run on some rows of a batch only."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

SUBSET_FRACTION = 1.0
"""A forward that only some rows need (a draft after a block's first, which stores nothing) runs over
those rows when some row is not live and they are at most this fraction of the batch (the others'
outputs are never used, so only the work changes, never the tokens). 1.0 (subset whenever a row is
done) measured best on the shipped SDAR and Fast-dLLM v2 tiny models at batch 16 and 64: 0.75 and 0.5
spent equal or more CPU time, the gathered cache rows (`cache_rows`) costing less than the skipped rows.
One knob for every family's decode loop (SDAR, Fast-dLLM v2, LLaDA2)."""


def cache_rows(cache: Any, rows: Tensor) -> Any:
    """A new cache of the same type holding the K/V of batch rows `rows` ([R] long) only, for a
    READ-ONLY forward over those rows (what that forward appends is not written back). Duck-typed on
    transformers' DynamicCache (`key_cache` / `value_cache` lists of [B, H, T, D], `update`)."""
    subset = type(cache)()
    for layer, (keys, values) in enumerate(zip(cache.key_cache, cache.value_cache)):
        # index_select, not keys[rows]: advanced indexing costs ~1.5-4x more on the CPU for these shapes
        subset.update(keys.index_select(0, rows), values.index_select(0, rows), layer)
    return subset


def row_mask(rows: Tensor, batch: int) -> Tensor:
    """[batch] bool, True at the indices `rows` ([R] long, distinct)."""
    if rows.numel() == batch:  # every row: one op
        return torch.ones(batch, dtype=torch.bool, device=rows.device)
    return torch.zeros(batch, dtype=torch.bool, device=rows.device).index_fill_(0, rows, True)


def live_rows(live: Tensor, n_live: int, fraction: float | None = None) -> Tensor | None:
    """The rows a forward that only they need should run over: [R] long indices of the True entries of
    `live` ([B] bool), in order, when some row is not live and at most `fraction` (default:
    `SUBSET_FRACTION`, read at call time) of the batch is; None (run over every row) otherwise. `n_live`
    is their count, already read on the host, so the indices come without a nonzero() sync."""
    batch = live.shape[0]
    fraction = SUBSET_FRACTION if fraction is None else fraction
    if n_live >= batch or n_live > fraction * batch:
        return None
    return torch.argsort((~live).to(torch.uint8), stable=True)[:n_live]


def scatter_rows(part: Tensor, rows: Tensor, batch: int) -> Tensor:
    """[batch, ...]: `part` ([R, ...]) at the indices `rows` ([R] long), zeros elsewhere (outputs of
    rows a subset forward skipped; the caller never reads them)."""
    return part.new_zeros(batch, *part.shape[1:]).index_copy_(0, rows, part)
