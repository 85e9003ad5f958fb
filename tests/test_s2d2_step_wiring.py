"""Wiring of common/s2d2.py pinned on hand-made tensors, against values computed here independently:

- `S2D2Step` turns the verifier's logits into q with the sampling transform (temperature != 1);
- `routing_features`: every optional feature, `needed`, both entropy sources, the given estimator;
- `verify_spans`/`verify_commits`: the ratio tempering factor gamma, the ratio threshold (`>=`, and
  `ssd_threshold_all_spans` beyond the first span), where each acceptance uniform lands;
- `S2D2Step` feeds the learning (UCB) policy `decoded / cost` in the bucket it decided.
"""

import math

import pytest
import torch

import common.s2d2 as s2d2
from common.estimators import EstimatorConfig
from common.s2d2 import S2D2Flags, S2D2Step, TopUp, VerifyConfig, routing_features, verify_commits, verify_spans
from common.sampling import SamplingConfig
from common.spans import first_masked_span
from common.stats import COMMIT_ACCEPTED, COMMIT_DIFFUSION, COMMIT_NONE, COMMIT_RATIO, COMMIT_RESAMPLED, DecodeRecorder


def _sigmoid(x):
    return 1.0 / (1.0 + math.exp(-x))


def _norm_entropy(dist):
    """-sum p log p / log V, in plain Python."""
    return -sum(p * math.log(p) for p in dist if p > 0) / math.log(len(dist))


def _step(flags, sampling, probs, drafts, confidence, masked, verify_logits, *, min_k, progress, generator=None,
          live=None):
    b, length = masked.shape
    step = S2D2Step(flags, sampling, b, "cpu", generator)
    out = step(probs, drafts, confidence, torch.where(masked, 99, drafts), masked,
               masked.any(-1) if live is None else live, progress=progress, context_length=length, min_k=min_k,
               top_up_rule=TopUp("low_confidence_static", 0.9), verify=lambda drafted, rows: verify_logits[rows],
               recorder=DecodeRecorder(b))
    return step, out


# 1. q is the sampling transform of the verifier logits -----------------------------------------------------------

TEMPERATURE = 0.7


def test_step_q_is_softmax_of_verifier_logits_over_temperature(monkeypatch):
    """Spy on verify_spans: the q it gets is softmax(logits / 0.7), computed here by hand."""
    logits = torch.tensor([[[1.0, -0.5, 0.25]], [[-2.0, 0.0, 0.7]]])  # [2, 1, 3]
    probs = torch.tensor([[[0.5, 0.25, 0.25]], [[0.25, 0.25, 0.5]]])
    drafts = torch.tensor([[0], [2]])
    seen = []
    real = s2d2.verify_spans

    def spy(q, *args, **kwargs):
        seen.append(q.clone())
        return real(q, *args, **kwargs)

    monkeypatch.setattr(s2d2, "verify_spans", spy)
    _step(S2D2Flags(acceptance="greedy_exact"), SamplingConfig(temperature=TEMPERATURE), probs, drafts,
          torch.tensor([[0.5], [0.5]]), torch.ones(2, 1, dtype=torch.bool), logits,
          min_k=torch.zeros(2, dtype=torch.long), progress=torch.zeros(2))
    assert len(seen) == 1
    expected = []
    for row in logits[:, 0].tolist():
        e = [math.exp(x / TEMPERATURE) for x in row]
        expected.append([[v / sum(e) for v in e]])
    torch.testing.assert_close(seen[0], torch.tensor(expected), rtol=0, atol=1e-6)


