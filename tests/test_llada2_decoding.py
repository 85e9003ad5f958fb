"""The LLaDA2 decoders on a tiny random MoE model (float64, so that rounding cannot split argmax ties
between two exact-equivalent paths), the editing rules on literal tensors, the block loop on a
scripted model, and the folder's layering."""

from __future__ import annotations

import ast
import math
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from common.editing import apply_edits, threshold_fill, token_edits
from common.masks import block_causal, materialize, token_causal
from common.stats import COMMIT_DIFFUSION, COMMIT_EDIT, DecodeRecorder
from LLaDA2.blocks import CachedDecodeConfig, LLaDA2Blocks, LLaDA2DecodeConfig
from LLaDA2.configuration_llada2_moe import LLaDA2MoeConfig
from LLaDA2.generate import generate, generate_cached
from LLaDA2.generate_ssd_policy import generate_ssd_policy
from LLaDA2.modeling_llada2_moe import LLaDA2MoeModelLM
from LLaDA2.reference import ar_greedy

ROOT = Path(__file__).resolve().parent.parent
MASK_ID, STOP_ID, PAD_ID = 95, 3, 0
TINY = dict(vocab_size=96, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, head_dim=16, rotary_dim=8, partial_rotary_factor=0.5, num_experts=8, n_group=4,
            topk_group=2, num_experts_per_tok=2, moe_intermediate_size=32, num_shared_experts=1,
            first_k_dense_replace=1, pad_token_id=PAD_ID, max_position_embeddings=256, rope_theta=10000.0,
            initializer_range=0.1)
ON = torch.ones(1, dtype=torch.bool)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    m = LLaDA2MoeModelLM(LLaDA2MoeConfig(**TINY)).to(torch.float64).eval()
    with torch.no_grad():  # a non-zero expert bias, as a trained checkpoint carries
        for layer in m.model.layers[1:]:
            layer.mlp.gate.expert_bias.uniform_(-0.5, 0.5)
    m.config.mask_token_id, m.config.eos_token_id = MASK_ID, STOP_ID
    return m


