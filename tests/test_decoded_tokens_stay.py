"""The invariant every decoder without token editing keeps: a decoded token is never overwritten (and
never re-masked). Checked directly on the sequence buffer: a forward pre-hook snapshots it before every
model call, and between consecutive snapshots (and the final state) only masks may change. LLaDA2 with
editing on is the one setting that rewrites decoded tokens, and the same check catches it."""

from __future__ import annotations

import pytest
import torch

import common.sequence
from fast_dllm_v2.generate import generate as fast_baseline
from fast_dllm_v2.generate_ssd_policy import generate_ssd_policy as fast_s2d2
from LLaDA2.generate import generate as llada2_nocache
from LLaDA2.generate import generate_cached as llada2_cached
from LLaDA2.generate_ssd_policy import generate_ssd_policy as llada2_s2d2
from SDAR.generate import block_diffusion_generate as sdar_baseline
from SDAR.generate_ssd_policy import block_diffusion_generate as sdar_s2d2

MASK_ID, STOP_ID = 95, 3
NO_EDIT = dict(editing_threshold=1.0, max_post_steps=2)


def _sdar():
    from SDAR.configuration_sdar import SDARConfig
    from SDAR.modeling_sdar import SDARForCausalLM

    model = SDARForCausalLM(SDARConfig(vocab_size=96, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                       num_attention_heads=2, num_key_value_heads=1, head_dim=16,
                                       max_position_embeddings=128))
    model.generation_config.mask_token_id, model.generation_config.eos_token_id = MASK_ID, STOP_ID
    return model


def _fast():
    from fast_dllm_v2.configuration_fast_dllm import Fast_dLLM_QwenConfig
    from fast_dllm_v2.modeling_fast_dllm import Fast_dLLM_QwenForCausalLM

    model = Fast_dLLM_QwenForCausalLM(Fast_dLLM_QwenConfig(
        vocab_size=96, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
        num_key_value_heads=1, max_position_embeddings=128, bd_size=4))
    model.generation_config.mask_token_id, model.generation_config.eos_token_id = MASK_ID, STOP_ID
    return model


def _llada2():
    from LLaDA2.configuration_llada2_moe import LLaDA2MoeConfig
    from LLaDA2.modeling_llada2_moe import LLaDA2MoeModelLM

    model = LLaDA2MoeModelLM(LLaDA2MoeConfig(
        vocab_size=96, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=1, head_dim=16, rotary_dim=8, num_experts=4, n_group=2, topk_group=1,
        num_experts_per_tok=2, moe_intermediate_size=16, pad_token_id=0, max_position_embeddings=128,
        initializer_range=0.1))
    model.config.mask_token_id, model.config.eos_token_id = MASK_ID, STOP_ID
    return model


MODELS = {"sdar": _sdar, "fast": _fast, "llada2": _llada2}
CASES = [
    ("sdar", sdar_baseline, dict(block_length=4, denoising_steps=4, confidence_threshold=0.05, do_sample=True)),
    ("sdar", sdar_baseline, dict(block_length=4, denoising_steps=2, remasking_strategy="low_confidence_static")),
    ("sdar", sdar_s2d2, dict(block_length=4, denoising_steps=4, do_sample=True, always_check_high_confidence=True,
                             confidence_threshold=0.05, ssd_ratio_threshold=0.0, ssd_threshold_all_spans=True)),
    ("sdar", sdar_s2d2, dict(block_length=4, denoising_steps=4, acceptance="greedy_exact", cache_ver=True)),
    ("fast", fast_baseline, dict(block_size=4, small_block_size=2, threshold=0.05, temperature=1.0)),
    ("fast", fast_s2d2, dict(block_size=4, small_block_size=4, temperature=1.0, use_block_cache=True)),
    ("llada2", llada2_nocache, dict(block_length=4, threshold=0.05, temperature=1.0, **NO_EDIT)),
    ("llada2", llada2_cached, dict(block_length=4, threshold=0.3, num_to_transfer=2, **NO_EDIT)),
    ("llada2", llada2_s2d2, dict(block_length=4, temperature=1.0, allow_resample=False, **NO_EDIT)),
    ("llada2", llada2_s2d2, dict(block_length=4, acceptance="greedy_exact", cache_ver=True, **NO_EDIT)),
]


def _state(buffer) -> dict[int, torch.Tensor]:
    """The tokens of every row the buffer holds, by original row: a decoder may drop stopped rows from
    the batch (`SequenceBuffer.rows` then maps held rows to original ones)."""
    rows = getattr(buffer, "rows", None)
    originals = range(buffer.x.shape[0]) if rows is None else rows.tolist()
    return {row: buffer.x[i].clone() for i, row in enumerate(originals)}


def _overwrites(family: str, fn, kw: dict, monkeypatch) -> tuple[int, int]:
    """Decode a left-padded batch while snapshotting the buffer before every forward; returns (decoded
    positions rewritten or re-masked between snapshots, masks filled)."""
    buffers: list = []
    init = common.sequence.SequenceBuffer.__init__

    def capture(self, *args, **kwargs):
        init(self, *args, **kwargs)
        buffers.append(self)

    monkeypatch.setattr(common.sequence.SequenceBuffer, "__init__", capture)
    torch.manual_seed(0)
    model = MODELS[family]().eval()
    snapshots: list[dict[int, torch.Tensor]] = []
    model.register_forward_pre_hook(lambda *_: snapshots.append(_state(buffers[-1])))
    ids = torch.tensor([[0, 0, 0, 11, 12], [21, 22, 23, 24, 25]])
    attn = (torch.arange(5) >= torch.tensor([[3], [0]])).long()
    budget = {"fast": "max_new_tokens"}.get(family, "gen_length")
    fn(model, ids, attention_mask=attn, generator=torch.Generator().manual_seed(1), **{budget: 14}, **kw)
    states = snapshots + [_state(buffers[-1])]
    rewritten = filled = 0
    for before_rows, after_rows in zip(states, states[1:]):
        for row in before_rows.keys() & after_rows.keys():
            before, after = before_rows[row], after_rows[row]
            decoded = before != MASK_ID
            rewritten += int((decoded & (after != before)).sum())
            filled += int((~decoded & (after != MASK_ID)).sum())
    return rewritten, filled


@pytest.mark.parametrize("family,fn,kw", CASES)
def test_a_decoded_token_is_never_overwritten(family, fn, kw, monkeypatch):
    rewritten, filled = _overwrites(family, fn, kw, monkeypatch)
    assert filled > 0 and rewritten == 0


@pytest.mark.parametrize("fn", [llada2_nocache, llada2_cached, llada2_s2d2])
def test_token_editing_is_the_one_rule_that_rewrites(fn, monkeypatch):
    rewritten, _ = _overwrites("llada2", fn, dict(block_length=4, editing_threshold=0.0, max_post_steps=2,
                                                  temperature=1.0), monkeypatch)
    assert rewritten > 0
