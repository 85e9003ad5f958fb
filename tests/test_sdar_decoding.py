"""End-to-end invariants of the SDAR decoders on a tiny random model (float64, so that argmax ties
from rounding cannot make two exact-equivalent paths disagree)."""

from __future__ import annotations

import pytest
import torch

from common.masks import materialize, token_causal
from common.stats import DecodeRecorder
from SDAR import generate as baseline
from SDAR import generate_ssd_policy as s2d2
from SDAR.blocks import BlockDiffusionConfig, SDARBlocks
from SDAR.modeling_sdar import SDARForCausalLM
from SDAR.reference import ar_greedy

MASK_ID = 95
STOP_ID = 3


@pytest.fixture
def model(tiny_sdar_config):
    torch.manual_seed(0)
    m = SDARForCausalLM(tiny_sdar_config).to(torch.float64).eval()
    m.generation_config.mask_token_id = MASK_ID
    m.generation_config.eos_token_id = STOP_ID
    return m


def _prompt(length: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(4, 90, (1, length), generator=g)


def _run(fn, model, ids, seed=123, **kw):
    torch.manual_seed(seed)
    out, stats = fn(model, ids, return_forward_stats=True, **kw)
    return out, stats


def test_verifier_logits_equal_ar_logits(model):
    """2L logits at mask row i == a plain token-causal forward of [prefix, drafts < i, mask at i]."""
    prompt = _prompt(9)
    cfg = BlockDiffusionConfig(block_length=4, gen_length=8, cache_ver=True).resolved(model)
    blocks = SDARBlocks(model, prompt, None, cfg, DecodeRecorder(1))
    blocks.prefill(torch.ones(1, dtype=torch.bool))
    b = blocks.first_block
    drafted = blocks.block(b).clone()
    drafted[drafted == MASK_ID] = torch.tensor([11, 12, 13])  # block = [prompt tail, 3 drafts]
    q_logits = blocks.verify(b, drafted, torch.tensor([0]))[0]  # [L, V]
    start = b * 4
    for i in range(4):
        seq = torch.cat([blocks.x[0, :start], drafted[0, :i], torch.tensor([MASK_ID])])[None]
        mask = materialize(token_causal(), seq.shape[1], seq.shape[1])
        ref = model(input_ids=seq, attention_mask=mask).logits[0, -1]
        ref[MASK_ID] = float("-inf")
        torch.testing.assert_close(q_logits[i], ref, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("strategy", ["low_confidence_dynamic", "low_confidence_static", "sequential", "entropy_bounded"])
@pytest.mark.parametrize("extra", [{}, {"do_sample": True}, {"fold_commit": False, "cache_ver": True, "draft_ver": True}])
def test_never_verify_equals_baseline(model, strategy, extra):
    ids = _prompt(6)
    common = dict(gen_length=20, block_length=4, denoising_steps=4, remasking_strategy=strategy,
                  confidence_threshold=0.05, eb_threshold=2.0, **extra)
    base_out, base_stats = _run(baseline.block_diffusion_generate, model, ids, **common)
    ssd_out, ssd_stats = _run(s2d2.block_diffusion_generate, model, ids, min_ssd_span_length=5, **common)
    assert torch.equal(base_out, ssd_out)
    assert ssd_stats[0]["nfe_by_kind"] == base_stats[0]["nfe_by_kind"]
    assert ssd_stats[0]["verifications"] == 0


@pytest.mark.parametrize("block_length,prompt_len", [(4, 6), (4, 8), (3, 2), (8, 5)])
def test_greedy_exact_equals_ar_greedy(model, block_length, prompt_len):
    ids = _prompt(prompt_len, seed=prompt_len)
    budget = 17
    out, stats = _run(s2d2.block_diffusion_generate, model, ids, gen_length=budget, block_length=block_length,
                      denoising_steps=block_length, acceptance="greedy_exact", cache_ver=True,
                      do_verify_policy="mask_span_length", min_ssd_span_length=1)
    expected = ar_greedy(model, ids[0], MASK_ID, budget, (STOP_ID,))
    n = stats[0]["generated_tokens"] - (1 if len(expected) < budget else 0)
    assert out[0, prompt_len:prompt_len + n].tolist() == expected
    assert stats[0]["verifications"] > 0


def test_ar_mode_costs_one_forward_per_token(model):
    ids = _prompt(5)
    out, stats = _run(baseline.block_diffusion_generate, model, ids, gen_length=12, block_length=1,
                      denoising_steps=1, stopping_criteria_idx=())
    assert stats[0]["generated_tokens"] == 12
    assert stats[0]["nfe_by_kind"] == {"prefill": 1, "draft": 12, "verify": 0, "commit": 0}
    assert out[0, 5:].tolist() == ar_greedy(model, ids[0], MASK_ID, 12)


def test_fold_commit_changes_forwards_not_tokens(model):
    ids = _prompt(7)
    kw = dict(gen_length=16, block_length=4, do_sample=True, stopping_criteria_idx=())
    folded, fs = _run(baseline.block_diffusion_generate, model, ids, **kw)
    separate, ss = _run(baseline.block_diffusion_generate, model, ids, fold_commit=False, **kw)
    assert torch.equal(folded, separate)
    n_blocks = (7 + 16 + 3) // 4 - 7 // 4
    assert ss[0]["nfe_by_kind"]["commit"] == n_blocks
    assert fs[0]["nfe_by_kind"]["commit"] == 0
    assert fs[0]["nfe_by_kind"]["draft"] == ss[0]["nfe_by_kind"]["draft"]


def test_left_padded_batch_matches_single_rows(model):
    """Rows whose padding is a whole number of blocks decode exactly as they do alone."""
    short, long_ = _prompt(5, seed=1)[0], _prompt(9, seed=2)[0]
    batch = torch.stack([torch.cat([torch.zeros(4, dtype=torch.long), short]), long_])
    attn = torch.stack([torch.cat([torch.zeros(4), torch.ones(5)]), torch.ones(9)]).long()
    kw = dict(gen_length=12, block_length=4, acceptance="greedy_exact", cache_ver=True)
    out, stats = _run(s2d2.block_diffusion_generate, model, batch, attention_mask=attn, **kw)
    for row, prompt in enumerate((short, long_)):
        alone, _ = _run(s2d2.block_diffusion_generate, model, prompt[None], **kw)
        assert out[row, 9:].tolist() == alone[0, len(prompt):].tolist()
    assert stats[0]["nfe_by_kind"]["prefill"] == 1


def test_stop_token_trims_and_is_counted(model):
    ids = _prompt(4)
    free, free_stats = _run(baseline.block_diffusion_generate, model, ids, gen_length=16, block_length=4,
                            stopping_criteria_idx=())
    stop = int(free[0, 4 + 5])  # make the 6th generated token a stop token
    out, stats = _run(baseline.block_diffusion_generate, model, ids, gen_length=16, block_length=4,
                      stopping_criteria_idx=(stop,))
    first = free[0, 4:].tolist().index(stop)
    assert out[0, 4:4 + first].tolist() == free[0, 4:4 + first].tolist()
    assert (out[0, 4 + first:] == stop).all()
    assert stats[0]["generated_tokens"] == first + 1


@pytest.mark.parametrize("kwargs,message", [
    ({"do_verify_policy": "sometimes"}, "do_verify_policy|policy"),
    ({"remasking_strategy": "random"}, "remasking_strategy"),
    ({"do_verify_policy": "score_hysteresis", "hysteresis_threshold_on": -1.0, "hysteresis_threshold_off": 0.0}, "hysteresis"),
    ({"block_length": 0}, "block_length"),
    ({"denoising_steps": -2}, "denoising_steps"),
    ({"acceptance": "maybe"}, "acceptance"),
])
def test_bad_config_fails_before_any_forward(model, kwargs, message):
    calls = []
    model.register_forward_pre_hook(lambda *a: calls.append(1))
    with pytest.raises(ValueError, match=message):
        s2d2.block_diffusion_generate(model, _prompt(4), **kwargs)
    assert calls == []


def test_unknown_keyword_is_an_error(model):
    with pytest.raises(TypeError, match="denoise_steps"):
        baseline.block_diffusion_generate(model, _prompt(4), denoise_steps=4)


def test_missing_mask_token_is_an_error(model):
    model.generation_config.mask_token_id = None
    with pytest.raises(ValueError, match="mask"):
        baseline.block_diffusion_generate(model, _prompt(4))


@pytest.mark.parametrize("policy,extra", [
    ("mask_span_length", {"legacy_ssd_span_strategy": True, "min_ssd_span_length": 3}),
    ("score_threshold", {"do_verify_score_type": "difference_static", "score_penalty_coef": 1.0}),
    ("score_hysteresis", {"hysteresis_threshold_on": 1.0, "hysteresis_threshold_off": -5.0}),
    ("contextual_bandit_ucb", {"ucb_entropy_source": "masked"}),
])
@pytest.mark.parametrize("estimator", ["hard_margin_threshold", "soft_entropy_negexp", "soft_renyi_2_entropy"])
def test_every_policy_decodes_consistently(model, policy, extra, estimator):
    ids = _prompt(6)
    out, stats = _run(s2d2.block_diffusion_generate, model, ids, gen_length=16, block_length=4, do_sample=True,
                      do_verify_policy=policy, token_acceptance_estimator=estimator, stopping_criteria_idx=(),
                      **extra)
    row = stats[0]
    assert (out[0, 6:] != MASK_ID).all() and row["generated_tokens"] == 16
    assert row["nfe_by_kind"]["draft"] == row["routing_decisions"]
    assert row["nfe_by_kind"]["verify"] == row["verifications"] <= row["routing_decisions"]
    assert all(0 <= n <= 4 for n in row["accepted_lengths"])


def test_ratio_threshold_zero_commits_every_masked_draft(model):
    """Every ratio is >= 0, so one draft + one verify finishes each block with the drafts themselves."""
    ids = _prompt(8)
    out, stats = _run(s2d2.block_diffusion_generate, model, ids, gen_length=16, block_length=4,
                      ssd_ratio_threshold=0.0, ssd_threshold_all_spans=True, stopping_criteria_idx=(),
                      record_decoding_order=True)
    kinds = stats[0]["nfe_by_kind"]
    assert kinds["draft"] == kinds["verify"] == 4


def test_high_confidence_commits_and_no_resample(model):
    ids = _prompt(5)
    _, hc = _run(s2d2.block_diffusion_generate, model, ids, gen_length=16, block_length=8, denoising_steps=8,
                 always_check_high_confidence=True, confidence_threshold=0.0, stopping_criteria_idx=())
    assert hc[0]["nfe_by_kind"]["draft"] == 3  # everything left after verification clears the zero threshold
    out, nr = _run(s2d2.block_diffusion_generate, model, ids, gen_length=16, block_length=8, denoising_steps=8,
                   allow_resample=False, do_sample=True, stopping_criteria_idx=())
    assert nr[0]["resamples"] == 0 and (out[0, 5:] != MASK_ID).all()


@pytest.mark.parametrize("block_length", [4, 8])
def test_the_deferred_residual_draw_changes_no_token_and_saves_reads(model, monkeypatch, block_length):
    """SDAR's S2D2 step reads the residual draw's count with the rows left in the block (one host read
    instead of two). Sampled decoding of a batch, with the same seed, gives the same tokens and stats as
    the step that draws at once, with fewer reads (value reads, nonzero and tolist, as the benchmark
    counts them)."""
    from common import s2d2 as core

    prompts = torch.cat([_prompt(8, seed=s) for s in range(3)])
    kw = dict(gen_length=16, block_length=block_length, do_sample=True, do_verify_policy="mask_span_length",
              min_ssd_span_length=1, stopping_criteria_idx=(), cache_ver=True, draft_ver=True)

    def decode():
        tolist_calls = []
        original = torch.Tensor.tolist

        def counted(self):
            tolist_calls.append(1)
            return original(self)

        monkeypatch.setattr(torch.Tensor, "tolist", counted)
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            ids, stats = s2d2.block_diffusion_generate(model, prompts, generator=torch.Generator().manual_seed(7),
                                                       return_forward_stats=True, **kw)
        monkeypatch.setattr(torch.Tensor, "tolist", original)
        reads = len(tolist_calls) + sum(e.name in ("aten::_local_scalar_dense", "aten::nonzero") for e in prof.events())
        return ids, [{k: v for k, v in row.items() if k not in ("wall_time", "tokens_per_second")} for row in stats], reads

    deferred = decode()

    class AtOnce(core.S2D2Step):
        def __init__(self, *args, count_rows_left=False, **kwargs):
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(s2d2.s2d2, "S2D2Step", AtOnce)
    at_once = decode()
    assert torch.equal(deferred[0], at_once[0]) and deferred[1] == at_once[1]
    assert sum(row["resamples"] for row in deferred[1]) > 0  # some spans were rejected and redrawn
    assert deferred[2] < at_once[2]