def test_step_stochastic_verdict_follows_q_at_the_sampling_temperature():
    """Verifier logits [-1.4, 0] at T = 0.7 give q(0) = sigmoid(-2). Each row's draft probability c is placed
    (from the uniform the seeded generator draws) so that row 0 accepts only with q at T = 0.7 and not with
    a colder q (T = 0.35), and row 1 rejects at T = 0.7 but would accept with a hotter q (T = 1)."""
    seed = 0
    u = torch.rand(2, 1, generator=torch.Generator().manual_seed(seed))[:, 0].tolist()
    q_true, q_cold, q_hot = _sigmoid(-1.4 / 0.7), _sigmoid(-1.4 / 0.35), _sigmoid(-1.4)
    assert min(u) > q_hot  # the windows below are inside (0, 1]
    c0 = (q_cold / u[0] + min(1.0, q_true / u[0])) / 2  # q_cold / c0 < u0 < q_true / c0
    c1 = (q_true / u[1] + min(1.0, q_hot / u[1])) / 2  # q_true / c1 < u1 < q_hot / c1
    assert q_cold / c0 < u[0] < q_true / c0 and q_true / c1 < u[1] < q_hot / c1
    probs = torch.tensor([[[c0, 1 - c0]], [[c1, 1 - c1]]])
    logits = torch.tensor([[[-1.4, 0.0]], [[-1.4, 0.0]]])
    drafts = torch.zeros(2, 1, dtype=torch.long)
    _, (commit, tokens, kinds) = _step(
        S2D2Flags(acceptance="stochastic"), SamplingConfig(temperature=TEMPERATURE, do_sample=True), probs, drafts,
        torch.tensor([[c0], [c1]]), torch.ones(2, 1, dtype=torch.bool), logits, min_k=torch.zeros(2, dtype=torch.long),
        progress=torch.zeros(2), generator=torch.Generator().manual_seed(seed))
    assert kinds.tolist() == [[COMMIT_ACCEPTED], [COMMIT_RESAMPLED]]
    # row 1's residual (q - p)+ has all its mass on token 1 (q(0) < c1)
    assert tokens.tolist() == [[0], [1]] and commit.tolist() == [[True], [True]]


# 2. routing_features -----------------------------------------------------------------------------------------------

U4 = [0.25, 0.25, 0.25, 0.25]
HALF = [0.5, 0.5, 0.0, 0.0]
ONE = [1.0, 0.0, 0.0, 0.0]


def _feature_inputs():
    probs = torch.tensor([[U4, HALF, ONE, HALF], [U4, ONE, HALF, U4], [HALF, HALF, ONE, U4]])  # [3, 4, 4]
    confidence = torch.tensor([[0.9, 0.5, 0.95, 0.6], [0.3, 0.7, 0.8, 0.4], [0.9, 0.9, 0.9, 0.9]])
    masked = torch.tensor([[True, True, False, True], [False, True, True, True], [False] * 4])
    return probs, confidence, masked, first_masked_span(masked)


ESTIMATOR = EstimatorConfig(token_acceptance_estimator="soft_confidence_power", ssd_confidence_power=2.0)


def _features(needed, entropy_source="span", progress=None, estimator=ESTIMATOR):
    probs, confidence, masked, span = _feature_inputs()
    live = torch.tensor([True, True, False])
    progress = torch.tensor([0.25, 0.5, 1.0]) if progress is None else progress
    return routing_features(probs, confidence, masked, span, live, progress, 4, 0.5, estimator, entropy_source,
                            frozenset(needed))


def test_routing_features_required_and_only_needed():
    f = _features(())
    assert f.span_length.tolist() == [2, 3, 0] and f.active.tolist() == [True, True, False]
    assert f.context_length == 4
    assert (f.progress, f.expected_length, f.n_high, f.n_masked, f.mean_entropy) == (None,) * 5


def test_routing_features_progress_tensor_and_callable():
    assert _features({"progress"}).progress.tolist() == [0.25, 0.5, 1.0]
    calls = []

    def progress():
        calls.append(1)
        return torch.tensor([0.75, 0.0, 0.5])

    assert _features({"progress"}, progress=progress).progress.tolist() == [0.75, 0.0, 0.5]
    assert calls == [1]
    assert _features({"n_masked"}, progress=progress).progress is None and calls == [1]  # not read: not called


