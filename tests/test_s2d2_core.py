"""common/s2d2.py on literal tensors: what one verification commits and how a step is topped up."""

import pytest
import torch

from common.s2d2 import S2D2Flags, S2D2Step, TopUp, VerifyConfig, top_up, verify_commits
from common.sampling import SamplingConfig
from common.spans import first_masked_span
from common.stats import DecodeRecorder
from common.stats import COMMIT_ACCEPTED, COMMIT_DIFFUSION, COMMIT_HIGH_CONF, COMMIT_RATIO, COMMIT_RESAMPLED


def _onehot_probs(tokens, v=5, mass=0.9):
    probs = torch.full((*tokens.shape, v), (1 - mass) / (v - 1))
    return probs.scatter(-1, tokens[..., None], mass)


def test_greedy_exact_commits_prefix_and_correction():
    masked = torch.tensor([[False, True, True, True]])
    drafts = torch.tensor([[1, 2, 3, 4]])
    q = _onehot_probs(torch.tensor([[1, 2, 0, 4]]))  # verifier disagrees at position 2
    p = _onehot_probs(drafts)
    span = first_masked_span(masked)
    tokens, kinds, verdict, recovered = verify_commits(
        q, p, drafts, p.gather(-1, drafts[..., None])[..., 0], masked, span, torch.tensor([True]), 3,
        VerifyConfig(acceptance="greedy_exact"))
    assert kinds.tolist() == [[0, COMMIT_ACCEPTED, COMMIT_RESAMPLED, 0]]
    assert tokens.tolist() == [[1, 2, 0, 4]] and recovered.tolist() == [True]
    assert verdict.n_accepted.tolist() == [1]


def test_rows_not_verified_commit_nothing_and_ratio_threshold_extends():
    masked = torch.tensor([[True, True, True], [True, True, True]])
    drafts = torch.tensor([[1, 2, 3], [1, 2, 3]])
    q = _onehot_probs(torch.tensor([[1, 0, 3], [1, 2, 3]]))
    p = _onehot_probs(drafts)
    conf = p.gather(-1, drafts[..., None])[..., 0]
    cfg = VerifyConfig(acceptance="greedy_exact", ssd_ratio_threshold=0.5)
    _, kinds, _, _ = verify_commits(q, p, drafts, conf, masked, first_masked_span(masked),
                                    torch.tensor([True, False]), 3, cfg)
    assert kinds.tolist() == [[COMMIT_ACCEPTED, COMMIT_RESAMPLED, COMMIT_RATIO], [0, 0, 0]]


def test_no_resample_leaves_rejected_position_masked():
    masked = torch.tensor([[True, True]])
    drafts = torch.tensor([[1, 2]])
    q = _onehot_probs(torch.tensor([[0, 0]]), mass=0.999)
    p = _onehot_probs(drafts, mass=0.999)
    conf = p.gather(-1, drafts[..., None])[..., 0]
    torch.manual_seed(0)
    _, kinds, verdict, recovered = verify_commits(q, p, drafts, conf, masked, first_masked_span(masked),
                                                  torch.tensor([True]), 2, VerifyConfig(allow_resample=False))
    assert verdict.n_accepted.tolist() == [0] and kinds.tolist() == [[0, 0]] and not recovered.any()


@pytest.mark.parametrize("high_confidence", [False, True])
def test_top_up_never_touches_decoded_and_reaches_min_k(high_confidence):
    masked = torch.tensor([[False, True, True, True]])
    kinds = torch.zeros(1, 4, dtype=torch.long)
    conf = torch.tensor([[0.99, 0.95, 0.2, 0.3]])
    probs = torch.softmax(torch.randn(1, 4, 5), -1)
    out = top_up(kinds, masked, conf, torch.tensor([2]), torch.tensor([True]), strategy="low_confidence_static",
                 threshold=0.9, probs=probs, eb_threshold=0.35, high_confidence=high_confidence)
    assert out[0, 0] == 0
    if high_confidence:
        assert out.tolist() == [[0, COMMIT_HIGH_CONF, 0, COMMIT_DIFFUSION]]
    else:
        assert out.tolist() == [[0, COMMIT_DIFFUSION, 0, COMMIT_DIFFUSION]]


def test_verify_config_validation():
    with pytest.raises(ValueError, match="acceptance"):
        VerifyConfig(acceptance="lenient")
    with pytest.raises(ValueError, match="tempering"):
        VerifyConfig(ssd_ratio_tempering_factor=0.0)


