"""Configuration of SDAR block-diffusion LLMs (JetLM/SDAR-*-Chat).

SDAR checkpoints are Qwen3 dense decoders continued as block-diffusion models, so the config
carries exactly the Qwen3 keys and defaults (transformers 4.52.4 `Qwen3Config`) plus SDAR's own
`fuse_cross_entropy`. The released `config.json` files hold further training-only keys
(`debug`, `ep_size`, `micro_forward`, `skip_checkpoint`, `use_deepep`, `attn_implementation`);
`PretrainedConfig` keeps unknown keys as attributes, so they load unchanged and round-trip through
`save_pretrained`.
"""

from typing import Any, Optional

from transformers import PretrainedConfig
from transformers.activations import ACT2FN
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS, rope_config_validation

# RoPE variants whose frequencies depend on the current sequence length. Cached keys were rotated
# with the frequencies of the call that wrote them, so these variants are inconsistent with the
# block-wise KV-cache reuse that SDAR decoding relies on.
_SEQ_LEN_DEPENDENT_ROPE_TYPES = ("dynamic", "longrope")


class SDARConfig(PretrainedConfig):
    """Hyper-parameters of an SDAR model; key names and defaults equal transformers' `Qwen3Config`.

    Args beyond Qwen3:
        fuse_cross_entropy: read by the upstream LM head to pick a fused loss kernel. Accepted for
            checkpoint compatibility; this implementation always uses `torch` cross entropy, so it
            has no numerical effect.

    `use_sliding_window` / `sliding_window` / `max_window_layers` are stored for compatibility.
    SDAR checkpoints do not use a sliding window, and the model refuses `use_sliding_window=True`.
    """

    model_type = "sdar"
    keys_to_ignore_at_inference = ["past_key_values"]

    def __init__(
        self,
        vocab_size: int = 151936,
        hidden_size: int = 4096,
        intermediate_size: int = 22016,
        num_hidden_layers: int = 32,
        num_attention_heads: int = 32,
        num_key_value_heads: Optional[int] = 32,
        head_dim: Optional[int] = 128,
        hidden_act: str = "silu",
        max_position_embeddings: int = 32768,
        initializer_range: float = 0.02,
        rms_norm_eps: float = 1e-6,
        use_cache: bool = True,
        tie_word_embeddings: bool = False,
        rope_theta: float = 10000.0,
        rope_scaling: Optional[dict[str, Any]] = None,
        attention_bias: bool = False,
        use_sliding_window: bool = False,
        sliding_window: Optional[int] = 4096,
        max_window_layers: int = 28,
        attention_dropout: float = 0.0,
        fuse_cross_entropy: bool = False,
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
        self.max_position_embeddings = max_position_embeddings
        self.initializer_range = initializer_range
        self.rms_norm_eps = rms_norm_eps
        self.use_cache = use_cache
        self.rope_theta = rope_theta
        self.rope_scaling = dict(rope_scaling) if rope_scaling is not None else None
        self.attention_bias = attention_bias
        self.use_sliding_window = use_sliding_window
        self.sliding_window = sliding_window
        self.max_window_layers = max_window_layers
        self.attention_dropout = attention_dropout
        self.fuse_cross_entropy = fuse_cross_entropy
        if self.rope_scaling is not None and "type" in self.rope_scaling:
            # Older configs spell the key "type"; transformers' RoPE helpers read "rope_type".
            self.rope_scaling.setdefault("rope_type", self.rope_scaling["type"])
        self._validate()
        rope_config_validation(self)
        super().__init__(tie_word_embeddings=tie_word_embeddings, **kwargs)

    def _validate(self) -> None:
        """Raise ValueError on values that cannot describe a working model."""
        positive = {
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_hidden_layers,
            "num_attention_heads": self.num_attention_heads,
            "num_key_value_heads": self.num_key_value_heads,
            "max_position_embeddings": self.max_position_embeddings,
        }
        for name, value in positive.items():
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"SDARConfig.{name} must be a positive int, got {value!r}.")
        if self.num_attention_heads % self.num_key_value_heads != 0:
            raise ValueError(
                f"SDARConfig.num_attention_heads ({self.num_attention_heads}) must be divisible by "
                f"num_key_value_heads ({self.num_key_value_heads}) for grouped-query attention."
            )
        if self.head_dim is None:
            raise ValueError(
                f"SDARConfig.head_dim is None and hidden_size ({self.hidden_size}) is not divisible "
                f"by num_attention_heads ({self.num_attention_heads}); set head_dim explicitly."
            )
        if not isinstance(self.head_dim, int) or self.head_dim <= 0 or self.head_dim % 2 != 0:
            raise ValueError(
                f"SDARConfig.head_dim must be a positive even int (rotate-half RoPE), got {self.head_dim!r}."
            )
        if self.hidden_act not in ACT2FN:
            raise ValueError(f"SDARConfig.hidden_act {self.hidden_act!r} is not a known activation.")
        if not self.rms_norm_eps > 0:
            raise ValueError(f"SDARConfig.rms_norm_eps must be > 0, got {self.rms_norm_eps!r}.")
        if not self.rope_theta > 0:
            raise ValueError(f"SDARConfig.rope_theta must be > 0, got {self.rope_theta!r}.")
        if not 0.0 <= self.attention_dropout < 1.0:
            raise ValueError(
                f"SDARConfig.attention_dropout must be in [0, 1), got {self.attention_dropout!r}."
            )
        if self.rope_scaling is not None:
            rope_type = self.rope_scaling.get("rope_type", "default")
            if rope_type in _SEQ_LEN_DEPENDENT_ROPE_TYPES:
                raise ValueError(
                    f"rope_scaling type {rope_type!r} is not supported by SDAR: its frequencies depend "
                    "on the sequence length, which breaks block-wise KV-cache reuse."
                )
            if rope_type not in ROPE_INIT_FUNCTIONS:
                raise ValueError(
                    f"Unknown rope_scaling type {rope_type!r}; expected one of "
                    f"{sorted(set(ROPE_INIT_FUNCTIONS) - set(_SEQ_LEN_DEPENDENT_ROPE_TYPES))}."
                )


__all__ = ["SDARConfig"]
