"""Configuration of Fast-dLLM v2 block-diffusion LLMs (Efficient-Large-Model/Fast_dLLM_v2_7B, _1.5B).

Fast-dLLM v2 checkpoints are Qwen2.5 decoders fine-tuned as block-diffusion models, so the config
carries the Qwen2 keys and defaults of transformers 4.52.4 (`Qwen2Config`) plus the training block
size `bd_size` and the `conplemenrary_mask` switch (the misspelling is upstream's and is kept, so the
released `config.json` round-trips). The upstream configuration imports `layer_types` helpers that
only exist from transformers 4.53 on (MODEL-FAMILIES.md §2.1); this one accepts and checks
`layer_types` itself, so the pinned 4.52.4 loads the released files. Other unknown keys are kept as
attributes by `PretrainedConfig`.
"""

from __future__ import annotations

from typing import Any, Optional

from transformers import PretrainedConfig
from transformers.activations import ACT2FN
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS, rope_config_validation

# RoPE variants whose frequencies depend on the current sequence length. Cached keys keep the
# rotation of the call that wrote them, so these variants break block-by-block cache reuse.
_LENGTH_DEPENDENT_ROPE = ("dynamic", "longrope")
_FULL_ATTENTION = "full_attention"


class Fast_dLLM_QwenConfig(PretrainedConfig):
    """Hyper-parameters of a Fast-dLLM v2 model; key names and defaults equal transformers' `Qwen2Config`.

    `head_dim` is not a Qwen2 key: it defaults to hidden_size / num_attention_heads, which is what
    Qwen2 uses (transformers' Qwen2 attention honours an explicit `head_dim` the same way).

    Args beyond Qwen2:
        bd_size: block size the model was trained with (32 for the released models). The model uses
            it as the default block size of its block-causal mask when a caller passes neither a mask
            nor `block_size`.
        conplemenrary_mask: upstream training switch (a complementary masked copy of each example).
            Stored for checkpoint compatibility; it has no effect at inference.
        layer_types: per-layer attention kind, as written by transformers >= 4.53. Only
            "full_attention" is supported (Fast-dLLM v2 uses no sliding window); None means all full.
    """

    model_type = "Fast_dLLM_Qwen"
    keys_to_ignore_at_inference = ["past_key_values"]

    def __init__(
        self,
        vocab_size: int = 151936,
        hidden_size: int = 4096,
        intermediate_size: int = 22016,
        num_hidden_layers: int = 32,
        num_attention_heads: int = 32,
        num_key_value_heads: Optional[int] = 32,
        head_dim: Optional[int] = None,
        hidden_act: str = "silu",
        max_position_embeddings: int = 32768,
        initializer_range: float = 0.02,
        rms_norm_eps: float = 1e-6,
        use_cache: bool = True,
        tie_word_embeddings: bool = False,
        rope_theta: float = 10000.0,
        rope_scaling: Optional[dict[str, Any]] = None,
        use_sliding_window: bool = False,
        sliding_window: Optional[int] = 4096,
        max_window_layers: int = 28,
        layer_types: Optional[list[str]] = None,
        attention_dropout: float = 0.0,
        bd_size: int = 32,
        conplemenrary_mask: bool = False,
        **kwargs: Any,
    ) -> None:
        if num_key_value_heads is None:
            num_key_value_heads = num_attention_heads
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.intermediate_size = intermediate_size
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.num_key_value_heads = num_key_value_heads
        if head_dim is None and isinstance(num_attention_heads, int) and num_attention_heads > 0:
            head_dim = hidden_size // num_attention_heads
        self.head_dim = head_dim
        self.hidden_act = hidden_act
        self.max_position_embeddings = max_position_embeddings
        self.initializer_range = initializer_range
        self.rms_norm_eps = rms_norm_eps
        self.use_cache = use_cache
        self.rope_theta = rope_theta
        self.rope_scaling = dict(rope_scaling) if rope_scaling is not None else None
        if self.rope_scaling is not None and "type" in self.rope_scaling:
            # Older configs spell the key "type"; transformers' RoPE helpers read "rope_type".
            self.rope_scaling.setdefault("rope_type", self.rope_scaling["type"])
        self.use_sliding_window = use_sliding_window
        self.sliding_window = sliding_window
        self.max_window_layers = max_window_layers
        self.layer_types = list(layer_types) if layer_types is not None else [_FULL_ATTENTION] * num_hidden_layers
        self.attention_dropout = attention_dropout
        self.bd_size = bd_size
        self.conplemenrary_mask = conplemenrary_mask
        self._validate()
        rope_config_validation(self)
        super().__init__(tie_word_embeddings=tie_word_embeddings, **kwargs)

    def _validate(self) -> None:
        """Raise ValueError on values that cannot describe a working model."""
        for name in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                     "num_attention_heads", "num_key_value_heads", "max_position_embeddings", "bd_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"Fast_dLLM_QwenConfig.{name} must be a positive int, got {value!r}.")
        if not isinstance(self.head_dim, int) or self.head_dim <= 0 or self.head_dim % 2 != 0:
            raise ValueError(f"head_dim must be a positive even int (rotate-half RoPE), got {self.head_dim!r}.")
        if self.num_attention_heads % self.num_key_value_heads != 0:
            raise ValueError(
                f"num_attention_heads ({self.num_attention_heads}) must be divisible by "
                f"num_key_value_heads ({self.num_key_value_heads}) for grouped-query attention."
            )
        if self.hidden_act not in ACT2FN:
            raise ValueError(f"hidden_act {self.hidden_act!r} is not a known activation.")
        if not self.rms_norm_eps > 0:
            raise ValueError(f"rms_norm_eps must be > 0, got {self.rms_norm_eps!r}.")
        if not self.rope_theta > 0:
            raise ValueError(f"rope_theta must be > 0, got {self.rope_theta!r}.")
        if not 0.0 <= self.attention_dropout < 1.0:
            raise ValueError(f"attention_dropout must be in [0, 1), got {self.attention_dropout!r}.")
        if self.use_sliding_window:
            raise ValueError("Fast-dLLM v2 uses no sliding window; set use_sliding_window=False.")
        if len(self.layer_types) != self.num_hidden_layers or set(self.layer_types) - {_FULL_ATTENTION}:
            raise ValueError(
                f"layer_types must list {self.num_hidden_layers} x {_FULL_ATTENTION!r} (no sliding window), "
                f"got {self.layer_types!r}."
            )
        if self.rope_scaling is not None:
            rope_type = self.rope_scaling.get("rope_type", "default")
            if rope_type in _LENGTH_DEPENDENT_ROPE:
                raise ValueError(
                    f"rope_scaling type {rope_type!r} is not supported: its frequencies depend on the "
                    "sequence length, which breaks block-wise KV-cache reuse."
                )
            if rope_type not in ROPE_INIT_FUNCTIONS:
                raise ValueError(
                    f"Unknown rope_scaling type {rope_type!r}; expected one of "
                    f"{sorted(set(ROPE_INIT_FUNCTIONS) - set(_LENGTH_DEPENDENT_ROPE))}."
                )


__all__ = ["Fast_dLLM_QwenConfig"]
