"""The D2F decoders on tiny random D2F-LLaDA (position-aligned) and D2F-Dream (shift-aligned) models in
float64 (so that argmax ties from rounding cannot make two exact-equivalent paths disagree): the block
table's rules, the verifiers against per-position AR forwards, the pipelined decoder against plain block
decoding, S2D2 against `d2f` and against AR greedy, batch invariance, the LoRA pair, the command line."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from common.masks import materialize, prefix_block_causal
from common.spans import first_masked_span
from common.stats import DecodeRecorder
from D2F import example_d2f
from D2F.configuration_dream import DreamConfig
from D2F.configuration_llada import LLaDAConfig
from D2F.generate import generate
from D2F.generate_ssd_policy import S2D2Config, generate_ssd_policy
from D2F.modeling_dream import DreamModel
from D2F.modeling_llada import LLaDAModelLM
from D2F import pipeline
from D2F.pipeline import D2FDecodeConfig, D2FPipeline
from D2F.reference import ar_greedy, block_decode

MASK_ID, STOP_ID, VOCAB = 94, 95, 96
FAMILIES = ("llada", "dream")


def _build(family: str, seed: int = 0) -> torch.nn.Module:
    """2 layers, 4 heads (Dream: 2 KV heads), weights scaled up so drafts are confident enough for
    thresholds to matter."""
    ids = dict(mask_token_id=MASK_ID, eos_token_id=STOP_ID, pad_token_id=STOP_ID)
    if family == "llada":
        config = LLaDAConfig(d_model=64, n_heads=4, n_kv_heads=4, n_layers=2, mlp_hidden_size=96, vocab_size=VOCAB,
                             embedding_size=VOCAB, max_sequence_length=256, rope_theta=10000.0, **ids)
        cls = LLaDAModelLM
    else:
        config = DreamConfig(hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                             num_key_value_heads=2, vocab_size=VOCAB, max_position_embeddings=256, max_window_layers=2,
                             bos_token_id=STOP_ID, **ids)
        cls = DreamModel
    torch.manual_seed(seed)
    model = cls(config).to(torch.float64).eval()
    with torch.no_grad():
        for param in model.parameters():
            if param.dim() > 1:
                param.mul_(10.0)
    return model


@pytest.fixture(scope="module")
def models() -> dict[str, torch.nn.Module]:
    return {family: _build(family) for family in FAMILIES}


def _prompt(length: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(4, 90, (1, length), generator=torch.Generator().manual_seed(seed))


def _run(fn, model, ids, attention_mask=None, seed=123, **kw):
    out, stats = fn(model, ids, attention_mask=attention_mask, generator=torch.Generator().manual_seed(seed),
                    return_forward_stats=True, **kw)
    return out, stats


def _ar_logits(model, seq: list[int], prompt_len: int, shifted: bool) -> torch.Tensor:
    """Logits predicting the position after `seq` in AR mode (blocks of one token), no cache."""
    ids = torch.tensor([seq + [MASK_ID]])
    mask = materialize(prefix_block_causal(prompt_len, 1), ids.shape[1], ids.shape[1])
    logits = model(input_ids=ids, attention_mask=mask).logits[0]
    logits[:, MASK_ID] = float("-inf")
    return logits[-2] if shifted else logits[-1]


def test_block_table_adds_activates_and_settles(models):
    """Literal walk through the rules: add at the newest block's fraction, activate at the predecessor's,
    settle the leading blocks without masks."""
    cfg = D2FDecodeConfig(max_new_tokens=16, block_size=4, block_add_threshold=0.5, decoded_token_threshold=0.75,
                          shift_logits=False).resolved(models["llada"])
    pipe = D2FPipeline(models["llada"], _prompt(6), None, cfg, DecodeRecorder(1))
    origin = pipe.origin
    assert origin == 8 and pipe.n_blocks == 4  # prompt of 6 padded to 8 columns: blocks follow the prompt
    w = pipe.plan()
    assert pipe.n_added.tolist() == [1] and pipe.activated.tolist() == [[True, False, False, False]]
    assert (pipe.row_cache_end.item(), w.settled, w.end) == (2, 8, 12)  # the window starts at the first token
    pipe.x[0, origin : origin + 2] = 7  # block 0 half decoded
    w = pipe.plan()
    assert pipe.n_added.tolist() == [2] and pipe.activated.tolist() == [[True, False, False, False]]
    assert w.masked.sum().item() == 2 + 4 and w.end == 16
    pipe.x[0, origin + 2] = 7  # 0.75: block 1 becomes fully activated; block 1 has nothing decoded, no add
    pipe.plan()
    assert pipe.n_added.tolist() == [2] and pipe.activated.tolist() == [[True, True, False, False]]
    pipe.x[0, origin + 3] = 7
    pipe.x[0, origin + 4 : origin + 6] = 7  # block 0 done, block 1 half: block 2 comes, semi-activated
    w = pipe.plan()
    assert pipe.n_added.tolist() == [3] and pipe.activated.tolist() == [[True, True, False, False]]
    assert (w.settled, w.end) == (origin + 4, origin + 12) and w.earliest[0].tolist() == [True] * 4 + [False] * 4


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("cache_ver", [True, False])
def test_verifier_rows_equal_per_position_ar_forwards(models, family, cache_ver):
    """LLaDA's 2L mask rows and Dream's shifted causal rows == AR-mode logits of [prompt, block 0, drafts
    before t], no cache. Block 0 sits in the cache: its K/V are AR-like (cache_ver), or block-bidirectional,
    and then the reference forward must see block 0 that way too."""
    model, shifted = models[family], family == "dream"
    prompt = _prompt(5)
    cfg = D2FDecodeConfig(max_new_tokens=8, block_size=4, block_add_threshold=1.0, cache_ver=cache_ver).resolved(model)
    pipe = D2FPipeline(model, prompt, None, cfg, DecodeRecorder(1))
    origin = pipe.origin
    pipe.draft(pipe.plan())
    block0 = [11, 12, 13, 14]
    pipe.x[0, origin : origin + 4] = torch.tensor(block0)
    w = pipe.plan()
    pipe.draft(w)  # stores block 0
    assert pipe.row_cache_end.item() == origin + 4 and w.settled == origin + 4
    drafts = torch.tensor([[21, 22, 23, 24]])
    q = pipe.verify(w, drafts, torch.ones(1, dtype=torch.bool), first_masked_span(w.masked), target_block=1)[0]
    prefix = prompt[0].tolist() + block0
    for i in range(4):
        seq = prefix + drafts[0, :i].tolist()
        if cache_ver:
            ref = _ar_logits(model, seq, 5, shifted)
        else:  # block 0 bidirectional inside, the drafts token-causal after it
            ids = torch.tensor([seq + [MASK_ID]])
            allowed = materialize(prefix_block_causal(5, 4), ids.shape[1], ids.shape[1])
            allowed[..., 9:, :] = materialize(prefix_block_causal(9, 1), ids.shape[1], ids.shape[1])[..., 9:, :]
            logits = model(input_ids=ids, attention_mask=allowed).logits[0]
            logits[:, MASK_ID] = float("-inf")
            ref = logits[-2] if shifted else logits[-1]
        torch.testing.assert_close(q[i], ref, rtol=1e-9, atol=1e-9)


def test_dream_verifier_is_causal_and_its_mask_matters(models):
    """q_t ignores the drafts at and after t, sees the ones before it; without a mask (the reference's
    Dream verifier, which dropped it) the logits differ."""
    model = models["dream"]
    cfg = D2FDecodeConfig(max_new_tokens=8, block_size=4, block_add_threshold=1.0).resolved(model)
    pipe = D2FPipeline(model, _prompt(5), None, cfg, DecodeRecorder(1))
    w = pipe.plan()
    pipe.draft(w)
    rows, span = torch.ones(1, dtype=torch.bool), first_masked_span(w.masked)
    base = pipe.verify(w, torch.tensor([[21, 22, 23, 24]]), rows, span, 1)[0]
    later = pipe.verify(w, torch.tensor([[21, 22, 50, 51]]), rows, span, 1)[0]
    earlier = pipe.verify(w, torch.tensor([[40, 22, 23, 24]]), rows, span, 1)[0]
    assert torch.equal(base[:3], later[:3])  # q_0..q_2 do not see the drafts at 2 and 3
    assert not torch.allclose(base[1:], earlier[1:])  # q_1.. see the draft at 0
    origin = pipe.origin
    ids = torch.cat([pipe.x[:, :origin], torch.tensor([[21, 22, 23, 24]])], dim=1)
    unmasked = model(input_ids=ids).logits[0, origin - 1 : origin + 3]
    unmasked[:, MASK_ID] = float("-inf")
    assert not torch.allclose(unmasked, base, atol=1e-3)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("prompt_len,block,budget,skip", [(5, 4, 12, 0.3), (8, 4, 10, 0.6), (3, 3, 9, 1.0), (7, 1, 5, 0.5)])
def test_one_block_in_flight_equals_block_decoding(models, family, prompt_len, block, budget, skip):
    model = models[family]
    ids = _prompt(prompt_len, seed=prompt_len)
    out, stats = _run(generate, model, ids, max_new_tokens=budget, block_size=block, block_add_threshold=1.0,
                      skip_threshold=skip, stopping_criteria_idx=(STOP_ID,))
    expected = block_decode(model, ids[0], MASK_ID, block, budget, skip, family == "dream", (STOP_ID,))
    assert out[0, prompt_len:].tolist() == expected + [STOP_ID] * (budget - len(expected))
    assert stats[0]["nfe_by_kind"]["prefill"] == 0  # the prompt's prefill rides in the first draft forward


@pytest.mark.parametrize("family", FAMILIES)
def test_ar_mode_is_one_forward_per_token(models, family):
    """Block size 1: the first forward is prompt + 1 token, each later one stores the previous token and
    drafts the next (width 2); the tokens are AR greedy's."""
    model = models[family]
    ids = _prompt(6, seed=3)
    out, stats = _run(generate, model, ids, max_new_tokens=9, block_size=1, stopping_criteria_idx=())
    assert out[0, 6:].tolist() == ar_greedy(model, ids[0], MASK_ID, 9, family == "dream")
    assert stats[0]["nfe_by_kind"]["draft"] == 9 and stats[0]["mean_query_width"] == (7 + 2 * 8) / 9