def _step_inputs(batch=5, length=4, vocab=7, seed=0):
    g = torch.Generator().manual_seed(seed)
    probs = torch.softmax(torch.randn(batch, length, vocab, generator=g) * 3, -1)
    confidence, drafts = probs.max(-1)
    masked = torch.rand(batch, length, generator=g) < 0.7
    masked[0] = True
    current = torch.where(masked, 6, drafts)
    verifier_logits = torch.randn(batch, length, vocab, generator=g) * 3
    return probs, drafts, confidence, current, masked, verifier_logits


def _run_step(flags, inputs, min_k, min_k_max, rule, generator=None, count_rows_left=False, out=None):
    probs, drafts, confidence, current, masked, verifier_logits = inputs
    step = S2D2Step(flags, SamplingConfig(), masked.shape[0], "cpu", generator, count_rows_left=count_rows_left)
    if out is not None:
        out.append(step)
    return step(probs, drafts, confidence, current, masked, masked.any(-1), progress=torch.zeros(masked.shape[0]),
                context_length=masked.shape[1], min_k=min_k, min_k_max=min_k_max, top_up_rule=rule,
                verify=lambda drafted, rows: verifier_logits[rows], recorder=DecodeRecorder(masked.shape[0]))


@pytest.mark.parametrize("acceptance", ["greedy_exact", "stochastic"])
def test_skipping_a_met_top_up_changes_nothing(acceptance):
    """With every row verifying and min_k <= 1 the step skips the top-up rule; the commits are what the
    rule would have left them."""
    flags = S2D2Flags(acceptance=acceptance, do_verify_policy="mask_span_length")
    rule = TopUp("low_confidence_dynamic", 0.5)
    for seed in range(10):
        inputs = _step_inputs(seed=seed)
        inputs[4][:] |= torch.arange(4) == 0  # every row has a span: every row verifies
        min_k = inputs[4].sum(-1).clamp(max=1)
        skipped = _run_step(flags, inputs, min_k, 1, rule, torch.Generator().manual_seed(seed))
        applied = _run_step(flags, inputs, min_k, None, rule, torch.Generator().manual_seed(seed))
        assert all(torch.equal(a, b) for a, b in zip(skipped, applied))


def _host_syncs(fn):
    """(sync ops, tolist calls) made by fn(): value reads and data-dependent shapes, as the benchmark counts."""
    calls = []
    original = torch.Tensor.tolist

    def counted(self):
        calls.append(1)
        return original(self)

    torch.Tensor.tolist = counted
    try:
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            fn()
    finally:
        torch.Tensor.tolist = original
    names = [e.name for e in prof.events()]
    return sum(n in ("aten::_local_scalar_dense", "aten::nonzero") for n in names), len(calls)


def test_host_syncs_of_a_step():
    """Greedy-exact: one read per step (the routed rows' span lengths). Stochastic: one more when a span
    is rejected (the residual draw needs the count), none for multinomial's input checks."""
    inputs = _step_inputs()
    rule = TopUp("low_confidence_dynamic", 0.5)
    min_k = inputs[4].sum(-1).clamp(max=1)
    greedy = S2D2Flags(acceptance="greedy_exact", do_verify_policy="mask_span_length")
    assert _host_syncs(lambda: _run_step(greedy, inputs, min_k, 1, rule)) == (0, 1)
    stochastic = S2D2Flags(do_verify_policy="mask_span_length")
    recovered = _run_step(stochastic, inputs, min_k, 1, rule, torch.Generator().manual_seed(0))[2] == COMMIT_RESAMPLED
    assert recovered.any()  # the random verifier rejects some span
    syncs = _host_syncs(lambda: _run_step(stochastic, inputs, min_k, 1, rule, torch.Generator().manual_seed(0)))
    assert syncs == (1, 1)