def _prompt(length: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(4, 90, (1, length), generator=g)


def _ragged(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """n left-padded prompts of lengths 1..11 and their attention mask."""
    g = torch.Generator().manual_seed(seed)
    prompts = [torch.randint(4, 90, (int(torch.randint(1, 12, (1,), generator=g)),), generator=g) for _ in range(n)]
    width = max(len(p) for p in prompts)
    ids = torch.stack([torch.cat([torch.full((width - len(p),), PAD_ID), p]) for p in prompts])
    attn = torch.stack([torch.cat([torch.zeros(width - len(p)), torch.ones(len(p))]) for p in prompts]).long()
    return ids, attn


def _run(fn, model, ids, attn=None, seed: int = 7, **kw):
    generator = torch.Generator().manual_seed(seed)
    return fn(model, ids, attention_mask=attn, generator=generator, return_forward_stats=True, **kw)


# --- editing rules on literal tensors --------------------------------------------------------------------

def test_threshold_fill_literal_cases():
    masked = torch.tensor([[True, True, False, True],
                           [True, True, True, False],
                           [False, False, False, False],
                           [True, False, True, True]])
    conf = torch.tensor([[0.96, 0.50, 0.99, 0.97],   # two above 0.95 among the masks -> both
                         [0.10, 0.30, 0.20, 0.99],   # none above -> the top n=2 masked (the decoded 0.99 never)
                         [0.99, 0.99, 0.99, 0.99],   # no mask -> nothing
                         [0.95, 0.99, 0.40, 0.40]])  # strict >: 0.95 does not pass; fallback top-2, tie -> lower index
    got = threshold_fill(conf, masked, threshold=0.95, num_to_transfer=2)
    assert got.tolist() == [[True, False, False, True],
                            [False, True, True, False],
                            [False, False, False, False],
                            [True, False, True, False]]
    # fewer masks than num_to_transfer: all of them; one confident mask with n = 1: just it
    assert threshold_fill(torch.tensor([[0.1, 0.2]]), torch.tensor([[True, False]]), 0.9, 4).tolist() == [[True, False]]
    assert threshold_fill(torch.tensor([[0.1, 0.95, 0.97]]), torch.tensor([[True, True, True]]), 0.9, 1).tolist() == \
        [[False, True, True]]


def test_token_edits_literal_cases():
    current = torch.tensor([[5, 6, 7, 8, 9]])
    drafts = torch.tensor([[5, 1, 2, 3, 4]])
    conf = torch.tensor([[0.99, 0.95, 0.90, 0.50, 0.99]])
    editable = torch.tensor([[True, True, True, True, False]])  # the last is a prompt token (or a mask)
    got = token_edits(drafts, conf, current, editable, threshold=0.9)
    # same token: no edit; 0.95 > 0.9: edit; 0.90 is not > 0.9; 0.5 too low; not editable: never
    assert got.tolist() == [[False, True, False, False, False]]
    assert apply_edits(current, drafts, got).tolist() == [[5, 1, 7, 8, 9]]
    assert not token_edits(drafts, torch.ones_like(conf), current, editable, threshold=1.0).any()  # >= 1: editing off
    assert token_edits(drafts, torch.zeros_like(conf), current, editable, threshold=-1.0).tolist() == \
        [[False, True, True, True, False]]


# --- the block loop on a scripted model -------------------------------------------------------------------

class ScriptedModel(torch.nn.Module):
    """Returns, at call i, logits whose softmax (the mask token removed) puts probability p on token t at
    each block position and (1 - p) / 6 on each other token, from script[i] = [(t, p), ...] (p > 1/7, so t
    is the argmax); checks the no-cache decoder's mask."""

    VOCAB, MASK = 8, 7

    def __init__(self, script: list[list[tuple[int, float]]]) -> None:
        super().__init__()
        self.script, self.calls = script, 0
        self.config = SimpleNamespace(mask_token_id=self.MASK, eos_token_id=6)

    def forward(self, input_ids, attention_mask, position_ids, past_key_values, use_cache, store_kv, logits_to_keep):
        assert past_key_values is None and not store_kv
        q = input_ids.shape[1]
        expected = materialize(block_causal(logits_to_keep), q, q)
        assert torch.equal(attention_mask, expected)
        rows = []
        for token, p in self.script[self.calls]:
            row = torch.full((self.VOCAB,), math.log((1 - p) / (self.VOCAB - 2)), dtype=torch.float64)
            row[token] = math.log(p)
            rows.append(row)
        self.calls += 1
        return SimpleNamespace(logits=torch.stack(rows)[None])


SCRIPT = [
    [(1, 0.9), (1, 0.2), (1, 0.3), (1, 0.15)],    # fill 0 (the only p > 0.5)
    [(2, 0.7), (1, 0.3), (1, 0.8), (1, 0.9)],     # fill 2, 3; edit 0: 1 -> 2 (0.7 > 0.6)
    [(2, 0.9), (4, 0.15), (5, 0.9), (1, 0.5)],    # no confident mask: fill the top one (1); edit 2: 1 -> 5
    [(2, 0.9), (4, 0.9), (5, 0.9), (3, 0.7)],     # post step 1: edit 3: 1 -> 3
    [(2, 0.9), (4, 0.9), (5, 0.9), (1, 0.65)],    # post step 2: edit 3: 3 -> 1
    [(2, 0.9), (4, 0.9), (5, 0.9), (1, 0.9)],     # never reached with max_post_steps = 2
]


@pytest.mark.parametrize("max_post_steps,forwards,tokens,edits", [
    (0, 3, [2, 4, 5, 1], 2),      # the block ends as soon as an iteration starts without a mask
    (1, 4, [2, 4, 5, 3], 3),      # one post step, which edits
    (2, 5, [2, 4, 5, 1], 4),      # capped: the third post step is never run
])
def test_block_loop_fills_edits_and_post_steps(max_post_steps, forwards, tokens, edits):
    model = ScriptedModel(SCRIPT)
    ids, stats = generate(model, torch.tensor([[4, 4, 4, 4]]), gen_length=4, block_length=4, threshold=0.5,
                          editing_threshold=0.6, max_post_steps=max_post_steps, return_forward_stats=True,
                          record_decoding_order=True)
    assert ids[0, 4:].tolist() == tokens
    row = stats[0]
    assert row["nfe"] == forwards == model.calls and row["post_steps"] == forwards - 3 and row["edits"] == edits
    assert row["decoding_order"][:6] == ["|", -4, -6, -7, -4.9, -5]


def test_post_step_without_edit_ends_the_block():
    script = [[(1, 0.9)] * 4, [(1, 0.9), (1, 0.9), (2, 0.55), (1, 0.9)], [(1, 0.9)] * 4]
    model = ScriptedModel(script)
    _, stats = generate(model, torch.tensor([[4, 4, 4, 4]]), gen_length=4, block_length=4, threshold=0.5,
                        editing_threshold=0.6, max_post_steps=16, return_forward_stats=True)
    assert model.calls == 2 and stats[0]["post_steps"] == 1 and stats[0]["edits"] == 0


@pytest.mark.parametrize("max_post_steps,calls,tokens", [
    (0, 1, [6]),                       # the block ends holding the stop token: the row stops after it
    (1, 4, [2, 1, 1, 1, 1, 1, 1, 1]),  # a post step edits the stop away: the row decodes block 1 too
])
def test_a_row_stops_after_a_block_that_ends_with_a_stop_token(max_post_steps, calls, tokens):
    fill = [(1, 0.9)] * 3
    script = [[(6, 0.9)] + fill, [(2, 0.9)] + fill, [(1, 0.9)] + fill, [(1, 0.9)] + fill]
    model = ScriptedModel(script)  # its eos is 6
    ids = generate(model, torch.tensor([[4, 4, 4, 4]]), gen_length=8, block_length=4, threshold=0.5,
                   editing_threshold=0.6, max_post_steps=max_post_steps)
    assert model.calls == calls
    assert ids[0, 4:].tolist()[: len(tokens)] == tokens


# --- cache vs no cache ------------------------------------------------------------------------------------

@pytest.mark.parametrize("fold_commit", [True, False])
def test_cached_draft_logits_equal_no_cache_logits(model, fold_commit):
    """Over a left-padded batch: the cached draft of every block (prefill, then each finished block's
    K/V stored by a commit or folded into the next draft) equals the no-cache block-causal forward."""
    ids, attn = _ragged(3, seed=5)
    cached_cfg = CachedDecodeConfig(block_length=4, gen_length=9, fold_commit=fold_commit).resolved(model)
    plain_cfg = LLaDA2DecodeConfig(block_length=4, gen_length=9).resolved(model)
    cached = LLaDA2Blocks(model, ids, attn, cached_cfg, DecodeRecorder(3))
    plain = LLaDA2Blocks(model, ids, attn, plain_cfg, DecodeRecorder(3))
    rows = torch.ones(3, dtype=torch.bool)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        cached.prefill(rows)
        for b in range(cached.first_block, cached.n_blocks):
            blk = cached.block(b)
            partial = torch.randint(4, 90, blk.shape, generator=g)
            keep = torch.rand(blk.shape, generator=g) < 0.5  # a half-decoded block
            blk.copy_(torch.where((blk == MASK_ID) & keep, partial, blk))
            plain.block(b).copy_(blk)
            torch.testing.assert_close(cached.draft(b, rows), plain.draft(b, rows), rtol=1e-10, atol=1e-10)
            blk.copy_(torch.where(blk == MASK_ID, partial, blk))
            plain.block(b).copy_(blk)
            cached.commit(b, rows)


@pytest.mark.parametrize("kw", [
    dict(threshold=0.05, editing_threshold=0.0, max_post_steps=2),
    dict(threshold=0.5, editing_threshold=1.0),
    dict(threshold=0.2, editing_threshold=0.1, num_to_transfer=2, max_post_steps=1, fold_commit=False),
    dict(threshold=0.05, editing_threshold=0.0, max_post_steps=1, eos_early_stop=False),
])
def test_cached_equals_nocache_token_for_token(model, kw):
    ids, attn = _ragged(6, seed=2)
    plain_kw = {k: v for k, v in kw.items() if k != "fold_commit"}
    out_plain, st_plain = _run(generate, model, ids, attn, gen_length=11, block_length=4, **plain_kw)
    out_cached, st_cached = _run(generate_cached, model, ids, attn, gen_length=11, block_length=4, **kw)
    assert torch.equal(out_plain, out_cached)
    for p, c in zip(st_plain, st_cached):
        assert (p["edits"], p["post_steps"], p["nfe_by_kind"]["draft"]) == \
            (c["edits"], c["post_steps"], c["nfe_by_kind"]["draft"])
        assert p["nfe_by_kind"]["prefill"] == 0
    if kw["editing_threshold"] < 1:
        assert sum(s["edits"] for s in st_cached) > 0  # the comparison covers edits


def test_nocache_query_width_is_the_prefix():
    """Each no-cache forward reads the whole prefix up to the current block's end."""
    model = ScriptedModel([[(1, 0.9)] * 4] * 8)
    _, stats = generate(model, torch.tensor([[4] * 6]), gen_length=6, block_length=4, threshold=0.5,
                        editing_threshold=1.0, return_forward_stats=True)
    assert stats[0]["nfe"] == 2 and stats[0]["mean_query_width"] == (8 + 12) / 2


# --- S2D2 -------------------------------------------------------------------------------------------------

def test_verifier_rows_equal_ar_forwards(model):
    """2L logits at mask row i == a plain token-causal forward of [prefix, block left of i, mask at i]."""
    prompt = _prompt(9)
    cfg = CachedDecodeConfig(block_length=4, gen_length=8, cache_ver=True).resolved(model)
    blocks = LLaDA2Blocks(model, prompt, None, cfg, DecodeRecorder(1))
    with torch.no_grad():
        blocks.prefill(ON)
        b = blocks.first_block
        drafted = blocks.block(b).clone()
        drafted[drafted == MASK_ID] = torch.tensor([11, 12, 13])  # block = [prompt tail, 3 drafts]
        q_logits = blocks.verify(b, drafted, torch.zeros(1, dtype=torch.long))[0]  # [L, V]
        start = b * 4
        for i in range(4):
            seq = torch.cat([blocks.x[0, :start], drafted[0, :i], torch.tensor([MASK_ID])])[None]
            mask = materialize(token_causal(), seq.shape[1], seq.shape[1])
            ref = model(input_ids=seq, attention_mask=mask).logits[0, -1]
            ref[MASK_ID] = float("-inf")
            torch.testing.assert_close(q_logits[i], ref, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("kw", [
    dict(threshold=0.05, editing_threshold=0.0, max_post_steps=2),
    dict(threshold=0.3, editing_threshold=0.2, temperature=1.0, max_post_steps=1),
    dict(threshold=0.1, editing_threshold=1.0, num_to_transfer=2, fold_commit=False, cache_ver=True),
])
def test_never_verify_equals_cached(model, kw):
    ids, attn = _ragged(4, seed=3)
    base, base_stats = _run(generate_cached, model, ids, attn, gen_length=10, block_length=4, **kw)
    ssd, ssd_stats = _run(generate_ssd_policy, model, ids, attn, gen_length=10, block_length=4,
                          min_ssd_span_length=5, **kw)
    assert torch.equal(base, ssd)
    for a, b in zip(base_stats, ssd_stats):
        assert a["nfe_by_kind"] == b["nfe_by_kind"] and (a["edits"], a["post_steps"]) == (b["edits"], b["post_steps"])
        assert b["verifications"] == 0 and b["routing_decisions"] == b["nfe_by_kind"]["draft"]


@pytest.mark.parametrize("block_length,prompt_len,fold_commit", [(4, 6, True), (4, 8, True), (3, 2, False),
                                                                 (8, 5, True), (1, 3, True)])
def test_greedy_exact_always_verify_equals_ar_greedy(model, block_length, prompt_len, fold_commit):
    ids = _prompt(prompt_len, seed=prompt_len)
    budget = 15
    out, stats = _run(generate_ssd_policy, model, ids, gen_length=budget, block_length=block_length,
                      acceptance="greedy_exact", cache_ver=True, fold_commit=fold_commit, editing_threshold=1.0,
                      do_verify_policy="mask_span_length", min_ssd_span_length=1, threshold=0.05)
    expected = ar_greedy(model, ids[0], MASK_ID, budget, (STOP_ID,))
    n = stats[0]["generated_tokens"]
    assert out[0, prompt_len:prompt_len + n].tolist() == expected
    assert stats[0]["verifications"] == stats[0]["nfe_by_kind"]["draft"] > 0


def test_s2d2_with_editing_commits_edits_on_verified_iterations(model):
    """Edits are applied whether or not the iteration verifies: with verification at every iteration,
    an always-editing threshold still edits, and every accepted length fits in the block."""
    ids, attn = _ragged(3, seed=4)
    out, stats = _run(generate_ssd_policy, model, ids, attn, gen_length=12, block_length=4, editing_threshold=0.0,
                      max_post_steps=2, temperature=1.0, record_decoding_order=True)
    assert sum(s["edits"] for s in stats) > 0
    for row in stats:
        assert row["verifications"] > 0 and all(0 <= n <= 4 for n in row["accepted_lengths"])
        assert sum(1 for m in row["decoding_order"] if isinstance(m, float) and m < 0 and
                   round(-m % 1, 6) == 0.9) == row["edits"]
    assert (out[:, ids.shape[1]:] != MASK_ID).all()


@pytest.mark.parametrize("policy,extra", [
    ("mask_span_length", {"legacy_ssd_span_strategy": True, "min_ssd_span_length": 3}),
    ("score_threshold", {"do_verify_score_type": "difference_static", "score_penalty_coef": 4.0,
                         "do_verify_score_threshold": -5.0}),
    ("score_hysteresis", {"hysteresis_threshold_on": 1.0, "hysteresis_threshold_off": -5.0}),
    ("contextual_bandit_ucb", {"ucb_entropy_source": "masked"}),
])
@pytest.mark.parametrize("estimator", ["hard_margin_threshold", "soft_entropy_negexp", "soft_renyi_2_entropy"])
def test_every_policy_and_estimator_decodes(model, policy, extra, estimator):
    ids = _prompt(6)
    out, stats = _run(generate_ssd_policy, model, ids, gen_length=12, block_length=4, temperature=1.0,
                      do_verify_policy=policy, token_acceptance_estimator=estimator, stopping_criteria_idx=(),
                      editing_threshold=0.3, max_post_steps=1, allow_resample=policy != "score_hysteresis", **extra)
    row = stats[0]
    assert (out[0, 6:] != MASK_ID).all() and row["generated_tokens"] == 12
    assert row["nfe_by_kind"]["draft"] == row["routing_decisions"]
    assert row["nfe_by_kind"]["verify"] == row["verifications"] <= row["routing_decisions"]


# --- configuration and layering -------------------------------------------------------------------------

@pytest.mark.parametrize("fn,kwargs,message", [
    (generate_cached, {"block_length": 0}, "block_length"),
    (generate_cached, {"max_post_steps": -1}, "max_post_steps"),
    (generate_cached, {"threshold": float("nan")}, "threshold"),
    (generate_cached, {"num_to_transfer": 0}, "num_to_transfer"),
    (generate, {"top_p": 0.0}, "top_p"),
    (generate_ssd_policy, {"do_verify_policy": "sometimes"}, "policy"),
    (generate_ssd_policy, {"acceptance": "maybe"}, "acceptance"),
])
def test_bad_config_fails_before_any_forward(model, fn, kwargs, message):
    calls = []
    handle = model.register_forward_pre_hook(lambda *a: calls.append(1))
    try:
        with pytest.raises(ValueError, match=message):
            fn(model, _prompt(4), **kwargs)
    finally:
        handle.remove()
    assert calls == []


def test_unknown_keyword_and_no_cache_flags_are_errors(model):
    with pytest.raises(TypeError, match="fold_commit"):
        generate(model, _prompt(4), fold_commit=False)
    with pytest.raises(TypeError, match="min_ssd_span_length"):
        generate_cached(model, _prompt(4), min_ssd_span_length=2)


def _imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
    return found


def test_llada2_folder_imports_only_common_torch_transformers_and_stdlib():
    allowed = {"common", "torch", "transformers", "LLaDA2"} | set(sys.stdlib_module_names)
    for path in sorted((ROOT / "LLaDA2").glob("*.py")):
        extra = _imports(path) - allowed
        if path.name == "example_llada.py":  # the command line also reads the family registry
            extra -= {"families"}
        assert not extra, f"LLaDA2/{path.name} imports {sorted(extra)}"


def test_verifier_first_half_holds_the_iterations_edits(model, monkeypatch):
    """On a verified iteration the 2L forward's first half is the block as it stands after the
    iteration's edits (at every decoded position), and edits do reach it."""
    from common.stats import DecodeRecorder as Recorder

    calls: list[list] = []
    verify, commits = LLaDA2Blocks.verify, Recorder.commits

    def spy_verify(self, b, drafted, rows):
        routed = rows.nonzero().squeeze(-1) if rows.dtype == torch.bool else rows  # a row mask or row indices
        mine = drafted[routed] if drafted.shape[0] == self.x.shape[0] else drafted  # the routed rows' first half
        calls.append([self.block(b)[routed].clone(), mine.clone(), self, b, routed])
        return verify(self, b, drafted, rows)

    def spy_commits(self, kinds, positions):
        if calls and len(calls[-1]) == 5:
            before, drafted, blocks, b, routed = calls[-1]
            calls[-1] = [before, drafted, blocks.block(b)[routed].clone()]
        return commits(self, kinds, positions)

    monkeypatch.setattr(LLaDA2Blocks, "verify", spy_verify)
    monkeypatch.setattr(Recorder, "commits", spy_commits)
    ids, attn = _ragged(3, seed=6)
    _run(generate_ssd_policy, model, ids, attn, gen_length=12, block_length=4, editing_threshold=0.0,
         max_post_steps=1)
    assert calls and all(len(c) == 3 for c in calls)
    edited_seen = False
    for before, drafted, after in calls:
        decoded = before != MASK_ID
        assert torch.equal(drafted[decoded], after[decoded])
        edited_seen |= bool((drafted != before)[decoded].any())
    assert edited_seen