def test_several_blocks_in_flight_take_fewer_forwards(models):
    """With a low add threshold later blocks are drafted while earlier ones decode (wider forwards)."""
    ids = _prompt(6, seed=1)
    kw = dict(max_new_tokens=24, block_size=4, skip_threshold=0.5, decoded_token_threshold=0.5, stopping_criteria_idx=())
    _, one = _run(generate, models["llada"], ids, block_add_threshold=1.0, **kw)
    _, many = _run(generate, models["llada"], ids, block_add_threshold=0.0, **kw)
    assert many[0]["mean_query_width"] > one[0]["mean_query_width"]
    assert many[0]["nfe"] < one[0]["nfe"]


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("extra", [{}, {"temperature": 1.0}, {"cache_ver": True, "block_add_threshold": 0.2},
                                   {"block_size": 3, "decoded_token_threshold": 0.3, "block_add_threshold": 0.3}])
def test_never_verify_equals_d2f(models, family, extra):
    model = models[family]
    kw = {**dict(max_new_tokens=18, block_size=4, skip_threshold=0.4, stopping_criteria_idx=(STOP_ID,)), **extra}
    base, base_stats = _run(generate, model, _prompt(6), **kw)
    ssd, ssd_stats = _run(generate_ssd_policy, model, _prompt(6), min_ssd_span_length=1000, **kw)
    assert torch.equal(base, ssd)
    assert ssd_stats[0]["nfe_by_kind"] == base_stats[0]["nfe_by_kind"] and ssd_stats[0]["verifications"] == 0


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("prompt_len,extra", [
    (5, dict(block_size=4, block_add_threshold=0.5)),  # several blocks in flight, later ones semi-activated
    (7, dict(block_size=4, block_add_threshold=1.0, skip_threshold=0.2)),
    (4, dict(block_size=3, block_add_threshold=0.0, ssd_span_across_blocks=True)),
    (6, dict(block_size=1)),
])
def test_greedy_exact_always_verify_equals_ar_greedy(models, family, prompt_len, extra):
    """With an AR-like cache, verification on every step and only the earliest unfinished block fully
    activated, every commit is the AR greedy token."""
    model = models[family]
    ids = _prompt(prompt_len, seed=prompt_len)
    budget = 14
    kw = {**dict(skip_threshold=0.5, decoded_token_threshold=1.0), **extra}
    out, stats = _run(generate_ssd_policy, model, ids, max_new_tokens=budget, acceptance="greedy_exact", cache_ver=True,
                      stopping_criteria_idx=(STOP_ID,), **kw)
    expected = ar_greedy(model, ids[0], MASK_ID, budget, family == "dream", (STOP_ID,))
    assert out[0, prompt_len : prompt_len + len(expected)].tolist() == expected
    assert stats[0]["verifications"] > 0 and stats[0]["verifications"] == stats[0]["routing_decisions"]


