"""Unit tests of our SDAR modeling code on tiny random configs (CPU, fp32)."""

import builtins
import copy
import importlib
import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForCausalLM,
    DynamicCache,
    Qwen3Config,
    Qwen3ForCausalLM,
)

import SDAR
from SDAR.configuration_sdar import SDARConfig
from SDAR.modeling_sdar import SDARForCausalLM, SDARModel

AUTO_MAP = {
    "AutoConfig": "configuration_sdar.SDARConfig",
    "AutoModel": "modeling_sdar.SDARModel",
    "AutoModelForCausalLM": "modeling_sdar.SDARForCausalLM",
}
# Training-only keys found in the released JetLM/SDAR-4B-Chat config.json.
CHECKPOINT_EXTRAS = {
    "fuse_cross_entropy": True,
    "debug": False,
    "ep_size": 1,
    "micro_forward": False,
    "skip_checkpoint": False,
    "use_deepep": False,
    "attn_implementation": "flex_attention",
}
TIGHT = {"rtol": 1e-5, "atol": 1e-6}
EXACT = {"rtol": 0.0, "atol": 0.0}


def _model(config: SDARConfig, tied: bool = False) -> SDARForCausalLM:
    config = copy.deepcopy(config)
    config.tie_word_embeddings = tied
    torch.manual_seed(0)
    return SDARForCausalLM(config).eval()


def _tokens(config: SDARConfig, batch: int, length: int, seed: int = 1) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, config.vocab_size, (batch, length), generator=generator)  # [B, T]


def _causal_mask(length: int) -> torch.Tensor:
    return torch.ones(length, length, dtype=torch.bool).tril()[None]  # [1, T, T]


def _block_causal_mask(q_start: int, q_len: int, kv_len: int, block: int) -> torch.Tensor:
    """Row q may see key k iff block(k) <= block(q), over absolute positions."""
    q_blocks = torch.arange(q_start, q_start + q_len)[:, None] // block  # [Q, 1]
    k_blocks = torch.arange(kv_len)[None, :] // block  # [1, K]
    return (k_blocks <= q_blocks)[None]  # [1, Q, K]


def _qwen3_twin(config: SDARConfig) -> Qwen3ForCausalLM:
    keys = [
        "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
        "num_key_value_heads", "head_dim", "hidden_act", "max_position_embeddings", "initializer_range",
        "rms_norm_eps", "tie_word_embeddings", "rope_theta", "rope_scaling", "attention_bias",
    ]
    qwen_config = Qwen3Config(**{key: copy.deepcopy(getattr(config, key)) for key in keys})
    return Qwen3ForCausalLM(qwen_config).eval()


def _snapshot(cache: DynamicCache) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(k.clone(), v.clone()) for k, v in zip(cache.key_cache, cache.value_cache)]


# ------------------------------------------------------------------------------------------ config