def test_routing_features_expected_length_uses_the_given_estimator():
    """soft_confidence_power with power 2: alpha = c^2, K = sum over the span of the running product.
    The default estimator (hard margin 0.05) would give 0 and 1 here."""
    k = _features({"expected_length"}).expected_length.tolist()
    assert k[0] == pytest.approx(0.9 ** 2 + 0.9 ** 2 * 0.5 ** 2, abs=1e-6)  # span {0, 1}
    assert k[1] == pytest.approx(0.49 + 0.49 * 0.64 + 0.49 * 0.64 * 0.16, abs=1e-6)  # span {1, 2, 3}
    assert k[2] == 0.0
    hard = EstimatorConfig(token_acceptance_estimator="hard_margin_threshold", ssd_confidence_margin_threshold=0.6)
    # margins: row 0 span: 0, 0 -> alpha 0; row 1 span: 1 (> 0.6), 0.5, 0 -> K = 1
    assert _features({"expected_length"}, estimator=hard).expected_length.tolist() == [0.0, 1.0, 0.0]


def test_routing_features_counts():
    f = _features({"n_high", "n_masked"})
    # strictly above 0.5 and masked: row 0 -> 0.9, 0.6 (0.5 is not above; 0.95 is decoded); row 1 -> 0.7, 0.8
    assert f.n_high.tolist() == [2, 2, 0]
    assert f.n_masked.tolist() == [3, 3, 0]


@pytest.mark.parametrize("source", ["span", "masked"])
def test_routing_features_mean_entropy_over_the_chosen_positions(source):
    probs, _, masked, span = _feature_inputs()
    where = span.member if source == "span" else masked
    expected = []
    for b in range(3):
        vals = [_norm_entropy(probs[b, i].tolist()) for i in range(4) if where[b, i]]
        expected.append(sum(vals) / len(vals) if vals else 0.0)
    assert expected[0] == pytest.approx(0.75 if source == "span" else 2 / 3)  # the sources differ on row 0
    got = _features({"mean_entropy"}, entropy_source=source).mean_entropy.tolist()
    assert got == pytest.approx(expected, abs=1e-6)


# 3, 7. gamma and the ratio threshold ----------------------------------------------------------------------------


def _one_position(q0, p0):
    """One masked position, draft token 0, q = [q0, 1 - q0], p = [p0, 1 - p0]."""
    q = torch.tensor([[[q0, 1 - q0]]])
    p = torch.tensor([[[p0, 1 - p0]]])
    masked = torch.ones(1, 1, dtype=torch.bool)
    return q, p, torch.zeros(1, 1, dtype=torch.long), torch.tensor([[p0]]), masked, first_masked_span(masked)


@pytest.mark.parametrize("gamma, accepted", [(1.0, False), (0.5, True)])
def test_tempering_factor_changes_the_stochastic_verdict(gamma, accepted):
    """The uniform u is what the seeded generator draws first; q(draft) = r with u^2 < r < u and p = 1:
    r < u rejects at gamma 1, sqrt(r) > u accepts at gamma 0.5."""
    u = torch.rand(1, 1, generator=torch.Generator().manual_seed(0)).item()
    r = (u * u + u) / 2
    q, p, drafts, conf, masked, span = _one_position(r, 1.0)
    _, kinds, verdict, _, _ = verify_spans(q, p, drafts, conf, masked, span, None, 1,
                                           VerifyConfig(ssd_ratio_tempering_factor=gamma),
                                           torch.Generator().manual_seed(0))
    assert verdict.ratio.item() == pytest.approx(r ** gamma, rel=1e-6)
    assert kinds.tolist() == [[COMMIT_ACCEPTED if accepted else COMMIT_RESAMPLED]]


def _greedy_three(q_last, p_last):
    """Span of 3 masked positions: accepted, rejected (greedy), then a position with q/p = q_last/p_last."""
    drafts = torch.tensor([[0, 0, 0]])
    q = torch.tensor([[[0.9, 0.1], [0.1, 0.9], [q_last, 1 - q_last]]])
    p = torch.tensor([[[0.9, 0.1], [0.9, 0.1], [p_last, 1 - p_last]]])
    masked = torch.ones(1, 3, dtype=torch.bool)
    return q, p, drafts, p[..., 0], masked, first_masked_span(masked)


