"""D2F modeling on tiny random configs (CPU, fp32): LLaDA against transformers' Llama on mapped weights
(LLaDA's maths is LLaMA's with other parameter names), Dream against transformers' Qwen2 on the same
weights, the mask and `store_kv` cache contract, released key names and the released LoRA format."""

from __future__ import annotations

import ast
import json
import sys
from pathlib import Path

import pytest
import torch
from peft import PeftModel, get_peft_model_state_dict
from safetensors import safe_open
from safetensors.torch import save_file
from transformers import (
    AutoModel,
    AutoModelForCausalLM,
    DynamicCache,
    LlamaConfig,
    LlamaForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
)

import D2F
from common.masks import block_causal, materialize, to_additive, token_causal
from D2F.configuration_dream import DreamConfig
from D2F.configuration_llada import LLaDAConfig
from D2F.lora import load_d2f
from D2F.modeling_dream import DreamModel
from D2F.modeling_llada import LLaDAModelLM

ROOT = Path(__file__).resolve().parent.parent
PARITY = {"rtol": 0.0, "atol": 1e-5}
FAMILIES = ("llada", "dream")

# The released GSAI-ML/LLaDA-8B-Instruct config.json key set (MODEL-FAMILIES.md §4.2), tiny sizes.
LLADA_RELEASED_CONFIG = {
    "activation_type": "silu", "alibi": False, "alibi_bias_max": 8.0, "architectures": ["LLaDAModelLM"],
    "attention_dropout": 0.0, "attention_layer_norm": False, "attention_layer_norm_with_affine": True,
    "auto_map": {"AutoConfig": "configuration_llada.LLaDAConfig", "AutoModelForCausalLM": "modeling_llada.LLaDAModelLM",
                 "AutoModel": "modeling_llada.LLaDAModelLM"},
    "bias_for_layer_norm": False, "block_group_size": 1, "block_type": "llama", "d_model": 64,
    "embedding_dropout": 0.0, "embedding_size": 104, "eos_token_id": 95, "flash_attention": False,
    "include_bias": False, "include_qkv_bias": False, "init_cutoff_factor": None, "init_device": "meta",
    "init_fn": "mitchell", "init_std": 0.02, "input_emb_norm": False, "layer_norm_type": "rms",
    "layer_norm_with_affine": True, "mask_token_id": 94, "max_sequence_length": 64, "mlp_hidden_size": 96,
    "mlp_ratio": 4, "model_type": "llada", "multi_query_attention": None, "n_heads": 4, "n_kv_heads": 4,
    "n_layers": 2, "pad_token_id": 95, "precision": "amp_bf16", "residual_dropout": 0.0, "rms_norm_eps": 1e-05,
    "rope": True, "rope_full_precision": True, "rope_theta": 500000.0, "scale_logits": False,
    "transformers_version": "4.46.3", "use_cache": False, "vocab_size": 96, "weight_tying": False,
}
# Dream-v0-Base-7B's config.json keys (MODEL-FAMILIES.md §4.3: Qwen2 keys + mask_token_id), tiny sizes.
DREAM_RELEASED_CONFIG = {
    "architectures": ["DreamModel"], "attention_dropout": 0.0,
    "auto_map": {"AutoConfig": "configuration_dream.DreamConfig", "AutoModel": "modeling_dream.DreamModel"},
    "bos_token_id": 95, "eos_token_id": 95, "hidden_act": "silu", "hidden_size": 64, "initializer_range": 0.02,
    "intermediate_size": 96, "mask_token_id": 94, "max_position_embeddings": 64, "max_window_layers": 2,
    "model_type": "Dream", "num_attention_heads": 4, "num_hidden_layers": 2, "num_key_value_heads": 2,
    "pad_token_id": 95, "rms_norm_eps": 1e-06, "rope_scaling": None, "rope_theta": 1000000.0,
    "sliding_window": None, "tie_word_embeddings": False, "torch_dtype": "float32",
    "transformers_version": "4.46.2", "use_cache": False, "use_sliding_window": False, "vocab_size": 96,
}
# Released LoRA targets (D2F-train/utils/model.py) and the module path prefix of each target.
LORA_TARGETS = {
    "llada": {m: "model.transformer.blocks.{i}." + m for m in ("q_proj", "k_proj", "v_proj", "attn_out")},
    "dream": {m: "model.layers.{i}.self_attn." + m for m in ("q_proj", "k_proj", "v_proj", "o_proj")},
}


