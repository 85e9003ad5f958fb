"""Unit tests for common.estimators (ALGORITHM.md §0 normalised entropy, §3.2 α and K̂)."""

import math

import pytest
import torch

from common.estimators import (
    ESTIMATORS,
    EstimatorConfig,
    expected_accepted_length,
    normalized_entropy,
    token_acceptance,
)

T, F = True, False

# One row of four literal draft distributions over V = 4.
PROBS = torch.tensor(
    [
        [
            [0.6, 0.3, 0.1, 0.0],  # margin 0.3
            [0.4, 0.38, 0.22, 0.0],  # margin 0.02
            [0.25, 0.25, 0.25, 0.25],  # uniform: margin 0, H~ = 1
            [1.0, 0.0, 0.0, 0.0],  # one-hot: margin 1, H~ = 0
        ]
    ]
)  # [1, 4, 4]
CONFIDENCE = torch.tensor([[0.64, 0.25, 1.2, -0.1]])  # [1, 4]


def _norm_entropy(row: list[float]) -> float:
    return -sum(p * math.log(p) for p in row if p > 0) / math.log(len(row))


def test_normalized_entropy_literals():
    probs = torch.tensor([[0.25] * 4, [1.0, 0.0, 0.0, 0.0], [0.5, 0.5, 0.0, 0.0]])
    torch.testing.assert_close(normalized_entropy(probs), torch.tensor([1.0, 0.0, 0.5]))
    # Uniform over 100 of ~151k tokens: the optimistic value quoted in ALGORITHM.md §0.
    assert math.log(100) / math.log(151_000) == pytest.approx(0.386, abs=1e-3)
    assert normalized_entropy(torch.ones(2, 1)).tolist() == [0.0, 0.0]


def test_hard_margin_threshold():
    got = token_acceptance(PROBS, CONFIDENCE, EstimatorConfig("hard_margin_threshold", ssd_confidence_margin_threshold=0.05))
    assert got.tolist() == [[1.0, 0.0, 0.0, 1.0]]


def test_hard_entropy_threshold():
    # H~ of rows 0 and 1 are about 0.648 and 0.770.
    h0, h1 = _norm_entropy([0.6, 0.3, 0.1, 0.0]), _norm_entropy([0.4, 0.38, 0.22, 0.0])
    assert h0 == pytest.approx(0.6477, abs=1e-3) and h1 == pytest.approx(0.7703, abs=1e-3)
    loose = EstimatorConfig("hard_entropy_threshold", ssd_entropy_threshold=0.7)
    assert token_acceptance(PROBS, CONFIDENCE, loose).tolist() == [[1.0, 0.0, 0.0, 1.0]]
    strict = EstimatorConfig("hard_entropy_threshold", ssd_entropy_threshold=0.1)
    got = token_acceptance(PROBS, CONFIDENCE, strict)
    assert got.tolist() == [[0.0, 0.0, 0.0, 1.0]]


def test_soft_confidence_power_clamps_confidence():
    got = token_acceptance(PROBS, CONFIDENCE, EstimatorConfig("soft_confidence_power", ssd_confidence_power=0.5))
    torch.testing.assert_close(got, torch.tensor([[0.8, 0.5, 1.0, 0.0]]))


def test_soft_clipped_linear_margin():
    got = token_acceptance(PROBS, CONFIDENCE, EstimatorConfig("soft_clipped_linear_margin", ssd_confidence_margin_coef=2.0))
    torch.testing.assert_close(got, torch.tensor([[0.6, 0.04, 0.0, 1.0]]))


def test_soft_entropy_negexp():
    got = token_acceptance(PROBS, CONFIDENCE, EstimatorConfig("soft_entropy_negexp", ssd_entropy_temperature=2.0))
    expected = [math.exp(-2.0 * _norm_entropy(row)) for row in PROBS[0].tolist()]
    torch.testing.assert_close(got, torch.tensor([expected]))
    assert got[0, 2].item() == pytest.approx(math.exp(-2.0), rel=1e-5)
    assert got[0, 3].item() == 1.0


def test_soft_renyi_2_entropy():
    got = token_acceptance(PROBS, CONFIDENCE, EstimatorConfig("soft_renyi_2_entropy"))
    torch.testing.assert_close(got, torch.tensor([[0.46, 0.4 * 0.4 + 0.38 * 0.38 + 0.22 * 0.22, 0.25, 1.0]]))


@pytest.mark.parametrize("name", ESTIMATORS)
def test_every_estimator_in_unit_interval_and_shape(name):
    generator = torch.Generator().manual_seed(1)
    probs = torch.softmax(torch.randn(3, 5, 17, generator=generator) * 3, dim=-1)
    confidence = probs.max(dim=-1).values
    got = token_acceptance(probs, confidence, EstimatorConfig(name))
    assert got.shape == (3, 5) and got.dtype == torch.float32
    assert ((got >= 0) & (got <= 1)).all()


def test_estimator_config_validation():
    with pytest.raises(ValueError) as info:
        EstimatorConfig("margin")
    for name in ESTIMATORS:
        assert name in str(info.value)
    with pytest.raises(ValueError):
        EstimatorConfig("soft_confidence_power", ssd_confidence_power=-1.0)
    with pytest.raises(ValueError):
        EstimatorConfig(ssd_entropy_temperature=float("nan"))
    assert EstimatorConfig().token_acceptance_estimator == "hard_margin_threshold"


def test_expected_accepted_length_hand_computed():
    alpha = torch.tensor(
        [
            [0.5, 0.5, 1.0, 0.3, 0.3],  # span = first 3: 0.5 + 0.25 + 0.25 = 1.0
            [0.1, 0.5, 0.5, 1.0, 0.2],  # span in the middle (1..3): 1.0, ignoring 0.1 and 0.2
            [0.9, 0.8, 0.5, 0.3, 0.7],  # span 1..2: 0.8 + 0.4 = 1.2
            [0.9, 0.8, 0.5, 0.3, 0.7],  # empty span -> 0
            [1.5, -0.2, 1.0, 1.0, 1.0],  # clipped: 1 + 0 + 0 = 1
        ]
    )
    in_span = torch.tensor(
        [
            [T, T, T, F, F],
            [F, T, T, T, F],
            [F, T, T, F, F],
            [F, F, F, F, F],
            [T, T, T, F, F],
        ]
    )
    got = expected_accepted_length(alpha, in_span)
    torch.testing.assert_close(got, torch.tensor([1.0, 1.0, 1.2, 0.0, 1.0]))


def test_expected_accepted_length_all_ones_equals_span_length():
    alpha = torch.ones(2, 6)
    in_span = torch.tensor([[F, F, T, T, T, T], [T, F, F, F, F, F]])
    assert expected_accepted_length(alpha, in_span).tolist() == [4.0, 1.0]
