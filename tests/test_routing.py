"""Unit tests for common.routing (ALGORITHM.md §3.1, §3.3-§3.6, §2.3 legacy span rule)."""

import math

import pytest
import torch

from common.routing import (
    ROUTING_POLICIES,
    ContextualBanditUCBPolicy,
    RouteFeatures,
    RoutingConfig,
    ScoreHysteresisPolicy,
    linear_bin,
    make_policy,
    score,
    ucb_bucket,
)

T, F = True, False
INF = float("inf")
HYSTERESIS_MESSAGE = "hysteresis_threshold_on must be > hysteresis_threshold_off"


def features(
    span_length,
    expected_length=None,
    n_high=None,
    n_masked=None,
    progress=None,
    mean_entropy=None,
    active=None,
    context_length=4,
) -> RouteFeatures:
    batch = len(span_length)
    return RouteFeatures(
        span_length=torch.tensor(span_length, dtype=torch.long),
        expected_length=torch.tensor(expected_length or [0.0] * batch),
        n_high=torch.tensor(n_high or [0] * batch, dtype=torch.long),
        n_masked=torch.tensor(n_masked or span_length, dtype=torch.long),
        progress=torch.tensor(progress or [0.0] * batch),
        mean_entropy=torch.tensor(mean_entropy or [0.0] * batch),
        active=torch.tensor(active or [True] * batch),
        context_length=context_length,
    )


# --- config ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"do_verify_policy": "always"}, "contextual_bandit_ucb"),
        ({"do_verify_score_type": "ratio"}, "difference_dynamic"),
        ({"ucb_entropy_source": "block"}, "masked"),
        ({"hysteresis_threshold_on": -1.0, "hysteresis_threshold_off": -1.0}, HYSTERESIS_MESSAGE),
        ({"hysteresis_threshold_on": -2.0, "hysteresis_threshold_off": -1.0}, HYSTERESIS_MESSAGE),
        ({"min_ssd_span_length": 0}, "min_ssd_span_length"),
        ({"ucb_span_length_bins": 0}, "ucb_span_length_bins"),
        ({"ucb_block_progress_bins": 0}, "ucb_block_progress_bins"),
        ({"ucb_entropy_bins": 0}, "ucb_entropy_bins"),
    ],
)
def test_config_validation(kwargs, message):
    with pytest.raises(ValueError, match=message):
        RoutingConfig(**kwargs)


def test_config_defaults_valid_and_every_policy_registered():
    for name in ROUTING_POLICIES:
        policy = make_policy(RoutingConfig(do_verify_policy=name), batch_size=2, device="cpu")
        assert policy.decide(features([0, 0])).tolist() == [F, F]


# --- scores ---------------------------------------------------------------------------------


def test_score_types_and_empty_span():
    f = features([3, 2, 0], expected_length=[2.5, 1.0, 0.0], n_high=[1, 2, 0])
    static = score(f, RoutingConfig(do_verify_score_type="difference_static", score_penalty_coef=2.0))
    dynamic = score(f, RoutingConfig(do_verify_score_type="difference_dynamic", score_penalty_coef=2.0))
    assert static.tolist() == [0.5, -1.0, -INF]
    assert dynamic.tolist() == [0.5, -3.0, -INF]


# --- mask_span_length -------------------------------------------------------------------------


def test_mask_span_length():
    policy = make_policy(RoutingConfig(min_ssd_span_length=2), 5, "cpu")
    f = features([0, 1, 2, 3, 4], active=[T, T, T, T, F])
    assert policy.decide(f).tolist() == [F, F, T, T, F]


def test_mask_span_length_legacy_rule():
    policy = make_policy(RoutingConfig(min_ssd_span_length=3, legacy_ssd_span_strategy=True), 5, "cpu")
    f = features(
        span_length=[1, 1, 2, 0, 4],
        n_high=[0, 3, 2, 0, 0],
        n_masked=[5, 5, 2, 5, 6],
    )
    # Row 0: short, few high-confidence tokens -> verified anyway.
    # Row 1: short, 3 >= min(3, 5) -> skipped. Row 2: 2 >= min(3, 2) -> skipped.
    # Row 3: empty span, never verified. Row 4: long enough.
    assert policy.decide(f).tolist() == [T, F, F, F, T]
    plain = make_policy(RoutingConfig(min_ssd_span_length=3), 5, "cpu")
    assert plain.decide(f).tolist() == [F, F, F, F, T]


# --- score_threshold ------------------------------------------------------------------------


def test_score_threshold_static():
    cfg = RoutingConfig(
        do_verify_policy="score_threshold", do_verify_score_type="difference_static", score_penalty_coef=1.0
    )
    policy = make_policy(cfg, 4, "cpu")
    f = features([2, 2, 0, 2], expected_length=[1.0, 0.99, 5.0, 3.0], active=[T, T, T, F])
    assert policy.decide(f).tolist() == [T, F, F, F]


