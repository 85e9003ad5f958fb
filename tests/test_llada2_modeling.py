"""Unit tests of our LLaDA2 MoE modeling code on tiny random configs (CPU, fp32 and float64).

The references below are written independently of LLaDA2/modeling_llada2_moe.py: per-token loops,
explicit sorting for the group-limited top-k, per-pair RoPE and per-head attention, all in float64.
"""

import builtins
import importlib
import json
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, DynamicCache

import LLaDA2
from LLaDA2.configuration_llada2_moe import LLaDA2MoeConfig
from LLaDA2.modeling_llada2_moe import LLaDA2MoeModel, LLaDA2MoeModelLM, group_limited_topk, route

TINY = {
    "vocab_size": 96,
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 3,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 16,
    "rotary_dim": 8,
    "partial_rotary_factor": 0.5,
    "num_experts": 8,
    "n_group": 4,
    "topk_group": 2,
    "num_experts_per_tok": 2,
    "moe_intermediate_size": 32,
    "num_shared_experts": 1,
    "first_k_dense_replace": 1,
    "pad_token_id": 95,
    "max_position_embeddings": 256,
    "rope_theta": 10000.0,
    # Larger than the released 0.02 so that attention and routing are far from uniform.
    "initializer_range": 0.1,
}
# inclusionAI/LLaDA2.1-mini config.json values (MODEL-FAMILIES.md §3.2; §8.1 for the dropouts).
RELEASED = {
    "vocab_size": 157184,
    "hidden_size": 2048,
    "intermediate_size": 5120,
    "num_hidden_layers": 20,
    "num_attention_heads": 16,
    "num_key_value_heads": 4,
    "head_dim": 128,
    "hidden_act": "silu",
    "use_qkv_bias": False,
    "use_qk_norm": True,
    "use_bias": False,
    "rms_norm_eps": 1e-6,
    "norm_head": False,
    "norm_softmax": False,
    "tie_word_embeddings": False,
    "embedding_dropout": 0.0,
    "attention_dropout": 0.0,
    "output_dropout": 0.0,
    "initializer_range": 0.02,
    "max_position_embeddings": 32768,
    "rope_theta": 600000,
    "partial_rotary_factor": 0.5,
    "rotary_dim": 64,
    "use_cache": False,
    "sliding_window": 4096,
    "pad_token_id": 156892,
    "num_experts": 256,
    "num_shared_experts": 1,
    "num_experts_per_tok": 8,
    "n_group": 8,
    "topk_group": 4,
    "routed_scaling_factor": 2.5,
    "moe_intermediate_size": 512,
    "first_k_dense_replace": 1,
    "norm_topk_prob": True,
    "score_function": "sigmoid",
    "router_dtype": "fp32",
    "moe_router_enable_expert_bias": True,
    "output_router_logits": False,
}
# Keys of the released config.json that are not constructor arguments.
RELEASED_EXTRAS = {
    "architectures": ["LLaDA2MoeModelLM"],
    "auto_map": {
        "AutoConfig": "configuration_llada2_moe.LLaDA2MoeConfig",
        "AutoModel": "modeling_llada2_moe.LLaDA2MoeModel",
        "AutoModelForCausalLM": "modeling_llada2_moe.LLaDA2MoeModelLM",
    },
    "model_type": "llada2_moe",
    "dtype": "bfloat16",
    "transformers_version": "4.57.1",
}
EXACT = {"rtol": 0.0, "atol": 0.0}
TIGHT = {"rtol": 1e-5, "atol": 1e-6}


def _config(**overrides: object) -> LLaDA2MoeConfig:
    return LLaDA2MoeConfig(**{**TINY, **overrides})


def _model(config: LLaDA2MoeConfig | None = None, seed: int = 0) -> LLaDA2MoeModelLM:
    """A random model whose norms and expert biases are not at their trivial init values."""
    torch.manual_seed(seed)
    model = LLaDA2MoeModelLM(config or _config()).eval()
    generator = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if name.endswith("layernorm.weight") or name.endswith("norm.weight"):
                tensor.copy_(1.0 + 0.2 * torch.randn(tensor.shape, generator=generator))
            elif name.endswith("expert_bias"):
                tensor.copy_(0.1 * torch.randn(tensor.shape, generator=generator))
    return model