def _llada_config() -> LLaDAConfig:
    """4 heads of 16, 2 layers, FFN 96; embedding_size 104 > vocab 96 as LLaDA pads its embedding."""
    skip = ("architectures", "auto_map", "model_type", "transformers_version")
    fields = {k: v for k, v in LLADA_RELEASED_CONFIG.items() if k not in skip}
    return LLaDAConfig(**fields)


def _dream_config() -> DreamConfig:
    """4 query heads / 2 KV heads of 16 (grouped-query attention as in Dream), 2 layers."""
    skip = ("architectures", "auto_map", "model_type", "transformers_version", "torch_dtype")
    fields = {k: v for k, v in DREAM_RELEASED_CONFIG.items() if k not in skip}
    return DreamConfig(**fields)


def _randomize(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Every parameter random (norm weights around 1, biases non-zero) so that parity sees them all."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            noise = torch.randn(param.shape, generator=generator)
            if "norm" in name or "ln_f" in name:
                param.copy_(1.0 + 0.2 * noise)
            elif name.endswith("bias"):
                param.copy_(0.2 * noise)
            else:
                param.copy_(0.15 * noise)
    return model.eval()


def _model(family: str, seed: int = 0) -> torch.nn.Module:
    if family == "llada":
        return _randomize(LLaDAModelLM(_llada_config()), seed)
    return _randomize(DreamModel(_dream_config()), seed)


def _tokens(batch: int, length: int, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, 96, (batch, length), generator=torch.Generator().manual_seed(seed))


def _llama_reference(model: LLaDAModelLM) -> LlamaForCausalLM:
    """transformers' Llama (eager attention, so a 4-D additive mask is used as given) on LLaDA's weights."""
    c = model.config
    reference = LlamaForCausalLM(
        LlamaConfig(
            vocab_size=c.padded_vocab_size, hidden_size=c.d_model, intermediate_size=c.ffn_hidden_size,
            num_hidden_layers=c.n_layers, num_attention_heads=c.n_heads, num_key_value_heads=c.effective_n_kv_heads,
            rms_norm_eps=c.rms_norm_eps, rope_theta=c.rope_theta, max_position_embeddings=c.max_sequence_length,
            tie_word_embeddings=False, attention_bias=False, mlp_bias=False, hidden_act="silu",
            attn_implementation="eager",
        )
    )
    names = {"q_proj": "self_attn.q_proj", "k_proj": "self_attn.k_proj", "v_proj": "self_attn.v_proj",
             "attn_out": "self_attn.o_proj", "ff_proj": "mlp.gate_proj", "up_proj": "mlp.up_proj",
             "ff_out": "mlp.down_proj", "attn_norm": "input_layernorm", "ff_norm": "post_attention_layernorm"}
    mapped = {}
    for key, value in model.state_dict().items():
        parts = key.split(".")
        if key == "model.transformer.wte.weight":
            mapped["model.embed_tokens.weight"] = value
        elif key == "model.transformer.ln_f.weight":
            mapped["model.norm.weight"] = value
        elif key == "model.transformer.ff_out.weight":
            mapped["lm_head.weight"] = value
        else:
            mapped[f"model.layers.{parts[3]}.{names[parts[4]]}.weight"] = value
    reference.load_state_dict(mapped, strict=True)
    return reference.eval()


def _qwen2_reference(model: DreamModel) -> Qwen2ForCausalLM:
    """transformers' Qwen2 (eager attention) on Dream's weights: the parameter names are the same."""
    c = model.config
    reference = Qwen2ForCausalLM(
        Qwen2Config(
            vocab_size=c.vocab_size, hidden_size=c.hidden_size, intermediate_size=c.intermediate_size,
            num_hidden_layers=c.num_hidden_layers, num_attention_heads=c.num_attention_heads,
            num_key_value_heads=c.num_key_value_heads, rms_norm_eps=c.rms_norm_eps, rope_theta=c.rope_theta,
            max_position_embeddings=c.max_position_embeddings, tie_word_embeddings=False,
            attn_implementation="eager",
        )
    )
    reference.load_state_dict(model.state_dict(), strict=True)
    return reference.eval()


def _d2f_mask(prompt_len: int, block: int, total: int) -> torch.Tensor:
    """[T, T] bool: the prompt is one bidirectional block; generated blocks of `block` start at its end;
    a query sees every key whose block is not later than its own (MODEL-FAMILIES.md §4.4)."""
    positions = torch.arange(total)
    block_id = torch.where(positions < prompt_len, 0, 1 + (positions - prompt_len).div(block, rounding_mode="floor"))
    return block_id[None, :] <= block_id[:, None]


# ----------------------------------------------------------------------------------------------------
# LLaDA against transformers' Llama


@torch.no_grad()
def test_llada_full_attention_matches_llama_with_an_all_visible_mask():
    model = _model("llada")
    reference = _llama_reference(model)
    ids = _tokens(2, 11)
    ours = model(ids).logits
    assert ours.shape == (2, 11, 104)
    visible = torch.zeros(1, 1, 11, 11)
    torch.testing.assert_close(ours, reference(ids, attention_mask=visible).logits, **PARITY)
    # The model is bidirectional: Llama's own causal default gives different logits.
    assert (ours - reference(ids).logits).abs().max() > 1e-2


@torch.no_grad()
def test_llada_block_causal_bias_matches_llama_and_mask_forms_agree():
    model = _model("llada")
    reference = _llama_reference(model)
    ids = _tokens(2, 12)
    keep = materialize(block_causal(4), 12, 12)  # [1, Q, K]
    additive = to_additive(keep, torch.float32)[:, None]  # [1, 1, Q, K]
    expected = reference(ids, attention_mask=additive).logits
    as_bool = model(ids, attention_bias=keep[:, None]).logits
    torch.testing.assert_close(as_bool, expected, **PARITY)
    torch.testing.assert_close(model(ids, attention_bias=additive).logits, as_bool, rtol=0.0, atol=1e-6)
    torch.testing.assert_close(model(ids, attention_bias=keep.to(torch.int8)).logits, as_bool, rtol=0.0, atol=0.0)
    # A causal attention_bias reproduces Llama's causal default, row for row.
    causal = materialize(token_causal(), 12, 12)
    torch.testing.assert_close(model(ids, attention_bias=causal).logits, reference(ids).logits, **PARITY)


@torch.no_grad()
def test_llada_padding_mask_and_explicit_positions_match_llama():
    model = _model("llada")
    reference = _llama_reference(model)
    ids = _tokens(2, 10)
    padding = torch.ones(2, 10, dtype=torch.long)
    padding[1, :3] = 0  # row 1 is left-padded by three tokens
    keep = materialize(block_causal(5), 10, 10)  # [1, Q, K]
    combined = keep & padding.bool()[:, None, :]  # [B, Q, K]
    positions = torch.tensor([[0, 1, 2, 3, 4, 5, 6, 7, 8, 9], [0, 0, 0, 0, 1, 2, 3, 4, 5, 6]])
    additive = to_additive(combined, torch.float32)[:, None]  # [B, 1, Q, K]
    expected = reference(ids, attention_mask=additive, position_ids=positions).logits
    ours = model(ids, attention_mask=padding, attention_bias=keep, position_ids=positions).logits
    torch.testing.assert_close(ours, expected, **PARITY)


# ----------------------------------------------------------------------------------------------------
# Dream against transformers' Qwen2


@torch.no_grad()
def test_dream_causal_mask_matches_qwen2():
    model = _model("dream")
    reference = _qwen2_reference(model)
    ids = _tokens(2, 11)
    causal = materialize(token_causal(), 11, 11)
    torch.testing.assert_close(model(ids, attention_mask=causal).logits, reference(ids).logits, **PARITY)
    # Without a mask Dream attends bidirectionally, i.e. like Qwen2 under an all-visible mask.
    visible = torch.zeros(1, 1, 11, 11)
    torch.testing.assert_close(model(ids).logits, reference(ids, attention_mask=visible).logits, **PARITY)


@torch.no_grad()
def test_dream_block_causal_mask_is_applied_under_both_keywords():
    model = _model("dream")
    reference = _qwen2_reference(model)
    ids = _tokens(2, 12)
    padding = torch.ones(2, 12, dtype=torch.bool)
    padding[0, :2] = False
    keep = materialize(block_causal(4), 12, 12)  # [1, Q, K]
    combined = keep & padding[:, None, :]  # [B, Q, K]
    expected = reference(ids, attention_mask=to_additive(combined, torch.float32)[:, None]).logits
    via_mask = model(ids, attention_mask=combined[:, None]).logits
    torch.testing.assert_close(via_mask, expected, **PARITY)
    # The paper's call sites pass the mask as attention_bias, which the released Dream silently dropped.
    via_bias = model(ids, attention_mask=padding, attention_bias=to_additive(keep, torch.float32)[:, None]).logits
    torch.testing.assert_close(via_bias, expected, **PARITY)
    assert (via_bias - model(ids, attention_mask=padding).logits).abs().max() > 1e-2


# ----------------------------------------------------------------------------------------------------
# Cache, masks and arguments: both families


def _mask_kw(family: str) -> str:
    return "attention_bias" if family == "llada" else "attention_mask"


@pytest.mark.parametrize("family", FAMILIES)
@torch.no_grad()
def test_cached_pipelined_forwards_equal_one_full_forward(family):
    model = _model(family)
    kw = _mask_kw(family)
    prompt, block = 5, 4
    ids = _tokens(1, prompt + 2 * block)
    mask = _d2f_mask(prompt, block, prompt + 2 * block)[None]  # [1, T, T]
    full = model(ids, **{kw: mask}).logits  # [1, T, V]

    cache = DynamicCache()
    out = model(ids[:, :prompt], past_key_values=cache, store_kv=True, **{kw: mask[:, :prompt, :prompt]})
    torch.testing.assert_close(out.logits, full[:, :prompt], **PARITY)
    assert out.past_key_values is cache and cache.get_seq_length() == prompt

    # Both blocks in flight; the first is committed by the same forward (store_kv = its length).
    out = model(ids[:, prompt:], past_key_values=cache, store_kv=block, **{kw: mask[:, prompt:]})
    torch.testing.assert_close(out.logits, full[:, prompt:], **PARITY)
    assert cache.get_seq_length() == prompt + block

    # Read-only forwards over the second block leave the cache untouched, even with other tokens.
    before = [k.clone() for k in cache.key_cache]
    out = model(ids[:, prompt + block:], past_key_values=cache, store_kv=False, **{kw: mask[:, prompt + block:]})
    torch.testing.assert_close(out.logits, full[:, prompt + block:], **PARITY)
    model(torch.full((1, block), 94), past_key_values=cache, **{kw: mask[:, prompt + block:]})
    assert cache.get_seq_length() == prompt + block
    assert all(torch.equal(a, b) for a, b in zip(before, cache.key_cache))


@pytest.mark.parametrize("family", FAMILIES)
@torch.no_grad()
def test_cache_with_several_queries_and_no_mask_raises(family):
    model = _model(family)
    ids = _tokens(1, 7)
    cache = DynamicCache()
    model(ids[:, :5], past_key_values=cache, store_kv=True, **{_mask_kw(family): torch.ones(1, 5, 5, dtype=torch.bool)})
    with pytest.raises(ValueError, match="explicit full attention mask"):
        model(ids[:, 5:], past_key_values=cache)
    with pytest.raises(ValueError, match="explicit full attention mask"):
        model(ids[:, :5], past_key_values=DynamicCache(), store_kv=True)
    # One query token needs no mask: it sees the cache and itself, as the last row of a full forward
    # in which the five cached tokens see only each other.
    one = model(ids[:, 5:6], past_key_values=cache).logits
    full = model(ids[:, :6], **{_mask_kw(family): _d2f_mask(5, 1, 6)[None]}).logits
    torch.testing.assert_close(one, full[:, -1:], **PARITY)


@pytest.mark.parametrize("family", FAMILIES)
@torch.no_grad()
def test_logits_to_keep_returns_the_last_rows(family):
    model = _model(family)
    ids = _tokens(2, 9)
    full = model(ids).logits
    torch.testing.assert_close(model(ids, logits_to_keep=3).logits, full[:, -3:], rtol=0.0, atol=0.0)
    with pytest.raises(ValueError, match="logits_to_keep"):
        model(ids, logits_to_keep=-1)


@pytest.mark.parametrize("family", FAMILIES)
@torch.no_grad()
def test_bad_arguments_raise_one_clear_error(family):
    model = _model(family)
    ids = _tokens(1, 4)
    cache = DynamicCache()
    keep = torch.ones(1, 4, 4, dtype=torch.bool)
    with pytest.raises(ValueError, match="store_kv"):
        model(ids, past_key_values=cache, attention_bias=keep, store_kv=5)
    with pytest.raises(ValueError, match="no cache"):
        model(ids, store_kv=True, use_cache=False)
    with pytest.raises(TypeError, match="use store_kv"):
        model(ids, update_kvcache=2)
    with pytest.raises(TypeError, match="Unexpected keyword"):
        model(ids, attention_biass=keep)
    with pytest.raises(ValueError, match="no loss"):
        model(ids, labels=ids)
    with pytest.raises(ValueError, match="ADDITIVE"):
        model(ids, attention_bias=keep.float())  # a 0/1 keep-mask in float would be added to the scores
    with pytest.raises(ValueError, match="0/1"):
        model(ids, attention_bias=keep.long() * 2)
    with pytest.raises(ValueError, match=r"\[B, Q, K\]"):
        model(ids, attention_bias=torch.ones(1, 4, 5, dtype=torch.bool))
    with pytest.raises(ValueError, match="both attention_mask and attention_bias"):
        model(ids, attention_mask=keep, attention_bias=keep)
    with pytest.raises(ValueError, match="padding attention_mask"):
        model(ids, attention_mask=torch.ones(1, 5))
    assert cache.get_seq_length() == 0


@torch.no_grad()
def test_models_change_no_global_sdpa_backend_flag():
    flags = ("flash_sdp_enabled", "mem_efficient_sdp_enabled", "math_sdp_enabled", "cudnn_sdp_enabled")
    before = {f: getattr(torch.backends.cuda, f)() for f in flags if hasattr(torch.backends.cuda, f)}
    for family in FAMILIES:
        _model(family)(_tokens(1, 4))
    assert before == {f: getattr(torch.backends.cuda, f)() for f in before}


def test_configs_refuse_architectures_they_do_not_implement():
    for switch in ({"block_type": "sequential"}, {"alibi": True}, {"weight_tying": True}, {"include_bias": True},
                   {"block_group_size": True}, {"layer_norm_type": "default"}, {"n_heads": 5}):
        with pytest.raises(ValueError, match="LLaDAConfig"):
            LLaDAConfig(**switch)
    with pytest.raises(ValueError, match="tie_word_embeddings"):
        LLaDAConfig(tie_word_embeddings=True)
    assert LLaDAConfig().head_dim == 128 and LLaDAConfig().num_hidden_layers == 32
    for switch in ({"use_sliding_window": True}, {"rope_scaling": {"rope_type": "linear", "factor": 2.0}},
                   {"num_key_value_heads": 3}):
        with pytest.raises(ValueError, match="DreamConfig"):
            DreamConfig(**switch)


# ----------------------------------------------------------------------------------------------------
# Released key names and folder formats


def _released_llada_tensors(generator: torch.Generator) -> dict[str, torch.Tensor]:
    c = LLADA_RELEASED_CONFIG
    d, f, v = c["d_model"], c["mlp_hidden_size"], c["embedding_size"]
    shapes = {"model.transformer.wte.weight": (v, d), "model.transformer.ln_f.weight": (d,),
              "model.transformer.ff_out.weight": (v, d)}
    for i in range(c["n_layers"]):
        prefix = f"model.transformer.blocks.{i}."
        shapes.update({prefix + n + ".weight": (d, d) for n in ("q_proj", "k_proj", "v_proj", "attn_out")})
        shapes.update({prefix + "attn_norm.weight": (d,), prefix + "ff_norm.weight": (d,),
                       prefix + "ff_proj.weight": (f, d), prefix + "up_proj.weight": (f, d),
                       prefix + "ff_out.weight": (d, f)})
    return {k: torch.randn(s, generator=generator) for k, s in shapes.items()}


def _released_dream_tensors(generator: torch.Generator) -> dict[str, torch.Tensor]:
    c = DREAM_RELEASED_CONFIG
    e, f, v = c["hidden_size"], c["intermediate_size"], c["vocab_size"]
    kv = e // c["num_attention_heads"] * c["num_key_value_heads"]
    shapes = {"model.embed_tokens.weight": (v, e), "model.norm.weight": (e,), "lm_head.weight": (v, e)}
    for i in range(c["num_hidden_layers"]):
        p = f"model.layers.{i}."
        shapes.update({p + "self_attn.q_proj.weight": (e, e), p + "self_attn.q_proj.bias": (e,),
                       p + "self_attn.k_proj.weight": (kv, e), p + "self_attn.k_proj.bias": (kv,),
                       p + "self_attn.v_proj.weight": (kv, e), p + "self_attn.v_proj.bias": (kv,),
                       p + "self_attn.o_proj.weight": (e, e), p + "mlp.gate_proj.weight": (f, e),
                       p + "mlp.up_proj.weight": (f, e), p + "mlp.down_proj.weight": (e, f),
                       p + "input_layernorm.weight": (e,), p + "post_attention_layernorm.weight": (e,)})
    return {k: torch.randn(s, generator=generator) for k, s in shapes.items()}


@pytest.mark.parametrize("family", FAMILIES)
def test_released_key_names_load_through_auto_classes(family, tmp_path):
    config, tensors, cls = (
        (LLADA_RELEASED_CONFIG, _released_llada_tensors, LLaDAModelLM)
        if family == "llada"
        else (DREAM_RELEASED_CONFIG, _released_dream_tensors, DreamModel)
    )
    tensors = tensors(torch.Generator().manual_seed(3))
    (tmp_path / "config.json").write_text(json.dumps(config))
    save_file(tensors, str(tmp_path / "model.safetensors"), metadata={"format": "pt"})
    model, info = AutoModelForCausalLM.from_pretrained(str(tmp_path), output_loading_info=True)
    assert type(model) is cls
    assert info["missing_keys"] == [] and info["unexpected_keys"] == [] and info["mismatched_keys"] == []
    state = model.state_dict()
    assert set(state) == set(tensors)
    assert all(torch.equal(state[k], t) for k, t in tensors.items())
    # AutoModel gives the model with its head too, as the released auto_map does.
    assert type(AutoModel.from_pretrained(str(tmp_path))) is cls
    # save_pretrained writes the same tensor names back.
    model.save_pretrained(str(tmp_path / "resaved"))
    with safe_open(str(tmp_path / "resaved" / "model.safetensors"), framework="pt") as handle:
        assert set(handle.keys()) == set(tensors)


def _write_base(family: str, directory: Path) -> torch.nn.Module:
    model = _model(family, seed=4)
    model.save_pretrained(str(directory))
    return model


def _write_released_adapter(
    family: str, model: torch.nn.Module, directory: Path, task_type: str | None, rank: int = 4, alpha: int = 8
) -> dict[str, torch.Tensor]:
    """An adapter folder written by hand in the released format (MODEL-FAMILIES.md §4.1, §8.2)."""
    directory.mkdir()
    generator = torch.Generator().manual_seed(5)
    modules = dict(model.named_modules())
    tensors = {}
    for i in range(model.config.num_hidden_layers):
        for path in LORA_TARGETS[family].values():
            linear = modules[path.format(i=i)]
            key = "base_model.model." + path.format(i=i)
            tensors[key + ".lora_A.weight"] = 0.1 * torch.randn(rank, linear.in_features, generator=generator)
            tensors[key + ".lora_B.weight"] = 0.1 * torch.randn(linear.out_features, rank, generator=generator)
    save_file(tensors, str(directory / "adapter_model.safetensors"), metadata={"format": "pt"})
    (directory / "adapter_config.json").write_text(json.dumps({
        "peft_type": "LORA", "task_type": task_type, "r": rank, "lora_alpha": alpha, "lora_dropout": 0.1,
        "target_modules": list(LORA_TARGETS[family]), "bias": "none", "fan_in_fan_out": False,
        "inference_mode": True, "init_lora_weights": True, "modules_to_save": None,
        "base_model_name_or_path": "GSAI-ML/LLaDA-8B-Instruct" if family == "llada" else "Dream-org/Dream-v0-Base-7B",
    }))
    return tensors


@pytest.mark.parametrize("task_type", ["CAUSAL_LM", None])
@pytest.mark.parametrize("family", FAMILIES)
@torch.no_grad()
def test_released_lora_format_loads_and_equals_merged_weights(family, task_type, tmp_path):
    base = _write_base(family, tmp_path / "base")
    adapter = _write_released_adapter(family, base, tmp_path / "lora", task_type)
    ids = _tokens(1, 9)
    kw = {_mask_kw(family): materialize(block_causal(3), 9, 9)}
    base_logits = base(ids, **kw).logits

    # W + (alpha / r) * B @ A, computed here on a plain copy of the base.
    merged = AutoModelForCausalLM.from_pretrained(str(tmp_path / "base")).eval()
    weights = dict(merged.named_parameters())
    for key in adapter:
        if key.endswith("lora_A.weight"):
            path = key[len("base_model.model."):-len(".lora_A.weight")]
            weights[path + ".weight"] += (8 / 4) * adapter[key.replace("lora_A", "lora_B")] @ adapter[key]
    expected = merged(ids, **kw).logits
    assert (expected - base_logits).abs().max() > 1e-2  # the adapter matters

    fresh_base = AutoModelForCausalLM.from_pretrained(str(tmp_path / "base"))
    peft_model = PeftModel.from_pretrained(fresh_base, str(tmp_path / "lora"))
    peft_model.eval()
    loaded = get_peft_model_state_dict(peft_model, save_embedding_layers=False)
    assert set(loaded) == set(adapter)
    assert all(torch.equal(loaded[k], adapter[k]) for k in adapter)
    torch.testing.assert_close(peft_model(ids, **kw).logits, expected, **PARITY)
    with peft_model.disable_adapter():
        assert torch.equal(peft_model(ids, **kw).logits, base_logits)
    torch.testing.assert_close(peft_model.merge_and_unload()(ids, **kw).logits, expected, **PARITY)

    unmerged = load_d2f(tmp_path / "base", tmp_path / "lora", merge=False, dtype=torch.float32, device="cpu")
    assert isinstance(unmerged, PeftModel)
    torch.testing.assert_close(unmerged(ids, **kw).logits, expected, **PARITY)
    fused = load_d2f(tmp_path / "base", tmp_path / "lora", merge=True, dtype=torch.float32, device="cpu")
    assert type(fused) is type(base)
    torch.testing.assert_close(fused(ids, **kw).logits, expected, **PARITY)


def test_load_d2f_validates_both_folders_before_loading_weights(tmp_path, monkeypatch):
    llada = tmp_path / "llada"
    base = _write_base("llada", llada)
    _write_released_adapter("llada", base, tmp_path / "llada_lora", "CAUSAL_LM")
    dream_lora_base = _model("dream")
    _write_released_adapter("dream", dream_lora_base, tmp_path / "dream_lora", None)

    def refuse(*args, **kwargs):
        raise AssertionError("weights were loaded before validation")

    monkeypatch.setattr(D2F.lora.AutoModelForCausalLM, "from_pretrained", refuse)
    good = tmp_path / "llada_lora"
    with pytest.raises(ValueError, match="no config.json"):
        load_d2f(tmp_path / "missing", good, merge=False, dtype=torch.float32, device="cpu")
    other = tmp_path / "other"
    other.mkdir()
    (other / "config.json").write_text(json.dumps({"model_type": "llama"}))
    with pytest.raises(ValueError, match="model_type 'llama'"):
        load_d2f(other, good, merge=False, dtype=torch.float32, device="cpu")
    (other / "config.json").write_text(json.dumps({"model_type": "llada"}))
    with pytest.raises(ValueError, match="weight files"):
        load_d2f(other, good, merge=False, dtype=torch.float32, device="cpu")
    with pytest.raises(ValueError, match="no adapter_config.json"):
        load_d2f(llada, tmp_path, merge=False, dtype=torch.float32, device="cpu")
    with pytest.raises(ValueError, match=r"\['o_proj'\].*other D2F base"):
        load_d2f(llada, tmp_path / "dream_lora", merge=True, dtype=torch.float32, device="cpu")


def test_load_d2f_refuses_adapter_tensors_that_do_not_land(tmp_path):
    base = _write_base("llada", tmp_path / "base")
    tensors = _write_released_adapter("llada", base, tmp_path / "lora", "CAUSAL_LM")
    # A plausible mistake: the base-model prefix written once instead of twice.
    renamed = {k.replace("base_model.model.model.", "base_model.model."): t for k, t in tensors.items()}
    save_file(renamed, str(tmp_path / "lora" / "adapter_model.safetensors"), metadata={"format": "pt"})
    with pytest.warns(UserWarning, match="missing adapter keys"):
        with pytest.raises(ValueError, match="does not match the base"):
            load_d2f(tmp_path / "base", tmp_path / "lora", merge=False, dtype=torch.float32, device="cpu")


def test_d2f_imports_only_common_torch_transformers_peft_safetensors_and_stdlib():
    allowed = {"D2F", "common", "torch", "transformers", "peft", "safetensors"} | set(sys.stdlib_module_names)
    for path in (ROOT / "D2F").glob("**/*.py"):
        found = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                found |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                found.add(node.module.split(".")[0])
        # The command line, like every family's, also reads the family registry.
        extra = {"families"} if path.name == "example_d2f.py" else set()
        assert found <= allowed | extra, f"D2F/{path.name} imports {sorted(found - allowed - extra)}"
