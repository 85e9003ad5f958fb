"""Row subsets for forwards that only some rows of a batch need (common/cache.py), and the column-indexed
cache whose rows write at their own columns (D2F/layers.py): literal cases."""

from __future__ import annotations

import pytest
import torch
from transformers import DynamicCache

from common.cache import cache_rows, live_rows, row_mask, scatter_rows
from D2F.layers import ColumnCache


def test_live_rows_lists_the_live_rows_in_order_only_when_a_subset_pays():
    live = torch.tensor([False, True, False, True, True, False])
    assert live_rows(live, 3, 1.0).tolist() == [1, 3, 4]
    assert live_rows(live, 3, 0.5).tolist() == [1, 3, 4]  # 3 <= 0.5 * 6
    assert live_rows(live, 3, 0.4) is None  # too many rows live for the fraction
    assert live_rows(torch.ones(4, dtype=torch.bool), 4, 1.0) is None  # every row live: no subset
    assert live_rows(live, 3, 0.0) is None


def test_scatter_rows_places_the_subset_and_zeros_the_rest():
    part = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    out = scatter_rows(part, torch.tensor([2, 0]), 4)
    assert out.tolist() == [[3.0, 4.0], [0.0, 0.0], [1.0, 2.0], [0.0, 0.0]]
    assert row_mask(torch.tensor([2, 0]), 4).tolist() == [True, False, True, False]


@pytest.mark.parametrize("rows", [[0, 2], [1], [2, 1, 0]])
def test_cache_rows_copies_those_rows_and_leaves_the_cache_alone(rows):
    g = torch.Generator().manual_seed(0)
    cache = DynamicCache()
    layers = [(torch.randn(3, 2, 5, 4, generator=g), torch.randn(3, 2, 5, 4, generator=g)) for _ in range(2)]
    for layer, (k, v) in enumerate(layers):
        cache.update(k, v, layer)
    index = torch.tensor(rows)
    subset = cache_rows(cache, index)
    for layer, (k, v) in enumerate(layers):
        assert torch.equal(subset.key_cache[layer], k[index]) and torch.equal(subset.value_cache[layer], v[index])
    subset.update(torch.zeros(len(rows), 2, 1, 4), torch.zeros(len(rows), 2, 1, 4), 0)  # appended to the copy only
    assert cache.key_cache[0].shape == (3, 2, 5, 4)


def test_column_cache_writes_each_row_at_its_columns_and_grows():
    """Two forwards whose rows start at different columns: each row's columns hold what its last forward
    wrote there, as one DynamicCache per row would (appending its settled columns, then its window)."""
    g = torch.Generator().manual_seed(0)
    cache = ColumnCache(capacity=4)
    starts = torch.tensor([0, 2, 1])
    first = [torch.randn(3, 2, 3, 4, generator=g) for _ in range(2)]  # K and V of 3 columns per row
    cache.begin(starts, 3, key_end=5, batch=3)
    assert cache.get_seq_length() == 2  # keys = cached + queries, as the models count them
    keys, values = cache.update(first[0], first[1], 0)
    assert keys.shape == (3, 2, 5, 4)
    for row, start in enumerate(starts.tolist()):
        assert torch.equal(keys[row, :, start : start + 3], first[0][row])
        assert torch.equal(values[row, :, start : start + 3], first[1][row])
    starts2 = torch.tensor([3, 2, 4])  # row 1 rewrites its window in place; the others move on
    second = [torch.randn(3, 2, 4, 4, generator=g) for _ in range(2)]
    cache.begin(starts2, 4, key_end=8, batch=3)  # past the storage: it grows
    keys2, _ = cache.update(second[0], second[1], 0)
    assert keys2.shape == (3, 2, 8, 4) and cache.key_cache[0].shape[2] >= 8
    for row, (start, start2) in enumerate(zip(starts.tolist(), starts2.tolist())):
        assert torch.equal(keys2[row, :, start2 : start2 + 4], second[0][row])
        assert torch.equal(keys2[row, :, start:start2], first[0][row, :, : start2 - start])  # kept columns
    view = cache.prefix(3, torch.tensor([2, 0]))
    assert type(view) is DynamicCache and view.get_seq_length() == 3
    assert torch.equal(view.key_cache[0], keys2[[2, 0], :, :3])
    with pytest.raises(RuntimeError, match="begin"):
        cache.update(torch.zeros(3, 2, 2, 4), torch.zeros(3, 2, 2, 4), 0)  # width differs from begin's


def test_column_cache_forward_over_some_rows_writes_and_reads_theirs_only():
    g = torch.Generator().manual_seed(1)
    cache = ColumnCache(capacity=6)
    every = torch.randn(3, 2, 4, 4, generator=g)
    cache.begin(torch.tensor([0, 1, 2]), 4, key_end=6, batch=3)
    cache.update(every, every + 1, 0)
    before = cache.key_cache[0].clone()
    part = torch.randn(2, 2, 2, 4, generator=g)  # rows 2 and 0 write 2 columns from 3 and 1
    rows, starts = torch.tensor([2, 0]), torch.tensor([3, 1])
    cache.begin(starts, 2, key_end=6, batch=3, rows=rows)
    assert cache.get_seq_length() == 4
    keys, values = cache.update(part, part + 1, 0)
    assert keys.shape == (2, 2, 6, 4)
    stored = cache.key_cache[0]
    assert torch.equal(stored[1], before[1])  # row 1 untouched
    for r, (row, start) in enumerate(zip(rows.tolist(), starts.tolist())):
        assert torch.equal(stored[row, :, start : start + 2], part[r])
        assert torch.equal(cache.value_cache[0][row, :, start : start + 2], part[r] + 1)
        assert torch.equal(keys[r], stored[row])  # the forward's keys are its rows' columns
        others = [c for c in range(6) if not start <= c < start + 2]
        assert torch.equal(stored[row, :, others], before[row, :, others])
