"""LLaDA-8B-Instruct (GSAI-ML/LLaDA-8B-Instruct), the base of D2F-LLaDA: our own modeling code.

Maths (MODEL-FAMILIES.md §4.2): LLaMA-like pre-norm decoder, RMSNorm (eps 1e-5), multi-head
attention with rotate-half RoPE (theta 500000, rotated in float32 under `rope_full_precision`),
SwiGLU `ff_out(silu(ff_proj(x)) * up_proj(x))`, final `ln_f`, untied head `transformer.ff_out`.
Attention is BIDIRECTIONAL: the model never adds a causal mask.

Parameter names equal the released checkpoint keys, so it loads unchanged:
`model.transformer.wte`, `model.transformer.blocks.{i}.{attn_norm, q_proj, k_proj, v_proj, attn_out,
ff_norm, ff_proj, up_proj, ff_out}`, `model.transformer.ln_f`, `model.transformer.ff_out` (the head).

Contract of `LLaDAModelLM.forward` (details in D2F/layers.py):
* masks: `attention_bias` is the released name of the full mask [B|1, 1, Q, K] (bool/0-1 keep-mask
  or additive float); `attention_mask` is the 2-D [B, K] padding mask, or a full mask as in Dream.
  No mask = full attention. With `past_key_values` and Q > 1 a full mask is REQUIRED: the released
  code silently builds a causal mask in that case (§8.2); here it is a ValueError.
* cache: a transformers `DynamicCache` of post-RoPE K/V. `store_kv` False = read-only (the cache is
  unchanged), True = append all Q tokens, int n = append the first n. Positions default to
  cached length + arange(Q); explicit `position_ids` allow repeated positions (the 2L verifier).
  The released D2F code instead keeps a list of pre-RoPE (k, v) and re-rotates them every call
  with implicit positions; post-RoPE caching is the same numbers (§8.2 measured 1.2e-6) with
  explicit positions.
* alignment: POSITION-ALIGNED: the logit at position i predicts the token at position i (read at
  masked positions), as LLaDA trains.
* `logits_to_keep=N` applies the head to the last N rows only; logits stay in the model dtype.

Upstream behaviour avoided: the released `__init__` switches torch's SDPA backends process-wide;
this file changes no global torch state. Upstream LLaDA forbids caches; D2F's copy allows them.

Shapes: B batch, Q query tokens, P cached tokens, K = P + Q, H heads, D head dim, E = d_model,
F = FFN width, V = embedding_size.
"""

from typing import Any, Optional, Union

import torch
import torch.nn.functional as F
from torch import nn
from transformers import GenerationMixin, PreTrainedModel
from transformers.cache_utils import DynamicCache
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast

from D2F.configuration_llada import LLaDAConfig
from D2F.layers import (
    RMSNorm,
    apply_rope,
    attend,
    check_logits_to_keep,
    keys_values_with_cache,
    prepare_inputs,
    reject_unsupported_kwargs,
)


class LLaDABlock(nn.Module):
    """One "llama" block: x + attn_out(attn(attn_norm(x))), then x + ff_out(silu(ff_proj(h)) * up_proj(h))."""

    def __init__(self, config: LLaDAConfig, layer_idx: int) -> None:
        super().__init__()
        self.layer_idx = layer_idx
        self.n_heads = config.n_heads
        self.n_kv_heads = config.effective_n_kv_heads
        self.head_dim = config.head_dim
        self.attention_dropout = config.attention_dropout
        self.residual_dropout = config.residual_dropout
        d_model, kv_width = config.d_model, self.n_kv_heads * self.head_dim
        self.attn_norm = RMSNorm(d_model, config.rms_norm_eps)
        self.q_proj = nn.Linear(d_model, d_model, bias=False)
        self.k_proj = nn.Linear(d_model, kv_width, bias=False)
        self.v_proj = nn.Linear(d_model, kv_width, bias=False)
        self.attn_out = nn.Linear(d_model, d_model, bias=False)
        self.ff_norm = RMSNorm(d_model, config.rms_norm_eps)
        self.ff_proj = nn.Linear(d_model, config.ffn_hidden_size, bias=False)
        self.up_proj = nn.Linear(d_model, config.ffn_hidden_size, bias=False)
        self.ff_out = nn.Linear(config.ffn_hidden_size, d_model, bias=False)

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
        normed = self.attn_norm(hidden_states)
        query = self.q_proj(normed).view(batch, q_len, self.n_heads, self.head_dim).transpose(1, 2)
        key = self.k_proj(normed).view(batch, q_len, self.n_kv_heads, self.head_dim).transpose(1, 2)
        value = self.v_proj(normed).view(batch, q_len, self.n_kv_heads, self.head_dim).transpose(1, 2)
        query = apply_rope(query, cos, sin)  # [B, H, Q, D]; sin: the signed table of rope_tables
        key = apply_rope(key, cos, sin)  # [B, Hkv, Q, D]
        key, value = keys_values_with_cache(key, value, past_key_values, self.layer_idx, n_store)
        dropout_p = self.attention_dropout if self.training else 0.0
        attn = attend(query, key, value, mask, dropout_p)  # [B, Q, H, D]
        attn = self.attn_out(attn.reshape(batch, q_len, self.n_heads * self.head_dim))  # [B, Q, E]
        hidden_states = hidden_states + F.dropout(attn, self.residual_dropout, self.training)
        normed = self.ff_norm(hidden_states)
        ffn = self.ff_out(F.silu(self.ff_proj(normed)) * self.up_proj(normed))  # [B, Q, E]
        return hidden_states + F.dropout(ffn, self.residual_dropout, self.training)


