"""End-to-end invariants of the Fast-dLLM v2 decoders on a tiny random model (float64, so that argmax
ties from rounding cannot make two exact-equivalent paths disagree)."""

from __future__ import annotations

import copy
import inspect

import pytest
import torch

from common.stats import DecodeRecorder
from fast_dllm_v2 import example_v2
from fast_dllm_v2.blocks import FastDecodeConfig, FastDLLMBlocks
from fast_dllm_v2.generate import generate
from fast_dllm_v2.generate_ssd_policy import generate_ssd_policy
from fast_dllm_v2.modeling_fast_dllm import Fast_dLLM_QwenForCausalLM
from fast_dllm_v2.reference import ar_greedy

MASK_ID = 95
STOP_ID = 3
SHAPE = dict(block_size=8, small_block_size=4)


def _build(config, layers: int | None = None) -> Fast_dLLM_QwenForCausalLM:
    config = copy.deepcopy(config)
    if layers is not None:
        config.num_hidden_layers, config.layer_types = layers, ["full_attention"] * layers
    torch.manual_seed(0)
    model = Fast_dLLM_QwenForCausalLM(config).to(torch.float64).eval()
    model.generation_config.mask_token_id = MASK_ID
    model.generation_config.eos_token_id = STOP_ID
    return model


@pytest.fixture
def model(tiny_fast_dllm_config):
    return _build(tiny_fast_dllm_config)


