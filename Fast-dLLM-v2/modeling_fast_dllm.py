"""Fast-dLLM v2 block-diffusion LLM: a Qwen2.5 decoder whose mask and caches are driven by the caller.

The maths and the parameter names are those of transformers' Qwen2 (pre-norm RMSNorm with HF's cast
order, GQA attention with q/k/v bias and no o_proj bias, full rotate-half RoPE, SwiGLU MLP). The
released checkpoints therefore load unchanged, tied (1.5B, no `lm_head.weight`) or untied (7B).
What differs from `Qwen2ForCausalLM` is the block-diffusion contract the decoders rely on
(MODEL-FAMILIES.md §2.1, §2.4):

* attention is never implicitly causal. A caller's bool mask (True = may attend) is used as given.
  Without one, the model builds a block-causal mask over ABSOLUTE indices, with the prefix-cache
  length as the query offset; `block_size=1` gives plain causal attention;
* `update_past_key_values` decides whether a call appends its K/V to the prefix cache or only reads it;
* an intra-block cache (`use_block_cache`) keeps the current block's K/V, so a later call can forward
  only a sub-block and patch its K/V in place;
* logits are returned UNSHIFTED (row t predicts token t + 1); the decoders shift them, and `labels`
  use the shifted causal-LM loss that Fast-dLLM v2 trains with.

Attention always runs through PyTorch SDPA (no flash-attn requirement).

Shapes: B batch, Q query tokens of this call, P prefix-cache length, N block-cache length,
K keys attended (P + Q, or P + N with the block cache), H query heads, Hkv key/value heads,
D head_dim, E hidden size, V vocabulary.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional, Union

import torch
import torch.nn.functional as F
from torch import nn
from transformers import GenerationMixin, PreTrainedModel
from transformers.activations import ACT2FN
from transformers.cache_utils import DynamicCache
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

from common.layers import ScaledRotaryEmbedding, apply_rope, grouped_attention, rms_norm, rope_tables
from fast_dllm_v2.configuration_fast_dllm import Fast_dLLM_QwenConfig

_IGNORE_INDEX = -100
# Keyword arguments transformers' utilities may pass that carry nothing for this model: positions come
# from `position_ids` or the cache length.
_IGNORED_FORWARD_KWARGS = frozenset({"cache_position"})


@dataclass
class Fast_dLLM_QwenModelOutput(BaseModelOutputWithPast):
    """`BaseModelOutputWithPast` plus the intra-block cache (None unless `use_block_cache`)."""

    block_past_key_values: Optional[DynamicCache] = None


@dataclass
class Fast_dLLM_QwenCausalLMOutput(CausalLMOutputWithPast):
    """`CausalLMOutputWithPast` plus the intra-block cache (None unless `use_block_cache`)."""

    block_past_key_values: Optional[DynamicCache] = None


class Fast_dLLM_QwenRMSNorm(nn.Module):
    """RMSNorm in float32, cast back to the input dtype BEFORE the weight multiply (HF Qwen2 order)."""

    def __init__(self, hidden_size: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size))
        self.variance_epsilon = eps

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:  # [..., E] -> [..., E]
        return rms_norm(hidden_states, self.weight, self.variance_epsilon)

    def extra_repr(self) -> str:
        return f"{tuple(self.weight.shape)}, eps={self.variance_epsilon}"


class Fast_dLLM_QwenRotaryEmbedding(ScaledRotaryEmbedding):
    """RoPE tables over the full head_dim with rope_theta and optional rope_scaling (transformers'
    initialisers; `common.layers.ScaledRotaryEmbedding`: float32 frequencies no dtype cast can round)."""

    def __init__(self, config: Fast_dLLM_QwenConfig) -> None:
        self.config = config
        scaling = config.rope_scaling or {}
        self.rope_type = scaling.get("rope_type", "default")
        if self.rope_type not in ROPE_INIT_FUNCTIONS or self.rope_type in ("dynamic", "longrope"):
            raise ValueError(f"unsupported RoPE type {self.rope_type!r} (needs a sequence-length-independent one)")
        super().__init__()

    def frequencies(self, device: torch.device) -> tuple[torch.Tensor, float]:
        return ROPE_INIT_FUNCTIONS[self.rope_type](self.config, device)


def _cached_layer(cache: Optional[DynamicCache], layer_idx: int) -> Optional[tuple[torch.Tensor, torch.Tensor]]:
    """The (key, value) [B, Hkv, P, D] a cache holds for one layer, or None when it holds nothing."""
    if cache is None or len(cache.key_cache) <= layer_idx or cache.key_cache[layer_idx].numel() == 0:
        return None
    return cache.key_cache[layer_idx], cache.value_cache[layer_idx]


@dataclass
class _CacheUse:
    """How one forward reads and writes the two caches (shared by every layer of that forward)."""

    prefix: Optional[DynamicCache]
    update_prefix: bool
    block: Optional[DynamicCache]
    replace_position: Optional[int]  # None: this call fills the (empty) block cache


class Fast_dLLM_QwenAttention(nn.Module):
    """GQA self-attention with q/k/v bias, prefix-cache and block-cache control, always through SDPA."""

    def __init__(self, config: Fast_dLLM_QwenConfig, layer_idx: int) -> None:
        super().__init__()
        self.layer_idx = layer_idx
        self.head_dim = config.head_dim
        self.num_heads = config.num_attention_heads
        self.num_kv_heads = config.num_key_value_heads
        self.scaling = self.head_dim**-0.5
        self.attention_dropout = config.attention_dropout
        self.q_proj = nn.Linear(config.hidden_size, self.num_heads * self.head_dim, bias=True)
        self.k_proj = nn.Linear(config.hidden_size, self.num_kv_heads * self.head_dim, bias=True)
        self.v_proj = nn.Linear(config.hidden_size, self.num_kv_heads * self.head_dim, bias=True)
        self.o_proj = nn.Linear(self.num_heads * self.head_dim, config.hidden_size, bias=False)

    def _attended_keys_values(self, key: torch.Tensor, value: torch.Tensor,
                              caches: _CacheUse) -> tuple[torch.Tensor, torch.Tensor]:
        """This call's key/value [B, Hkv, Q, D] -> the keys/values it attends to [B, Hkv, K, D]."""
        if caches.block is not None:
            if caches.replace_position is None:
                key, value = caches.block.update(key, value, self.layer_idx)  # fill: N = Q
            else:
                start, end = caches.replace_position, caches.replace_position + key.shape[-2]
                caches.block.key_cache[self.layer_idx][:, :, start:end] = key  # patch in place
                caches.block.value_cache[self.layer_idx][:, :, start:end] = value
                key, value = caches.block.key_cache[self.layer_idx], caches.block.value_cache[self.layer_idx]
        elif caches.update_prefix and caches.prefix is not None:
            return caches.prefix.update(key, value, self.layer_idx)
        past = _cached_layer(caches.prefix, self.layer_idx)
        if past is None:
            return key, value
        return torch.cat([past[0], key], dim=-2), torch.cat([past[1], value], dim=-2)

    def forward(self, hidden_states: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                attention_mask: Optional[torch.Tensor], caches: _CacheUse) -> torch.Tensor:
        """hidden_states [B, Q, E], cos/sin [B|1, 1, Q, D] (common.layers.rope_tables), bool mask [B|1, Q, K]
        or None (full) -> [B, Q, E]."""
        batch, q_len, _ = hidden_states.shape
        query = self.q_proj(hidden_states).view(batch, q_len, self.num_heads, self.head_dim).transpose(1, 2)
        key = self.k_proj(hidden_states).view(batch, q_len, self.num_kv_heads, self.head_dim).transpose(1, 2)
        value = self.v_proj(hidden_states).view(batch, q_len, self.num_kv_heads, self.head_dim).transpose(1, 2)
        query = apply_rope(query, cos, sin)  # [B, H, Q, D]
        key = apply_rope(key, cos, sin)  # [B, Hkv, Q, D]
        key, value = self._attended_keys_values(key, value, caches)  # [B, Hkv, K, D]
        out = grouped_attention(
            query, key, value,
            None if attention_mask is None else attention_mask[:, None],  # [B|1, 1, Q, K]
            self.attention_dropout if self.training else 0.0,
            self.scaling,
        )  # [B, H, Q, D]
        return self.o_proj(out.transpose(1, 2).reshape(batch, q_len, self.num_heads * self.head_dim))