def _tokens(batch: int, length: int, seed: int = 1) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, TINY["vocab_size"], (batch, length), generator=generator)  # [B, T]


def _block_causal(q_start: int, q_len: int, kv_len: int, block: int) -> torch.Tensor:
    """Row q (absolute position q_start + q) may see key k iff block(k) <= block(row)."""
    rows = torch.arange(q_start, q_start + q_len)[:, None] // block  # [Q, 1]
    keys = torch.arange(kv_len)[None, :] // block  # [1, K]
    return (keys <= rows)[None]  # [1, Q, K]


# ------------------------------------------------------------------ float64 references (test-only)


def _ref_rms(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    return weight * x / torch.sqrt((x * x).mean(-1, keepdim=True) + eps)


def _ref_swiglu(x: torch.Tensor, weights: dict, prefix: str) -> torch.Tensor:
    gate = x @ weights[f"{prefix}.gate_proj.weight"].T
    up = x @ weights[f"{prefix}.up_proj.weight"].T
    return (gate * torch.sigmoid(gate) * up) @ weights[f"{prefix}.down_proj.weight"].T


def _ref_route_one(scores: list[float], bias: list[float], cfg: dict) -> tuple[list[int], list[float]]:
    """Group-limited top-k for one token by plain sorting."""
    biased = [s + b for s, b in zip(scores, bias)]
    per_group = len(scores) // cfg["n_group"]
    groups = [list(range(g * per_group, (g + 1) * per_group)) for g in range(cfg["n_group"])]
    group_score = [sum(sorted((biased[e] for e in members), reverse=True)[:2]) for members in groups]
    best_groups = sorted(range(cfg["n_group"]), key=lambda g: -group_score[g])[: cfg["topk_group"]]
    eligible = [e for g in best_groups for e in groups[g]]
    chosen = sorted(eligible, key=lambda e: -biased[e])[: cfg["num_experts_per_tok"]]
    raw = [scores[e] for e in chosen]
    total = sum(raw) if len(chosen) > 1 else 1.0
    return chosen, [cfg["routed_scaling_factor"] * r / total for r in raw]


def _ref_moe(x: torch.Tensor, weights: dict, prefix: str, cfg: dict) -> torch.Tensor:
    """x [T, E] float64 -> [T, E]: every token through its chosen experts, one token at a time."""
    out = torch.zeros_like(x)
    bias = weights[f"{prefix}.gate.expert_bias"].tolist()
    for t in range(x.shape[0]):
        scores = torch.sigmoid(weights[f"{prefix}.gate.weight"] @ x[t]).tolist()
        chosen, routing_weights = _ref_route_one(scores, bias, cfg)
        for expert, weight in zip(chosen, routing_weights):
            out[t] += weight * _ref_swiglu(x[t], weights, f"{prefix}.experts.{expert}")
        if cfg["num_shared_experts"]:
            out[t] += _ref_swiglu(x[t], weights, f"{prefix}.shared_experts")
    return out


def _ref_rope(x: torch.Tensor, positions: torch.Tensor, rope_dim: int, theta: float) -> torch.Tensor:
    """x [T, D]: rotate pairs (i, i + R/2) for i < R/2 by angle pos * theta^(-2i/R); dims >= R untouched."""
    out = x.clone()
    half = rope_dim // 2
    for i in range(half):
        angle = positions.double() * theta ** (-2.0 * i / rope_dim)  # [T]
        first, second = x[:, i], x[:, i + half]
        out[:, i] = first * torch.cos(angle) - second * torch.sin(angle)
        out[:, i + half] = second * torch.cos(angle) + first * torch.sin(angle)
    return out


def _ref_attention(
    x: torch.Tensor, weights: dict, prefix: str, positions: torch.Tensor, allowed: torch.Tensor, cfg: dict
) -> torch.Tensor:
    """x [T, E], allowed bool [T, T] -> [T, E], one head at a time."""
    heads, kv_heads, dim = cfg["num_attention_heads"], cfg["num_key_value_heads"], cfg["head_dim"]
    qkv = x @ weights[f"{prefix}.query_key_value.weight"].T  # [T, (H + 2 Hkv) D]
    outputs = []
    for h in range(heads):
        g = h // (heads // kv_heads)
        q = qkv[:, h * dim : (h + 1) * dim]
        k = qkv[:, (heads + g) * dim : (heads + g + 1) * dim]
        v = qkv[:, (heads + kv_heads + g) * dim : (heads + kv_heads + g + 1) * dim]
        q = _ref_rms(q, weights[f"{prefix}.query_layernorm.weight"], cfg["rms_norm_eps"])
        k = _ref_rms(k, weights[f"{prefix}.key_layernorm.weight"], cfg["rms_norm_eps"])
        q = _ref_rope(q, positions, cfg["rotary_dim"], cfg["rope_theta"])
        k = _ref_rope(k, positions, cfg["rotary_dim"], cfg["rope_theta"])
        scores = (q @ k.T) / math.sqrt(dim)
        scores = scores.masked_fill(~allowed, float("-inf"))
        outputs.append(torch.softmax(scores, dim=-1) @ v)
    return torch.cat(outputs, dim=-1) @ weights[f"{prefix}.dense.weight"].T


def _ref_logits(model: LLaDA2MoeModelLM, input_ids: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
    """Float64 forward of one sequence input_ids [T] with bool mask [T, T] -> logits [T, V]."""
    cfg = {**model.config.to_dict()}
    weights = {name: tensor.detach().double() for name, tensor in model.state_dict().items()}
    positions = torch.arange(input_ids.shape[0])
    x = weights["model.word_embeddings.weight"][input_ids]
    eps = cfg["rms_norm_eps"]
    for i in range(cfg["num_hidden_layers"]):
        prefix = f"model.layers.{i}"
        h = _ref_rms(x, weights[f"{prefix}.input_layernorm.weight"], eps)
        x = x + _ref_attention(h, weights, f"{prefix}.attention", positions, allowed, cfg)
        h = _ref_rms(x, weights[f"{prefix}.post_attention_layernorm.weight"], eps)
        if i < cfg["first_k_dense_replace"]:
            x = x + _ref_swiglu(h, weights, f"{prefix}.mlp")
        else:
            x = x + _ref_moe(h, weights, f"{prefix}.mlp", cfg)
    x = _ref_rms(x, weights["model.norm.weight"], eps)
    return x @ weights["lm_head.weight"].T


# ------------------------------------------------------------------------------------------ config


def test_config_defaults_equal_released_llada21_mini() -> None:
    config = LLaDA2MoeConfig()
    for key, value in RELEASED.items():
        assert getattr(config, key) == value, key
    assert config.model_type == "llada2_moe" and config.rope_dim == 64


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"rotary_dim": 16}, "rotary_dim"),
        ({"num_attention_heads": 4, "num_key_value_heads": 3}, "divisible"),
        ({"num_experts": 9}, "divisible by n_group"),
        ({"num_experts": 4}, ">= 2 experts per group"),
        ({"topk_group": 5}, "topk_group"),
        ({"num_experts_per_tok": 5}, "eligible"),
        ({"score_function": "softmax"}, "score_function"),
        ({"norm_topk_prob": False}, "norm_topk_prob"),
        ({"norm_head": True}, "norm_head"),
        ({"moe_router_enable_expert_bias": False}, "expert_bias"),
        ({"rope_scaling": {"rope_type": "linear", "factor": 2.0}}, "rope_scaling"),
        ({"pad_token_id": 96}, "pad_token_id"),
        ({"first_k_dense_replace": 4}, "first_k_dense_replace"),
        ({"hidden_act": "not_an_activation"}, "activation"),
    ],
)
def test_config_rejects_bad_values(overrides: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        _config(**overrides)


# ----------------------------------------------------------------------------------------- routing

# Eight experts in four groups of two; topk_group 2, top-2, scale 2.5.
_SCORES = torch.tensor([[0.05, 0.90, 0.60, 0.58, 0.57, 0.56, 0.10, 0.20]], dtype=torch.float64)


def test_group_limited_topk_excludes_the_best_expert_of_a_weak_group() -> None:
    # Group sums: g0 = 0.95, g1 = 1.18, g2 = 1.13, g3 = 0.30 -> groups 1 and 2 stay eligible, so
    # expert 1 (the single best score, in group 0) is excluded.
    chosen = group_limited_topk(_SCORES, top_k=2, n_group=4, topk_group=2)
    assert chosen.tolist() == [[2, 3]]
    idx, weights = route(_SCORES, torch.zeros(8, dtype=torch.float64), 2, 4, 2, 2.5)
    assert idx.tolist() == [[2, 3]]
    torch.testing.assert_close(weights, torch.tensor([[0.60, 0.58]], dtype=torch.float64) / 1.18 * 2.5)


def test_bias_picks_experts_but_weights_use_unbiased_scores() -> None:
    bias = torch.zeros(8, dtype=torch.float64)
    bias[6] = 1.0  # biased scores: expert 6 -> 1.10, group 3 -> 1.30 (best), group 1 -> 1.18
    idx, weights = route(_SCORES, bias, 2, 4, 2, 2.5)
    assert idx.tolist() == [[6, 2]]
    torch.testing.assert_close(weights, torch.tensor([[0.10, 0.60]], dtype=torch.float64) / 0.70 * 2.5)


def test_excluded_groups_are_minus_inf_not_zero() -> None:
    # All biased scores negative: a 0.0 fill (DeepSeek-V3) would let excluded experts win.
    idx, _ = route(_SCORES, torch.full((8,), -1.0, dtype=torch.float64), 2, 4, 2, 2.5)
    assert idx.tolist() == [[2, 3]]


def test_top1_weight_is_not_normalised() -> None:
    idx, weights = route(_SCORES, torch.zeros(8, dtype=torch.float64), 1, 4, 2, 2.5)
    assert idx.tolist() == [[2]]
    torch.testing.assert_close(weights, torch.tensor([[0.60 * 2.5]], dtype=torch.float64))


def test_moe_block_matches_float64_per_token_reference() -> None:
    model = _model()
    block = model.model.layers[1].mlp
    generator = torch.Generator().manual_seed(3)
    x = torch.randn(2, 9, TINY["hidden_size"], generator=generator)  # [B, Q, E]
    weights = {f"mlp.{k}": v.double() for k, v in block.state_dict().items()}
    cfg = model.config.to_dict()
    expected = _ref_moe(x.double().reshape(18, -1), weights, "mlp", cfg).reshape(2, 9, -1)
    with torch.no_grad():
        actual = block(x)
        torch.testing.assert_close(actual.double(), expected, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(block.double()(x.double()), expected, rtol=1e-12, atol=1e-12)
    # The case is non-trivial: many experts are used and the bias changes some token's choice.
    scores = torch.sigmoid(x.double().reshape(18, -1) @ weights["mlp.gate.weight"].T)  # [N, X]
    with_bias = group_limited_topk(scores + weights["mlp.gate.expert_bias"], 2, 4, 2)
    without_bias = group_limited_topk(scores, 2, 4, 2)
    assert with_bias.unique().numel() >= 6
    assert not torch.equal(with_bias.sort(dim=1).values, without_bias.sort(dim=1).values)


def test_moe_dispatch_gradients_match_dense_formulation() -> None:
    """Backprop through the sorted dispatch equals a dense 'every expert on every token' mixture."""
    block = _model().model.layers[2].mlp.double()
    generator = torch.Generator().manual_seed(4)
    x = torch.randn(1, 7, TINY["hidden_size"], dtype=torch.float64, generator=generator).requires_grad_()

    def grads() -> list[torch.Tensor]:
        # An expert that received no token has no .grad; its true gradient is zero.
        params = [torch.zeros_like(p) if p.grad is None else p.grad.clone() for p in block.parameters()]
        return [x.grad.clone()] + params

    block(x).square().sum().backward()
    dispatched = grads()
    x.grad = None
    block.zero_grad()
    tokens = x.reshape(7, -1)
    idx, weights = block.gate(tokens)  # [N, k]
    dense_weights = torch.zeros(7, TINY["num_experts"], dtype=torch.float64)
    dense_weights = dense_weights.scatter(1, idx, weights)  # [N, X]: zero for unchosen experts
    every = torch.stack([expert(tokens) for expert in block.experts], dim=1)  # [N, X, E]
    dense = (every * dense_weights[..., None]).sum(1) + block.shared_experts(tokens)
    dense.square().sum().backward()
    reference = grads()
    for got, want in zip(dispatched, reference):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)


# ------------------------------------------------------------------------------- whole-model parity


def test_logits_match_float64_reference() -> None:
    model = _model()
    length, block = 10, 4
    input_ids = _tokens(2, length)
    allowed = _block_causal(0, length, length, block)  # [1, T, T]
    expected = torch.stack([_ref_logits(model, input_ids[b], allowed[0]) for b in range(2)])  # [B, T, V]
    with torch.no_grad():
        logits = model(input_ids, attention_mask=allowed).logits
        assert logits.dtype == torch.float32
        torch.testing.assert_close(logits.double(), expected, rtol=1e-4, atol=1e-5)
        logits64 = model.double()(input_ids, attention_mask=allowed).logits
    assert logits64.dtype == torch.float64
    torch.testing.assert_close(logits64, expected, rtol=1e-10, atol=1e-10)


def test_bf16_model_returns_float32_logits_and_routes_in_float32() -> None:
    model = _model().to(torch.bfloat16)
    with torch.no_grad():
        out = model(_tokens(1, 5), attention_mask=torch.ones(1, 5, 5, dtype=torch.bool))
        _, weights = model.model.layers[1].mlp.gate(torch.randn(3, TINY["hidden_size"], dtype=torch.bfloat16))
    assert out.logits.dtype == torch.float32 and torch.isfinite(out.logits).all()
    assert weights.dtype == torch.float32


def test_use_qk_norm_false_and_biases_change_the_parameter_set() -> None:
    model = LLaDA2MoeModelLM(_config(use_qk_norm=False, use_qkv_bias=True, use_bias=True))
    names = set(model.state_dict())
    assert "model.layers.0.attention.query_layernorm.weight" not in names
    assert {"model.layers.0.attention.query_key_value.bias", "model.layers.0.attention.dense.bias"} <= names


# ------------------------------------------------------------------------------------------ cache


def test_cached_block_forward_equals_full_block_causal_forward() -> None:
    model = _model()
    block, total, prefill_len = 4, 16, 8
    input_ids = _tokens(2, total)
    with torch.no_grad():
        full = model(input_ids, attention_mask=_block_causal(0, total, total, block)).logits  # [B, T, V]
        cache = DynamicCache()
        prefill = model(
            input_ids[:, :prefill_len],
            attention_mask=_block_causal(0, prefill_len, prefill_len, block),
            past_key_values=cache,
            store_kv=True,
        ).logits
        torch.testing.assert_close(prefill, full[:, :prefill_len], **TIGHT)
        assert cache.get_seq_length() == prefill_len
        for start in range(prefill_len, total, block):
            positions = torch.arange(start, start + block)[None].expand(2, -1)  # [B, L]
            block_ids = input_ids[:, start : start + block]
            full_attention = torch.ones(1, block, start + block, dtype=torch.bool)  # [1, L, C+L]
            inputs = {"attention_mask": full_attention, "position_ids": positions, "past_key_values": cache}
            read_only = model(block_ids, **inputs, store_kv=False).logits
            torch.testing.assert_close(read_only, full[:, start : start + block], **TIGHT)
            assert cache.get_seq_length() == start
            committed = model(block_ids, **inputs, store_kv=True).logits
            torch.testing.assert_close(committed, full[:, start : start + block], **TIGHT)
            assert cache.get_seq_length() == start + block


def test_store_kv_false_leaves_cache_contents_unchanged() -> None:
    model = _model()
    input_ids = _tokens(1, 12)
    cache = DynamicCache()
    with torch.no_grad():
        prefill_mask = _block_causal(0, 8, 8, 4)
        model(input_ids[:, :8], attention_mask=prefill_mask, past_key_values=cache, store_kv=True)
        before = [(k.clone(), v.clone()) for k, v in zip(cache.key_cache, cache.value_cache)]
        full_attention = torch.ones(1, 4, 12, dtype=torch.bool)
        out = model(input_ids[:, 8:], attention_mask=full_attention, past_key_values=cache, store_kv=False)
    assert out.past_key_values is cache and cache.get_seq_length() == 8
    assert len(cache.key_cache) == TINY["num_hidden_layers"]
    for (key, value), (key_before, value_before) in zip(zip(cache.key_cache, cache.value_cache), before):
        assert torch.equal(key, key_before) and torch.equal(value, value_before)


def test_default_position_ids_follow_cache_length() -> None:
    model = _model()
    input_ids = _tokens(1, 9)
    mask = torch.ones(1, 4, 9, dtype=torch.bool)
    with torch.no_grad():
        cache = DynamicCache()
        prompt_mask = torch.ones(1, 5, 5, dtype=torch.bool)
        model(input_ids[:, :5], attention_mask=prompt_mask, past_key_values=cache, store_kv=True)
        implicit = model(input_ids[:, 5:], attention_mask=mask, past_key_values=cache).logits
        positions = torch.arange(5, 9)[None]  # [1, 4]
        explicit = model(
            input_ids[:, 5:], attention_mask=mask, position_ids=positions, past_key_values=cache
        ).logits
    torch.testing.assert_close(implicit, explicit, **EXACT)


# ------------------------------------------------------------------------------------------- masks


def test_bool_and_additive_masks_give_identical_logits() -> None:
    model = _model()
    input_ids = _tokens(2, 8)
    allowed = _block_causal(0, 8, 8, 4)  # [1, Q, K]
    forms = [
        allowed[:, None],
        allowed.expand(2, -1, -1),
        torch.zeros(allowed.shape).masked_fill(~allowed, float("-inf")),
        torch.zeros(allowed.shape).masked_fill(~allowed, torch.finfo(torch.float32).min)[:, None],
    ]
    with torch.no_grad():
        expected = model(input_ids, attention_mask=allowed).logits
        unmasked = model(input_ids, attention_mask=torch.ones_like(allowed)).logits
        assert not torch.allclose(expected, unmasked, atol=1e-3)  # the mask matters in this case
        for mask in forms:
            torch.testing.assert_close(model(input_ids, attention_mask=mask).logits, expected, **TIGHT)


def test_per_row_masks_apply_per_batch_element() -> None:
    model = _model()
    input_ids = _tokens(2, 8)
    masks = torch.cat([_block_causal(0, 8, 8, 4), _block_causal(0, 8, 8, 2)])  # [2, Q, K]
    with torch.no_grad():
        joint = model(input_ids, attention_mask=masks).logits
        for b in range(2):
            alone = model(input_ids[b : b + 1], attention_mask=masks[b : b + 1]).logits
            torch.testing.assert_close(joint[b : b + 1], alone, **TIGHT)


def test_single_token_without_mask_attends_everything() -> None:
    model = _model()
    input_ids = _tokens(1, 6)
    with torch.no_grad():
        cache = DynamicCache()
        prompt_mask = torch.ones(1, 5, 5, dtype=torch.bool)
        model(input_ids[:, :5], attention_mask=prompt_mask, past_key_values=cache, store_kv=True)
        implicit = model(input_ids[:, 5:], past_key_values=cache).logits
        everything = torch.ones(1, 1, 6, dtype=torch.bool)
        explicit = model(input_ids[:, 5:], attention_mask=everything, past_key_values=cache).logits
    torch.testing.assert_close(implicit, explicit, **EXACT)


def test_float_keep_mask_is_rejected() -> None:
    model = _model()
    keep = _block_causal(0, 8, 8, 4).float()[:, None]  # the upstream prefill's 0/1 float mask
    with pytest.raises(ValueError, match="0/1 keep-mask"):
        model(_tokens(1, 8), attention_mask=keep)


@pytest.mark.parametrize(
    "mask, message",
    [
        (torch.full((1, 8, 8), 0.5), "<= 0 everywhere"),
        (torch.ones(1, 8, 8, dtype=torch.long), "ambiguous"),
        (torch.ones(1, 8, 7, dtype=torch.bool), "shape"),
        (torch.ones(1, 2, 8, 8, dtype=torch.bool), "shape"),
        (torch.ones(8, 8, dtype=torch.bool), "shape"),
    ],
)
def test_bad_masks_are_rejected(mask: torch.Tensor, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        _model()(_tokens(1, 8), attention_mask=mask)


def test_missing_mask_with_several_queries_is_rejected() -> None:
    model = _model()
    with pytest.raises(ValueError, match="attention_mask is required"):
        model(_tokens(1, 4))
    cache = DynamicCache()
    prompt_mask = torch.ones(1, 4, 4, dtype=torch.bool)
    model(_tokens(1, 4), attention_mask=prompt_mask, past_key_values=cache, store_kv=True)
    with pytest.raises(ValueError, match="attention_mask is required"):
        model(_tokens(1, 3), past_key_values=cache, store_kv=False)


# --------------------------------------------------------------------------- head, loss, kwargs


def test_logits_to_keep_returns_the_last_rows() -> None:
    model = _model()
    input_ids = _tokens(2, 9)
    mask = _block_causal(0, 9, 9, 3)
    with torch.no_grad():
        full = model(input_ids, attention_mask=mask).logits
        kept = model(input_ids, attention_mask=mask, logits_to_keep=4).logits
    assert kept.shape == (2, 4, TINY["vocab_size"])
    torch.testing.assert_close(kept, full[:, -4:], **EXACT)


def test_labels_are_position_aligned() -> None:
    model = _model()
    input_ids = _tokens(2, 6)
    labels = _tokens(2, 6, seed=5)
    labels[0, :3] = -100
    out = model(input_ids, attention_mask=torch.ones(1, 6, 6, dtype=torch.bool), labels=labels)
    keep = labels != -100
    expected = torch.nn.functional.cross_entropy(out.logits[keep], labels[keep])
    torch.testing.assert_close(out.loss, expected, **TIGHT)


def test_unknown_kwargs_are_rejected() -> None:
    with pytest.raises(TypeError, match="store_kvv"):
        _model()(_tokens(1, 1), store_kvv=True)


def test_gradient_checkpointing_matches_plain_backward() -> None:
    input_ids = _tokens(2, 8)
    mask = _block_causal(0, 8, 8, 4)
    grads = []
    for checkpointing in (False, True):
        model = _model().train()
        if checkpointing:
            model.gradient_checkpointing_enable()
        model(input_ids, attention_mask=mask, labels=input_ids).loss.backward()
        grads.append({n: p.grad for n, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys() and len(grads[0]) > 0
    for name, grad in grads[0].items():
        torch.testing.assert_close(grads[1][name], grad, **TIGHT)


def test_bf16_autocast_training_step_runs() -> None:
    """Upstream's training-mode MoE path fails under bf16 autocast (MODEL-FAMILIES.md §8.1)."""
    model = _model().train()
    input_ids = _tokens(2, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(input_ids, attention_mask=_block_causal(0, 8, 8, 4), labels=input_ids)
    out.loss.backward()
    assert out.logits.dtype == torch.float32 and torch.isfinite(out.loss)
    assert torch.isfinite(model.model.layers[2].mlp.gate.weight.grad).all()


def test_router_stays_float32_under_autocast() -> None:
    gate = _model().model.layers[1].mlp.gate
    tokens = torch.randn(16, TINY["hidden_size"], generator=torch.Generator().manual_seed(6))  # [N, E]
    with torch.no_grad():
        expected_idx, expected_weights = gate(tokens)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            idx, weights = gate(tokens)
    assert weights.dtype == torch.float32
    assert torch.equal(idx, expected_idx)
    torch.testing.assert_close(weights, expected_weights, **EXACT)


# ---------------------------------------------------------------------- checkpoint loading / auto


def _released_key_shapes(cfg: dict) -> dict[str, tuple[int, ...]]:
    """State-dict names and shapes of a released checkpoint (MODEL-FAMILIES.md §3.3)."""
    e, d = cfg["hidden_size"], cfg["head_dim"]
    qkv = (cfg["num_attention_heads"] + 2 * cfg["num_key_value_heads"]) * d
    shapes = {
        "model.word_embeddings.weight": (cfg["vocab_size"], e),
        "model.norm.weight": (e,),
        "lm_head.weight": (cfg["vocab_size"], e),
    }

    def swiglu(prefix: str, width: int) -> None:
        shapes[f"{prefix}.gate_proj.weight"] = (width, e)
        shapes[f"{prefix}.up_proj.weight"] = (width, e)
        shapes[f"{prefix}.down_proj.weight"] = (e, width)

    for i in range(cfg["num_hidden_layers"]):
        layer = f"model.layers.{i}"
        shapes.update({
            f"{layer}.input_layernorm.weight": (e,),
            f"{layer}.post_attention_layernorm.weight": (e,),
            f"{layer}.attention.query_key_value.weight": (qkv, e),
            f"{layer}.attention.query_layernorm.weight": (d,),
            f"{layer}.attention.key_layernorm.weight": (d,),
            f"{layer}.attention.dense.weight": (e, cfg["num_attention_heads"] * d),
        })
        if i < cfg["first_k_dense_replace"]:
            swiglu(f"{layer}.mlp", cfg["intermediate_size"])
            continue
        shapes[f"{layer}.mlp.gate.weight"] = (cfg["num_experts"], e)
        shapes[f"{layer}.mlp.gate.expert_bias"] = (cfg["num_experts"],)
        for expert in range(cfg["num_experts"]):
            swiglu(f"{layer}.mlp.experts.{expert}", cfg["moe_intermediate_size"])
        swiglu(f"{layer}.mlp.shared_experts", cfg["moe_intermediate_size"] * cfg["num_shared_experts"])
    return shapes


def _write_released_style_checkpoint(directory: Path) -> dict[str, torch.Tensor]:
    """config.json with the released key set at tiny sizes, plus random weights under released names."""
    config_json = {**RELEASED, **RELEASED_EXTRAS, **{k: v for k, v in TINY.items() if k in RELEASED}}
    assert set(config_json) == set(RELEASED) | set(RELEASED_EXTRAS)
    (directory / "config.json").write_text(json.dumps(config_json))
    generator = torch.Generator().manual_seed(7)
    shapes = _released_key_shapes(config_json)
    tensors = {name: 0.1 * torch.randn(shape, generator=generator) for name, shape in shapes.items()}
    save_file(tensors, str(directory / "model.safetensors"), metadata={"format": "pt"})
    return tensors


def test_released_style_checkpoint_loads_without_remote_code(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tensors = _write_released_style_checkpoint(tmp_path)

    def refuse_prompt(*args: object) -> str:
        raise AssertionError("transformers prompted for trust_remote_code")

    monkeypatch.setattr(builtins, "input", refuse_prompt)
    config = AutoConfig.from_pretrained(tmp_path)
    assert type(config) is LLaDA2MoeConfig and config.transformers_version == "4.57.1"
    model, info = AutoModelForCausalLM.from_pretrained(tmp_path, output_loading_info=True)
    assert type(model) is LLaDA2MoeModelLM
    assert info["missing_keys"] == [] and info["unexpected_keys"] == []
    assert info["mismatched_keys"] == [] and info["error_msgs"] == []
    state = model.state_dict()
    assert set(state) == set(tensors)
    for name, tensor in tensors.items():
        torch.testing.assert_close(state[name], tensor, **EXACT)  # expert_bias included: not re-initialised
    base, base_info = AutoModel.from_pretrained(tmp_path, output_loading_info=True)
    assert type(base) is LLaDA2MoeModel and base_info["missing_keys"] == []
    input_ids = _tokens(1, 6)
    mask = _block_causal(0, 6, 6, 3)
    with torch.no_grad():
        expected = _ref_logits(model.eval(), input_ids[0], mask[0])
        logits = model(input_ids, attention_mask=mask).logits[0]  # [T, V]
    torch.testing.assert_close(logits.double(), expected, rtol=1e-4, atol=1e-5)


def test_save_pretrained_round_trip(tmp_path: Path) -> None:
    model = _model()
    model.save_pretrained(tmp_path)
    written = json.loads((tmp_path / "config.json").read_text())
    assert written["architectures"] == ["LLaDA2MoeModelLM"] and written["model_type"] == "llada2_moe"
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    original, reloaded = model.state_dict(), loaded.state_dict()
    assert list(original) == list(reloaded)
    assert all(torch.equal(original[k], reloaded[k]) and original[k].dtype == reloaded[k].dtype for k in original)
    input_ids = _tokens(2, 7)
    mask = _block_causal(0, 7, 7, 4)
    with torch.no_grad():
        expected = model(input_ids, attention_mask=mask).logits
        # Not bit for bit: MKL's one-row products may round differently for weights at another memory
        # alignment (seen on an AMD EPYC host), so equal weights give logits equal to float32 rounding.
        torch.testing.assert_close(loaded(input_ids, attention_mask=mask).logits, expected, **TIGHT)


def test_registration_is_idempotent() -> None:
    importlib.reload(LLaDA2)
    assert isinstance(AutoConfig.for_model("llada2_moe"), LLaDA2.LLaDA2MoeConfig)