def _batch(lengths: list[int]) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
    prompts = [torch.randint(4, 90, (n,), generator=torch.Generator().manual_seed(100 + i)) for i, n in enumerate(lengths)]
    width = max(lengths)
    ids = torch.full((len(lengths), width), STOP_ID)
    mask = torch.zeros(len(lengths), width, dtype=torch.long)
    for row, prompt in enumerate(prompts):
        ids[row, width - len(prompt):] = prompt
        mask[row, width - len(prompt):] = 1
    return ids, mask, prompts


SIXTEEN = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 4, 4, 9, 2]


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("fn,extra", [
    (generate, {}),
    (generate_ssd_policy, dict(acceptance="greedy_exact", do_verify_policy="score_hysteresis",
                               hysteresis_threshold_on=1.0, hysteresis_threshold_off=-5.0, score_penalty_coef=1.0)),
    (generate_ssd_policy, dict(acceptance="greedy_exact", cache_ver=True, do_verify_policy="contextual_bandit_ucb")),
    (generate_ssd_policy, dict(acceptance="greedy_exact", target_block_size=2, ssd_span_across_blocks=True,
                               do_verify_policy="score_hysteresis", hysteresis_threshold_on=1.0,
                               hysteresis_threshold_off=-5.0, score_penalty_coef=1.0)),
])
@pytest.mark.parametrize("lengths,split", [([3, 7, 5, 9], False), (SIXTEEN, False), (SIXTEEN, True)])
def test_batches_equal_batch_one(models, family, fn, extra, lengths, split, monkeypatch):
    """Left-padded batches of 4 and 16 rows: every row gets its batch-1 tokens and statistics, also where
    the verifier forward runs over the routed rows only, where finished rows have left the batch and
    (`split`: whenever it saves a column) where the draft runs as two forwards over row groups."""
    model = models[family]
    if split:
        monkeypatch.setattr(pipeline, "SPLIT_MIN_TOKENS", 1)
    ids, mask, prompts = _batch(lengths)
    kw = dict(max_new_tokens=10, block_size=4, block_add_threshold=0.3, decoded_token_threshold=0.7, skip_threshold=0.3,
              stopping_criteria_idx=(STOP_ID,), **extra)
    verify, subsets = D2FPipeline.verify, []

    def counted(self, *args, **kwargs):
        subsets.append(len(args) > 5 and args[5] is not None)
        return verify(self, *args, **kwargs)

    monkeypatch.setattr(D2FPipeline, "verify", counted)
    plan, kept = D2FPipeline.plan, []

    def planned(self):
        window = plan(self)
        kept.append(self.kept is not None)
        return window

    monkeypatch.setattr(D2FPipeline, "plan", planned)
    draft, splits = D2FPipeline.draft, []

    def drafted(self, w):
        windows = w.added_end - self.row_cache_end  # each row's own window
        assert w.width == int(windows.max())
        if w.groups is not None:  # every row in one group, at most as wide as that group's forward
            rows = torch.cat([group for group, _ in w.groups])
            assert sorted(rows.tolist()) == list(range(windows.shape[0]))
            assert all(int(windows[group].max()) <= width for group, width in w.groups)
        splits.append(w.groups is not None)
        return draft(self, w)

    monkeypatch.setattr(D2FPipeline, "draft", drafted)
    out, stats = _run(fn, model, ids, mask, **kw)
    if fn is generate_ssd_policy and len(lengths) == 16:
        assert any(subsets)  # some verifier forwards ran over a subset of the rows
    if len(lengths) == 16:
        assert any(kept)  # rows that finished early left the batch
    assert any(splits) == split
    for row, prompt in enumerate(prompts):
        alone, alone_stats = _run(fn, model, prompt[None], **kw)
        assert out[row, ids.shape[1]:].tolist() == alone[0, len(prompt):].tolist(), row
        for key in ("nfe_by_kind", "mean_query_width", "accepted_lengths", "generated_tokens"):
            assert stats[row][key] == alone_stats[0][key], (row, key)


