"""The logits->probs transform, draft sampling and the acceptance rules, including a chi-square
test that stochastic acceptance + residual resampling yields exactly the verifier distribution."""

import math

import pytest
import torch

from common.acceptance import (acceptance_ratio, greedy_exact_verdict, recover_tokens, residual_distribution,
                               stochastic_verdict)
from common.sampling import SamplingConfig, draft_tokens, logits_to_probs, sample_rows


def test_temperature_zero_is_plain_softmax_and_argmax():
    logits = torch.tensor([[[2.0, 1.0, 0.0, -1.0]]])
    cfg = SamplingConfig(temperature=0.0, top_k=1, top_p=0.5, do_sample=True)
    probs = logits_to_probs(logits, cfg)
    torch.testing.assert_close(probs, torch.softmax(logits, -1))
    tokens, conf = draft_tokens(probs, cfg)
    assert tokens.item() == 0 and conf.item() == pytest.approx(probs[0, 0, 0].item())


def test_temperature_top_k_top_p():
    logits = torch.log(torch.tensor([0.5, 0.3, 0.15, 0.05]))
    hot = logits_to_probs(logits, SamplingConfig(temperature=2.0))
    torch.testing.assert_close(hot, torch.softmax(logits / 2, -1))
    top2 = logits_to_probs(logits, SamplingConfig(top_k=2))
    torch.testing.assert_close(top2, torch.tensor([0.625, 0.375, 0.0, 0.0]))
    nucleus = logits_to_probs(logits, SamplingConfig(top_p=0.8))  # 0.5 + 0.3 reaches 0.8
    torch.testing.assert_close(nucleus, torch.tensor([0.625, 0.375, 0.0, 0.0]))
    one = logits_to_probs(logits, SamplingConfig(top_p=0.1))
    torch.testing.assert_close(one, torch.tensor([1.0, 0.0, 0.0, 0.0]))
    # Exact boundary (float32 0.5 + 0.3 is 0.80000007, which cannot tell `>` from `>=`): four equal logits
    # give masses 0.25 exactly; the smallest prefix *reaching* top_p is kept and nothing after it.
    flat = torch.zeros(4)
    for top_p, kept in [(0.5, 2), (0.75, 3), (0.5000001, 3), (0.25, 1)]:
        out = logits_to_probs(flat, SamplingConfig(top_p=top_p))
        assert int((out > 0).sum()) == kept
        torch.testing.assert_close(out[out > 0], torch.full((kept,), 1.0 / kept))


@pytest.mark.parametrize("bad", [dict(temperature=-1.0), dict(top_k=-1), dict(top_p=0.0), dict(top_p=1.5)])
def test_sampling_config_validation(bad):
    with pytest.raises(ValueError):
        SamplingConfig(**bad)


def test_sampled_drafts_use_one_multinomial_in_row_major_order():
    probs = torch.softmax(torch.randn(2, 3, 7, generator=torch.Generator().manual_seed(0)), -1)
    torch.manual_seed(5)
    tokens, conf = draft_tokens(probs, SamplingConfig(do_sample=True))
    torch.manual_seed(5)
    expected = torch.multinomial(probs.reshape(6, 7), 1).view(2, 3)
    assert torch.equal(tokens, expected)
    torch.testing.assert_close(conf, probs.gather(-1, expected[..., None])[..., 0])


def test_identical_p_and_q_accept_everything():
    p = torch.rand(3, 5) * 0.9 + 0.05
    span = torch.ones(3, 5, dtype=torch.bool)
    verdict = stochastic_verdict(p, p, span, torch.rand(3, 5) * 0.999)
    assert verdict.n_accepted.tolist() == [5, 5, 5] and not verdict.rejected.any()


def test_prefix_stops_at_first_rejection_inside_span():
    q = torch.tensor([[0.9, 0.9, 0.1, 0.9, 0.9]])
    p = torch.tensor([[0.5, 0.5, 0.5, 0.5, 0.5]])
    span = torch.tensor([[False, True, True, True, False]])
    u = torch.tensor([[0.99, 0.5, 0.5, 0.1, 0.1]])
    verdict = stochastic_verdict(q, p, span, u)
    assert verdict.accepted.int().tolist() == [[0, 1, 0, 0, 0]]
    assert verdict.n_accepted.item() == 1 and verdict.rejected.item() and verdict.reject_index.item() == 2
    torch.testing.assert_close(verdict.ratio, torch.tensor([[1.0, 1.0, 0.2, 1.0, 1.0]]))


