"""Dream-v0-Base-7B (Dream-org/Dream-v0-Base-7B), the base of D2F-Dream: our own modeling code.

Maths (MODEL-FAMILIES.md §4.3): exactly transformers' Qwen2 decoder (pre-norm RMSNorm, GQA with a
bias on q/k/v and none on o_proj, rotate-half RoPE with theta 1e6, SwiGLU MLP, untied `lm_head`),
with attention that is BIDIRECTIONAL unless the caller's mask says otherwise: the model never adds
a causal mask. Parameter names equal Qwen2's and the checkpoint's: `model.embed_tokens`,
`model.layers.{i}.self_attn.{q,k,v,o}_proj`, `model.layers.{i}.mlp.{gate,up,down}_proj`,
`model.layers.{i}.{input,post_attention}_layernorm`, `model.norm`, `lm_head`.

Contract of `DreamModel.forward` (details in D2F/layers.py):
* masks: `attention_mask` is the released name of the full mask [B|1, 1, Q, K] (bool/0-1 keep-mask
  or additive float), or a 2-D [B, K] padding mask. `attention_bias` is accepted as the full mask
  too, because the paper's D2F helper calls Dream with that keyword: the released `DreamModel`
  has no such parameter, so the mask fell into `**kwargs` and every "masked" forward ran with full
  attention (MODEL-FAMILIES.md §8.2). Here every mask given is applied; an unknown keyword raises.
  No mask = full attention; with `past_key_values` and Q > 1 a full mask is required.
* cache: a transformers `DynamicCache` of post-RoPE K/V; `store_kv` False = read-only, True =
  append all Q tokens, int n = append the first n (the released `update_kvcache=n`). Positions
  default to cached length + arange(Q).
* alignment: SHIFTED: the logit at position t-1 predicts the token at position t (Dream is a
  continued autoregressive model). A decoder fills the first row of a window from the last logit of
  the previous call; the model itself returns unshifted logits.
* `logits_to_keep=N` applies `lm_head` to the last N rows only; logits stay in the model dtype.

Shapes: B batch, Q query tokens, P cached tokens, K = P + Q, H heads, Hkv key/value heads,
D head dim, E hidden size, V vocabulary.
"""

from typing import Any, Optional, Union

import torch
from torch import nn
from transformers import GenerationMixin, PreTrainedModel
from transformers.activations import ACT2FN
from transformers.cache_utils import DynamicCache
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast

from D2F.configuration_dream import DreamConfig
from D2F.layers import (
    RMSNorm,
    apply_rope,
    attend,
    check_logits_to_keep,
    keys_values_with_cache,
    prepare_inputs,
    reject_unsupported_kwargs,
)


class DreamAttention(nn.Module):
    """GQA self-attention with q/k/v bias, RoPE and `store_kv` cache control."""

    def __init__(self, config: DreamConfig, layer_idx: int) -> None:
        super().__init__()
        self.layer_idx = layer_idx
        self.num_heads = config.num_attention_heads
        self.num_kv_heads = config.num_key_value_heads
        self.head_dim = config.head_dim
        self.attention_dropout = config.attention_dropout
        hidden, kv_width = config.hidden_size, self.num_kv_heads * self.head_dim
        self.q_proj = nn.Linear(hidden, self.num_heads * self.head_dim, bias=True)
        self.k_proj = nn.Linear(hidden, kv_width, bias=True)
        self.v_proj = nn.Linear(hidden, kv_width, bias=True)
        self.o_proj = nn.Linear(self.num_heads * self.head_dim, hidden, bias=False)

    def forward(
        self,
        hidden_states: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        mask: Optional[torch.Tensor],
        past_key_values: Optional[DynamicCache],
        n_store: int,
    ) -> torch.Tensor:
        """hidden_states [B, Q, E], cos/sin [B|1, 1, Q, D] (`rope_tables`: sin carries rotate_half's sign),
        mask [B|1, 1, Q, K] or None -> [B, Q, E]."""
        batch, q_len, _ = hidden_states.shape
        query = self.q_proj(hidden_states).view(batch, q_len, self.num_heads, self.head_dim).transpose(1, 2)
        key = self.k_proj(hidden_states).view(batch, q_len, self.num_kv_heads, self.head_dim).transpose(1, 2)
        value = self.v_proj(hidden_states).view(batch, q_len, self.num_kv_heads, self.head_dim).transpose(1, 2)
        query = apply_rope(query, cos, sin)  # [B, H, Q, D]; sin: the signed table of rope_tables
        key = apply_rope(key, cos, sin)  # [B, Hkv, Q, D]
        key, value = keys_values_with_cache(key, value, past_key_values, self.layer_idx, n_store)
        dropout_p = self.attention_dropout if self.training else 0.0
        attn = attend(query, key, value, mask, dropout_p)  # [B, Q, H, D]
        return self.o_proj(attn.reshape(batch, q_len, self.num_heads * self.head_dim))


