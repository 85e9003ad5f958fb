"""Unit tests of our Fast-dLLM v2 modeling code on tiny random configs (CPU, fp32 unless stated)."""

from __future__ import annotations

import builtins
import copy
import importlib
import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, DynamicCache, Qwen2Config, Qwen2ForCausalLM

import fast_dllm_v2
from fast_dllm_v2.configuration_fast_dllm import Fast_dLLM_QwenConfig
from fast_dllm_v2.modeling_fast_dllm import Fast_dLLM_QwenForCausalLM, Fast_dLLM_QwenModel

AUTO_MAP = {
    "AutoConfig": "configuration.Fast_dLLM_QwenConfig",
    "AutoModel": "modeling.Fast_dLLM_QwenModel",
    "AutoModelForCausalLM": "modeling.Fast_dLLM_QwenForCausalLM",
}
# Keys of the released Fast_dLLM_v2_7B config.json beyond Qwen2's (MODEL-FAMILIES.md §2.2).
CHECKPOINT_EXTRAS = {"bd_size": 4, "conplemenrary_mask": True, "max_window_layers": 2,
                     "layer_types": ["full_attention", "full_attention"], "transformers_version": "4.53.1"}
QWEN2_KEYS = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
              "num_key_value_heads", "hidden_act", "max_position_embeddings", "initializer_range", "rms_norm_eps",
              "tie_word_embeddings", "rope_theta", "rope_scaling")
EXACT = {"rtol": 0.0, "atol": 0.0}
TIGHT = {"rtol": 1e-5, "atol": 1e-6}


def _model(config: Fast_dLLM_QwenConfig, tied: bool = False, layers: int | None = None) -> Fast_dLLM_QwenForCausalLM:
    """A model whose every parameter (biases and norm weights included) is random, so parity tests see
    the q/k/v biases and the RMSNorm weights, which default to 0 and 1."""
    config = copy.deepcopy(config)
    config.tie_word_embeddings = tied
    if layers is not None:
        config.num_hidden_layers, config.layer_types = layers, ["full_attention"] * layers
    torch.manual_seed(0)
    model = Fast_dLLM_QwenForCausalLM(config).eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("bias") or "norm" in name:
                param.add_(0.1 * torch.randn_like(param))
    return model


def _tokens(config: Fast_dLLM_QwenConfig, batch: int, length: int, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, config.vocab_size, (batch, length), generator=torch.Generator().manual_seed(seed))


def _block_causal(q_start: int, q_len: int, kv_len: int, block: int) -> torch.Tensor:
    """[Q, K]: query at absolute index q_start + q may see key k iff block(k) <= block(query)."""
    q_blocks = torch.arange(q_start, q_start + q_len)[:, None] // block
    return torch.arange(kv_len)[None, :] // block <= q_blocks


def _snapshot(cache: DynamicCache) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(k.clone(), v.clone()) for k, v in zip(cache.key_cache, cache.value_cache)]


