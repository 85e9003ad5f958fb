"""Row subsets of a K/V cache, for forwards that run on some rows of a batch only, and a cache whose rows
each write at their own columns (`ColumnCache`), for forwards whose rows start at different columns."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from transformers import DynamicCache

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


class ColumnCache(DynamicCache):
    """A K/V cache indexed by sequence column, where each batch row writes at its own columns.

    A decoder whose rows are at different stages (D2F's pipeline: one row has settled more blocks than
    another) feeds each row its own window, packed to the left of one [B, W] input: row b's query j is
    column `starts[b] + j`. `begin(starts, width, key_end)` announces such a forward; the model's
    `update` then writes the forward's K/V of row b at columns starts[b]..starts[b] + W - 1 and returns
    columns [0, key_end) of every row as the keys. Column c of row b holds what the last forward that
    covered c computed there, so the caller's mask must show row b only its columns below starts[b]
    (final K/V, written when they were settled) and its current window; everything else (columns a row
    has not reached, never-written zeros) must stay hidden. `prefix(end, rows)` gives a plain
    DynamicCache of columns [0, end) for a read-only forward that starts at one column for every row.

    Storage grows by half again when a forward reaches past it (`capacity` sizes it at the start)."""

    def __init__(self, capacity: int = 0) -> None:
        super().__init__()
        self.capacity = capacity
        self._index: Tensor | None = None  # [B, 1, W, 1] long: the columns of this forward's queries
        self._key_end = 0
        self._query_len = 0

    def begin(self, starts: Tensor, width: int, key_end: int) -> None:
        """The next forward feeds `width` query columns per row from `starts` ([B] long) and attends to
        columns [0, key_end) (at least max(starts) + width)."""
        self._index = (starts[:, None] + torch.arange(width, device=starts.device)).view(-1, 1, width, 1)
        self._key_end, self._query_len = key_end, width

    def get_seq_length(self, layer_idx: int | None = 0) -> int:
        """Keys of the announced forward minus its queries: the forward's keys are its cached length
        plus its queries, as the models count them."""
        return self._key_end - self._query_len

    def _stored(self, layer: int, like: Tensor) -> tuple[Tensor, Tensor]:
        if len(self.key_cache) <= layer:
            batch, heads, _, dim = like.shape
            size = max(self._key_end, self.capacity)
            self.key_cache.append(like.new_zeros(batch, heads, size, dim))
            self.value_cache.append(like.new_zeros(batch, heads, size, dim))
        elif self.key_cache[layer].shape[2] < self._key_end:
            keys, values = self.key_cache[layer], self.value_cache[layer]
            extra = max(self._key_end, keys.shape[2] * 3 // 2) - keys.shape[2]
            self.key_cache[layer] = torch.cat([keys, keys.new_zeros(*keys.shape[:2], extra, keys.shape[3])], dim=2)
            self.value_cache[layer] = torch.cat([values, values.new_zeros(*values.shape[:2], extra, values.shape[3])],
                                                dim=2)
        return self.key_cache[layer], self.value_cache[layer]

    def update(self, key_states: Tensor, value_states: Tensor, layer_idx: int,
               cache_kwargs: dict[str, Any] | None = None) -> tuple[Tensor, Tensor]:
        """Write this forward's K/V ([B, H, W, D]) at each row's columns; keys/values [B, H, key_end, D]."""
        if self._index is None or self._index.shape[2] != key_states.shape[2]:
            raise RuntimeError("ColumnCache.update without a matching begin(starts, width, key_end)")
        keys, values = self._stored(layer_idx, key_states)
        index = self._index.expand(-1, key_states.shape[1], -1, key_states.shape[3])
        keys.scatter_(2, index, key_states)
        values.scatter_(2, index, value_states)
        return keys[:, :, : self._key_end], values[:, :, : self._key_end]

    def prefix(self, end: int, rows: Tensor | None = None) -> DynamicCache:
        """A DynamicCache of columns [0, end) (of batch rows `rows` only, [R] long), for a read-only
        forward; every row's columns below `end` must be final."""
        view = DynamicCache()
        for layer, (keys, values) in enumerate(zip(self.key_cache, self.value_cache)):
            keys, values = keys[:, :, :end], values[:, :, :end]
            if rows is not None:
                keys, values = keys.index_select(0, rows), values.index_select(0, rows)
            view.update(keys, values, layer)
        return view