class LLaDAPreTrainedModel(PreTrainedModel):
    config_class = LLaDAConfig
    base_model_prefix = "model"
    _no_split_modules = ["LLaDABlock"]
    _skip_keys_device_placement = ["past_key_values"]
    # Attention always runs in torch SDPA; declaring it keeps transformers from switching to "eager".
    _supports_sdpa = True
    _supports_cache_class = True

    def _init_weights(self, module: nn.Module) -> None:
        """Normal(0, init_std) for weights, ones for norms. Only random-init models use this: the
        released checkpoints overwrite every parameter (upstream's "mitchell" init is for training)."""
        std = self.config.init_std
        if isinstance(module, (nn.Linear, nn.Embedding)):
            module.weight.data.normal_(mean=0.0, std=std)
        elif isinstance(module, RMSNorm):
            module.weight.data.fill_(1.0)


class LLaDAModel(LLaDAPreTrainedModel):
    """`transformer` = {wte, blocks, ln_f, ff_out}; forward returns the final normed states [B, Q, E].

    The output head `transformer.ff_out` lives here (that is where the checkpoint keys put it) but is
    applied by `LLaDAModelLM`, so that `logits_to_keep` can skip most rows.
    """

    def __init__(self, config: LLaDAConfig) -> None:
        super().__init__(config)
        self.transformer = nn.ModuleDict(
            {
                "wte": nn.Embedding(config.padded_vocab_size, config.d_model),
                "blocks": nn.ModuleList([LLaDABlock(config, i) for i in range(config.n_layers)]),
                "ln_f": RMSNorm(config.d_model, config.rms_norm_eps),
                "ff_out": nn.Linear(config.d_model, config.padded_vocab_size, bias=False),
            }
        )
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.transformer["wte"]

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.transformer["wte"] = value

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
        """Run embedding, blocks and ln_f; the contract is documented on `LLaDAModelLM.forward`."""
        inputs_embeds, mask, cos, sin, past_key_values, n_store = prepare_inputs(
            self.transformer["wte"], self.config, input_ids, attention_mask, attention_bias, position_ids, past_key_values, inputs_embeds,
            use_cache, store_kv, self.config.rope_full_precision)

        hidden_states = F.dropout(inputs_embeds, self.config.embedding_dropout, self.training)
        all_hidden_states: tuple[torch.Tensor, ...] = ()
        for block in self.transformer["blocks"]:
            if output_hidden_states:
                all_hidden_states += (hidden_states,)
            hidden_states = block(hidden_states, cos, sin, mask, past_key_values, n_store)
        hidden_states = self.transformer["ln_f"](hidden_states)  # [B, Q, E]
        if output_hidden_states:
            all_hidden_states += (hidden_states,)
        return BaseModelOutputWithPast(
            last_hidden_state=hidden_states,
            past_key_values=past_key_values,
            hidden_states=all_hidden_states if output_hidden_states else None,
        )


class LLaDAModelLM(LLaDAPreTrainedModel, GenerationMixin):
    """LLaDA with its output head; the class name is the released `architectures` entry.

    GenerationMixin is inherited only because PEFT's causal-LM wrapper expects
    `prepare_inputs_for_generation`; LLaDA is a diffusion model and HF `generate` does not decode it.
    """

    def __init__(self, config: LLaDAConfig) -> None:
        super().__init__(config)
        self.model = LLaDAModel(config)
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.model.transformer["wte"]

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.model.transformer["wte"] = value

    def get_output_embeddings(self) -> nn.Linear:
        return self.model.transformer["ff_out"]

    def set_output_embeddings(self, new_embeddings: nn.Linear) -> None:
        self.model.transformer["ff_out"] = new_embeddings

    def get_decoder(self) -> LLaDAModel:
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
        """Bidirectional, position-aligned forward.

        Args:
            input_ids: [B, Q] token ids (or `inputs_embeds` [B, Q, E]).
            attention_bias: full mask [B|1, 1, Q, K] or [B|1, Q, K], K = cached + Q: bool or 0/1
                integer (True/1 = may attend) or additive float (0 / -inf). Used as given.
            attention_mask: 2-D [B, K] padding mask (1 = real token), or the full mask instead of
                attention_bias. Both None = full attention.
            position_ids: [B|1, Q]; default cached length + arange(Q).
            past_key_values: `DynamicCache` of post-RoPE K/V; with it and Q > 1 a full mask is required.
            use_cache: with no cache passed, True creates an empty one (None reads config.use_cache).
            store_kv: False (read-only), True (append all Q tokens) or int n (append the first n).
            logits_to_keep: if > 0, logits only for the last N rows.
            labels, output_attentions: accepted for PEFT's wrapper; anything but None/False raises.
            output_hidden_states: also return each block's input and the final normed states.
            return_dict: False returns a tuple.

        Returns:
            `CausalLMOutputWithPast`: logits [B, Q or N, V] in the model dtype, past_key_values.
        """
        reject_unsupported_kwargs("LLaDA", labels, output_attentions, kwargs)
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
        logits = self.model.transformer["ff_out"](hidden_states)  # [B, Q or N, V]
        output = CausalLMOutputWithPast(
            logits=logits, past_key_values=outputs.past_key_values, hidden_states=outputs.hidden_states
        )
        return_dict = self.config.use_return_dict if return_dict is None else return_dict
        return output if return_dict else output.to_tuple()


__all__ = ["LLaDAModel", "LLaDAModelLM", "LLaDAPreTrainedModel"]
