"""Row subsets of a K/V cache, for forwards that run on some rows of a batch only."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor


def cache_rows(cache: Any, rows: Tensor) -> Any:
    """A new cache of the same type holding the K/V of batch rows `rows` ([R] long) only, for a
    READ-ONLY forward over those rows (what that forward appends is not written back). Duck-typed on
    transformers' DynamicCache (`key_cache` / `value_cache` lists of [B, H, T, D], `update`)."""
    subset = type(cache)()
    for layer, (keys, values) in enumerate(zip(cache.key_cache, cache.value_cache)):
        subset.update(keys[rows], values[rows], layer)
    return subset


def row_mask(rows: Tensor, batch: int) -> Tensor:
    """[batch] bool, True at the indices `rows`."""
    return torch.zeros(batch, dtype=torch.bool, device=rows.device).index_fill_(0, rows, True)