@pytest.mark.parametrize("family", FAMILIES)
def test_rows_at_different_stages_feed_their_own_windows(models, family):
    """Row 0 settles two blocks while row 1 settles none: the batch's draft forward is as wide as the
    widest row's own window (not from row 1's cache end to row 0's newest block), and every row's draft
    logits at its masks and its verifier logits at its span equal those of the row decoded alone."""
    model = models[family]
    cfg = D2FDecodeConfig(max_new_tokens=16, block_size=4, block_add_threshold=0.5,
                          decoded_token_threshold=0.75).resolved(model)
    prompts = [_prompt(6, seed=1)[0], _prompt(3, seed=2)[0]]
    ids = torch.full((2, 6), STOP_ID)
    mask = torch.zeros(2, 6, dtype=torch.long)
    for row, prompt in enumerate(prompts):
        ids[row, 6 - len(prompt):], mask[row, 6 - len(prompt):] = prompt, 1
    batch = D2FPipeline(model, ids, mask, cfg, DecodeRecorder(2))
    alone = [D2FPipeline(model, prompt[None], None, cfg, DecodeRecorder(1)) for prompt in prompts]
    pipes = [(batch, 0, 0), (alone[0], None, 0), (alone[1], None, 1)]  # (pipeline, its row, prompt)
    decoded = [[11, 12, 13, 14, 15, 16, 17, 18], [21, 22]]  # tokens each row has decoded before a step
    for step in range(3):
        windows = {}
        for pipe, row, which in pipes:
            rows = [0, 1] if row is not None else [which]
            for r, k in zip(range(len(rows)), rows):
                done = decoded[k][: 4 * step] if k == 0 else decoded[k][: 2 * step]
                at = pipe.origin
                pipe.x[r, at : at + len(done)] = torch.tensor(done, dtype=pipe.x.dtype)
            w = pipe.plan()
            starts = pipe.row_cache_end.clone()  # where each row's window starts: its cache end
            logits = pipe.draft(w)
            windows[id(pipe)] = (w, logits, starts)
        w, logits, starts = windows[id(batch)]
        if step == 2:
            assert w.settled_end.tolist() == [batch.origin + 8, batch.origin]  # two blocks against none
            assert starts.tolist() == [batch.origin + 4, batch.origin]
            assert w.width == int((w.added_end - starts).max()) < w.end - int(starts.min())
        for k, pipe in enumerate(alone):
            w_alone, alone_logits, _ = windows[id(pipe)]
            shift = batch.origin - pipe.origin  # batch column of the row's column c: c + shift
            masked = w_alone.masked[0]
            cols = torch.arange(w_alone.settled, w_alone.end)[masked]
            got = logits[k, cols + shift - w.settled]
            torch.testing.assert_close(got, alone_logits[0, cols - w_alone.settled], rtol=1e-12, atol=1e-12)
            span = first_masked_span(w_alone.masked)
            drafted = torch.where(w_alone.masked, 7, pipe.region(w_alone))
            q_alone = pipe.verify(w_alone, drafted, torch.ones(1, dtype=torch.bool), span, target_block=1)[0]
            region_batch = torch.where(w.masked, 7, batch.region(w))
            span_b = first_masked_span(w.masked)
            q = batch.verify(w, region_batch, torch.ones(2, dtype=torch.bool), span_b, target_block=1)[k]
            on_span = cols[: int(span.length[0])]
            torch.testing.assert_close(q[on_span + shift - w.settled], q_alone[on_span - w_alone.settled],
                                       rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("policy,extra", [
    ("mask_span_length", {"min_ssd_span_length": 2}),
    ("score_threshold", {"do_verify_score_type": "difference_static", "score_penalty_coef": 1.0}),
    ("score_hysteresis", {"hysteresis_threshold_on": 1.0, "hysteresis_threshold_off": -5.0}),
    ("contextual_bandit_ucb", {"ucb_entropy_source": "masked"}),
])
@pytest.mark.parametrize("estimator", ["hard_margin_threshold", "soft_entropy_negexp", "soft_confidence_power"])
def test_every_policy_and_estimator_decodes(models, policy, extra, estimator):
    """Stochastic acceptance with sampled drafts: the budget is decoded, verifications are a subset of
    the routing decisions and each accepts at most its span."""
    out, stats = _run(generate_ssd_policy, models["llada"], _prompt(6), max_new_tokens=16, block_size=4,
                      temperature=1.0, do_verify_policy=policy, token_acceptance_estimator=estimator,
                      stopping_criteria_idx=(), **extra)
    row = stats[0]
    assert (out[0, 6:] != MASK_ID).all() and row["generated_tokens"] == 16
    assert row["verifications"] == row["nfe_by_kind"]["verify"] <= row["routing_decisions"] == row["nfe_by_kind"]["draft"]
    assert all(0 <= n <= 4 for n in row["accepted_lengths"])


def test_dream_rows_need_a_prompt_token(models):
    ids, mask, _ = _batch([3, 2])
    mask[1] = 0
    with pytest.raises(ValueError, match="prompt token"):
        generate(models["dream"], ids, attention_mask=mask, max_new_tokens=4, block_size=2)


@pytest.mark.parametrize("kwargs,needle", [
    ({"block_add_threshold": 1.5}, "block_add_threshold"), ({"decoded_token_threshold": -0.1}, "decoded_token_threshold"),
    ({"skip_threshold": float("inf")}, "skip_threshold"), ({"block_size": 0}, "block_size"),
    ({"target_block_size": 0}, "target_block_size"), ({"min_tokens_per_step": 0}, "min_tokens_per_step"),
    ({"do_verify_policy": "sometimes"}, "policy"),
])
def test_bad_settings_raise_before_any_forward(kwargs, needle):
    class NoModel(torch.nn.Module):
        def forward(self, *args, **kw):
            raise AssertionError("a forward ran before the settings were checked")

    with pytest.raises(ValueError, match=needle):
        generate_ssd_policy(NoModel(), _prompt(4), mask_id=MASK_ID, stopping_criteria_idx=(), **kwargs)


def test_generate_signatures_list_every_config_field():
    import inspect

    for fn, cls in ((generate, D2FDecodeConfig), (generate_ssd_policy, S2D2Config)):
        params = inspect.signature(fn).parameters
        assert list(params)[:4] == ["model", "input_ids", "attention_mask", "generator"]
        assert all(params[f.name].default == f.default for f in dataclasses.fields(cls))
        assert fn.config_class is cls


@pytest.fixture(scope="module")
def d2f_pairs(tmp_path_factory):
    from s2d2_eval.testing import build_random_d2f_model

    root = tmp_path_factory.mktemp("d2f_pairs")
    return {family: build_random_d2f_model(root / family, family=family) for family in ("d2f_llada", "d2f_dream")}


@pytest.mark.parametrize("family", ["d2f_llada", "d2f_dream"])
def test_base_plus_adapter_decodes_like_the_merged_model(d2f_pairs, family):
    from D2F.lora import load_d2f

    base, lora = d2f_pairs[family]
    kw = dict(max_new_tokens=12, block_size=4, skip_threshold=0.2)
    peft = load_d2f(base, lora, merge=False, dtype=torch.float64, device="cpu")
    ids = torch.randint(0, peft.config.vocab_size, (1, 6), generator=torch.Generator().manual_seed(0))
    merged = load_d2f(base, lora, merge=True, dtype=torch.float64, device="cpu")
    out_peft, _ = _run(generate_ssd_policy, peft, ids, acceptance="greedy_exact", **kw)
    out_merged, _ = _run(generate_ssd_policy, merged, ids, acceptance="greedy_exact", **kw)
    assert torch.equal(out_peft, out_merged)
    assert generate(peft, ids, **kw).shape == (1, 6 + 12)


def test_cli_rejects_bad_input_in_one_line_before_loading(monkeypatch, tmp_path, d2f_pairs):
    def fail(*args, **kwargs):
        raise AssertionError("a model was loaded before the arguments were validated")

    monkeypatch.setattr(example_d2f, "load_model_and_tokenizer", fail)
    base, lora = d2f_pairs["d2f_llada"]
    dream_base, dream_lora = d2f_pairs["d2f_dream"]
    cases = [
        (["--block_add_threshold", "2"], "block_add_threshold"),
        (["--generate_fn", "ssd_policy", "--do_verify_policy", "sometimes"], "do_verify_policy"),
        (["--base_model_dir", str(tmp_path / "models" / "d2f-llada-tiny" / "base")],
         "python scripts/train_tiny.py --family d2f_llada"),
        (["--base_model_dir", str(dream_base), "--lora_dir", str(dream_lora)], "--family dream"),
        (["--family", "dream", "--base_model_dir", str(dream_base), "--lora_dir", str(lora)], "other D2F base"),
        (["--base_model_dir", str(base), "--lora_dir", str(tmp_path / "nope")], "no such adapter folder"),
    ]
    for argv, needle in cases:
        with pytest.raises(SystemExit) as exc:
            example_d2f.main(argv)
        message = str(exc.value.code)
        assert message.startswith("error:") and "\n" not in message and needle in message, message


@pytest.mark.parametrize("family,flag", [("d2f_llada", "llada"), ("d2f_dream", "dream")])
def test_cli_decodes_the_pair(d2f_pairs, capsys, family, flag):
    base, lora = d2f_pairs[family]
    stats = example_d2f.main(["--family", flag, "--base_model_dir", str(base), "--lora_dir", str(lora), "--merge_lora",
                              "--generate_fn", "ssd_policy", "--max_new_tokens", "8", "--block_size", "4",
                              "--device", "cpu"])
    printed = capsys.readouterr().out
    assert "completion:" in printed and "stats:" in printed and stats[0]["nfe"] >= 1


def test_cli_defaults_are_the_config_defaults():
    """Every flag defaults to its config field's default, except --block_size: the pair's own."""
    args = example_d2f.build_parser().parse_args([])
    for f in dataclasses.fields(S2D2Config):
        assert getattr(args, f.name) == (None if f.name == "block_size" else f.default), f.name
    assert S2D2Config().block_size == example_d2f.RELEASED_BLOCK_SIZE


def test_cli_block_size_defaults_to_the_pairs_training_block_size(d2f_pairs, tmp_path):
    """A pair written by train_tiny.py records its adapter's block sizes; the largest is the default, and
    a folder without that record (a released checkpoint) gets the D2F paper's 32."""
    base, _ = d2f_pairs["d2f_llada"]
    (tmp_path / "base").mkdir()
    (tmp_path / "training_args.json").write_text('{"args": {"lora_block_sizes": [1, 1, 4, 8]}}')
    assert example_d2f.trained_block_size(str(tmp_path / "base")) == 8
    assert not (base.parent / "training_args.json").exists()
    assert example_d2f.trained_block_size(str(base)) == 32
    assert example_d2f.trained_block_size("GSAI-ML/LLaDA-8B-Instruct") == 32
