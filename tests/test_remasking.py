"""Unit tests for common.schedule and common.remasking (ALGORITHM.md §0, §1.1, §2.3)."""

import math

import pytest
import torch

from common.remasking import REMASKING_STRATEGIES, select_transfer, token_entropy
from common.schedule import num_transfer_tokens

T, F = True, False


def _positions(selected: torch.Tensor) -> list[list[int]]:
    return [row.nonzero().flatten().tolist() for row in selected]


@pytest.mark.parametrize(
    ("block_length", "steps", "expected"),
    [
        (16, 4, [4, 4, 4, 4]),
        (10, 4, [3, 3, 2, 2]),
        (4, 4, [1, 1, 1, 1]),
        (5, 8, [1, 1, 1, 1, 1, 0, 0, 0]),
        (7, 1, [7]),
    ],
)
def test_num_transfer_tokens_examples(block_length, steps, expected):
    got = num_transfer_tokens(block_length, steps)
    assert got == expected
    assert sum(got) == block_length


@pytest.mark.parametrize(("block_length", "steps"), [(0, 4), (4, 0), (-1, 2), (8, -3)])
def test_num_transfer_tokens_rejects_non_positive(block_length, steps):
    with pytest.raises(ValueError):
        num_transfer_tokens(block_length, steps)


def test_sequential_takes_first_masked_left_to_right_and_caps_k():
    masked = torch.tensor([[F, T, F, T, T, T], [T, T, T, F, F, F], [F, F, F, F, F, F]])
    confidence = torch.rand(3, 6)
    k = torch.tensor([2, 5, 3])
    got = select_transfer("sequential", confidence, masked, k)
    assert _positions(got) == [[1, 3], [0, 1, 2], []]


def test_static_top_k_by_confidence_per_row_k():
    confidence = torch.tensor(
        [[0.90, 0.20, 0.99, 0.50, 0.70, 0.10], [0.30, 0.80, 0.60, 0.95, 0.40, 0.10]]
    )
    masked = torch.tensor([[F, T, F, T, T, T], [T, T, T, F, T, T]])
    k = torch.tensor([2, 3])
    got = select_transfer("low_confidence_static", confidence, masked, k)
    # Row 0: decoded positions 0 and 2 have the highest confidence but must not be chosen.
    assert _positions(got) == [[3, 4], [1, 2, 4]]


def test_static_k_larger_than_masked_never_touches_decoded():
    confidence = torch.tensor([[0.99, 0.10, 0.98, 0.20], [0.5, 0.5, 0.5, 0.5]])
    masked = torch.tensor([[F, T, F, T], [F, F, F, F]])
    k = torch.tensor([4, 2])
    got = select_transfer("low_confidence_static", confidence, masked, k)
    assert _positions(got) == [[1, 3], []]


def test_static_ties_prefer_lower_index():
    confidence = torch.tensor([[0.5, 0.5, 0.5, 0.5]])
    masked = torch.tensor([[F, T, T, T]])
    got = select_transfer("low_confidence_static", confidence, masked, torch.tensor([2]))
    assert _positions(got) == [[1, 2]]


def test_static_masked_minus_inf_confidence_beats_decoded():
    confidence = torch.tensor([[0.9, float("-inf"), 0.8]])
    masked = torch.tensor([[F, T, F]])
    got = select_transfer("low_confidence_static", confidence, masked, torch.tensor([1]))
    assert _positions(got) == [[1]]


def test_dynamic_high_set_or_top_k():
    confidence = torch.tensor(
        [
            [0.90, 0.95, 0.30, 0.99],  # 2 masked above 0.85 >= k=1 -> both
            [0.90, 0.40, 0.30, 0.60],  # 1 masked above 0.85 <  k=2 -> top-2
            [0.50, 0.20, 0.10, 0.99],  # none above; position 3 decoded
        ]
    )
    masked = torch.tensor([[T, T, T, F], [T, T, T, T], [T, T, T, F]])
    k = torch.tensor([1, 2, 1])
    got = select_transfer("low_confidence_dynamic", confidence, masked, k, threshold=0.85)
    assert _positions(got) == [[0, 1], [0, 3], [0]]


def test_dynamic_threshold_is_strict_and_k_capped():
    confidence = torch.tensor([[0.5, 0.5, 0.75, 0.25], [0.75, 0.125, 0.9, 0.9]])
    masked = torch.tensor([[T, T, T, T], [T, T, F, F]])
    k = torch.tensor([2, 5])
    got = select_transfer("low_confidence_dynamic", confidence, masked, k, threshold=0.5)
    # Row 0: only 0.75 > 0.5 (0.5 is not), 1 < k=2 -> top-2 = {2, 0}.
    # Row 1: 1 high < k=5 -> top-k capped at the 2 masked positions.
    assert _positions(got) == [[0, 2], [0, 1]]