@pytest.mark.parametrize("gamma, last", [(1.0, COMMIT_NONE), (0.5, COMMIT_RATIO)])
def test_tempering_factor_changes_what_the_ratio_threshold_commits(gamma, last):
    """q/p = 0.25 at the last span position: ratio 0.25 < 0.5 at gamma 1, 0.25^0.5 = 0.5 >= 0.5 at gamma 0.5."""
    q, p, drafts, conf, masked, span = _greedy_three(0.25, 1.0)
    cfg = VerifyConfig(acceptance="greedy_exact", ssd_ratio_threshold=0.5, ssd_ratio_tempering_factor=gamma)
    _, kinds, _, _ = verify_commits(q, p, drafts, conf, masked, span, None, 3, cfg)
    assert kinds.tolist() == [[COMMIT_ACCEPTED, COMMIT_RESAMPLED, last]]


def test_ratio_equal_to_threshold_commits():
    """q/p = 0.375 / 0.75 = 0.5 exactly: ratio >= threshold 0.5 commits; threshold 0.5 + 1e-6 does not."""
    q, p, drafts, conf, masked, span = _greedy_three(0.375, 0.75)
    for threshold, last in [(0.5, COMMIT_RATIO), (0.500001, COMMIT_NONE)]:
        cfg = VerifyConfig(acceptance="greedy_exact", ssd_ratio_threshold=threshold)
        _, kinds, verdict, _ = verify_commits(q, p, drafts, conf, masked, span, None, 3, cfg)
        assert verdict.ratio[0, 2].item() == 0.5
        assert kinds.tolist() == [[COMMIT_ACCEPTED, COMMIT_RESAMPLED, last]]


# 4. ssd_threshold_all_spans ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("all_spans", [False, True])
def test_threshold_all_spans_reaches_the_second_run(all_spans):
    """masked [T, T, F, T]: the span is {0, 1} (accepted, rejected); position 3 (ratio 1) gets COMMIT_RATIO
    only with the flag; decoded position 2 (ratio 1 too) never."""
    drafts = torch.tensor([[0, 0, 0, 0]])
    q = torch.tensor([[[0.9, 0.1], [0.1, 0.9], [0.9, 0.1], [0.9, 0.1]]])
    p = torch.tensor([[[0.9, 0.1], [0.9, 0.1], [0.9, 0.1], [0.9, 0.1]]])
    masked = torch.tensor([[True, True, False, True]])
    cfg = VerifyConfig(acceptance="greedy_exact", ssd_ratio_threshold=0.5, ssd_threshold_all_spans=all_spans)
    _, kinds, _, _ = verify_commits(q, p, drafts, p[..., 0], masked, first_masked_span(masked), None, 2, cfg)
    assert kinds.tolist() == [[COMMIT_ACCEPTED, COMMIT_RESAMPLED, COMMIT_NONE,
                               COMMIT_RATIO if all_spans else COMMIT_NONE]]


# 8. where the acceptance uniforms go ----------------------------------------------------------------------------------


def test_uniform_j_lands_on_the_spans_jth_position():
    """Row 0's span starts at block position 2, row 1's at 0; widest 3. Reproducing torch.rand(2, 3) with the
    same seed, ratios are set just above u_j (accept) or just below (reject) at the span's j-th position."""
    seed, eps = 2, 1e-3
    u = torch.rand(2, 3, generator=torch.Generator().manual_seed(seed))
    masked = torch.tensor([[False, False, True, True, True], [True, True, False, False, False]])
    r = torch.full((2, 5), 0.5)
    r[0, 2], r[0, 3], r[0, 4] = u[0, 0] + eps, u[0, 1] + eps, u[0, 2] - eps
    r[1, 0], r[1, 1] = u[1, 0] - eps, u[1, 1] + eps
    q = torch.stack([r, 1 - r], -1)
    p = torch.stack([torch.ones(2, 5), torch.zeros(2, 5)], -1)
    drafts = torch.zeros(2, 5, dtype=torch.long)
    generator = torch.Generator().manual_seed(seed)
    _, kinds, verdict, recovered, _ = verify_spans(q, p, drafts, torch.ones(2, 5), masked,
                                                   first_masked_span(masked), None, 3, VerifyConfig(), generator)
    assert verdict.accepted.tolist() == [[False, False, True, True, False], [False] * 5]
    assert verdict.first_rejected.tolist() == [[False, False, False, False, True], [True] + [False] * 4]
    assert kinds.tolist() == [[0, 0, COMMIT_ACCEPTED, COMMIT_ACCEPTED, COMMIT_RESAMPLED],
                              [COMMIT_RESAMPLED, 0, 0, 0, 0]]
    assert recovered.tolist() == [True, True]
    reference = torch.Generator().manual_seed(seed)
    torch.rand(2, 3, generator=reference)  # exactly one draw of [B, widest]
    assert torch.equal(generator.get_state(), reference.get_state())