def test_config_tolerates_checkpoint_extras(tiny_sdar_config: SDARConfig) -> None:
    config = SDARConfig(**{**tiny_sdar_config.to_dict(), **CHECKPOINT_EXTRAS})
    assert config.fuse_cross_entropy is True and config.ep_size == 1 and config.use_deepep is False
    model = SDARForCausalLM(config)
    assert model(_tokens(config, 1, 5)).logits.shape == (1, 5, config.vocab_size)


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"num_attention_heads": 4, "num_key_value_heads": 3}, "divisible"),
        ({"head_dim": 15}, "even"),
        ({"hidden_size": 0}, "positive"),
        ({"hidden_act": "not_an_activation"}, "activation"),
        ({"rope_scaling": {"rope_type": "dynamic", "factor": 2.0}}, "not supported"),
        ({"rope_scaling": {"rope_type": "made_up"}}, "Unknown rope_scaling"),
    ],
)
def test_config_rejects_bad_values(tiny_sdar_config: SDARConfig, overrides: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        SDARConfig(**{**tiny_sdar_config.to_dict(), **overrides})


# ------------------------------------------------------------------------------ parity with Qwen3


@pytest.mark.parametrize("tied", [False, True])
@pytest.mark.parametrize("rope_scaling", [None, {"rope_type": "linear", "factor": 2.0}])
def test_parity_with_transformers_qwen3(tiny_sdar_config: SDARConfig, tied: bool, rope_scaling: dict) -> None:
    tiny_sdar_config.rope_scaling = rope_scaling
    ours = _model(tiny_sdar_config, tied=tied)
    reference = _qwen3_twin(ours.config)
    assert set(ours.state_dict()) == set(reference.state_dict())
    reference.load_state_dict(ours.state_dict(), strict=True)
    if tied:
        assert reference.lm_head.weight.data_ptr() == reference.model.embed_tokens.weight.data_ptr()
    input_ids = _tokens(tiny_sdar_config, 2, 11)
    with torch.no_grad():
        expected = reference(input_ids).logits  # transformers builds its own causal mask
        actual = ours(input_ids, attention_mask=_causal_mask(11)).logits
    torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------------------- save / load / auto


def test_save_pretrained_round_trip(tiny_sdar_config: SDARConfig, tmp_path: Path) -> None:
    model = _model(tiny_sdar_config)
    model.save_pretrained(tmp_path)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert type(loaded) is SDARForCausalLM
    input_ids = _tokens(tiny_sdar_config, 2, 9)
    mask = _block_causal_mask(0, 9, 9, block=4)
    with torch.no_grad():
        expected = model(input_ids, attention_mask=mask).logits
        torch.testing.assert_close(loaded(input_ids, attention_mask=mask).logits, expected, **EXACT)


def test_checkpoint_with_auto_map_loads_without_trust_remote_code(
    tiny_sdar_config: SDARConfig, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = _model(tiny_sdar_config)
    model.save_pretrained(tmp_path)
    config_path = tmp_path / "config.json"
    config_json = json.loads(config_path.read_text())
    config_json.update(CHECKPOINT_EXTRAS)
    config_json.update({"auto_map": AUTO_MAP, "architectures": ["SDARForCausalLM"], "model_type": "sdar"})
    config_path.write_text(json.dumps(config_json))

    def refuse_prompt(*args: object) -> str:
        raise AssertionError("transformers prompted for trust_remote_code")

    monkeypatch.setattr(builtins, "input", refuse_prompt)
    config = AutoConfig.from_pretrained(tmp_path)
    assert type(config) is SDARConfig and config.debug is False and config.fuse_cross_entropy is True
    base = AutoModel.from_pretrained(tmp_path)
    assert type(base) is SDARModel
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert type(loaded) is SDARForCausalLM
    input_ids = _tokens(tiny_sdar_config, 1, 6)
    with torch.no_grad():
        torch.testing.assert_close(loaded(input_ids).logits, model(input_ids).logits, **EXACT)


def test_tied_checkpoint_without_lm_head_loads(tiny_sdar_config: SDARConfig, tmp_path: Path) -> None:
    model = _model(tiny_sdar_config, tied=True)
    weights = {k: v.contiguous() for k, v in model.state_dict().items() if k != "lm_head.weight"}
    save_file(weights, str(tmp_path / "model.safetensors"), metadata={"format": "pt"})
    model.config.save_pretrained(tmp_path)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert loaded.lm_head.weight.data_ptr() == loaded.model.embed_tokens.weight.data_ptr()
    torch.testing.assert_close(loaded.lm_head.weight, model.model.embed_tokens.weight, **EXACT)
    input_ids = _tokens(tiny_sdar_config, 2, 7)
    with torch.no_grad():
        torch.testing.assert_close(loaded(input_ids).logits, model(input_ids).logits, **EXACT)
    loaded.save_pretrained(tmp_path / "resaved")
    with safe_open(str(tmp_path / "resaved" / "model.safetensors"), framework="pt") as handle:
        assert "lm_head.weight" not in set(handle.keys())


def test_registration_is_idempotent() -> None:
    importlib.reload(SDAR)
    assert isinstance(AutoConfig.for_model("sdar"), SDAR.SDARConfig)


# ------------------------------------------------------------------------------------------ cache


def test_store_kv_false_leaves_cache_unchanged(tiny_sdar_config: SDARConfig) -> None:
    model = _model(tiny_sdar_config)
    input_ids = _tokens(tiny_sdar_config, 1, 12)
    cache = DynamicCache()
    with torch.no_grad():
        model(input_ids[:, :8], attention_mask=_causal_mask(8), past_key_values=cache, store_kv=True)
        before = _snapshot(cache)
        out = model(
            input_ids[:, 8:],
            attention_mask=_block_causal_mask(8, 4, 12, block=4),
            position_ids=torch.arange(8, 12)[None],
            past_key_values=cache,
            store_kv=False,
        )
    assert out.past_key_values is cache
    assert cache.get_seq_length() == 8 and len(cache.key_cache) == len(before)
    for (key, value), (key_before, value_before) in zip(zip(cache.key_cache, cache.value_cache), before):
        assert torch.equal(key, key_before) and torch.equal(value, value_before)


def test_store_kv_false_on_empty_cache_attends_current_only(tiny_sdar_config: SDARConfig) -> None:
    model = _model(tiny_sdar_config)
    input_ids = _tokens(tiny_sdar_config, 2, 6)
    cache = DynamicCache()
    with torch.no_grad():
        with_cache = model(input_ids, past_key_values=cache, store_kv=False).logits
        without_cache = model(input_ids, use_cache=False).logits
    assert cache.get_seq_length() == 0
    torch.testing.assert_close(with_cache, without_cache, **EXACT)


def test_use_cache_creates_and_fills_a_cache(tiny_sdar_config: SDARConfig) -> None:
    model = _model(tiny_sdar_config)
    with torch.no_grad():
        out = model(_tokens(tiny_sdar_config, 1, 5), use_cache=True, store_kv=True)
    assert isinstance(out.past_key_values, DynamicCache)
    assert out.past_key_values.get_seq_length() == 5 and len(out.past_key_values.key_cache) == 2
    assert model(_tokens(tiny_sdar_config, 1, 5), use_cache=False).past_key_values is None


@pytest.mark.parametrize("batch", [1, 2])
def test_blockwise_cached_decoding_matches_full_forward(tiny_sdar_config: SDARConfig, batch: int) -> None:
    block, num_blocks, prefill_blocks = 4, 4, 2
    total = block * num_blocks
    model = _model(tiny_sdar_config)
    input_ids = _tokens(tiny_sdar_config, batch, total)
    with torch.no_grad():
        full = model(input_ids, attention_mask=_block_causal_mask(0, total, total, block)).logits  # [B, T, V]
        cache = DynamicCache()
        prefill_len = prefill_blocks * block
        prefill = model(
            input_ids[:, :prefill_len],
            attention_mask=_block_causal_mask(0, prefill_len, prefill_len, block),
            past_key_values=cache,
            store_kv=True,
        ).logits
        torch.testing.assert_close(prefill, full[:, :prefill_len], **TIGHT)
        for start in range(prefill_len, total, block):
            positions = torch.arange(start, start + block)[None].expand(batch, -1)  # [B, L]
            draft = torch.zeros_like(input_ids[:, start : start + block])
            model(draft, position_ids=positions, past_key_values=cache, store_kv=False)
            block_ids = input_ids[:, start : start + block]  # [B, L]
            peek = model(block_ids, position_ids=positions, past_key_values=cache, store_kv=False).logits
            torch.testing.assert_close(peek, full[:, start : start + block], **TIGHT)
            assert cache.get_seq_length() == start
            committed = model(
                block_ids,
                attention_mask=torch.ones(1, block, start + block),
                position_ids=positions,
                past_key_values=cache,
                store_kv=True,
            ).logits
            torch.testing.assert_close(committed, full[:, start : start + block], **TIGHT)
    assert cache.get_seq_length() == total


def test_default_position_ids_follow_cache_length(tiny_sdar_config: SDARConfig) -> None:
    model = _model(tiny_sdar_config)
    input_ids = _tokens(tiny_sdar_config, 1, 9)
    with torch.no_grad():
        cache = DynamicCache()
        model(input_ids[:, :5], attention_mask=_causal_mask(5), past_key_values=cache, store_kv=True)
        implicit = model(input_ids[:, 5:], past_key_values=cache).logits
        positions = torch.arange(5, 9)[None]  # [1, 4]
        explicit = model(input_ids[:, 5:], position_ids=positions, past_key_values=cache).logits
    torch.testing.assert_close(implicit, explicit, **EXACT)


# ------------------------------------------------------------------------------------------- masks


def test_mask_input_forms_agree(tiny_sdar_config: SDARConfig) -> None:
    model = _model(tiny_sdar_config)
    batch, length = 2, 8
    input_ids = _tokens(tiny_sdar_config, batch, length)
    bool_mask = _block_causal_mask(0, length, length, block=4)  # [1, Q, K]
    forms = [
        bool_mask,
        bool_mask.long(),
        bool_mask.int(),
        bool_mask.float(),
        bool_mask.to(torch.float16),
        bool_mask[:, None],
        bool_mask.float()[:, None],
        bool_mask.expand(batch, -1, -1),
        bool_mask.long().expand(batch, -1, -1)[:, None],
    ]
    with torch.no_grad():
        reference = model(input_ids, attention_mask=bool_mask).logits
        for mask in forms:
            torch.testing.assert_close(model(input_ids, attention_mask=mask).logits, reference, **EXACT)
        no_mask = model(input_ids).logits
        all_ones = model(input_ids, attention_mask=torch.ones(1, 1, length, length)).logits
    torch.testing.assert_close(all_ones, no_mask, **EXACT)
    assert not torch.allclose(no_mask, reference)


def test_per_row_masks_apply_per_batch_element(tiny_sdar_config: SDARConfig) -> None:
    model = _model(tiny_sdar_config)
    input_ids = _tokens(tiny_sdar_config, 2, 8)
    masks = torch.cat([_causal_mask(8), _block_causal_mask(0, 8, 8, block=4)])  # [2, Q, K]
    with torch.no_grad():
        batched = model(input_ids, attention_mask=masks).logits
        first = model(input_ids[:1], attention_mask=masks[:1]).logits
        second = model(input_ids[1:], attention_mask=masks[1:]).logits
    torch.testing.assert_close(batched, torch.cat([first, second]), **TIGHT)


@pytest.mark.parametrize(
    "mask",
    [
        torch.ones(2, 8, dtype=torch.bool),  # 2-D padding mask
        torch.ones(8, dtype=torch.bool),
        torch.ones(1, 2, 8, 8, dtype=torch.bool),  # per-head 4-D
        torch.ones(1, 1, 1, 8, 8, dtype=torch.bool),
        torch.ones(1, 8, 9, dtype=torch.bool),  # wrong K
        torch.ones(1, 7, 8, dtype=torch.bool),  # wrong Q
        torch.ones(3, 8, 8, dtype=torch.bool),  # wrong batch
        torch.zeros(1, 8, 8).masked_fill(~_causal_mask(8), float("-inf")),  # additive
        torch.full((1, 8, 8), 2),  # not 0/1
    ],
)
def test_bad_masks_raise(tiny_sdar_config: SDARConfig, mask: torch.Tensor) -> None:
    model = _model(tiny_sdar_config)
    with pytest.raises(ValueError):
        model(_tokens(tiny_sdar_config, 2, 8), attention_mask=mask)


# ------------------------------------------------------------------------------- loss and outputs


def test_labels_are_position_aligned(tiny_sdar_config: SDARConfig) -> None:
    model = _model(tiny_sdar_config)
    input_ids = _tokens(tiny_sdar_config, 2, 8)
    labels = _tokens(tiny_sdar_config, 2, 8, seed=2)
    labels[0, :3] = -100
    labels[1, 5] = -100
    with torch.no_grad():
        out = model(input_ids, labels=labels)
    keep = labels != -100
    manual = -torch.log_softmax(out.logits.float(), dim=-1)[keep].gather(-1, labels[keep][:, None]).mean()
    torch.testing.assert_close(out.loss, manual, **TIGHT)

    with torch.no_grad():
        summed = model(input_ids, labels=labels, num_items_in_batch=torch.tensor(4)).loss
        tail = model(input_ids, labels=labels, logits_to_keep=3)
    torch.testing.assert_close(summed, manual * keep.sum() / 4, **TIGHT)
    tail_keep = keep[:, -3:]
    manual_tail = -torch.log_softmax(out.logits[:, -3:].float(), dim=-1)[tail_keep]
    manual_tail = manual_tail.gather(-1, labels[:, -3:][tail_keep][:, None]).mean()
    torch.testing.assert_close(tail.loss, manual_tail, **TIGHT)


def test_logits_to_keep_and_tuple_output(tiny_sdar_config: SDARConfig) -> None:
    model = _model(tiny_sdar_config)
    input_ids = _tokens(tiny_sdar_config, 2, 8)
    with torch.no_grad():
        full = model(input_ids).logits
        tail = model(input_ids, logits_to_keep=3).logits
        as_tuple = model(input_ids, return_dict=False, use_cache=False)
    assert tail.shape == (2, 3, tiny_sdar_config.vocab_size)
    torch.testing.assert_close(tail, full[:, -3:], **TIGHT)
    assert isinstance(as_tuple, tuple)
    torch.testing.assert_close(as_tuple[0], full, **EXACT)


def test_unknown_kwargs_are_rejected(tiny_sdar_config: SDARConfig) -> None:
    model = _model(tiny_sdar_config)
    with pytest.raises(TypeError, match="store_kvs"):
        model(_tokens(tiny_sdar_config, 1, 4), store_kvs=True)


def test_gradient_checkpointing_matches_plain_backward(tiny_sdar_config: SDARConfig) -> None:
    input_ids = _tokens(tiny_sdar_config, 2, 8)
    labels = _tokens(tiny_sdar_config, 2, 8, seed=3)
    mask = _block_causal_mask(0, 8, 8, block=4)
    grads = []
    for checkpointing in (False, True):
        model = _model(tiny_sdar_config).train()
        if checkpointing:
            model.gradient_checkpointing_enable()
        model(input_ids, attention_mask=mask, labels=labels).loss.backward()
        grads.append(model.model.layers[0].self_attn.q_proj.weight.grad)
    torch.testing.assert_close(grads[1], grads[0], **TIGHT)


def test_rope_frequencies_stay_float32_in_half_precision(tiny_sdar_config: SDARConfig) -> None:
    model = _model(tiny_sdar_config).to(torch.bfloat16)
    assert model.model.rotary_emb.inv_freq.dtype == torch.float32
    with torch.no_grad():
        logits = model(_tokens(tiny_sdar_config, 1, 6), attention_mask=_causal_mask(6)).logits
    assert logits.dtype == torch.bfloat16 and torch.isfinite(logits).all()


def test_float64_run_tracks_float32(tiny_sdar_config: SDARConfig) -> None:
    model = _model(tiny_sdar_config)
    input_ids = _tokens(tiny_sdar_config, 2, 10)
    mask = _block_causal_mask(0, 10, 10, block=4)
    with torch.no_grad():
        single = model(input_ids, attention_mask=mask).logits
        double = model.to(torch.float64)(input_ids, attention_mask=mask).logits
    assert double.dtype == torch.float64
    torch.testing.assert_close(double.float(), single, rtol=1e-4, atol=1e-5)