class Fast_dLLM_QwenMLP(nn.Module):
    """SwiGLU feed-forward: down(act(gate(x)) * up(x))."""

    def __init__(self, config: Fast_dLLM_QwenConfig) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.up_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.down_proj = nn.Linear(config.intermediate_size, config.hidden_size, bias=False)
        self.act_fn = ACT2FN[config.hidden_act]

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [B, Q, E] -> [B, Q, E]
        return self.down_proj(self.act_fn(self.gate_proj(x)) * self.up_proj(x))


class Fast_dLLM_QwenDecoderLayer(nn.Module):
    """Pre-norm block: x + attn(norm(x)), then x + mlp(norm(x)). Returns a tensor (no tuple)."""

    def __init__(self, config: Fast_dLLM_QwenConfig, layer_idx: int) -> None:
        super().__init__()
        self.self_attn = Fast_dLLM_QwenAttention(config, layer_idx)
        self.mlp = Fast_dLLM_QwenMLP(config)
        self.input_layernorm = Fast_dLLM_QwenRMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.post_attention_layernorm = Fast_dLLM_QwenRMSNorm(config.hidden_size, eps=config.rms_norm_eps)

    def forward(self, hidden_states: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                attention_mask: Optional[torch.Tensor], caches: _CacheUse) -> torch.Tensor:  # [B, Q, E]
        hidden_states = hidden_states + self.self_attn(self.input_layernorm(hidden_states), cos, sin,
                                                       attention_mask, caches)
        return hidden_states + self.mlp(self.post_attention_layernorm(hidden_states))


