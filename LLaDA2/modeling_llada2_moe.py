"""LLaDA2.x-mini: a bidirectional MoE block-diffusion LLM (Ling-2.0 / "BailingMoeV2" shape).

Module paths and parameter names equal the released checkpoint keys (MODEL-FAMILIES.md §3.3:
`model.word_embeddings`, `attention.query_key_value`, `attention.dense`, `mlp.gate.weight`,
`mlp.gate.expert_bias`, `mlp.experts.{e}.*`, `mlp.shared_experts.*`, `model.norm`, `lm_head`), so
inclusionAI/LLaDA2.1-mini and LLaDA2.0-mini load with `from_pretrained` and no key remapping.

Architecture: pre-norm decoder; fused QKV -> per-head q/k RMSNorm -> partial rotate-half RoPE on the
first head_dim * partial_rotary_factor dims -> GQA attention -> `dense`. The first
`first_k_dense_replace` layers have a dense SwiGLU MLP, the others a MoE: a sigmoid router computed
in fp32, `expert_bias` added for the choice only, group-limited top-k, weights = the UNBIASED
scores of the chosen experts normalised to sum 1 (top_k > 1) times `routed_scaling_factor`, plus
an always-on shared expert. Logits are returned in float32 (float64 for a float64 model).

Forward contract (used by our decoders, which own all decoding policy):

* **Masks are explicit.** The model builds no mask. `attention_mask` is `[B, Q, K]` or
  `[B, 1, Q, K]` (B may be 1), K = cached length + Q, either bool (True = may attend) or an
  additive float mask (0 = attend, negative / -inf = blocked). Every query must be allowed at
  least one key. `attention_mask=None` is accepted only for a single query token (full attention
  over cache + itself); with Q > 1 it raises ValueError.
* **Upstream bugs this rejects** (MODEL-FAMILIES.md §8.1, confirmed by running the reference):
  (1) the reference prefill / no-cache decoders pass a float 0/1 "keep" mask, which SDPA *adds*
  as a +1 bias, so nothing is masked; a float mask with positive entries raises ValueError here.
  (2) Under transformers 4.52.4, SDPA with `attention_mask=None` and Q > 1 silently becomes
  *causal* (top-left aligned with a cache), corrupting every cached draft/commit forward; hence a
  missing mask with Q > 1 is an error here, never a silent default.
* **`store_kv`** (as SDAR): with a `DynamicCache` passed as `past_key_values`, True appends this
  call's K/V and attends over the result; False attends over cached + current K/V and leaves the
  cache untouched (a read-only draft / verifier forward). The cache holds post-q/k-norm, post-RoPE
  keys. Position ids default to cached length + arange(Q).
* **`logits_to_keep=N`** computes the LM head on the last N positions only.
* Attention is `torch.nn.functional.scaled_dot_product_attention` (no flash-attn needed).
* `labels` are position-aligned (the logit at i predicts token i), as LLaDA2 trains.

Shapes: B batch, Q query tokens of this call, P cached tokens, K = P + Q keys, H query heads,
Hkv key/value heads, D head_dim, R rotary dims, E hidden size, V vocabulary, N = B * Q routed
tokens, X routed experts, G expert groups, k experts per token.
"""

from typing import Any, Optional, Union

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel
from transformers.activations import ACT2FN
from transformers.cache_utils import DynamicCache
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast

from common.layers import (angle_dtype, apply_rope, grouped_attention, inverse_frequencies, rms_norm, rope_angles,
                           rope_tables)
from LLaDA2.configuration_llada2_moe import LLaDA2MoeConfig

_IGNORE_INDEX = -100
# Added to the normaliser of the routing weights, as upstream, so an all-zero selection stays finite.
_ROUTING_NORM_EPS = 1e-20
# Keyword arguments that transformers' utilities may pass and that carry no information here
# (positions come from `position_ids` or the cache length).
_IGNORED_FORWARD_KWARGS = ("cache_position",)


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """float32 for half/single precision models, float64 for float64 models (exact references)."""
    return torch.promote_types(dtype, torch.float32)


