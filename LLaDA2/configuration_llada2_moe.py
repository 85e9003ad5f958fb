"""Configuration of LLaDA2.x-mini MoE block-diffusion LLMs (inclusionAI/LLaDA2.1-mini, LLaDA2.0-mini).

Key names are those of the released `config.json` (`model_type "llada2_moe"`), so the files load
unchanged. Unlike the upstream config class, whose defaults describe no working model (0 KV heads,
biases on, eps 1e-5, dropouts 0.1, pad 126081, rope_theta 1e4), every default here is the released
LLaDA2.1-mini value (MODEL-FAMILIES.md §3.2, §8.1).

Several released keys are read by no upstream code path: the router is always sigmoid + bias in
fp32, normalised whenever top_k > 1, and the rotary width always comes from
`partial_rotary_factor`. They are kept for round-tripping and checked here: a value that asks for
behaviour neither upstream nor this implementation has (e.g. `score_function="softmax"`,
`norm_head=True`) raises ValueError instead of being silently ignored. Unknown keys (e.g. the
`dtype` / `transformers_version` written by newer transformers) are kept as attributes by
`PretrainedConfig`.
"""

from typing import Any, Optional

from transformers import PretrainedConfig
from transformers.activations import ACT2FN


class LLaDA2MoeConfig(PretrainedConfig):
    """Hyper-parameters of a LLaDA2 MoE model; defaults equal inclusionAI/LLaDA2.1-mini's config.json.

    Architecture keys:
        hidden_size, num_hidden_layers, num_attention_heads, num_key_value_heads (GQA), head_dim
        (None: hidden_size // num_attention_heads), vocab_size, hidden_act, rms_norm_eps,
        tie_word_embeddings, pad_token_id (also the embedding's padding_idx, as upstream).
        use_qkv_bias: bias on the fused `query_key_value` projection. use_bias: bias on the attention
        output projection `dense`. use_qk_norm: per-head RMSNorm of q and k before RoPE.
        rope_theta, partial_rotary_factor (RoPE on the first head_dim * factor dims of every head),
        rotary_dim (stored by the release; must equal head_dim * partial_rotary_factor or be None).
        intermediate_size: width of the dense SwiGLU MLP of the first `first_k_dense_replace` layers.

    MoE keys (layers >= first_k_dense_replace):
        num_experts routed SwiGLU experts of width moe_intermediate_size; num_experts_per_tok (top-k);
        n_group / topk_group: group-limited routing (keep the topk_group groups with the largest
        sum-of-top-2 scores); routed_scaling_factor multiplies the normalised routing weights;
        num_shared_experts: one always-on SwiGLU of width moe_intermediate_size * num_shared_experts
        (0 or None: no shared expert).

    Accepted only at their released values (upstream ignores them or implements nothing else):
        score_function "sigmoid", router_dtype "fp32", norm_topk_prob True,
        moe_router_enable_expert_bias True, norm_head False, norm_softmax False,
        use_sliding_window False, output_router_logits False, rope_scaling None.
    Stored and unused, as upstream: embedding_dropout, output_dropout, sliding_window, use_cache
    (read only when no cache is passed: True creates one). attention_dropout applies in training.
    """

    model_type = "llada2_moe"
    keys_to_ignore_at_inference = ["past_key_values"]

    def __init__(
        self,
        vocab_size: int = 157184,
        hidden_size: int = 2048,
        intermediate_size: int = 5120,
        num_hidden_layers: int = 20,
        num_attention_heads: int = 16,
        num_key_value_heads: Optional[int] = 4,
        head_dim: Optional[int] = 128,
        hidden_act: str = "silu",
        use_qkv_bias: bool = False,
        use_qk_norm: bool = True,
        use_bias: bool = False,
        rms_norm_eps: float = 1e-6,
        norm_head: bool = False,
        norm_softmax: bool = False,
        tie_word_embeddings: bool = False,
        embedding_dropout: float = 0.0,
        attention_dropout: float = 0.0,
        output_dropout: float = 0.0,
        initializer_range: float = 0.02,
        max_position_embeddings: int = 32768,
        rope_theta: float = 600000.0,
        rope_scaling: Optional[dict[str, Any]] = None,
        partial_rotary_factor: float = 0.5,
        rotary_dim: Optional[int] = 64,
        use_cache: bool = False,
        use_sliding_window: bool = False,
        sliding_window: Optional[int] = 4096,
        pad_token_id: Optional[int] = 156892,
        num_experts: int = 256,
        num_shared_experts: Optional[int] = 1,
        num_experts_per_tok: int = 8,
        n_group: int = 8,
        topk_group: int = 4,
        routed_scaling_factor: float = 2.5,
        moe_intermediate_size: int = 512,
        first_k_dense_replace: int = 1,
        norm_topk_prob: bool = True,
        score_function: str = "sigmoid",
        router_dtype: Optional[str] = "fp32",
        moe_router_enable_expert_bias: bool = True,
        output_router_logits: bool = False,
        **kwargs: Any,
    ) -> None:
        if num_key_value_heads is None:
            num_key_value_heads = num_attention_heads
        if head_dim is None and num_attention_heads and hidden_size % num_attention_heads == 0:
            head_dim = hidden_size // num_attention_heads
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.intermediate_size = intermediate_size
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.num_key_value_heads = num_key_value_heads
        self.head_dim = head_dim
        self.hidden_act = hidden_act
        self.use_qkv_bias = use_qkv_bias
        self.use_qk_norm = use_qk_norm
        self.use_bias = use_bias
        self.rms_norm_eps = rms_norm_eps
        self.norm_head = norm_head
        self.norm_softmax = norm_softmax
        self.embedding_dropout = embedding_dropout
        self.attention_dropout = attention_dropout
        self.output_dropout = output_dropout
        self.initializer_range = initializer_range
        self.max_position_embeddings = max_position_embeddings
        self.rope_theta = rope_theta
        self.rope_scaling = rope_scaling
        self.partial_rotary_factor = partial_rotary_factor
        self.rotary_dim = rotary_dim
        self.use_cache = use_cache
        self.use_sliding_window = use_sliding_window
        self.sliding_window = sliding_window
        self.num_experts = num_experts
        self.num_shared_experts = num_shared_experts
        self.num_experts_per_tok = num_experts_per_tok
        self.n_group = n_group
        self.topk_group = topk_group
        self.routed_scaling_factor = routed_scaling_factor
        self.moe_intermediate_size = moe_intermediate_size
        self.first_k_dense_replace = first_k_dense_replace
        self.norm_topk_prob = norm_topk_prob
        self.score_function = score_function
        self.router_dtype = router_dtype
        self.moe_router_enable_expert_bias = moe_router_enable_expert_bias
        self.output_router_logits = output_router_logits
        self._validate(pad_token_id)
        super().__init__(pad_token_id=pad_token_id, tie_word_embeddings=tie_word_embeddings, **kwargs)

    @property
    def rope_dim(self) -> int:
        """Number of leading dims of every head that RoPE rotates (the rest pass through)."""
        return int(self.head_dim * self.partial_rotary_factor)

    def _validate(self, pad_token_id: Optional[int]) -> None:
        """Raise ValueError on values that cannot describe a working (or this) LLaDA2 model."""
        positive = {
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_hidden_layers,
            "num_attention_heads": self.num_attention_heads,
            "num_key_value_heads": self.num_key_value_heads,
            "max_position_embeddings": self.max_position_embeddings,
            "num_experts": self.num_experts,
            "num_experts_per_tok": self.num_experts_per_tok,
            "n_group": self.n_group,
            "topk_group": self.topk_group,
            "moe_intermediate_size": self.moe_intermediate_size,
        }
        for name, value in positive.items():
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"LLaDA2MoeConfig.{name} must be a positive int, got {value!r}.")
        if self.num_attention_heads % self.num_key_value_heads != 0:
            raise ValueError(
                f"LLaDA2MoeConfig.num_attention_heads ({self.num_attention_heads}) must be divisible "
                f"by num_key_value_heads ({self.num_key_value_heads}) for grouped-query attention."
            )
        if not isinstance(self.head_dim, int) or isinstance(self.head_dim, bool) or self.head_dim <= 0:
            raise ValueError(
                f"LLaDA2MoeConfig.head_dim must be a positive int (or None with hidden_size divisible "
                f"by num_attention_heads), got {self.head_dim!r}."
            )
        if not 0.0 < self.partial_rotary_factor <= 1.0:
            raise ValueError(
                "LLaDA2MoeConfig.partial_rotary_factor must be in (0, 1], "
                f"got {self.partial_rotary_factor!r}."
            )
        if self.rope_dim <= 0 or self.rope_dim % 2 != 0:
            raise ValueError(
                f"head_dim * partial_rotary_factor = {self.rope_dim} must be a positive even int "
                "(rotate-half RoPE)."
            )
        if self.rotary_dim is not None and self.rotary_dim != self.rope_dim:
            raise ValueError(
                f"LLaDA2MoeConfig.rotary_dim ({self.rotary_dim}) disagrees with head_dim * "
                f"partial_rotary_factor ({self.rope_dim}), which sets the rotary width; set "
                f"rotary_dim={self.rope_dim} or None."
            )
        if self.rope_scaling is not None:
            raise ValueError(
                f"LLaDA2MoeConfig.rope_scaling must be None (the released models use plain RoPE), "
                f"got {self.rope_scaling!r}."
            )
        if self.hidden_act not in ACT2FN:
            raise ValueError(f"LLaDA2MoeConfig.hidden_act {self.hidden_act!r} is not a known activation.")
        if not self.rms_norm_eps > 0:
            raise ValueError(f"LLaDA2MoeConfig.rms_norm_eps must be > 0, got {self.rms_norm_eps!r}.")
        if not self.rope_theta > 0:
            raise ValueError(f"LLaDA2MoeConfig.rope_theta must be > 0, got {self.rope_theta!r}.")
        if not 0.0 <= self.attention_dropout < 1.0:
            raise ValueError(
                f"LLaDA2MoeConfig.attention_dropout must be in [0, 1), got {self.attention_dropout!r}."
            )
        if pad_token_id is not None and not 0 <= pad_token_id < self.vocab_size:
            raise ValueError(
                f"LLaDA2MoeConfig.pad_token_id ({pad_token_id}) must be in [0, vocab_size={self.vocab_size}) "
                "or None: it is the embedding's padding_idx."
            )
        if not 0 <= self.first_k_dense_replace <= self.num_hidden_layers:
            raise ValueError(
                f"LLaDA2MoeConfig.first_k_dense_replace must be in [0, num_hidden_layers="
                f"{self.num_hidden_layers}], got {self.first_k_dense_replace!r}."
            )
        if self.num_shared_experts is not None and self.num_shared_experts < 0:
            raise ValueError(
                f"LLaDA2MoeConfig.num_shared_experts must be >= 0 or None, got {self.num_shared_experts!r}."
            )
        self._validate_routing()
        self._validate_fixed_keys()

    def _validate_routing(self) -> None:
        """Group-limited top-k needs equal groups of >= 2 experts (group score = sum of the top 2)."""
        if self.num_experts % self.n_group != 0:
            raise ValueError(
                f"LLaDA2MoeConfig.num_experts ({self.num_experts}) must be divisible by "
                f"n_group ({self.n_group})."
            )
        per_group = self.num_experts // self.n_group
        if per_group < 2:
            raise ValueError(
                f"LLaDA2MoeConfig needs >= 2 experts per group (group score = sum of its top-2 scores); "
                f"num_experts / n_group = {per_group}."
            )
        if self.topk_group > self.n_group:
            raise ValueError(
                f"LLaDA2MoeConfig.topk_group ({self.topk_group}) must be <= n_group ({self.n_group})."
            )
        if self.num_experts_per_tok > self.topk_group * per_group:
            raise ValueError(
                f"LLaDA2MoeConfig.num_experts_per_tok ({self.num_experts_per_tok}) exceeds the "
                f"{self.topk_group * per_group} experts eligible in topk_group={self.topk_group} groups."
            )

    def _validate_fixed_keys(self) -> None:
        """Released keys whose other values neither upstream nor this implementation supports."""
        fixed = {
            "score_function": (self.score_function, ("sigmoid",)),
            "router_dtype": (self.router_dtype, ("fp32", None)),
            "norm_topk_prob": (self.norm_topk_prob, (True,)),
            "moe_router_enable_expert_bias": (self.moe_router_enable_expert_bias, (True,)),
            "norm_head": (self.norm_head, (False,)),
            "norm_softmax": (self.norm_softmax, (False,)),
            "use_sliding_window": (self.use_sliding_window, (False,)),
            "output_router_logits": (self.output_router_logits, (False,)),
        }
        for name, (value, allowed) in fixed.items():
            if value not in allowed or isinstance(value, bool) != isinstance(allowed[0], bool):
                raise ValueError(
                    f"LLaDA2MoeConfig.{name}={value!r} is not supported; the LLaDA2 architecture "
                    f"implemented here (and upstream) only has {name} in {list(allowed)}."
                )


__all__ = ["LLaDA2MoeConfig"]