class Fast_dLLM_QwenPreTrainedModel(PreTrainedModel):
    config_class = Fast_dLLM_QwenConfig
    base_model_prefix = "model"
    supports_gradient_checkpointing = True
    _no_split_modules = ["Fast_dLLM_QwenDecoderLayer"]
    _skip_keys_device_placement = ["past_key_values", "block_past_key_values"]
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
        elif isinstance(module, Fast_dLLM_QwenRMSNorm):
            module.weight.data.fill_(1.0)


def block_causal_mask(q_len: int, kv_len: int, block_size: int, device: torch.device) -> Optional[torch.Tensor]:
    """The upstream eval mask: query at absolute index a = (K - Q) + q may see key k iff
    a // block_size >= k // block_size. Returns bool [1, Q, K], or None when that is every pair
    (the queries all sit in the last block), decided from integers alone so no host sync is needed.

    block_size=2, K=4, Q=3 (one cached key):     block_size=1 (plain causal), K=Q=3:
        1 1 0 0                                      1 0 0
        1 1 1 1                                      1 1 0
        1 1 1 1                                      1 1 1
    """
    if (kv_len - q_len) // block_size >= (kv_len - 1) // block_size:
        return None
    q_abs = torch.arange(kv_len - q_len, kv_len, device=device)  # [Q]
    k_abs = torch.arange(kv_len, device=device)  # [K]
    return (q_abs[:, None] // block_size >= k_abs[None, :] // block_size)[None]  # [1, Q, K]


def _prepare_mask(attention_mask: torch.Tensor, batch: int, q_len: int, kv_len: int,
                  device: torch.device) -> torch.Tensor:
    """Caller mask [Q, K], [B|1, Q, K] or [B|1, 1, Q, K] (bool, or 0/1 numbers; True = may attend)
    -> bool [B|1, Q, K]. 2-D means [Q, K] (the upstream convention), never a [B, K] padding mask."""
    expected = f"[Q, K], [B, Q, K] or [B, 1, Q, K] with B in (1, {batch}), Q = {q_len}, K = {kv_len}"
    if not isinstance(attention_mask, torch.Tensor):
        raise TypeError(f"attention_mask must be a tensor of shape {expected}; got {type(attention_mask)}")
    mask = attention_mask
    if mask.dim() == 2:
        mask = mask[None]
    elif mask.dim() == 4:
        if mask.shape[1] != 1:
            raise ValueError(f"a 4-D attention_mask needs a singleton head axis: {expected}; got {tuple(mask.shape)}")
        mask = mask[:, 0]
    elif mask.dim() != 3:
        raise ValueError(f"attention_mask must have shape {expected}; got {tuple(mask.shape)}")
    if mask.shape[0] not in (1, batch) or tuple(mask.shape[1:]) != (q_len, kv_len):
        raise ValueError(f"attention_mask must have shape {expected}; got {tuple(attention_mask.shape)}")
    mask = mask.to(device)
    if mask.dtype != torch.bool:
        # An additive 0/-inf mask would silently invert under `!= 0`, so only 0/1 values are accepted.
        if not bool(((mask == 0) | (mask == 1)).all()):
            raise ValueError("attention_mask must be bool or 0/1 with 1 = may attend; additive masks are rejected")
        mask = mask != 0
    return mask


class Fast_dLLM_QwenModel(Fast_dLLM_QwenPreTrainedModel):
    """Embeddings, decoder layers and the final norm; returns the last hidden states [B, Q, E]."""

    def __init__(self, config: Fast_dLLM_QwenConfig) -> None:
        super().__init__(config)
        self.padding_idx = config.pad_token_id
        self.vocab_size = config.vocab_size
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size, self.padding_idx)
        self.layers = nn.ModuleList(
            [Fast_dLLM_QwenDecoderLayer(config, layer_idx) for layer_idx in range(config.num_hidden_layers)]
        )
        self.norm = Fast_dLLM_QwenRMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.rotary_emb = Fast_dLLM_QwenRotaryEmbedding(config)
        self.gradient_checkpointing = False
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.embed_tokens

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.embed_tokens = value

    def _cache_use(self, past_key_values: Optional[DynamicCache], update_past_key_values: bool,
                   use_block_cache: bool, block_past_key_values: Optional[DynamicCache],
                   replace_position: Optional[int], q_len: int) -> _CacheUse:
        """Check the cache arguments against each other and say how this call uses the caches."""
        for name, cache in (("past_key_values", past_key_values), ("block_past_key_values", block_past_key_values)):
            if cache is not None and not isinstance(cache, DynamicCache):
                raise TypeError(f"{name} must be a transformers DynamicCache; got {type(cache)}")
        if not use_block_cache:
            if block_past_key_values is not None or replace_position is not None:
                raise ValueError("block_past_key_values / replace_position need use_block_cache=True")
            return _CacheUse(past_key_values, update_past_key_values, None, None)
        if update_past_key_values:
            raise ValueError("use_block_cache reads the prefix cache only; it cannot be combined with "
                             "update_past_key_values=True (commit a finished block with a plain call)")
        block = block_past_key_values if block_past_key_values is not None else DynamicCache()
        filled = block.get_seq_length()
        if filled == 0:
            if replace_position not in (None, 0):
                raise ValueError("replace_position needs a filled block cache: the first call of a block "
                                 "forwards the whole block to fill it")
            return _CacheUse(past_key_values, False, block, None)
        if replace_position is None:
            raise ValueError("a filled block cache needs replace_position, the sub-block's offset in the block; "
                             "pass a new (empty) block cache to refresh it with the full block")
        if not 0 <= int(replace_position) <= filled - q_len:
            raise ValueError(f"replace_position {replace_position} + {q_len} tokens exceeds the block cache ({filled})")
        return _CacheUse(past_key_values, False, block, int(replace_position))

    def forward(
        self,
        input_ids: Optional[torch.LongTensor] = None,
        attention_mask: Optional[torch.Tensor] = None,
        position_ids: Optional[torch.LongTensor] = None,
        past_key_values: Optional[DynamicCache] = None,
        inputs_embeds: Optional[torch.Tensor] = None,
        use_cache: Optional[bool] = None,
        update_past_key_values: bool = False,
        block_size: Optional[int] = None,
        use_block_cache: bool = False,
        block_past_key_values: Optional[DynamicCache] = None,
        replace_position: Optional[int] = None,
        output_hidden_states: Optional[bool] = None,
        return_dict: Optional[bool] = None,
        **kwargs: Any,
    ) -> Union[Fast_dLLM_QwenModelOutput, tuple]:
        """Run the decoder; see `Fast_dLLM_QwenForCausalLM.forward` for the argument contract."""
        unknown = set(kwargs) - _IGNORED_FORWARD_KWARGS
        if unknown:
            raise TypeError(f"unexpected keyword arguments for Fast-dLLM v2 forward: {sorted(unknown)}")
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of input_ids [B, Q] or inputs_embeds [B, Q, E]")
        if block_size is not None and (not isinstance(block_size, int) or block_size <= 0):
            raise ValueError(f"block_size must be a positive int, got {block_size!r}")
        use_cache = self.config.use_cache if use_cache is None else use_cache
        return_dict = self.config.use_return_dict if return_dict is None else return_dict
        if output_hidden_states is None:
            output_hidden_states = self.config.output_hidden_states
        if past_key_values is None and (use_cache or update_past_key_values):
            past_key_values = DynamicCache()
        if self.gradient_checkpointing and self.training and update_past_key_values:
            raise ValueError("update_past_key_values=True cannot be combined with gradient checkpointing: "
                             "recomputation would append the same K/V twice")

        if inputs_embeds is None:
            inputs_embeds = self.embed_tokens(input_ids)  # [B, Q, E]
        batch, q_len, _ = inputs_embeds.shape
        device = inputs_embeds.device
        caches = self._cache_use(past_key_values, update_past_key_values, use_block_cache,
                                 block_past_key_values, replace_position, q_len)
        past_len = past_key_values.get_seq_length() if past_key_values is not None else 0
        if caches.replace_position is None:  # a plain call, or the call that fills the block cache
            query_offset, kv_len = past_len, past_len + q_len
        else:  # a sub-block call: it sees the prefix and the whole (patched) block
            query_offset, kv_len = past_len + caches.replace_position, past_len + caches.block.get_seq_length()
        if position_ids is None:
            position_ids = torch.arange(query_offset, query_offset + q_len, device=device)[None]  # [1, Q]
        elif position_ids.dim() != 2 or position_ids.shape[1] != q_len or position_ids.shape[0] not in (1, batch):
            raise ValueError(f"position_ids must have shape [B, Q] = [{batch}, {q_len}]; "
                             f"got {tuple(position_ids.shape)}")

        if attention_mask is not None:
            mask = _prepare_mask(attention_mask, batch, q_len, kv_len, device)  # [B|1, Q, K]
        elif caches.replace_position is not None:
            mask = None  # upstream: a filled block cache means full attention over prefix + block
        else:
            mask = block_causal_mask(q_len, kv_len, block_size or self.config.bd_size, device)
        # [B|1, 1, Q, D] each, cast and broadcast once for every layer
        cos, sin = rope_tables(*self.rotary_emb(position_ids.to(device), inputs_embeds.dtype), inputs_embeds.dtype)

        hidden_states = inputs_embeds
        all_hidden: tuple[torch.Tensor, ...] = ()
        for layer in self.layers:
            if output_hidden_states:
                all_hidden += (hidden_states,)
            if self.gradient_checkpointing and self.training:
                hidden_states = self._gradient_checkpointing_func(layer.__call__, hidden_states, cos, sin, mask, caches)
            else:
                hidden_states = layer(hidden_states, cos, sin, mask, caches)
        hidden_states = self.norm(hidden_states)  # [B, Q, E]
        if output_hidden_states:
            all_hidden += (hidden_states,)
        output = Fast_dLLM_QwenModelOutput(
            last_hidden_state=hidden_states,
            past_key_values=past_key_values,
            hidden_states=all_hidden if output_hidden_states else None,
            block_past_key_values=caches.block,
        )
        return output if return_dict else output.to_tuple()