class DreamMLP(nn.Module):
    """SwiGLU feed-forward: down(act(gate(x)) * up(x))."""

    def __init__(self, config: DreamConfig) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.up_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.down_proj = nn.Linear(config.intermediate_size, config.hidden_size, bias=False)
        self.act_fn = ACT2FN[config.hidden_act]

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [B, Q, E] -> [B, Q, E]
        return self.down_proj(self.act_fn(self.gate_proj(x)) * self.up_proj(x))


class DreamDecoderLayer(nn.Module):
    """Pre-norm decoder block: x + attn(norm(x)), then x + mlp(norm(x))."""

    def __init__(self, config: DreamConfig, layer_idx: int) -> None:
        super().__init__()
        self.self_attn = DreamAttention(config, layer_idx)
        self.mlp = DreamMLP(config)
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)

    def forward(
        self,
        hidden_states: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        mask: Optional[torch.Tensor],
        past_key_values: Optional[DynamicCache],
        n_store: int,
    ) -> torch.Tensor:  # [B, Q, E] -> [B, Q, E]
        attn = self.self_attn(self.input_layernorm(hidden_states), cos, sin, mask, past_key_values, n_store)
        hidden_states = hidden_states + attn
        return hidden_states + self.mlp(self.post_attention_layernorm(hidden_states))


class DreamPreTrainedModel(PreTrainedModel):
    config_class = DreamConfig
    base_model_prefix = "model"
    _no_split_modules = ["DreamDecoderLayer"]
    _skip_keys_device_placement = ["past_key_values"]
    # Attention always runs in torch SDPA; declaring it keeps transformers from switching to "eager".
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
        elif isinstance(module, RMSNorm):
            module.weight.data.fill_(1.0)


class DreamBaseModel(DreamPreTrainedModel):
    """Embeddings, decoder layers and final norm; returns the last hidden states [B, Q, E]."""

    def __init__(self, config: DreamConfig) -> None:
        super().__init__(config)
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList([DreamDecoderLayer(config, i) for i in range(config.num_hidden_layers)])
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.embed_tokens

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.embed_tokens = value

    def forward(
        self,
        input_ids: Optional[torch.LongTensor] = None,
        attention_mask: Optional[torch.Tensor] = None,
        attention_bias: Optional[torch.Tensor] = None,
        position_ids: Optional[torch.LongTensor] = None,
        past_key_values: Optional[DynamicCache] = None,
        inputs_embeds: Optional[torch.Tensor] = None,
        use_cache: Optional[bool] = None,
        store_kv: Union[bool, int] = False,
        output_hidden_states: Optional[bool] = None,
    ) -> BaseModelOutputWithPast:
        """Run the decoder; the contract is documented on `DreamModel.forward`."""
        inputs_embeds, mask, cos, sin, past_key_values, n_store = prepare_inputs(
            self.embed_tokens, self.config, input_ids, attention_mask, attention_bias, position_ids, past_key_values, inputs_embeds,
            use_cache, store_kv, False)

        hidden_states = inputs_embeds
        all_hidden_states: tuple[torch.Tensor, ...] = ()
        for layer in self.layers:
            if output_hidden_states:
                all_hidden_states += (hidden_states,)
            hidden_states = layer(hidden_states, cos, sin, mask, past_key_values, n_store)
        hidden_states = self.norm(hidden_states)  # [B, Q, E]
        if output_hidden_states:
            all_hidden_states += (hidden_states,)
        return BaseModelOutputWithPast(
            last_hidden_state=hidden_states,
            past_key_values=past_key_values,
            hidden_states=all_hidden_states if output_hidden_states else None,
        )