def test_score_threshold_never_verifies_empty_span_even_at_minus_inf():
    cfg = RoutingConfig(do_verify_policy="score_threshold", do_verify_score_threshold=-INF)
    policy = make_policy(cfg, 2, "cpu")
    assert policy.decide(features([0, 1])).tolist() == [F, T]


# --- score_hysteresis -----------------------------------------------------------------------


def _hysteresis(batch: int) -> ScoreHysteresisPolicy:
    cfg = RoutingConfig(
        do_verify_policy="score_hysteresis",
        do_verify_score_type="difference_static",
        score_penalty_coef=0.0,  # score == K̂, so the test drives the score directly
        hysteresis_threshold_on=0.0,
        hysteresis_threshold_off=-1.0,
    )
    policy = make_policy(cfg, batch, "cpu")
    assert isinstance(policy, ScoreHysteresisPolicy)
    return policy


def test_hysteresis_transition_sequence():
    policy = _hysteresis(1)
    decisions, states = [], []
    for s in [0.5, -0.5, -2.0, 0.0, 0.1, -1.0, -1.5]:
        decisions.append(policy.decide(features([2], expected_length=[s]))[0].item())
        states.append(policy.on[0].item())
    # on (0.5 > 0), stay on (-0.5 >= -1), off (-2 < -1), stay off (0.0 is not > 0: strict),
    # on (0.1 > 0), stay on (-1.0 is not < -1), off (-1.5 < -1).
    assert decisions == [T, T, F, F, T, T, F]
    assert states == decisions


def test_hysteresis_inactive_rows_untouched_and_state_per_row():
    policy = _hysteresis(2)
    got = policy.decide(features([2, 2], expected_length=[0.5, 0.5], active=[T, F]))
    assert got.tolist() == [T, F] and policy.on.tolist() == [T, F]
    got = policy.decide(features([2, 2], expected_length=[-0.5, -0.5], active=[T, T]))
    # Row 0 stays on; row 1 is still off and -0.5 does not switch it on.
    assert got.tolist() == [T, F] and policy.on.tolist() == [T, F]
    got = policy.decide(features([2, 2], expected_length=[-5.0, 3.0], active=[F, T]))
    assert got.tolist() == [F, T] and policy.on.tolist() == [T, T]


def test_hysteresis_empty_span_switches_off():
    policy = _hysteresis(1)
    assert policy.decide(features([2], expected_length=[1.0])).tolist() == [T]
    assert policy.decide(features([0], expected_length=[1.0])).tolist() == [F]
    assert policy.on.tolist() == [F]


def test_hysteresis_state_is_per_policy_object():
    first = _hysteresis(1)
    first.decide(features([2], expected_length=[1.0]))
    second = _hysteresis(1)
    assert second.on.tolist() == [F]
    assert second.decide(features([2], expected_length=[-0.5])).tolist() == [F]


# --- contextual_bandit_ucb ------------------------------------------------------------------


def test_linear_bin_examples():
    v = torch.tensor([0.0, 1.0, 2.0, 3.0, 4.0, 5.0])
    assert linear_bin(v, 1.0, 4.0, 2).tolist() == [0, 0, 0, 1, 1, 1]
    assert linear_bin(v, 1.0, 4.0, 3).tolist() == [0, 0, 1, 2, 2, 2]
    assert linear_bin(torch.tensor([0.0, 0.49, 0.5, 1.0]), 0.0, 1.0, 2).tolist() == [0, 0, 1, 1]
    assert linear_bin(v, 1.0, 4.0, 1).tolist() == [0] * 6
    assert linear_bin(v, 2.0, 2.0, 4).tolist() == [0] * 6


def test_ucb_bucket_examples():
    got = ucb_bucket(
        torch.tensor([1, 4, 3, 0]),
        torch.tensor([0.0, 0.5, 0.25, 1.0]),
        torch.tensor([0.0, 0.9, 0.49, 0.5]),
        context_length=4,
        span_bins=2,
        progress_bins=2,
        entropy_bins=2,
    )
    # (span_bin * 2 + prog_bin) * 2 + ent_bin:
    # (0,0,0) -> 0; (1,1,1) -> 7; span 3 -> floor(2/3 * 2) = 1: (1,0,0) -> 4; span 0 clips to 1: (0,1,1) -> 3.
    assert got.tolist() == [0, 7, 4, 3]
    got = ucb_bucket(
        torch.tensor([5, 7]),
        torch.tensor([0.3, 0.9]),
        torch.tensor([0.3, 0.8]),
        context_length=7,
        span_bins=3,
        progress_bins=1,
        entropy_bins=4,
    )
    # span 5 over [1, 7] in 3 bins -> 2, progress single bin -> 0, entropy 0.3 in 4 bins -> 1: (2*1+0)*4+1.
    assert got.tolist() == [9, 11]
    single = ucb_bucket(
        torch.tensor([1, 9]), torch.tensor([0.0, 0.0]), torch.tensor([0.0, 0.0]),
        context_length=1, span_bins=2, progress_bins=2, entropy_bins=2,
    )
    assert single.tolist() == [0, 0]


