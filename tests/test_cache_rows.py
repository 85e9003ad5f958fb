"""Row subsets for forwards that only some rows of a batch need (common/cache.py): literal cases."""

from __future__ import annotations

import pytest
import torch
from transformers import DynamicCache

from common.cache import cache_rows, live_rows, row_mask, scatter_rows


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