def test_entropy_bounded_cumulative_rule():
    # Exactly representable entropies so the inclusive bound is tested exactly.
    entropy = torch.tensor(
        [
            [0.125, 0.25, 0.0625, 0.5, 0.0],  # masked sorted: 0.0625, 0.125, 0.25, 0.5
            [0.125, 0.25, 0.0625, 0.5, 0.0],
            [2.0, 3.0, 1.0, 4.0, 0.0],
            [2.0, 3.0, 1.0, 4.0, 0.0],
        ]
    )
    masked = torch.tensor([[T, T, T, T, F]] * 4)
    confidence = torch.rand(4, 5)
    k = torch.tensor([1, 4, 0, 2])
    got = select_transfer(
        "entropy_bounded", confidence, masked, k, entropy=entropy, eb_threshold=0.4375
    )
    # Row 0: cumsum 0.0625, 0.1875, 0.4375 (<= bound, inclusive), 0.9375 -> n_eb = 3 > k.
    # Row 1: k = 4 > n_eb -> all four masked. Row 2: n_eb = 0, k = 0 -> floor of 1.
    # Row 3: n_eb = 0 -> k = 2 lowest. Position 4 (decoded, entropy 0) is never chosen.
    assert _positions(got) == [[0, 1, 2], [0, 1, 2, 3], [2], [0, 2]]


def test_entropy_bounded_caps_at_masked_and_needs_entropy():
    entropy = torch.tensor([[0.0, 0.0, 0.0, 0.0]])
    masked = torch.tensor([[F, T, F, T]])
    confidence = torch.rand(1, 4)
    got = select_transfer(
        "entropy_bounded", confidence, masked, torch.tensor([1]), entropy=entropy, eb_threshold=1.0
    )
    assert _positions(got) == [[1, 3]]
    with pytest.raises(ValueError, match="entropy"):
        select_transfer("entropy_bounded", confidence, masked, torch.tensor([1]))


def test_unknown_strategy_lists_valid_names():
    with pytest.raises(ValueError) as info:
        select_transfer("random", torch.rand(1, 2), torch.ones(1, 2, dtype=torch.bool), torch.tensor([1]))
    for name in REMASKING_STRATEGIES:
        assert name in str(info.value)


@pytest.mark.parametrize("strategy", REMASKING_STRATEGIES)
def test_random_inputs_select_only_masked_and_respect_budget(strategy):
    generator = torch.Generator().manual_seed(0)
    confidence = torch.rand(64, 12, generator=generator)
    masked = torch.rand(64, 12, generator=generator) < 0.5
    k = torch.randint(0, 6, (64,), generator=generator)
    entropy = torch.rand(64, 12, generator=generator)
    got = select_transfer(strategy, confidence, masked, k, entropy=entropy)
    assert got.dtype == torch.bool and got.shape == masked.shape
    assert not (got & ~masked).any()
    count, n_masked = got.sum(-1), masked.sum(-1)
    assert (count >= torch.minimum(k, n_masked)).all()
    if strategy in ("sequential", "low_confidence_static"):
        assert torch.equal(count, torch.minimum(k, n_masked))


def test_token_entropy_literal_values():
    probs = torch.tensor(
        [[0.25, 0.25, 0.25, 0.25], [1.0, 0.0, 0.0, 0.0], [0.5, 0.5, 0.0, 0.0]], dtype=torch.float64
    )
    got = token_entropy(probs)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, torch.tensor([math.log(4), 0.0, math.log(2)]))


def _reference_top_k(key, masked, k):
    """Slow reference: per row, masked positions sorted by key descending (ties: lower index), first k."""
    out = torch.zeros_like(masked)
    for row in range(key.shape[0]):
        ranked = sorted((i for i in range(key.shape[1]) if masked[row, i]), key=lambda i: (-key[row, i].item(), i))
        out[row, ranked[: int(k[row])]] = True
    return out


def test_static_top_k_matches_reference_with_ties_and_infinities():
    generator = torch.Generator().manual_seed(1)
    confidence = torch.rand(200, 6, generator=generator).mul(4).round().div(4)  # many ties
    pick = torch.rand(200, 6, generator=generator)
    confidence[pick < 0.1] = float("-inf")
    confidence[pick > 0.95] = float("inf")
    masked = torch.rand(200, 6, generator=generator) < 0.6
    k = torch.randint(0, 8, (200,), generator=generator)
    got = select_transfer("low_confidence_static", confidence, masked, k)
    assert torch.equal(got, _reference_top_k(confidence, masked, k))