@pytest.mark.parametrize("policy", ["mask_span_length", "score_threshold"])
def test_a_deferred_residual_draw_commits_the_same_and_reads_the_rows_left(policy):
    """count_rows_left: the residual draw moves after the top-up (which draws nothing) and its count is
    read with the rows that keep masks; the step commits exactly what the immediate draw commits, leaves
    the generator in the same state, and reports that row count. Over seeds, some steps verify a subset
    of rows (score_threshold) and some reject spans."""
    flags = S2D2Flags(do_verify_policy=policy, do_verify_score_type="difference_static")
    rule = TopUp("low_confidence_dynamic", 0.5)
    rejected_somewhere = 0
    for seed in range(12):
        inputs = _step_inputs(seed=seed)
        min_k = inputs[4].sum(-1).clamp(max=2)
        now_gen, later_gen = torch.Generator().manual_seed(seed), torch.Generator().manual_seed(seed)
        now = _run_step(flags, inputs, min_k, 2, rule, now_gen)
        steps = []
        later = _run_step(flags, inputs, min_k, 2, rule, later_gen, count_rows_left=True, out=steps)
        assert all(torch.equal(a, b) for a, b in zip(now, later))
        assert torch.equal(now_gen.get_state(), later_gen.get_state())
        rejected_somewhere += int((now[2] == COMMIT_RESAMPLED).any())
        commit, masked = later[0], inputs[4]
        verified = bool(((now[2] == COMMIT_ACCEPTED) | (now[2] == COMMIT_RESAMPLED)).any())
        assert steps[0].rows_left == (int((masked & ~commit).any(-1).sum()) if verified else None)
    assert rejected_somewhere >= 3


def test_a_deferred_residual_draw_is_one_read_with_the_rows_left():
    """The stochastic step with count_rows_left reads once after the verifier forward: the rejected
    rows' count and the rows left, together (no nonzero)."""
    inputs = _step_inputs()
    rule = TopUp("low_confidence_dynamic", 0.5)
    min_k = inputs[4].sum(-1).clamp(max=1)
    stochastic = S2D2Flags(do_verify_policy="mask_span_length")
    syncs = _host_syncs(lambda: _run_step(stochastic, inputs, min_k, 1, rule, torch.Generator().manual_seed(0),
                                          count_rows_left=True))
    assert syncs == (0, 2)


def test_residual_draws_are_one_multinomial_over_the_rejected_rows_in_order():
    """The stochastic verification recovers each rejected row's first rejected position with one call
    drawing a sample per rejected row, in row order, from norm((q - p)+): what `torch.multinomial` draws
    from those rows with the same generator (the reference's order), and nothing is drawn for the rows
    that accepted everything."""
    from common.acceptance import residual_distribution

    probs, drafts, confidence, current, masked, verifier_logits = _step_inputs(batch=6, seed=3)
    masked[:, 0] = True
    q = torch.softmax(verifier_logits, -1)
    q[[1, 4]] = probs[[1, 4]]  # q = p: every draft accepted (ratio 1)
    span = first_masked_span(masked)
    widest = int(span.length.max())
    generator = torch.Generator().manual_seed(11)
    tokens, _, verdict, recovered = verify_commits(q, probs, drafts, confidence, masked, span, None, widest,
                                                   VerifyConfig(), generator)
    assert 0 < int(recovered.sum()) < 6  # some rows rejected, some accepted their whole span
    reference = torch.Generator().manual_seed(11)
    torch.rand(6, widest, generator=reference)  # the acceptance uniforms come first
    rows = recovered.nonzero().squeeze(-1)
    at = verdict.first_rejected.int().argmax(-1)[rows]
    expected = torch.multinomial(residual_distribution(q[rows, at], probs[rows, at]), 1, generator=reference)[:, 0]
    assert tokens[rows, at].tolist() == expected.tolist()
    assert torch.equal(generator.get_state(), reference.get_state())
    untouched = torch.ones_like(drafts, dtype=torch.bool)
    untouched[rows, at] = False
    assert torch.equal(tokens[untouched], drafts[untouched])


def test_values_read_with_the_routing_cost_no_extra_read():
    """read_with_routing: the family's values come back on the host in the routing's one read, before
    the verifier forward runs."""
    probs, drafts, confidence, current, masked, verifier_logits = _step_inputs()
    masked[:, 0] = True
    flags = S2D2Flags(acceptance="greedy_exact", do_verify_policy="mask_span_length")
    step = S2D2Step(flags, SamplingConfig(), masked.shape[0], "cpu")
    seen = []

    def verify(drafted, rows):
        seen.append(list(step.routing_reads))
        return verifier_logits[rows]

    def run():
        step(probs, drafts, confidence, current, masked, masked.any(-1), progress=torch.zeros(masked.shape[0]),
             context_length=masked.shape[1], min_k=masked.sum(-1).clamp(max=1), min_k_max=1,
             top_up_rule=TopUp("low_confidence_dynamic", 0.5), verify=verify,
             recorder=DecodeRecorder(masked.shape[0]),
             read_with_routing=lambda routed: torch.stack([routed.sum(), routed.long().argmax()]))

    assert _host_syncs(run) == (0, 1)
    assert seen == [[masked.shape[0], 0]]  # every row routes (each has a span); the first is row 0