# 5. the learning policy's update -------------------------------------------------------------------------------------


def test_step_credits_the_ucb_policy_with_decoded_over_cost():
    """UCB, 2x2x2 buckets, context length 4. Row 0: span 4, progress 0.75, entropy 1 -> bucket
    (1*2 + 1)*2 + 1 = 7; the verifier accepts 2 drafts and rejects the 3rd (recovered), the top-up (min_k 4)
    adds the 4th: 4 decoded over cost 2 -> reward 2.0 on the verify arm. Row 1: span 1 (position 3),
    progress 0.25, entropy 0 -> bucket 0; 1 accepted over cost 2 -> 0.5. Row 2 is not live: untouched.
    Row 3 is live with no mask (not routed): progress 0.5 -> bucket (0*2 + 1)*2 + 0 = 2, skip arm, 0 / 1."""
    probs = torch.tensor([[U4, U4, U4, U4], [ONE, ONE, ONE, ONE], [ONE, ONE, ONE, ONE], [ONE, ONE, ONE, ONE]])
    drafts = torch.tensor([[0, 1, 2, 3], [0, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]])
    confidence = probs.gather(-1, drafts[..., None])[..., 0]
    masked = torch.tensor([[True] * 4, [False, False, False, True], [False] * 4, [False] * 4])
    big = 10.0
    logits = torch.zeros(4, 4, 4)
    logits[0, 0, 0] = logits[0, 1, 1] = logits[0, 2, 0] = logits[0, 3, 3] = big  # rejects position 2's draft 2
    logits[1, :, 0] = big
    flags = S2D2Flags(acceptance="greedy_exact", do_verify_policy="contextual_bandit_ucb", ucb_span_length_bins=2,
                      ucb_block_progress_bins=2, ucb_entropy_bins=2, ucb_entropy_source="masked")
    step, (commit, tokens, kinds) = _step(
        flags, SamplingConfig(), probs, drafts, confidence, masked, logits,
        min_k=torch.tensor([4, 1, 0, 0]), progress=torch.tensor([0.75, 0.25, 0.0, 0.5]),
        live=torch.tensor([True, True, False, True]))
    assert kinds.tolist() == [[COMMIT_ACCEPTED, COMMIT_ACCEPTED, COMMIT_RESAMPLED, COMMIT_DIFFUSION],
                              [0, 0, 0, COMMIT_ACCEPTED], [0] * 4, [0] * 4]
    assert tokens[0].tolist() == [0, 1, 0, 3]
    policy = step.policy
    count = torch.zeros(4, 2, 8, dtype=torch.long)
    reward = torch.zeros(4, 2, 8, dtype=torch.float64)
    count[0, 1, 7], reward[0, 1, 7] = 1, 2.0
    count[1, 1, 0], reward[1, 1, 0] = 1, 0.5
    count[3, 0, 2] = 1  # reward 0.0
    assert torch.equal(policy.count, count)
    assert torch.equal(policy.reward_sum, reward)
    assert policy.t.tolist() == [1, 1, 0, 1]
    assert policy.last_bucket.tolist() == [7, 0, 0, 2]