class DreamModel(DreamPreTrainedModel, GenerationMixin):
    """Dream with its LM head. The class name is the released `architectures` entry (there,
    `DreamModel` is also the model with the head, and the decoder stack is `DreamBaseModel`).

    GenerationMixin is inherited only because PEFT's causal-LM wrapper expects
    `prepare_inputs_for_generation`; HF `generate` does not decode a diffusion model.
    """

    _tied_weights_keys = ["lm_head.weight"]

    def __init__(self, config: DreamConfig) -> None:
        super().__init__(config)
        self.model = DreamBaseModel(config)
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

    def get_decoder(self) -> DreamBaseModel:
        return self.model

    def forward(
        self,
        input_ids: Optional[torch.LongTensor] = None,
        attention_mask: Optional[torch.Tensor] = None,
        attention_bias: Optional[torch.Tensor] = None,
        position_ids: Optional[torch.LongTensor] = None,
        past_key_values: Optional[DynamicCache] = None,
        inputs_embeds: Optional[torch.Tensor] = None,
        use_cache: Optional[bool] = None,
        store_kv: Union[bool, int] = False,
        logits_to_keep: int = 0,
        labels: Optional[torch.LongTensor] = None,
        output_attentions: Optional[bool] = None,
        output_hidden_states: Optional[bool] = None,
        return_dict: Optional[bool] = None,
        **kwargs: Any,
    ) -> Union[CausalLMOutputWithPast, tuple]:
        """Bidirectional, shift-aligned forward.

        Args:
            input_ids: [B, Q] token ids (or `inputs_embeds` [B, Q, E]).
            attention_mask: full mask [B|1, 1, Q, K] or [B|1, Q, K], K = cached + Q: bool or 0/1
                integer (True/1 = may attend) or additive float (0 / -inf), used as given; or a 2-D
                [B, K] padding mask (1 = real token). None (and no attention_bias) = full attention.
            attention_bias: the full mask under the paper's keyword (then attention_mask may only be
                the 2-D padding mask).
            position_ids: [B|1, Q]; default cached length + arange(Q).
            past_key_values: `DynamicCache` of post-RoPE K/V; with it and Q > 1 a full mask is required.
            use_cache: with no cache passed, True creates an empty one (None reads config.use_cache).
            store_kv: False (read-only), True (append all Q tokens) or int n (append the first n).
            logits_to_keep: if > 0, logits only for the last N rows.
            labels, output_attentions: accepted for PEFT's wrapper; anything but None/False raises.
            output_hidden_states: also return each layer's input and the final normed states.
            return_dict: False returns a tuple.

        Returns:
            `CausalLMOutputWithPast`: logits [B, Q or N, V] in the model dtype (row t-1 predicts token
            t), past_key_values.
        """
        reject_unsupported_kwargs("Dream", labels, output_attentions, kwargs)
        check_logits_to_keep(logits_to_keep)
        outputs = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            attention_bias=attention_bias,
            position_ids=position_ids,
            past_key_values=past_key_values,
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
            store_kv=store_kv,
            output_hidden_states=output_hidden_states,
        )
        hidden_states = outputs.last_hidden_state  # [B, Q, E]
        if logits_to_keep > 0:
            hidden_states = hidden_states[:, -logits_to_keep:]  # [B, N, E]
        logits = self.lm_head(hidden_states)  # [B, Q or N, V]
        output = CausalLMOutputWithPast(
            logits=logits, past_key_values=outputs.past_key_values, hidden_states=outputs.hidden_states
        )
        return_dict = self.config.use_return_dict if return_dict is None else return_dict
        return output if return_dict else output.to_tuple()


__all__ = ["DreamBaseModel", "DreamModel", "DreamPreTrainedModel"]
