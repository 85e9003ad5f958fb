"""SDAR block-diffusion LLM: a Qwen3 dense decoder with caller-controlled (non-causal) attention.

Maths and parameter names are those of transformers' Qwen3 (pre-norm RMSNorm, GQA with per-head
q/k RMSNorm before rotate-half RoPE, SwiGLU MLP), so released SDAR checkpoints load unchanged.
The differences from `Qwen3ForCausalLM` are the block-diffusion contract used by our decoders:

* the model builds no causal mask: the caller's bool/0-1 mask `[B, Q, K]` (True = may attend) is
  used as given, and no mask means full attention over cache + current tokens;
* `store_kv` decides whether a call appends its K/V to the `DynamicCache` or only reads it;
* `labels` are position-aligned (the logit at i predicts the token at i), as SDAR trains.

Shapes: B batch, Q query tokens of this call, P cached tokens, K = P + Q keys, H query heads,
Hkv key/value heads, D head_dim, E hidden size, V vocabulary.
"""

from typing import Any, Optional, Union

import torch
import torch.nn.functional as F
from torch import nn
from transformers import GenerationMixin, PreTrainedModel
from transformers.activations import ACT2FN
from transformers.cache_utils import DynamicCache
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

from common.layers import (FLASH_DTYPES, FLASH_MAX_HEAD_DIM, ScaledRotaryEmbedding, apply_rope, grouped_attention,
                           rms_norm, rope_tables)
from SDAR.configuration_sdar import SDARConfig

try:
    from flash_attn import flash_attn_func
except (ImportError, OSError):
    flash_attn_func = None

_IGNORE_INDEX = -100
# Keyword arguments that transformers' generation/training utilities may pass and that carry no
# information for this model (positions come from `position_ids` or the cache length).
_IGNORED_FORWARD_KWARGS = ("cache_position",)


class SDARRMSNorm(nn.Module):
    """RMSNorm in float32, cast back to the input dtype before the weight (HF Qwen3 order)."""

    def __init__(self, hidden_size: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size))
        self.variance_epsilon = eps

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:  # [..., E] -> [..., E]
        return rms_norm(hidden_states, self.weight, self.variance_epsilon)

    def extra_repr(self) -> str:
        return f"{tuple(self.weight.shape)}, eps={self.variance_epsilon}"


class SDARRotaryEmbedding(ScaledRotaryEmbedding):
    """RoPE tables over the full head_dim with rope_theta and rope_scaling (transformers' initialisers;
    `common.layers.ScaledRotaryEmbedding`: float32 frequencies no dtype cast can round)."""

    def __init__(self, config: SDARConfig) -> None:
        self.config = config
        scaling = config.rope_scaling or {}
        self.rope_type = scaling.get("rope_type", scaling.get("type", "default"))
        if self.rope_type not in ROPE_INIT_FUNCTIONS or self.rope_type in ("dynamic", "longrope"):
            raise ValueError(
                f"SDAR supports the sequence-length-independent RoPE types "
                f"{sorted(set(ROPE_INIT_FUNCTIONS) - {'dynamic', 'longrope'})}; got {self.rope_type!r}."
            )
        super().__init__()

    def frequencies(self, device: torch.device) -> tuple[torch.Tensor, float]:
        return ROPE_INIT_FUNCTIONS[self.rope_type](self.config, device)


def _can_use_flash(query: torch.Tensor) -> bool:
    return (
        flash_attn_func is not None
        and query.is_cuda
        and query.dtype in FLASH_DTYPES
        and query.shape[-1] <= FLASH_MAX_HEAD_DIM
    )


def attend(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: Optional[torch.Tensor],
    dropout_p: float,
    scaling: float,
) -> torch.Tensor:
    """Non-causal attention with grouped K/V heads (flash-attn without a mask where it is installed and
    applies, else `common.layers.grouped_attention`).

    query [B, H, Q, D], key/value [B, Hkv, K, D], attention_mask bool [B|1, Q, K] (True = may attend)
    or None (full attention) -> [B, Q, H, D]. A row with no True entry yields NaN (SDPA semantics);
    block-diffusion masks always let a token see itself.
    """
    if attention_mask is None and _can_use_flash(query):
        return flash_attn_func(
            query.transpose(1, 2),
            key.transpose(1, 2),
            value.transpose(1, 2),
            dropout_p=dropout_p,
            softmax_scale=scaling,
            causal=False,
        )
    sdpa_mask = None if attention_mask is None else attention_mask[:, None]  # [B|1, 1, Q, K]
    out = grouped_attention(query, key, value, sdpa_mask, dropout_p, scaling)  # [B, H, Q, D]
    return out.transpose(1, 2)  # [B, Q, H, D]