class Fast_dLLM_QwenForCausalLM(Fast_dLLM_QwenPreTrainedModel, GenerationMixin):
    """Fast-dLLM v2 with its LM head. Logits are returned unshifted: row t predicts token t + 1."""

    _tied_weights_keys = ["lm_head.weight"]

    def __init__(self, config: Fast_dLLM_QwenConfig) -> None:
        super().__init__(config)
        self.model = Fast_dLLM_QwenModel(config)
        self.vocab_size = config.vocab_size
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.model.embed_tokens

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.model.embed_tokens = value

    def get_output_embeddings(self) -> nn.Linear:
        return self.lm_head

    def set_output_embeddings(self, new_embeddings: nn.Linear) -> None:
        self.lm_head = new_embeddings

    def get_decoder(self) -> Fast_dLLM_QwenModel:
        return self.model

    def set_decoder(self, decoder: Fast_dLLM_QwenModel) -> None:
        self.model = decoder

    def generate(self, *args: Any, **kwargs: Any) -> Any:
        """Not supported: transformers' AR loop assumes a cache that every call appends to and a 2-D
        padding mask, neither of which this model's contract has. Use the repository's decoders,
        `fast_dllm_v2.generate.generate` (baseline) or `fast_dllm_v2.generate_ssd_policy.generate_ssd_policy`."""
        raise NotImplementedError(
            "Fast_dLLM_QwenForCausalLM has no transformers generate(); decode with "
            "fast_dllm_v2.generate.generate(model, input_ids, ...) or "
            "fast_dllm_v2.generate_ssd_policy.generate_ssd_policy(model, input_ids, ...)"
        )

    def forward(
        self,
        input_ids: Optional[torch.LongTensor] = None,
        attention_mask: Optional[torch.Tensor] = None,
        position_ids: Optional[torch.LongTensor] = None,
        past_key_values: Optional[DynamicCache] = None,
        inputs_embeds: Optional[torch.Tensor] = None,
        labels: Optional[torch.LongTensor] = None,
        use_cache: Optional[bool] = None,
        update_past_key_values: bool = False,
        block_size: Optional[int] = None,
        use_block_cache: bool = False,
        block_past_key_values: Optional[DynamicCache] = None,
        replace_position: Optional[int] = None,
        logits_to_keep: int = 0,
        return_dict: Optional[bool] = True,
        output_hidden_states: Optional[bool] = None,
        **kwargs: Any,
    ) -> Union[Fast_dLLM_QwenCausalLMOutput, tuple]:
        """Block-diffusion forward.

        Args:
            input_ids: [B, Q] token ids (or `inputs_embeds` [B, Q, E]).
            attention_mask: an explicit mask, [Q, K], [B, Q, K] or [B, 1, Q, K] (B may be 1), bool or
                0/1 with True = may attend, used as given; `block_size` is then ignored. K is the
                prefix-cache length + Q, or prefix + block-cache length for a sub-block call.
                None: the model builds its own mask (see `block_size`).
            position_ids: [B|1, Q] RoPE positions. Default: prefix-cache length + arange(Q), plus
                `replace_position` for a sub-block call.
            past_key_values: the prefix `DynamicCache` (post-RoPE keys and values).
            use_cache: with no cache passed, True creates an empty one (None reads config.use_cache).
            update_past_key_values: True appends this call's K/V to the prefix cache and attends over
                the result; False attends over cached + current K/V and leaves the cache untouched.
            block_size: block size of the mask built when `attention_mask` is None: the query at
                absolute index a sees key k iff a // block_size >= k // block_size, with absolute
                indices counted from the start of the prefix cache; 1 gives plain causal attention.
                Default: `config.bd_size`.
            use_block_cache: keep the current block's K/V in `block_past_key_values`. With an empty
                (or no) block cache this call must be the whole block: it is forwarded as a plain call
                and its K/V fill the block cache. With a filled one, this call is a sub-block at
                offset `replace_position`: its K/V overwrite that slice of the block cache in place,
                and it attends over prefix cache + the whole block cache with FULL attention unless an
                explicit mask is given. Never writes the prefix cache.
            block_past_key_values: the intra-block `DynamicCache`; the one used is returned.
            replace_position: the sub-block's offset within the block (a filled block cache only).
            labels: [B, Q] targets aligned with `input_ids`; the loss is the SHIFTED causal-LM loss
                (logits[:, t] against labels[:, t + 1], entries -100 ignored), Fast-dLLM v2's
                objective. With `logits_to_keep=N` only the last N positions are scored.
                A `num_items_in_batch` keyword (HF Trainer) turns the mean into sum / that count.
            logits_to_keep: if > 0, compute logits for the last N positions only.
            return_dict: False returns the output's `to_tuple()`.
            output_hidden_states: also return every layer's input and the final normed states.

        Returns:
            `Fast_dLLM_QwenCausalLMOutput`: logits [B, Q or N, V] in the model dtype and UNSHIFTED
            (the decoders shift them), past_key_values, block_past_key_values, loss.
        """
        num_items_in_batch = kwargs.pop("num_items_in_batch", None)
        if not isinstance(logits_to_keep, int) or isinstance(logits_to_keep, bool) or logits_to_keep < 0:
            raise TypeError(f"logits_to_keep must be a non-negative int; got {logits_to_keep!r}")
        outputs = self.model(
            input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
            past_key_values=past_key_values, inputs_embeds=inputs_embeds, use_cache=use_cache,
            update_past_key_values=update_past_key_values, block_size=block_size,
            use_block_cache=use_block_cache, block_past_key_values=block_past_key_values,
            replace_position=replace_position, output_hidden_states=output_hidden_states,
            return_dict=True, **kwargs,
        )
        hidden_states = outputs.last_hidden_state  # [B, Q, E]
        if logits_to_keep > 0:
            hidden_states = hidden_states[:, -logits_to_keep:]  # [B, N, E]
        logits = self.lm_head(hidden_states)  # [B, Q or N, V]
        loss = None
        if labels is not None:
            if labels.shape != outputs.last_hidden_state.shape[:2]:
                raise ValueError(f"labels must have shape [B, Q] = {tuple(outputs.last_hidden_state.shape[:2])}; "
                                 f"got {tuple(labels.shape)}")
            if logits_to_keep > 0:
                labels = labels[:, -logits_to_keep:]  # [B, N]
            loss = self.shifted_causal_lm_loss(logits, labels, num_items_in_batch)
        output = Fast_dLLM_QwenCausalLMOutput(
            loss=loss, logits=logits, past_key_values=outputs.past_key_values,
            hidden_states=outputs.hidden_states, block_past_key_values=outputs.block_past_key_values,
        )
        return output if return_dict else output.to_tuple()

    @staticmethod
    def shifted_causal_lm_loss(logits: torch.Tensor, labels: torch.Tensor,
                               num_items_in_batch: Optional[Union[int, torch.Tensor]] = None) -> torch.Tensor:
        """Cross entropy of logits[:, t] [B, Q, V] against labels[:, t + 1] [B, Q], in float32.

        Mean over scored labels != -100, or sum / num_items_in_batch when that count is given.
        """
        flat_logits = logits[:, :-1].reshape(-1, logits.shape[-1]).to(torch.float32)  # [B*(Q-1), V]
        flat_labels = labels[:, 1:].reshape(-1).to(logits.device)  # [B*(Q-1)]
        if num_items_in_batch is None:
            return F.cross_entropy(flat_logits, flat_labels, ignore_index=_IGNORE_INDEX)
        total = F.cross_entropy(flat_logits, flat_labels, ignore_index=_IGNORE_INDEX, reduction="sum")
        if isinstance(num_items_in_batch, torch.Tensor):
            num_items_in_batch = num_items_in_batch.to(total.device)
        return total / num_items_in_batch


__all__ = [
    "Fast_dLLM_QwenCausalLMOutput",
    "Fast_dLLM_QwenForCausalLM",
    "Fast_dLLM_QwenModel",
    "Fast_dLLM_QwenModelOutput",
    "Fast_dLLM_QwenPreTrainedModel",
    "block_causal_mask",
]