class LLaDA2MoeRMSNorm(nn.Module):
    """RMSNorm in float32, cast back to the input dtype before the weight (HF cast order)."""

    def __init__(self, hidden_size: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size))
        self.variance_epsilon = eps

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:  # [..., E] -> [..., E]
        return rms_norm(hidden_states, self.weight, self.variance_epsilon, keep_float64=True)

    def extra_repr(self) -> str:
        return f"{tuple(self.weight.shape)}, eps={self.variance_epsilon}"


class LLaDA2MoeRotaryEmbedding(nn.Module):
    """cos/sin tables of rotate-half RoPE over the first R = head_dim * partial_rotary_factor dims.

    Frequencies theta^(-2i/R) are computed on the fly in float32 (as transformers' default RoPE),
    or in float64 for a float64 model, so `model.to(bfloat16)` can never round them.
    """

    def __init__(self, config: LLaDA2MoeConfig) -> None:
        super().__init__()
        self.rope_dim = config.rope_dim
        self.rope_theta = float(config.rope_theta)

    @torch.no_grad()
    def forward(self, position_ids: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """position_ids [B|1, Q], model dtype -> (cos, signed_sin), each [B|1, 1, Q, R] in the model
        dtype (`common.layers.rope_tables`: cast once per forward, sin carrying rotate_half's sign);
        angles in float32 (float64 for a float64 model)."""
        wide = angle_dtype(dtype)
        inv_freq = inverse_frequencies(self.rope_dim, self.rope_theta, wide, position_ids.device)  # [R/2]
        return rope_tables(*rope_angles(position_ids, inv_freq, wide), dtype)


def apply_partial_rotary(x: torch.Tensor, cos: torch.Tensor, signed_sin: torch.Tensor) -> torch.Tensor:
    """Rotate the first R dims of x [B, H, Q, D] by the tables of `LLaDA2MoeRotaryEmbedding` ([B|1, 1, Q,
    R], in x's dtype as transformers casts them); dims R.. pass through."""
    rope_dim = cos.shape[-1]
    rotated, passed = x[..., :rope_dim], x[..., rope_dim:]
    return torch.cat((apply_rope(rotated, cos, signed_sin), passed), dim=-1)


class LLaDA2MoeAttention(nn.Module):
    """Fused-QKV GQA attention with per-head q/k RMSNorm, partial RoPE and `store_kv` cache control."""

    def __init__(self, config: LLaDA2MoeConfig, layer_idx: int) -> None:
        super().__init__()
        self.layer_idx = layer_idx
        self.head_dim = config.head_dim
        self.num_heads = config.num_attention_heads
        self.num_kv_heads = config.num_key_value_heads
        self.scaling = self.head_dim**-0.5
        self.attention_dropout = config.attention_dropout
        # Output rows are [H query heads | Hkv key heads | Hkv value heads] x D.
        qkv_width = (self.num_heads + 2 * self.num_kv_heads) * self.head_dim
        self.query_key_value = nn.Linear(config.hidden_size, qkv_width, bias=config.use_qkv_bias)
        self.use_qk_norm = config.use_qk_norm
        if self.use_qk_norm:
            self.query_layernorm = LLaDA2MoeRMSNorm(self.head_dim, eps=config.rms_norm_eps)
            self.key_layernorm = LLaDA2MoeRMSNorm(self.head_dim, eps=config.rms_norm_eps)
        self.dense = nn.Linear(self.num_heads * self.head_dim, config.hidden_size, bias=config.use_bias)

    def _keys_values(
        self,
        key: torch.Tensor,
        value: torch.Tensor,
        past_key_values: Optional[DynamicCache],
        store_kv: bool,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Current key/value [B, Hkv, Q, D] -> the attended key/value [B, Hkv, K, D]."""
        if past_key_values is None:
            return key, value
        if store_kv:
            return past_key_values.update(key, value, self.layer_idx)
        cached_keys = past_key_values.key_cache
        if len(cached_keys) <= self.layer_idx or cached_keys[self.layer_idx].numel() == 0:
            return key, value
        return (
            torch.cat([cached_keys[self.layer_idx], key], dim=-2),
            torch.cat([past_key_values.value_cache[self.layer_idx], value], dim=-2),
        )

    def forward(
        self,
        hidden_states: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        attention_mask: Optional[torch.Tensor],
        past_key_values: Optional[DynamicCache],
        store_kv: bool,
    ) -> torch.Tensor:
        """hidden_states [B, Q, E], cos/sin [B|1, 1, Q, R] (sin signed), mask [B|1, 1, Q, K] (bool or
        additive) or None (full attention) -> [B, Q, E]."""
        batch, q_len, _ = hidden_states.shape
        qkv = self.query_key_value(hidden_states).view(
            batch, q_len, self.num_heads + 2 * self.num_kv_heads, self.head_dim
        )  # [B, Q, H + 2 Hkv, D]
        query, key, value = qkv.split([self.num_heads, self.num_kv_heads, self.num_kv_heads], dim=2)
        if self.use_qk_norm:
            query = self.query_layernorm(query)
            key = self.key_layernorm(key)
        query = apply_partial_rotary(query.transpose(1, 2), cos, sin)  # [B, H, Q, D]
        key = apply_partial_rotary(key.transpose(1, 2), cos, sin)  # [B, Hkv, Q, D]
        # [B, Hkv, K, D] each
        key, value = self._keys_values(key, value.transpose(1, 2), past_key_values, store_kv)
        out = grouped_attention(
            query, key, value, attention_mask, self.attention_dropout if self.training else 0.0, self.scaling
        )  # [B, H, Q, D]
        return self.dense(out.transpose(1, 2).reshape(batch, q_len, self.num_heads * self.head_dim))


class LLaDA2MoeMLP(nn.Module):
    """SwiGLU feed-forward: down(act(gate(x)) * up(x)); the dense MLP, each expert, the shared expert."""

    def __init__(self, config: LLaDA2MoeConfig, intermediate_size: int) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(config.hidden_size, intermediate_size, bias=False)
        self.up_proj = nn.Linear(config.hidden_size, intermediate_size, bias=False)
        self.down_proj = nn.Linear(intermediate_size, config.hidden_size, bias=False)
        self.act_fn = ACT2FN[config.hidden_act]

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [..., E] -> [..., E]
        return self.down_proj(self.act_fn(self.gate_proj(x)) * self.up_proj(x))


def group_limited_topk(
    routing_scores: torch.Tensor, top_k: int, n_group: int, topk_group: int
) -> torch.Tensor:
    """Choose top_k experts per token among the topk_group best expert groups.

    routing_scores [N, X] (biased sigmoid scores) -> expert indices [N, k], best first.
    A group's score is the sum of its two largest routing scores. Experts of the other groups are
    set to -inf, not 0 as in DeepSeek-V3's router: with negative biased scores a 0 fill would let
    an excluded expert win.
    """
    num_tokens, num_experts = routing_scores.shape
    grouped = routing_scores.view(num_tokens, n_group, num_experts // n_group)  # [N, G, X/G]
    group_scores = grouped.topk(2, dim=-1).values.sum(dim=-1)  # [N, G]
    kept_groups = group_scores.topk(topk_group, dim=-1).indices  # [N, topk_group]
    group_keep = torch.zeros_like(group_scores, dtype=torch.bool).scatter_(1, kept_groups, True)  # [N, G]
    eligible = group_keep[:, :, None].expand_as(grouped).reshape(num_tokens, num_experts)  # [N, X]
    masked = routing_scores.masked_fill(~eligible, float("-inf"))  # [N, X]
    return masked.topk(top_k, dim=-1).indices  # [N, k]


def route(
    scores: torch.Tensor,
    expert_bias: torch.Tensor,
    top_k: int,
    n_group: int,
    topk_group: int,
    routed_scaling_factor: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The LLaDA2 routing rule on sigmoid scores [N, X] and the bias [X].

    The bias (aux-loss-free load balancing) only decides WHICH experts are chosen; the weights come
    from the unbiased scores, normalised over the chosen experts when top_k > 1 (as upstream, which
    ignores `norm_topk_prob`), then multiplied by routed_scaling_factor.
    Returns expert indices [N, k] and weights [N, k] in scores' dtype.
    """
    biased = scores + expert_bias.to(scores.dtype)  # [N, X]
    expert_idx = group_limited_topk(biased, top_k, n_group, topk_group)  # [N, k]
    weights = scores.gather(1, expert_idx)  # [N, k]
    if top_k > 1:
        weights = weights / (weights.sum(dim=-1, keepdim=True) + _ROUTING_NORM_EPS)
    return expert_idx, weights * routed_scaling_factor


class LLaDA2MoeGate(nn.Module):
    """Router: fp32 logits -> sigmoid -> `route`. Holds `weight` [X, E] and the `expert_bias` [X] buffer."""

    def __init__(self, config: LLaDA2MoeConfig) -> None:
        super().__init__()
        self.top_k = config.num_experts_per_tok
        self.n_group = config.n_group
        self.topk_group = config.topk_group
        self.routed_scaling_factor = config.routed_scaling_factor
        self.weight = nn.Parameter(torch.empty(config.num_experts, config.hidden_size))
        # A persistent buffer: it is in the checkpoint and is updated outside of backprop.
        self.register_buffer("expert_bias", torch.zeros(config.num_experts))

    def forward(self, hidden_states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """hidden_states [N, E] -> expert indices [N, k], routing weights [N, k] (float32 or float64)."""
        router_dtype = _compute_dtype(hidden_states.dtype)
        # `router_dtype: fp32`: logits and scores in float32 even for a bf16 model, and also under
        # torch.autocast, which would otherwise run this matmul in half precision.
        with torch.autocast(device_type=hidden_states.device.type, enabled=False):
            logits = F.linear(hidden_states.to(router_dtype), self.weight.to(router_dtype))  # [N, X]
        scores = torch.sigmoid(logits)  # [N, X]
        return route(
            scores, self.expert_bias, self.top_k, self.n_group, self.topk_group, self.routed_scaling_factor
        )


class LLaDA2MoeSparseMoeBlock(nn.Module):
    """Routed SwiGLU experts plus the shared expert: y = sum_k w_k expert_k(x) + shared(x)."""

    def __init__(self, config: LLaDA2MoeConfig) -> None:
        super().__init__()
        self.num_experts = config.num_experts
        self.top_k = config.num_experts_per_tok
        self.gate = LLaDA2MoeGate(config)
        self.experts = nn.ModuleList(
            [LLaDA2MoeMLP(config, config.moe_intermediate_size) for _ in range(config.num_experts)]
        )
        self.shared_experts = (
            LLaDA2MoeMLP(config, config.moe_intermediate_size * config.num_shared_experts)
            if config.num_shared_experts
            else None
        )

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:  # [B, Q, E] -> [B, Q, E]
        batch, q_len, hidden = hidden_states.shape
        tokens = hidden_states.reshape(batch * q_len, hidden)  # [N, E]
        expert_idx, weights = self.gate(tokens)  # [N, k], [N, k]
        routed = self._dispatch(tokens, expert_idx)  # [N, k, E]
        # Weighted sum in the router's precision, cast back afterwards (upstream order).
        mixed = (routed.to(weights.dtype) * weights[..., None]).sum(dim=1).to(hidden_states.dtype)  # [N, E]
        out = mixed.view(batch, q_len, hidden)
        if self.shared_experts is not None:
            out = out + self.shared_experts(hidden_states)
        return out

    def _dispatch(self, tokens: torch.Tensor, expert_idx: torch.Tensor) -> torch.Tensor:
        """Run every (token, slot) through its expert: tokens [N, E], expert_idx [N, k] -> [N, k, E].

        The N*k slots are sorted by expert so that each expert runs once on a contiguous slice; the
        slice lengths need one host sync per layer (a loop over experts, never over tokens).
        """
        num_tokens, hidden = tokens.shape
        flat_idx = expert_idx.reshape(-1)  # [N*k]
        order = flat_idx.argsort(stable=True)  # [N*k] slots grouped by expert
        sorted_tokens = tokens[order // self.top_k]  # [N*k, E]
        counts = torch.bincount(flat_idx, minlength=self.num_experts).tolist()  # the one host sync
        outputs = [
            self.experts[expert](chunk)
            for expert, chunk in enumerate(sorted_tokens.split(counts))
            if chunk.shape[0] > 0
        ]
        sorted_out = torch.cat(outputs)  # [N*k, E]; N >= 1, so some expert has tokens
        unsorted = sorted_out[order.argsort()]  # [N*k, E] back in (token, slot) order
        return unsorted.view(num_tokens, self.top_k, hidden)


class LLaDA2MoeDecoderLayer(nn.Module):
    """Pre-norm block: x + attention(norm(x)), then x + mlp(norm(x)) (dense MLP or MoE)."""

    def __init__(self, config: LLaDA2MoeConfig, layer_idx: int) -> None:
        super().__init__()
        self.attention = LLaDA2MoeAttention(config, layer_idx)
        self.mlp = (
            LLaDA2MoeMLP(config, config.intermediate_size)
            if layer_idx < config.first_k_dense_replace
            else LLaDA2MoeSparseMoeBlock(config)
        )
        self.input_layernorm = LLaDA2MoeRMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.post_attention_layernorm = LLaDA2MoeRMSNorm(config.hidden_size, eps=config.rms_norm_eps)

    def forward(
        self,
        hidden_states: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        attention_mask: Optional[torch.Tensor],
        past_key_values: Optional[DynamicCache],
        store_kv: bool,
    ) -> torch.Tensor:  # [B, Q, E] -> [B, Q, E]
        attn_out = self.attention(
            self.input_layernorm(hidden_states), cos, sin, attention_mask, past_key_values, store_kv
        )
        hidden_states = hidden_states + attn_out
        return hidden_states + self.mlp(self.post_attention_layernorm(hidden_states))


class LLaDA2MoePreTrainedModel(PreTrainedModel):
    config_class = LLaDA2MoeConfig
    base_model_prefix = "model"
    supports_gradient_checkpointing = True
    _no_split_modules = ["LLaDA2MoeDecoderLayer"]
    _skip_keys_device_placement = ["past_key_values"]
    # The layers always call torch SDPA and ignore `config._attn_implementation`.
    _supports_sdpa = True
    _supports_cache_class = True

    def _init_weights(self, module: nn.Module) -> None:
        std = self.config.initializer_range
        if isinstance(module, nn.Linear):
            module.weight.data.normal_(mean=0.0, std=std)
            if module.bias is not None:
                module.bias.data.zero_()
        elif isinstance(module, nn.Embedding):
            module.weight.data.normal_(mean=0.0, std=std)
            if module.padding_idx is not None:
                module.weight.data[module.padding_idx].zero_()
        elif isinstance(module, LLaDA2MoeRMSNorm):
            module.weight.data.fill_(1.0)
        elif isinstance(module, LLaDA2MoeGate):
            module.weight.data.normal_(mean=0.0, std=std)
            module.expert_bias.zero_()


def _check_extra_kwargs(kwargs: dict[str, Any]) -> None:
    """Reject keyword arguments this model would otherwise silently ignore (e.g. typos of store_kv)."""
    if kwargs.get("output_attentions"):
        raise ValueError("LLaDA2 attention runs through SDPA, which returns no attention weights.")
    if kwargs.get("output_router_logits"):
        raise ValueError("LLaDA2MoeModel does not return router logits (output_router_logits=True).")
    unknown = set(kwargs) - set(_IGNORED_FORWARD_KWARGS) - {"output_attentions", "output_router_logits"}
    if unknown:
        raise TypeError(f"Unexpected keyword arguments for LLaDA2 forward: {sorted(unknown)}.")


def prepare_attention_mask(
    attention_mask: Optional[torch.Tensor],
    batch: int,
    q_len: int,
    kv_len: int,
    dtype: torch.dtype,
    device: torch.device,
) -> Optional[torch.Tensor]:
    """Validate the caller's mask and return it as SDPA takes it: [B|1, 1, Q, K], bool or `dtype`.

    Accepts bool (True = may attend) or additive float (0 = attend, < 0 = blocked), shaped
    [B|1, Q, K] or [B|1, 1, Q, K]. None is allowed only for Q == 1 (full attention). Rejects
    float masks with positive entries, in particular 0/1 "keep" masks, which an additive kernel
    would add as a +1 bias and so mask nothing (the upstream LLaDA2 prefill bug). Costs one host
    sync per forward for float masks.
    """
    expected = f"[B, Q, K] or [B, 1, Q, K] with B in (1, {batch}), Q = {q_len}, K = cached + Q = {kv_len}"
    if attention_mask is None:
        if q_len > 1:
            raise ValueError(
                f"attention_mask is required when more than one token is fed (Q = {q_len}): LLaDA2 "
                "builds no mask of its own, and transformers 4.52.4's SDPA turns a missing mask into a "
                f"causal one. Pass a bool mask {expected} (True = may attend), e.g. all True for "
                "full attention."
            )
        return None
    if not isinstance(attention_mask, torch.Tensor):
        raise TypeError(f"attention_mask must be a tensor of shape {expected}; got {type(attention_mask)}.")
    mask = attention_mask
    if mask.dim() == 3:
        mask = mask[:, None]
    elif mask.dim() != 4 or mask.shape[1] != 1:
        raise ValueError(f"attention_mask must have shape {expected}; got {tuple(attention_mask.shape)}.")
    if mask.shape[0] not in (1, batch) or mask.shape[2] != q_len or mask.shape[3] != kv_len:
        raise ValueError(f"attention_mask must have shape {expected}; got {tuple(attention_mask.shape)}.")
    mask = mask.to(device)
    if mask.dtype == torch.bool:
        return mask
    if not mask.is_floating_point():
        raise ValueError(
            f"attention_mask of dtype {mask.dtype} is ambiguous; pass bool (True = may attend) or an "
            "additive float mask (0 = attend, -inf or a large negative value = blocked)."
        )
    if bool(((mask > 0) | mask.isnan()).any()):
        if bool(((mask == 0) | (mask == 1)).all()):
            raise ValueError(
                "attention_mask looks like a float 0/1 keep-mask. Float masks are ADDITIVE here "
                "(0 = attend, -inf = blocked); a 0/1 float mask would add +1 to allowed scores and "
                "mask nothing (the upstream LLaDA2 prefill bug). Pass mask.bool() or log(mask)."
            )
        raise ValueError("An additive float attention_mask must be <= 0 everywhere and free of NaN.")
    return mask.to(dtype)


class LLaDA2MoeModel(LLaDA2MoePreTrainedModel):
    """Embeddings, decoder layers and final norm; returns the last hidden states [B, Q, E]."""

    def __init__(self, config: LLaDA2MoeConfig) -> None:
        super().__init__(config)
        self.padding_idx = config.pad_token_id
        self.vocab_size = config.vocab_size
        self.word_embeddings = nn.Embedding(config.vocab_size, config.hidden_size, self.padding_idx)
        self.layers = nn.ModuleList(
            [LLaDA2MoeDecoderLayer(config, layer_idx) for layer_idx in range(config.num_hidden_layers)]
        )
        self.norm = LLaDA2MoeRMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.rotary_emb = LLaDA2MoeRotaryEmbedding(config)
        self.gradient_checkpointing = False
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.word_embeddings

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.word_embeddings = value

    def forward(
        self,
        input_ids: Optional[torch.LongTensor] = None,
        attention_mask: Optional[torch.Tensor] = None,
        position_ids: Optional[torch.LongTensor] = None,
        past_key_values: Optional[DynamicCache] = None,
        inputs_embeds: Optional[torch.Tensor] = None,
        use_cache: Optional[bool] = None,
        store_kv: bool = False,
        output_hidden_states: Optional[bool] = None,
        return_dict: Optional[bool] = None,
        **kwargs: Any,
    ) -> Union[BaseModelOutputWithPast, tuple]:
        """Run the decoder; see `LLaDA2MoeModelLM.forward` for the mask / cache / position contract."""
        _check_extra_kwargs(kwargs)
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("Pass exactly one of input_ids [B, Q] or inputs_embeds [B, Q, E].")
        if past_key_values is not None and not isinstance(past_key_values, DynamicCache):
            raise TypeError(
                f"past_key_values must be a transformers DynamicCache; got {type(past_key_values)}."
            )
        if input_ids is not None and (input_ids.dim() != 2 or input_ids.shape[1] == 0):
            raise ValueError(f"input_ids must have shape [B, Q] with Q >= 1; got {tuple(input_ids.shape)}.")
        if inputs_embeds is not None and (inputs_embeds.dim() != 3 or inputs_embeds.shape[1] == 0):
            raise ValueError(
                f"inputs_embeds must have shape [B, Q, E] with Q >= 1; got {tuple(inputs_embeds.shape)}."
            )
        use_cache = self.config.use_cache if use_cache is None else use_cache
        output_hidden_states = (
            self.config.output_hidden_states if output_hidden_states is None else output_hidden_states
        )
        return_dict = self.config.use_return_dict if return_dict is None else return_dict
        batch, q_len = (input_ids if input_ids is not None else inputs_embeds).shape[:2]
        past_len = past_key_values.get_seq_length() if past_key_values is not None else 0
        device = (input_ids if input_ids is not None else inputs_embeds).device
        model_dtype = inputs_embeds.dtype if inputs_embeds is not None else self.word_embeddings.weight.dtype
        # Checked before any layer runs: a bad mask must fail before heavy work.
        mask = prepare_attention_mask(
            attention_mask, batch, q_len, past_len + q_len, model_dtype, device
        )  # [B|1, 1, Q, K] or None
        if position_ids is None:
            position_ids = torch.arange(past_len, past_len + q_len, device=device).unsqueeze(0)  # [1, Q]
        elif position_ids.shape[1:] != (q_len,) or position_ids.shape[0] not in (1, batch):
            raise ValueError(
                f"position_ids must have shape [B, Q] = [{batch}, {q_len}]; got {tuple(position_ids.shape)}."
            )
        if past_key_values is None and use_cache:
            past_key_values = DynamicCache()
        if self.gradient_checkpointing and self.training and store_kv and past_key_values is not None:
            raise ValueError(
                "store_kv=True cannot be combined with gradient checkpointing: recomputation would "
                "append the same K/V twice."
            )

        if inputs_embeds is None:
            inputs_embeds = self.word_embeddings(input_ids)  # [B, Q, E]
        cos, sin = self.rotary_emb(position_ids.to(device), inputs_embeds.dtype)  # [B|1, 1, Q, R] each

        hidden_states = inputs_embeds
        all_hidden_states: tuple[torch.Tensor, ...] = ()
        for layer in self.layers:
            if output_hidden_states:
                all_hidden_states += (hidden_states,)
            if self.gradient_checkpointing and self.training:
                hidden_states = self._gradient_checkpointing_func(
                    layer.__call__, hidden_states, cos, sin, mask, past_key_values, store_kv
                )
            else:
                hidden_states = layer(hidden_states, cos, sin, mask, past_key_values, store_kv)
        hidden_states = self.norm(hidden_states)  # [B, Q, E]
        if output_hidden_states:
            all_hidden_states += (hidden_states,)

        output = BaseModelOutputWithPast(
            last_hidden_state=hidden_states,
            past_key_values=past_key_values,
            hidden_states=all_hidden_states if output_hidden_states else None,
        )
        return output if return_dict else output.to_tuple()


class LLaDA2MoeModelLM(LLaDA2MoePreTrainedModel):
    """LLaDA2 with its LM head; logits are float32 and position-aligned (the logit at i predicts token i)."""

    _tied_weights_keys = ["lm_head.weight"]

    def __init__(self, config: LLaDA2MoeConfig) -> None:
        super().__init__(config)
        self.model = LLaDA2MoeModel(config)
        self.vocab_size = config.vocab_size
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.model.word_embeddings

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.model.word_embeddings = value

    def get_output_embeddings(self) -> nn.Linear:
        return self.lm_head

    def set_output_embeddings(self, new_embeddings: nn.Linear) -> None:
        self.lm_head = new_embeddings

    def get_decoder(self) -> LLaDA2MoeModel:
        return self.model

    def set_decoder(self, decoder: LLaDA2MoeModel) -> None:
        self.model = decoder

    def forward(
        self,
        input_ids: Optional[torch.LongTensor] = None,
        attention_mask: Optional[torch.Tensor] = None,
        position_ids: Optional[torch.LongTensor] = None,
        past_key_values: Optional[DynamicCache] = None,
        inputs_embeds: Optional[torch.Tensor] = None,
        labels: Optional[torch.LongTensor] = None,
        use_cache: Optional[bool] = None,
        store_kv: bool = False,
        logits_to_keep: int = 0,
        return_dict: Optional[bool] = True,
        output_hidden_states: Optional[bool] = None,
        **kwargs: Any,
    ) -> Union[CausalLMOutputWithPast, tuple]:
        """Block-diffusion forward.

        Args:
            input_ids: [B, Q] token ids (or `inputs_embeds` [B, Q, E]).
            attention_mask: [B, Q, K] or [B, 1, Q, K] (B may be 1), K = cached length + Q: bool with
                True = may attend, or additive float with 0 = attend and -inf / large negative =
                blocked. Used as given (no causal mask is added). Required when Q > 1; None with
                Q == 1 means full attention. Float masks with positive entries (0/1 keep-masks)
                raise ValueError.
            position_ids: [B, Q] absolute positions; default `cached length + arange(Q)`.
            past_key_values: a `DynamicCache` of post-q/k-norm, post-RoPE keys and values.
            use_cache: with no cache passed, True creates an empty `DynamicCache` (None reads
                `config.use_cache`). A passed cache is always used and returned.
            store_kv: True appends this call's K/V to the cache and attends over the result; False
                attends over cached + current K/V and leaves the cache untouched.
            labels: [B, Q] POSITION-ALIGNED targets: loss = mean float32 cross entropy of
                logits[b, i] against labels[b, i] over entries != -100 (sum / num_items_in_batch
                when the HF Trainer passes that keyword). With `logits_to_keep=N > 0` only the last
                N labels are scored.
            logits_to_keep: if > 0, run the LM head on the last N positions only.
            return_dict: False returns `CausalLMOutputWithPast.to_tuple()`.
            output_hidden_states: also return the input of every layer and the final normed states.

        Returns:
            `CausalLMOutputWithPast` with logits [B, Q or N, V] in float32 (float64 for a float64
            model), as upstream casts them; past_key_values (the cache or None); loss or None.
        """
        num_items_in_batch = kwargs.pop("num_items_in_batch", None)
        if not isinstance(logits_to_keep, int) or isinstance(logits_to_keep, bool) or logits_to_keep < 0:
            raise TypeError(f"logits_to_keep must be a non-negative int; got {logits_to_keep!r}.")
        outputs = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            past_key_values=past_key_values,
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
            store_kv=store_kv,
            output_hidden_states=output_hidden_states,
            return_dict=True,
            **kwargs,
        )
        hidden_states = outputs.last_hidden_state  # [B, Q, E]
        if logits_to_keep > 0:
            hidden_states = hidden_states[:, -logits_to_keep:]  # [B, N, E]
        logits = self.lm_head(hidden_states)  # [B, Q or N, V]
        logits = logits.to(_compute_dtype(logits.dtype))

        loss = None
        if labels is not None:
            if labels.shape != outputs.last_hidden_state.shape[:2]:
                raise ValueError(
                    f"labels must have shape [B, Q] = {tuple(outputs.last_hidden_state.shape[:2])} "
                    f"(position-aligned targets); got {tuple(labels.shape)}."
                )
            if logits_to_keep > 0:
                labels = labels[:, -logits_to_keep:]  # [B, N]
            loss = self.position_aligned_loss(logits, labels, num_items_in_batch)

        output = CausalLMOutputWithPast(
            loss=loss,
            logits=logits,
            past_key_values=outputs.past_key_values,
            hidden_states=outputs.hidden_states,
        )
        return output if return_dict else output.to_tuple()

    @staticmethod
    def position_aligned_loss(
        logits: torch.Tensor,
        labels: torch.Tensor,
        num_items_in_batch: Optional[Union[int, torch.Tensor]] = None,
    ) -> torch.Tensor:
        """Cross entropy of logits [B, Q, V] against labels [B, Q] at the same positions, in float32.

        Mean over labels != -100, or sum / num_items_in_batch when that count is given.
        """
        flat_logits = logits.reshape(-1, logits.shape[-1]).to(_compute_dtype(logits.dtype))  # [B*Q, V]
        flat_labels = labels.reshape(-1).to(logits.device)  # [B*Q]
        if num_items_in_batch is None:
            return F.cross_entropy(flat_logits, flat_labels, ignore_index=_IGNORE_INDEX)
        total = F.cross_entropy(flat_logits, flat_labels, ignore_index=_IGNORE_INDEX, reduction="sum")
        if isinstance(num_items_in_batch, torch.Tensor):
            num_items_in_batch = num_items_in_batch.to(total.device)
        return total / num_items_in_batch


__all__ = [
    "LLaDA2MoeModel",
    "LLaDA2MoeModelLM",
    "LLaDA2MoePreTrainedModel",
    "apply_partial_rotary",
    "group_limited_topk",
    "prepare_attention_mask",
    "route",
]