class SDARAttention(nn.Module):
    """GQA self-attention with per-head q/k RMSNorm before RoPE and `store_kv` cache control."""

    def __init__(self, config: SDARConfig, layer_idx: int) -> None:
        super().__init__()
        self.layer_idx = layer_idx
        self.head_dim = config.head_dim
        self.num_heads = config.num_attention_heads
        self.num_kv_heads = config.num_key_value_heads
        self.scaling = self.head_dim**-0.5
        self.attention_dropout = config.attention_dropout
        bias = config.attention_bias
        self.q_proj = nn.Linear(config.hidden_size, self.num_heads * self.head_dim, bias=bias)
        self.k_proj = nn.Linear(config.hidden_size, self.num_kv_heads * self.head_dim, bias=bias)
        self.v_proj = nn.Linear(config.hidden_size, self.num_kv_heads * self.head_dim, bias=bias)
        self.o_proj = nn.Linear(self.num_heads * self.head_dim, config.hidden_size, bias=bias)
        self.q_norm = SDARRMSNorm(self.head_dim, eps=config.rms_norm_eps)
        self.k_norm = SDARRMSNorm(self.head_dim, eps=config.rms_norm_eps)

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
        cache_keys = past_key_values.key_cache
        if len(cache_keys) <= self.layer_idx or cache_keys[self.layer_idx].numel() == 0:
            return key, value
        return (
            torch.cat([past_key_values.key_cache[self.layer_idx], key], dim=-2),
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
        """hidden_states [B, Q, E], cos/sin [B|1, 1, Q, D] from `common.layers.rope_tables`, bool mask
        [B|1, Q, K] or None -> [B, Q, E]."""
        batch, q_len, _ = hidden_states.shape
        query = self.q_norm(self.q_proj(hidden_states).view(batch, q_len, self.num_heads, self.head_dim))
        key = self.k_norm(self.k_proj(hidden_states).view(batch, q_len, self.num_kv_heads, self.head_dim))
        value = self.v_proj(hidden_states).view(batch, q_len, self.num_kv_heads, self.head_dim)
        query = apply_rope(query.transpose(1, 2), cos, sin)  # [B, H, Q, D]
        key = apply_rope(key.transpose(1, 2), cos, sin)  # [B, Hkv, Q, D]
        key, value = self._keys_values(key, value.transpose(1, 2), past_key_values, store_kv)
        dropout_p = self.attention_dropout if self.training else 0.0
        out = attend(query, key, value, attention_mask, dropout_p, self.scaling)  # [B, Q, H, D]
        return self.o_proj(out.reshape(batch, q_len, self.num_heads * self.head_dim))


class SDARMLP(nn.Module):
    """SwiGLU feed-forward: down(act(gate(x)) * up(x))."""

    def __init__(self, config: SDARConfig) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.up_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.down_proj = nn.Linear(config.intermediate_size, config.hidden_size, bias=False)
        self.act_fn = ACT2FN[config.hidden_act]

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [B, Q, E] -> [B, Q, E]
        return self.down_proj(self.act_fn(self.gate_proj(x)) * self.up_proj(x))


class SDARDecoderLayer(nn.Module):
    """Pre-norm decoder block: x + attn(norm(x)), then x + mlp(norm(x))."""

    def __init__(self, config: SDARConfig, layer_idx: int) -> None:
        super().__init__()
        self.self_attn = SDARAttention(config, layer_idx)
        self.mlp = SDARMLP(config)
        self.input_layernorm = SDARRMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.post_attention_layernorm = SDARRMSNorm(config.hidden_size, eps=config.rms_norm_eps)

    def forward(
        self,
        hidden_states: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        attention_mask: Optional[torch.Tensor],
        past_key_values: Optional[DynamicCache],
        store_kv: bool,
    ) -> torch.Tensor:  # [B, Q, E] -> [B, Q, E]
        attn_out = self.self_attn(
            self.input_layernorm(hidden_states), cos, sin, attention_mask, past_key_values, store_kv
        )
        hidden_states = hidden_states + attn_out
        return hidden_states + self.mlp(self.post_attention_layernorm(hidden_states))


class SDARPreTrainedModel(PreTrainedModel):
    config_class = SDARConfig
    base_model_prefix = "model"
    supports_gradient_checkpointing = True
    _no_split_modules = ["SDARDecoderLayer"]
    _skip_keys_device_placement = ["past_key_values"]
    _supports_sdpa = True
    # The layers choose their kernel themselves (flash-attn or SDPA) and ignore
    # `config._attn_implementation`. Released configs say "flex_attention" (used upstream for
    # training), so that value must pass transformers' validation rather than abort loading.
    _supports_flex_attn = True
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
        elif isinstance(module, SDARRMSNorm):
            module.weight.data.fill_(1.0)


def _check_extra_kwargs(kwargs: dict[str, Any]) -> None:
    """Reject keyword arguments this model would otherwise silently ignore (e.g. typos of store_kv)."""
    if kwargs.get("output_attentions"):
        raise ValueError("SDAR attention kernels (SDPA / flash-attn) do not return attention weights.")
    unknown = set(kwargs) - set(_IGNORED_FORWARD_KWARGS) - {"output_attentions"}
    if unknown:
        raise TypeError(f"Unexpected keyword arguments for SDAR forward: {sorted(unknown)}.")


def _prepare_attention_mask(
    attention_mask: Optional[torch.Tensor],
    batch: int,
    q_len: int,
    kv_len: int,
    device: torch.device,
) -> Optional[torch.Tensor]:
    """Caller mask [B|1, Q, K] or [B|1, 1, Q, K] (bool, or 0/1 int/float; 1 = may attend)
    -> bool [B|1, Q, K], or None when every entry may attend (full attention)."""
    if attention_mask is None:
        return None
    expected = f"[B, Q, K] or [B, 1, Q, K] with B in (1, {batch}), Q = {q_len}, K = cached + Q = {kv_len}"
    if not isinstance(attention_mask, torch.Tensor):
        raise TypeError(f"attention_mask must be a tensor of shape {expected}; got {type(attention_mask)}.")
    mask = attention_mask
    if mask.dim() == 4:
        if mask.shape[1] != 1:
            raise ValueError(
                f"A 4-D attention_mask must have a singleton head axis: {expected}; got {tuple(mask.shape)}."
            )
        mask = mask[:, 0]
    elif mask.dim() != 3:
        raise ValueError(
            f"attention_mask must have shape {expected}; got {tuple(mask.shape)}. "
            "2-D [B, K] padding masks are not supported: SDAR builds no mask of its own, so pass the "
            "full query-by-key mask (True/1 = may attend)."
        )
    if mask.shape[0] not in (1, batch) or mask.shape[1] != q_len or mask.shape[2] != kv_len:
        raise ValueError(f"attention_mask must have shape {expected}; got {tuple(attention_mask.shape)}.")
    mask = mask.to(device)
    if mask.dtype != torch.bool:
        # Additive masks (0 / -inf) would silently invert under a `!= 0` cast, so insist on 0/1.
        if not bool(((mask == 0) | (mask == 1)).all()):
            raise ValueError(
                "attention_mask values must be 0/1 (or bool) with 1 = may attend; additive "
                "(0 / -inf) masks are not accepted."
            )
        mask = mask != 0
    # An all-True mask only matters where flash-attn could then be used; checking costs a host sync,
    # so it is skipped where SDPA runs anyway (CPU, or flash-attn not installed).
    if flash_attn_func is not None and mask.is_cuda and bool(mask.all()):
        return None
    return mask


class SDARModel(SDARPreTrainedModel):
    """Embeddings, decoder layers and final norm; returns the last hidden states [B, Q, E]."""

    def __init__(self, config: SDARConfig) -> None:
        super().__init__(config)
        if config.use_sliding_window:
            raise ValueError(
                "SDAR does not implement sliding-window attention; set use_sliding_window=False."
            )
        self.padding_idx = config.pad_token_id
        self.vocab_size = config.vocab_size
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size, self.padding_idx)
        self.layers = nn.ModuleList(
            [SDARDecoderLayer(config, layer_idx) for layer_idx in range(config.num_hidden_layers)]
        )
        self.norm = SDARRMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.rotary_emb = SDARRotaryEmbedding(config)
        self.gradient_checkpointing = False
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.embed_tokens

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.embed_tokens = value

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
        """Run the decoder; see `SDARForCausalLM.forward` for the mask / cache / position contract."""
        _check_extra_kwargs(kwargs)
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("Pass exactly one of input_ids [B, Q] or inputs_embeds [B, Q, E].")
        if past_key_values is not None and not isinstance(past_key_values, DynamicCache):
            raise TypeError(
                f"past_key_values must be a transformers DynamicCache; got {type(past_key_values)}."
            )
        use_cache = self.config.use_cache if use_cache is None else use_cache
        output_hidden_states = (
            self.config.output_hidden_states if output_hidden_states is None else output_hidden_states
        )
        return_dict = self.config.use_return_dict if return_dict is None else return_dict
        if past_key_values is None and use_cache:
            past_key_values = DynamicCache()
        if self.gradient_checkpointing and self.training and store_kv and past_key_values is not None:
            raise ValueError(
                "store_kv=True cannot be combined with gradient checkpointing: recomputation would "
                "append the same K/V twice."
            )

        if inputs_embeds is None:
            inputs_embeds = self.embed_tokens(input_ids)  # [B, Q, E]
        batch, q_len, _ = inputs_embeds.shape
        past_len = past_key_values.get_seq_length() if past_key_values is not None else 0
        device = inputs_embeds.device
        if position_ids is None:
            position_ids = torch.arange(past_len, past_len + q_len, device=device).unsqueeze(0)  # [1, Q]
        elif position_ids.shape[1:] != (q_len,) or position_ids.shape[0] not in (1, batch):
            raise ValueError(
                f"position_ids must have shape [B, Q] = [{batch}, {q_len}]; got {tuple(position_ids.shape)}."
            )
        mask = _prepare_attention_mask(attention_mask, batch, q_len, past_len + q_len, device)  # [B|1, Q, K]
        # [B|1, 1, Q, D] each, cast and broadcast once for every layer
        cos, sin = rope_tables(*self.rotary_emb(position_ids.to(device), inputs_embeds.dtype), inputs_embeds.dtype)

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