def test_ratio_tempering():
    r = acceptance_ratio(torch.tensor([0.25]), torch.tensor([1.0]), gamma=0.5)
    assert r.item() == pytest.approx(0.5)


def test_greedy_exact_verdict_and_recovery():
    drafts = torch.tensor([[4, 5, 6, 7]])
    q_argmax = torch.tensor([[4, 5, 0, 7]])
    span = torch.tensor([[True, True, True, True]])
    verdict = greedy_exact_verdict(drafts, q_argmax, span, torch.ones(1, 4))
    assert verdict.n_accepted.item() == 2 and verdict.reject_index.item() == 2
    q_rows = torch.tensor([[0.1, 0.7, 0.2]])
    assert recover_tokens(q_rows, q_rows, "greedy_exact").tolist() == [1]


def test_residual_falls_back_to_q_when_empty():
    q = torch.tensor([[0.2, 0.8], [0.6, 0.4]])
    p = torch.tensor([[0.2, 0.8], [0.2, 0.8]])
    res = residual_distribution(q, p)
    torch.testing.assert_close(res, torch.tensor([[0.2, 0.8], [1.0, 0.0]]))


def test_residual_falls_back_to_q_not_p():
    """p != q with no positive residual mass (p >= q everywhere, p not normalised), and a NaN / inf residual
    mass: the documented fallback is q, never p."""
    q = torch.tensor([[0.4, 0.6], [0.3, 0.7], [0.3, 0.7]])
    p = torch.tensor([[0.5, 0.9], [float("nan"), 0.5], [float("-inf"), 0.5]])
    res = residual_distribution(q, p)
    torch.testing.assert_close(res, q)


def test_speculative_sampling_recovers_q_chi_square():
    """Draft x ~ p, accept with min(1, q/p), else resample from (q-p)+: the committed token is ~ q."""
    gen = torch.Generator().manual_seed(1234)
    n, v = 200_000, 6
    p = torch.tensor([0.30, 0.25, 0.20, 0.15, 0.07, 0.03])
    q = torch.tensor([0.05, 0.10, 0.15, 0.20, 0.25, 0.25])
    drafts = torch.multinomial(p, n, replacement=True, generator=gen)  # [N]
    verdict = stochastic_verdict(q[drafts][:, None], p[drafts][:, None], torch.ones(n, 1, dtype=torch.bool),
                                 torch.rand(n, 1, generator=gen))
    out = drafts.clone()
    rejected = verdict.rejected
    out[rejected] = recover_tokens(q.expand(int(rejected.sum()), v), p.expand(int(rejected.sum()), v),
                                   "stochastic", gen)
    counts = torch.bincount(out, minlength=v).double()
    expected = q.double() * n
    chi2 = float(((counts - expected) ** 2 / expected).sum())
    assert chi2 < 20.5  # chi-square critical value, 5 dof, p = 0.001
    counts_p = torch.bincount(drafts, minlength=v).double()
    assert float(((counts_p - expected) ** 2 / expected).sum()) > 1000  # the test can tell p from q
    acceptance = 1 - rejected.double().mean().item()
    assert acceptance == pytest.approx(float(torch.minimum(p, q).sum()), abs=0.01)
    assert not math.isnan(chi2)


def test_sample_rows_is_multinomial_draw_for_draw():
    """sample_rows skips multinomial's host-side input checks but must give its samples and leave the
    generator where multinomial leaves it (zeros, ties and a one-hot row included)."""
    probs = torch.softmax(torch.randn(6, 40, generator=torch.Generator().manual_seed(3)) * 4, -1)
    probs[1, ::2] = 0
    probs[1] /= probs[1].sum()
    probs[2] = 0
    probs[2, 7] = 1
    for seed in range(20):
        ours, theirs = torch.Generator().manual_seed(seed), torch.Generator().manual_seed(seed)
        assert torch.equal(sample_rows(probs, ours), torch.multinomial(probs, 1, generator=theirs).squeeze(-1))
        assert torch.equal(torch.rand(4, generator=ours), torch.rand(4, generator=theirs))