def _prompt(length: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(4, 90, (1, length), generator=torch.Generator().manual_seed(seed))


def _run(fn, model, ids, seed=123, **kw):
    out, stats = fn(model, ids, generator=torch.Generator().manual_seed(seed), return_forward_stats=True, **kw)
    return out, stats[0]


def test_causal_verifier_logits_equal_per_position_ar_logits(model):
    """Shifted verifier logit of every sub-block position t (bar a block's first position, which is never
    masked) == the last logit of a plain causal forward of [tokens and drafts before t], no cache."""
    prompt = _prompt(10)
    cfg = FastDecodeConfig(max_new_tokens=6, cache_ver=True, **SHAPE).resolved(model)
    blocks = FastDLLMBlocks(model, prompt, None, cfg, DecodeRecorder(1))
    blocks.prefill(torch.ones(1, dtype=torch.bool))
    drafts = torch.tensor([[11, 12, 13, 14, 15, 16, 17, 18]])
    for s in (0, 1):
        sub = blocks.sub_block(1, s)
        sub.copy_(torch.where(sub == MASK_ID, drafts[:, 4 * s : 4 * s + 4], sub))
        q_logits = blocks.verify(1, s, sub.clone(), torch.tensor([0]))[0]  # [S, V]
        for i in range(4):
            t = 8 + 4 * s + i
            if t == 8:
                continue
            ref = model(input_ids=blocks.x[:, :t], block_size=1).logits[0, -1]
            ref[MASK_ID] = float("-inf")
            torch.testing.assert_close(q_logits[i], ref, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("fn,extra", [(generate, {}), (generate, {"temperature": 0.8, "top_p": 0.9}),
                                      (generate_ssd_policy, {"acceptance": "stochastic", "temperature": 1.0})])
@pytest.mark.parametrize("small_block_size", [2, 4])
def test_block_cache_gives_the_same_tokens(tiny_fast_dllm_config, fn, extra, small_block_size):
    """With one layer, K/V depend on token and position only, so the block cache is exact: sub-block
    forwards must give the tokens of full-block forwards, in the same number of steps, never wider."""
    model = _build(tiny_fast_dllm_config, layers=1)
    kw = dict(max_new_tokens=22, block_size=8, small_block_size=small_block_size, threshold=0.3,
              stopping_criteria_idx=(), **extra)
    plain, plain_stats = _run(fn, model, _prompt(7), **kw)
    cached, cached_stats = _run(fn, model, _prompt(7), use_block_cache=True, **kw)
    assert torch.equal(plain, cached)
    assert plain_stats["nfe_by_kind"] == cached_stats["nfe_by_kind"]
    assert cached_stats["mean_query_width"] <= plain_stats["mean_query_width"]
    if fn is generate:  # sub-blocks take several steps, so some drafts are sub-block wide
        assert cached_stats["mean_query_width"] < plain_stats["mean_query_width"]


def test_block_cache_on_a_deeper_model_still_decodes(model):
    out, stats = _run(generate, model, _prompt(5), max_new_tokens=20, use_block_cache=True, threshold=0.3,
                      stopping_criteria_idx=(), **SHAPE)
    assert (out[0, 5:] != MASK_ID).all() and stats["generated_tokens"] == 20


@pytest.mark.parametrize("extra", [{}, {"temperature": 1.0}, {"temperature": 0.7, "use_block_cache": True},
                                   {"cache_ver": True, "draft_ver": True}])
def test_never_verify_equals_baseline(model, extra):
    ids = _prompt(6)
    kw = dict(max_new_tokens=24, threshold=0.2, **SHAPE, **extra)
    base, base_stats = _run(generate, model, ids, **kw)
    ssd, ssd_stats = _run(generate_ssd_policy, model, ids, min_ssd_span_length=5, **kw)
    assert torch.equal(base, ssd)
    assert ssd_stats["nfe_by_kind"] == base_stats["nfe_by_kind"] and ssd_stats["verifications"] == 0


@pytest.mark.parametrize("prompt_len,shape,extra", [
    (6, SHAPE, {}),
    (8, SHAPE, {}),  # P == block_size: the reference ignores this prompt
    (16, SHAPE, {"use_block_cache": True}),
    (3, dict(block_size=8, small_block_size=2), {"draft_ver": True}),
    (9, dict(block_size=4, small_block_size=4), {"temperature": 1.0}),
])
def test_greedy_exact_always_verify_equals_ar_greedy(model, prompt_len, shape, extra):
    ids = _prompt(prompt_len, seed=prompt_len)
    budget = 21
    out, stats = _run(generate_ssd_policy, model, ids, max_new_tokens=budget, acceptance="greedy_exact",
                      cache_ver=True, do_verify_policy="mask_span_length", min_ssd_span_length=1, **shape, **extra)
    expected = ar_greedy(model, ids[0], MASK_ID, budget, (STOP_ID,))
    assert out[0, prompt_len:prompt_len + stats["generated_tokens"]].tolist() == expected
    assert stats["verifications"] > 0
    assert stats["nfe_by_kind"]["prefill"] == int(prompt_len >= shape["block_size"])


def test_forward_accounting(model):
    """P = 8 = one block: prefill (with the first generated token for free), then per block drafts and one
    commit, none after the last block; the budget is met exactly."""
    out, stats = _run(generate, model, _prompt(8), max_new_tokens=20, threshold=1.0, stopping_criteria_idx=(), **SHAPE)
    assert out.shape == (1, 28) and stats["generated_tokens"] == 20 and (out[0, 8:] != MASK_ID).all()
    # 3 blocks cover columns 8..31, each opened by its AR token; threshold 1 commits one token per draft
    # (no confidence exceeds 1).
    # The budget ends at column 28, so the last block decodes 25..27 only: columns 28..31 are never output.
    assert stats["nfe_by_kind"] == {"prefill": 1, "draft": 7 + 7 + 3, "verify": 0, "commit": 2}


@pytest.mark.parametrize("policy,extra", [
    ("mask_span_length", {"min_ssd_span_length": 2}),
    ("score_threshold", {"do_verify_score_type": "difference_static", "score_penalty_coef": 1.0}),
    ("score_hysteresis", {"hysteresis_threshold_on": 1.0, "hysteresis_threshold_off": -5.0, "score_penalty_coef": 1.0}),
    ("contextual_bandit_ucb", {"ucb_entropy_source": "masked"}),
])
@pytest.mark.parametrize("estimator", ["hard_margin_threshold", "soft_entropy_negexp", "soft_renyi_2_entropy"])
def test_every_policy_decodes_consistently(model, policy, extra, estimator):
    out, row = _run(generate_ssd_policy, model, _prompt(6), max_new_tokens=18, temperature=1.0, threshold=0.5,
                    do_verify_policy=policy, token_acceptance_estimator=estimator, stopping_criteria_idx=(),
                    **SHAPE, **extra)
    assert (out[0, 6:] != MASK_ID).all() and row["generated_tokens"] == 18
    assert row["nfe_by_kind"]["draft"] == row["routing_decisions"]
    assert row["nfe_by_kind"]["verify"] == row["verifications"] <= row["routing_decisions"]
    assert all(0 <= n <= 4 for n in row["accepted_lengths"])


def test_no_resample_and_decoding_order(model):
    out, row = _run(generate_ssd_policy, model, _prompt(5), max_new_tokens=16, temperature=1.0, allow_resample=False,
                    stopping_criteria_idx=(), return_decoding_order=True, **SHAPE)
    assert row["resamples"] == 0 and (out[0, 5:] != MASK_ID).all()
    order = row["decoding_order"]
    assert order.count("|") == 3 and order.count(-(8 + 0.5)) == 1  # the AR token of block 1
    # every masked position up to the budget's end (column 21): 5-7, 9-15, 17-20; plus 2 AR tokens
    assert len(order) - order.count("|") == (3 + 7 + 4) + 2


def test_stop_token_is_included_and_counted(model):
    ids = _prompt(4)
    free, _ = _run(generate, model, ids, max_new_tokens=20, threshold=0.3, stopping_criteria_idx=(), **SHAPE)
    stop = int(free[0, 4 + 6])
    first = free[0, 4:].tolist().index(stop)
    out, row = _run(generate, model, ids, max_new_tokens=20, threshold=0.3, stopping_criteria_idx=(stop,), **SHAPE)
    assert out[0, 4:4 + first + 1].tolist() == free[0, 4:4 + first + 1].tolist()
    assert (out[0, 4 + first:] == stop).all() and row["generated_tokens"] == first + 1


def test_a_model_that_predicts_the_mask_token_still_finishes(model):
    with torch.no_grad():
        model.lm_head.weight[MASK_ID] = 10 * model.lm_head.weight.abs().max()
    for fn in (generate, generate_ssd_policy):
        out, row = _run(fn, model, _prompt(6), max_new_tokens=12, stopping_criteria_idx=(), **SHAPE)
        assert (out[0, 6:] != MASK_ID).all() and row["generated_tokens"] == 12


@pytest.mark.parametrize("fn,extra", [(generate, {}), (generate_ssd_policy, {"acceptance": "greedy_exact"}),
                                      (generate_ssd_policy, {"acceptance": "greedy_exact", "use_block_cache": True})])
def test_left_padded_batch_matches_single_rows(model, fn, extra):
    """Rows whose padding is a whole number of blocks decode exactly as they do alone, also when one row
    stops long before the other (greedy-exact S2D2 is AR decoding whatever the drafts, so even a
    batch-wide block-cache refresh cannot change its tokens)."""
    short, long_ = _prompt(5, seed=1)[0], _prompt(13, seed=2)[0]
    batch = torch.stack([torch.cat([torch.zeros(8, dtype=torch.long), short]), long_])
    attn = torch.stack([torch.cat([torch.zeros(8), torch.ones(5)]), torch.ones(13)]).long()
    kw = dict(max_new_tokens=14, threshold=0.3, cache_ver=True, **SHAPE, **extra)
    free, _ = _run(fn, model, short[None], stopping_criteria_idx=(), **kw)
    kw["stopping_criteria_idx"] = (int(free[0, 5 + 4]),)  # the short row stops within its first 5 tokens
    out, stats = fn(model, batch, attention_mask=attn, return_forward_stats=True, **kw)
    for row, prompt in enumerate((short, long_)):
        alone, alone_stats = _run(fn, model, prompt[None], **kw)
        assert out[row, 13:].tolist() == alone[0, len(prompt):].tolist()
        assert stats[row]["generated_tokens"] == alone_stats["generated_tokens"]
    assert stats[0]["generated_tokens"] <= 5 < stats[1]["generated_tokens"]


@pytest.mark.parametrize("kwargs,message", [
    ({"do_verify_policy": "sometimes"}, "policy"),
    ({"do_verify_policy": "score_hysteresis", "hysteresis_threshold_on": -1.0, "hysteresis_threshold_off": 0.0},
     "hysteresis"),
    ({"block_size": 0}, "block_size"),
    ({"block_size": 8, "small_block_size": 3}, "divide"),
    ({"use_ssd_cache": True}, "use_ssd_cache"),
    ({"acceptance": "maybe"}, "acceptance"),
    ({"top_p": 0.0}, "top_p"),
    ({"max_new_tokens": -1}, "max_new_tokens"),
])
def test_bad_config_fails_before_any_forward(model, kwargs, message):
    calls = []
    model.register_forward_pre_hook(lambda *a: calls.append(1))
    with pytest.raises(ValueError, match=message):
        generate_ssd_policy(model, _prompt(4), **kwargs)
    assert calls == []


def test_unknown_keyword_and_missing_mask_token_are_errors(model):
    with pytest.raises(TypeError, match="small_block"):
        generate(model, _prompt(4), small_block=4)
    model.generation_config.mask_token_id = None
    with pytest.raises(ValueError, match="mask"):
        generate(model, _prompt(4))


def test_functions_advertise_their_config():
    assert generate.config_class is FastDecodeConfig
    assert generate_ssd_policy.config_class.__name__ == "S2D2Config"
    assert "small_block_size" in inspect.signature(generate_ssd_policy).parameters


def test_cli_validates_before_loading_and_names_the_model_flag(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(example_v2, "load_model_and_tokenizer", lambda *a: pytest.fail("model loaded"))
    with pytest.raises(SystemExit, match="hysteresis"):
        example_v2.main(["--do_verify_policy", "score_hysteresis", "--hysteresis_threshold_on", "-2"])
    with pytest.raises(SystemExit, match="^error: --model no such model directory"):
        example_v2.main(["--model", str(tmp_path / "never_loaded")])
    if not example_v2.DEFAULT_MODEL.exists():
        with pytest.raises(SystemExit, match="--model"):
            example_v2.main(["--generate_fn", "fast"])


@pytest.mark.skipif(not (example_v2.DEFAULT_MODEL / "config.json").is_file(), reason="models/fast-dllm-v2-tiny absent")
def test_shipped_model_runs_by_default_at_its_block_size(capsys):
    """example_v2.py with no model flags loads models/fast-dllm-v2-tiny (<= 20 MB) offline, decodes at the
    model's bd_size, and solves the sample problem with the baseline and with exact S2D2."""
    size_mb = sum(f.stat().st_size for f in example_v2.DEFAULT_MODEL.iterdir()) / 2**20
    assert size_mb <= 20, f"shipped model is {size_mb:.1f} MB"
    for flags in ([], ["--generate_fn", "ssd_policy", "--small_block_size", "16", "--do_verify_policy",
                        "mask_span_length", "--acceptance", "greedy_exact", "--cache_ver"]):
        stats = example_v2.main(["--device", "cpu", *flags])
        printed = capsys.readouterr().out
        assert "correct: True" in printed, printed
        assert stats[0]["mean_query_width"] <= 16 and stats[0]["generated_tokens"] > 10