class SDARForCausalLM(SDARPreTrainedModel, GenerationMixin):
    """SDAR with its LM head; logits are position-aligned (the logit at i predicts token i)."""

    _tied_weights_keys = ["lm_head.weight"]

    def __init__(self, config: SDARConfig) -> None:
        super().__init__(config)
        self.model = SDARModel(config)
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

    def get_decoder(self) -> SDARModel:
        return self.model

    def set_decoder(self, decoder: SDARModel) -> None:
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
            attention_mask: None for full attention over cache + current tokens, or a mask of shape
                [B, Q, K] or [B, 1, Q, K] (B may be 1 and broadcasts), K = cached length + Q, given as
                bool or 0/1 int/float with True/1 = may attend. It is used as is: no causal mask is
                added. 2-D padding masks and additive (0 / -inf) masks raise ValueError.
            position_ids: [B, Q] absolute positions; default `cached length + arange(Q)`.
            past_key_values: a `DynamicCache` of post-q/k-norm, post-RoPE keys and values.
            use_cache: with no cache passed, True creates an empty `DynamicCache` (None reads
                `config.use_cache`). A passed cache is always used and returned.
            store_kv: True appends this call's K/V to the cache and attends over the result; False
                attends over cached + current K/V and leaves the cache untouched.
            labels: [B, Q] POSITION-ALIGNED targets, not shifted: loss = mean cross entropy of
                logits[b, i] against labels[b, i] over entries != -100. With `logits_to_keep=N > 0`
                only the last N labels are scored. A `num_items_in_batch` keyword (passed by the HF
                Trainer under gradient accumulation) turns the mean into sum / num_items_in_batch.
            logits_to_keep: if > 0, compute logits only for the last N positions.
            return_dict: False returns `CausalLMOutputWithPast.to_tuple()`.
            output_hidden_states: also return the input of every layer and the final normed states.

        Returns:
            `CausalLMOutputWithPast` with logits [B, Q or N, V] in the model dtype (not upcast, as
            upstream SDAR), past_key_values (the cache or None) and loss (float32 scalar or None).
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
        flat_logits = logits.reshape(-1, logits.shape[-1]).to(torch.float32)  # [B*Q, V]
        flat_labels = labels.reshape(-1).to(logits.device)  # [B*Q]
        if num_items_in_batch is None:
            return F.cross_entropy(flat_logits, flat_labels, ignore_index=_IGNORE_INDEX)
        total = F.cross_entropy(flat_logits, flat_labels, ignore_index=_IGNORE_INDEX, reduction="sum")
        if isinstance(num_items_in_batch, torch.Tensor):
            num_items_in_batch = num_items_in_batch.to(total.device)
        return total / num_items_in_batch


__all__ = ["SDARForCausalLM", "SDARModel", "SDARPreTrainedModel"]