def _ucb(batch: int, beta: float = 1.0) -> ContextualBanditUCBPolicy:
    policy = make_policy(RoutingConfig(do_verify_policy="contextual_bandit_ucb", ucb_beta=beta), batch, "cpu")
    assert isinstance(policy, ContextualBanditUCBPolicy)
    return policy


def test_ucb_tries_verify_first_then_rewards_steer():
    policy = _ucb(1)
    f = features([2], progress=[0.0], mean_entropy=[0.1])  # bucket 0
    one = torch.tensor([True])

    assert policy.decide(f).tolist() == [T]  # both arms untried: tie -> verify
    policy.update(torch.tensor([True]), torch.tensor([1]), one)  # reward 1 / 2
    assert policy.count[0, :, 0].tolist() == [0, 1]
    assert policy.reward_sum[0, 1, 0].item() == 0.5

    assert policy.decide(f).tolist() == [F]  # skip arm untried -> +inf
    policy.update(torch.tensor([False]), torch.tensor([3]), one)  # reward 3 / 1

    # t = 3: skip 3 + sqrt(ln 3) beats verify 0.5 + sqrt(ln 3).
    assert policy.decide(f).tolist() == [F]
    assert policy.t.tolist() == [3]
    bonus = math.sqrt(math.log(3))
    assert policy.arm_scores(torch.tensor([0]))[0].tolist() == pytest.approx([3 + bonus, 0.5 + bonus])

    # A fresh bucket tries verify first again.
    other = features([4], progress=[0.75], mean_entropy=[0.9])
    assert policy.decide(other).tolist() == [T]


def test_ucb_prefers_verify_when_it_pays():
    policy = _ucb(1, beta=0.0)
    f = features([4], progress=[0.0], mean_entropy=[0.0])
    one = torch.tensor([True])
    policy.decide(f)
    policy.update(torch.tensor([True]), torch.tensor([4]), one)  # reward 2
    policy.decide(f)
    policy.update(torch.tensor([False]), torch.tensor([1]), one)  # reward 1
    assert [policy.decide(f).item() for _ in range(3)] == [T, T, T]


def test_ucb_counter_incremented_before_scoring():
    policy = _ucb(1)
    policy.count[0, :, 0] = torch.tensor([2, 1])
    policy.reward_sum[0, :, 0] = torch.tensor([1.0, 0.4], dtype=torch.float64)
    policy.t[0] = 1
    # After the increment t = 2: skip 0.5 + sqrt(ln2 / 2) = 1.089 < verify 0.4 + sqrt(ln 2) = 1.233.
    # Scoring with the old t = 1 would give no bonus and choose skip (0.5 > 0.4).
    assert policy.decide(features([2])).tolist() == [T]
    assert policy.t.tolist() == [2]


def test_ucb_equal_finite_scores_tie_to_verify():
    policy = _ucb(1)
    policy.count[0, :, 0] = torch.tensor([2, 2])
    policy.reward_sum[0, :, 0] = torch.tensor([1.5, 1.5], dtype=torch.float64)
    assert policy.decide(features([2])).tolist() == [T]
    policy.reward_sum[0, 1, 0] = 1.25
    assert policy.decide(features([2])).tolist() == [F]


def test_ucb_inactive_rows_and_empty_span_untouched():
    policy = _ucb(3)
    f = features([2, 2, 0], active=[T, F, T])
    assert policy.decide(f).tolist() == [T, F, F]
    assert policy.t.tolist() == [1, 0, 1]
    policy.update(torch.tensor([True, True, False]), torch.tensor([2, 5, 1]), torch.tensor([T, F, T]))
    assert policy.count.sum(dim=(1, 2)).tolist() == [1, 0, 1]
    assert policy.count[0, 1, 0].item() == 1 and policy.reward_sum[0, 1, 0].item() == 1.0
    assert policy.count[2, 0, 0].item() == 1 and policy.reward_sum[2, 0, 0].item() == 1.0
    assert policy.reward_sum[1].abs().sum().item() == 0.0


def test_ucb_update_before_decide_raises():
    with pytest.raises(RuntimeError):
        _ucb(1).update(torch.tensor([True]), torch.tensor([1]), torch.tensor([True]))