def _assert_same_cache(cache: DynamicCache, snapshot: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
    assert len(cache.key_cache) == len(snapshot)
    for (key, value), (key_before, value_before) in zip(zip(cache.key_cache, cache.value_cache), snapshot):
        assert torch.equal(key, key_before) and torch.equal(value, value_before)


# ------------------------------------------------------------------------------------------ config


def test_config_tolerates_checkpoint_keys(tiny_fast_dllm_config: Fast_dLLM_QwenConfig) -> None:
    config = Fast_dLLM_QwenConfig(**{**tiny_fast_dllm_config.to_dict(), **CHECKPOINT_EXTRAS, "auto_map": AUTO_MAP})
    assert config.conplemenrary_mask is True and config.bd_size == 4 and config.head_dim == 16
    assert config.layer_types == ["full_attention"] * 2
    model = Fast_dLLM_QwenForCausalLM(config)
    assert model(_tokens(config, 1, 5)).logits.shape == (1, 5, config.vocab_size)


@pytest.mark.parametrize("overrides, message", [
    ({"num_attention_heads": 4, "num_key_value_heads": 3}, "divisible"),
    ({"layer_types": ["full_attention", "sliding_attention"]}, "layer_types"),
    ({"use_sliding_window": True}, "sliding"),
    ({"hidden_act": "not_an_activation"}, "activation"),
    ({"bd_size": 0}, "bd_size"),
    ({"rope_scaling": {"rope_type": "dynamic", "factor": 2.0}}, "not supported"),
])
def test_config_rejects_bad_values(tiny_fast_dllm_config: Fast_dLLM_QwenConfig, overrides: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Fast_dLLM_QwenConfig(**{**tiny_fast_dllm_config.to_dict(), **overrides})


# ------------------------------------------------------------------------------ parity with Qwen2


@pytest.mark.parametrize("tied", [False, True])
def test_parity_with_transformers_qwen2(tiny_fast_dllm_config: Fast_dLLM_QwenConfig, tied: bool) -> None:
    ours = _model(tiny_fast_dllm_config, tied=tied)
    reference = Qwen2ForCausalLM(Qwen2Config(**{k: copy.deepcopy(getattr(ours.config, k)) for k in QWEN2_KEYS})).eval()
    assert set(ours.state_dict()) == set(reference.state_dict())
    reference.load_state_dict(ours.state_dict(), strict=True)
    if tied:
        assert reference.lm_head.weight.data_ptr() == reference.model.embed_tokens.weight.data_ptr()
        assert ours.lm_head.weight.data_ptr() == ours.model.embed_tokens.weight.data_ptr()
    input_ids = _tokens(tiny_fast_dllm_config, 2, 11)
    causal = torch.ones(11, 11, dtype=torch.bool).tril()
    with torch.no_grad():
        expected = reference(input_ids).logits  # transformers builds its own causal mask
        for kwargs in ({"block_size": 1}, {"attention_mask": causal},
                       {"attention_mask": causal[None].expand(2, -1, -1)}):
            torch.testing.assert_close(ours(input_ids, **kwargs).logits, expected, rtol=1e-5, atol=1e-6)


def test_default_mask_is_block_causal(tiny_fast_dllm_config: Fast_dLLM_QwenConfig) -> None:
    """No mask: block-causal with config.bd_size (4 here), or with `block_size`; an explicit mask wins."""
    model = _model(tiny_fast_dllm_config)
    input_ids = _tokens(tiny_fast_dllm_config, 2, 10)
    with torch.no_grad():
        default = model(input_ids).logits
        four = model(input_ids, attention_mask=_block_causal(0, 10, 10, 4)).logits
        torch.testing.assert_close(default, four, **EXACT)
        three = model(input_ids, block_size=3).logits
        torch.testing.assert_close(three, model(input_ids, attention_mask=_block_causal(0, 10, 10, 3)).logits, **EXACT)
        ignored = model(input_ids, attention_mask=_block_causal(0, 10, 10, 3), block_size=1).logits
    torch.testing.assert_close(ignored, three, **EXACT)
    assert not torch.allclose(default, three)


# ---------------------------------------------------------------------------- save / load / auto


def test_checkpoint_with_auto_map_loads_without_trust_remote_code(
    tiny_fast_dllm_config: Fast_dLLM_QwenConfig, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = _model(tiny_fast_dllm_config)
    model.save_pretrained(tmp_path)
    config_path = tmp_path / "config.json"
    config_json = json.loads(config_path.read_text())
    config_json.update(CHECKPOINT_EXTRAS)
    config_json.update({"auto_map": AUTO_MAP, "architectures": ["Fast_dLLM_QwenForCausalLM"],
                        "model_type": "Fast_dLLM_Qwen"})
    config_path.write_text(json.dumps(config_json))

    def refuse_prompt(*args: object) -> str:
        raise AssertionError("transformers prompted for trust_remote_code")

    monkeypatch.setattr(builtins, "input", refuse_prompt)
    config = AutoConfig.from_pretrained(tmp_path)
    assert type(config) is Fast_dLLM_QwenConfig and config.conplemenrary_mask is True
    assert type(AutoModel.from_pretrained(tmp_path)) is Fast_dLLM_QwenModel
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert type(loaded) is Fast_dLLM_QwenForCausalLM
    input_ids = _tokens(tiny_fast_dllm_config, 1, 6)
    with torch.no_grad():
        torch.testing.assert_close(loaded(input_ids).logits, model(input_ids).logits, **EXACT)


def test_tied_checkpoint_without_lm_head_loads(tiny_fast_dllm_config: Fast_dLLM_QwenConfig, tmp_path: Path) -> None:
    """The 1.5B checkpoint ties its embeddings and ships no lm_head.weight."""
    model = _model(tiny_fast_dllm_config, tied=True)
    weights = {k: v.contiguous() for k, v in model.state_dict().items() if k != "lm_head.weight"}
    save_file(weights, str(tmp_path / "model.safetensors"), metadata={"format": "pt"})
    model.config.save_pretrained(tmp_path)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert loaded.lm_head.weight.data_ptr() == loaded.model.embed_tokens.weight.data_ptr()
    input_ids = _tokens(tiny_fast_dllm_config, 2, 7)
    with torch.no_grad():
        torch.testing.assert_close(loaded(input_ids).logits, model(input_ids).logits, **EXACT)
    loaded.save_pretrained(tmp_path / "resaved")
    with safe_open(str(tmp_path / "resaved" / "model.safetensors"), framework="pt") as handle:
        assert "lm_head.weight" not in set(handle.keys())


def test_registration_is_idempotent() -> None:
    importlib.reload(fast_dllm_v2)
    assert isinstance(AutoConfig.for_model("Fast_dLLM_Qwen"), Fast_dLLM_QwenConfig)


# ------------------------------------------------------------------------------------- prefix cache


def test_update_past_key_values_false_leaves_cache_unchanged(tiny_fast_dllm_config: Fast_dLLM_QwenConfig) -> None:
    model = _model(tiny_fast_dllm_config)
    input_ids = _tokens(tiny_fast_dllm_config, 1, 12)
    cache = DynamicCache()
    with torch.no_grad():
        model(input_ids[:, :8], past_key_values=cache, update_past_key_values=True)
        assert cache.get_seq_length() == 8
        before = _snapshot(cache)
        out = model(input_ids[:, 8:], past_key_values=cache, update_past_key_values=False)
    assert out.past_key_values is cache and cache.get_seq_length() == 8
    _assert_same_cache(cache, before)
    with torch.no_grad():
        empty = DynamicCache()
        alone = model(input_ids, past_key_values=empty).logits
    assert empty.get_seq_length() == 0
    torch.testing.assert_close(alone, model(input_ids).logits, **EXACT)


@pytest.mark.parametrize("batch", [1, 2])
def test_blockwise_cached_decoding_matches_full_forward(tiny_fast_dllm_config: Fast_dLLM_QwenConfig,
                                                        batch: int) -> None:
    """Prefill whole blocks, then per block: a read-only peek and a commit (update=True) reproduce the
    rows of one block-causal forward over everything (queries offset by the cache length)."""
    block, total, prefill_len = 4, 16, 8
    model = _model(tiny_fast_dllm_config)
    input_ids = _tokens(tiny_fast_dllm_config, batch, total)
    with torch.no_grad():
        full = model(input_ids, block_size=block).logits  # [B, T, V]
        cache = DynamicCache()
        prefill = model(input_ids[:, :prefill_len], past_key_values=cache, update_past_key_values=True,
                        block_size=block)
        torch.testing.assert_close(prefill.logits, full[:, :prefill_len], **TIGHT)
        for start in range(prefill_len, total, block):
            ids = input_ids[:, start : start + block]
            model(torch.zeros_like(ids), past_key_values=cache, block_size=block)
            peek = model(ids, past_key_values=cache, block_size=block).logits
            torch.testing.assert_close(peek, full[:, start : start + block], **TIGHT)
            assert cache.get_seq_length() == start
            committed = model(ids, past_key_values=cache, update_past_key_values=True, block_size=block).logits
            torch.testing.assert_close(committed, full[:, start : start + block], **TIGHT)
    assert cache.get_seq_length() == total


# -------------------------------------------------------------------------------------- block cache


def test_block_cache_fill_then_patch_matches_full_block_forward(tiny_fast_dllm_config: Fast_dLLM_QwenConfig) -> None:
    """The filling call is a plain block forward; a sub-block call with unchanged tokens reproduces the
    full forward's rows (its attention sees the same K/V), and with changed tokens in a 1-layer model,
    where K/V depend on token and position only, it reproduces the full forward of the new block."""
    block, prefix = 8, 8
    for layers in (2, 1):
        model = _model(tiny_fast_dllm_config, layers=layers).to(torch.float64)
        input_ids = _tokens(tiny_fast_dllm_config, 2, prefix + block)
        with torch.no_grad():
            cache = DynamicCache()
            model(input_ids[:, :prefix], past_key_values=cache, update_past_key_values=True, block_size=block)
            before = _snapshot(cache)
            ids = input_ids[:, prefix:]
            full = model(ids, past_key_values=cache, block_size=block).logits  # [B, L, V]
            filled = model(ids, past_key_values=cache, block_size=block, use_block_cache=True)
            torch.testing.assert_close(filled.logits, full, **EXACT)
            block_cache = filled.block_past_key_values
            assert block_cache.get_seq_length() == block
            sub = model(ids[:, 4:], past_key_values=cache, use_block_cache=True, block_past_key_values=block_cache,
                        replace_position=4)
            assert sub.block_past_key_values is block_cache and block_cache.get_seq_length() == block
            torch.testing.assert_close(sub.logits, full[:, 4:], rtol=1e-10, atol=1e-10)
            if layers == 1:
                changed = ids.clone()
                changed[:, 5:7] = (changed[:, 5:7] + 1) % tiny_fast_dllm_config.vocab_size
                patched = model(changed[:, 4:], past_key_values=cache, use_block_cache=True,
                                block_past_key_values=block_cache, replace_position=4).logits
                fresh = model(changed, past_key_values=cache, block_size=block, use_block_cache=True)
                torch.testing.assert_close(patched, fresh.logits[:, 4:], rtol=1e-10, atol=1e-10)
                torch.testing.assert_close(block_cache.key_cache[0], fresh.block_past_key_values.key_cache[0],
                                           rtol=1e-10, atol=1e-10)
        _assert_same_cache(cache, before)


@pytest.mark.parametrize("kwargs, message", [
    ({"replace_position": 2}, "use_block_cache"),
    ({"use_block_cache": True, "update_past_key_values": True}, "update_past_key_values"),
    ({"use_block_cache": True, "replace_position": 2}, "filled block cache"),
    ({"use_block_cache": True, "filled": True}, "replace_position"),
    ({"use_block_cache": True, "filled": True, "replace_position": 6}, "exceeds"),
])
def test_block_cache_argument_errors(tiny_fast_dllm_config: Fast_dLLM_QwenConfig, kwargs: dict, message: str) -> None:
    model = _model(tiny_fast_dllm_config)
    ids = _tokens(tiny_fast_dllm_config, 1, 8)
    if kwargs.pop("filled", False):
        with torch.no_grad():
            kwargs["block_past_key_values"] = model(ids, use_block_cache=True).block_past_key_values
        ids = ids[:, :4]
    with pytest.raises(ValueError, match=message):
        model(ids, **kwargs)


# ------------------------------------------------------------------------------- masks and outputs


def test_mask_forms_agree_and_bad_masks_raise(tiny_fast_dllm_config: Fast_dLLM_QwenConfig) -> None:
    model = _model(tiny_fast_dllm_config)
    input_ids = _tokens(tiny_fast_dllm_config, 2, 8)
    mask = _block_causal(0, 8, 8, 4)  # [Q, K]
    with torch.no_grad():
        reference = model(input_ids, attention_mask=mask).logits
        for form in (mask.long(), mask.float(), mask[None], mask[None, None], mask[None].expand(2, -1, -1)):
            torch.testing.assert_close(model(input_ids, attention_mask=form).logits, reference, **EXACT)
    bad_masks = (torch.ones(8, dtype=torch.bool), torch.ones(8, 9, dtype=torch.bool),
                 torch.ones(3, 8, 8, dtype=torch.bool), torch.ones(1, 2, 8, 8, dtype=torch.bool),
                 torch.zeros(8, 8).masked_fill(~mask, float("-inf")))
    for bad in bad_masks:
        with pytest.raises(ValueError):
            model(input_ids, attention_mask=bad)


def test_labels_use_the_shifted_causal_lm_loss(tiny_fast_dllm_config: Fast_dLLM_QwenConfig) -> None:
    model = _model(tiny_fast_dllm_config)
    input_ids = _tokens(tiny_fast_dllm_config, 2, 8)
    labels = input_ids.clone()
    labels[0, :3] = -100
    with torch.no_grad():
        out = model(input_ids, labels=labels, block_size=1)
    keep = labels[:, 1:] != -100
    log_probs = torch.log_softmax(out.logits[:, :-1].float(), dim=-1)[keep]
    manual = -log_probs.gather(-1, labels[:, 1:][keep][:, None]).mean()
    torch.testing.assert_close(out.loss, manual, **TIGHT)
    with torch.no_grad():
        summed = model(input_ids, labels=labels, block_size=1, num_items_in_batch=torch.tensor(4)).loss
    torch.testing.assert_close(summed, manual * keep.sum() / 4, **TIGHT)


def test_gradient_checkpointing_matches_plain_backward(tiny_fast_dllm_config: Fast_dLLM_QwenConfig) -> None:
    input_ids = _tokens(tiny_fast_dllm_config, 2, 8)
    grads = []
    for checkpointing in (False, True):
        model = _model(tiny_fast_dllm_config).train()
        if checkpointing:
            model.gradient_checkpointing_enable()
        model(input_ids, labels=input_ids, block_size=4).loss.backward()
        grads.append(model.model.layers[0].self_attn.q_proj.weight.grad)
    torch.testing.assert_close(grads[1], grads[0], **TIGHT)


def test_unknown_kwargs_and_transformers_generate_are_refused(tiny_fast_dllm_config: Fast_dLLM_QwenConfig) -> None:
    model = _model(tiny_fast_dllm_config)
    ids = _tokens(tiny_fast_dllm_config, 1, 4)
    with pytest.raises(TypeError, match="update_past_key_value"):
        model(ids, update_past_key_value=True)
    with pytest.raises(NotImplementedError, match="fast_dllm_v2"):
        model.generate(ids)
