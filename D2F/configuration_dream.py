"""Configuration of Dream-v0-Base-7B (Dream-org/Dream-v0-Base-7B), the base model of D2F-Dream.

Dream is Qwen2.5-7B continued as a masked-diffusion model, so the keys are transformers'
`Qwen2Config` keys plus `mask_token_id`; the defaults are Dream-v0-Base-7B's values
(MODEL-FAMILIES.md §4.3), so `DreamConfig()` describes the 7B. The released config.json was not
seen verbatim: its keys are taken from Dream's own configuration class and a Dream-derived config.
Sliding-window attention and RoPE scaling are not used by Dream and raise ValueError.
"""

from typing import Any, Optional

from transformers import PretrainedConfig
from transformers.activations import ACT2FN


class DreamConfig(PretrainedConfig):
    """Hyper-parameters of Dream; key names equal `Qwen2Config` plus `mask_token_id`.

    q/k/v projections always carry a bias and o_proj none (Qwen2), so there is no bias switch; the
    head dimension is hidden_size / num_attention_heads.
    """

    model_type = "Dream"
    keys_to_ignore_at_inference = ["past_key_values"]

    def __init__(
        self,
        vocab_size: int = 152064,
        hidden_size: int = 3584,
        intermediate_size: int = 18944,
        num_hidden_layers: int = 28,
        num_attention_heads: int = 28,
        num_key_value_heads: Optional[int] = 4,
        hidden_act: str = "silu",
        max_position_embeddings: int = 131072,
        initializer_range: float = 0.02,
        rms_norm_eps: float = 1e-6,
        use_cache: bool = False,
        tie_word_embeddings: bool = False,
        rope_theta: float = 1000000.0,
        rope_scaling: Optional[dict[str, Any]] = None,
        use_sliding_window: bool = False,
        sliding_window: Optional[int] = None,
        max_window_layers: int = 28,
        attention_dropout: float = 0.0,
        mask_token_id: int = 151666,
        bos_token_id: int = 151643,
        eos_token_id: int = 151643,
        pad_token_id: int = 151643,
        **kwargs: Any,
    ) -> None:
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.intermediate_size = intermediate_size
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.num_key_value_heads = num_attention_heads if num_key_value_heads is None else num_key_value_heads
        self.hidden_act = hidden_act
        self.max_position_embeddings = max_position_embeddings
        self.initializer_range = initializer_range
        self.rms_norm_eps = rms_norm_eps
        self.use_cache = use_cache
        self.rope_theta = rope_theta
        self.rope_scaling = rope_scaling
        self.use_sliding_window = use_sliding_window
        self.sliding_window = sliding_window
        self.max_window_layers = max_window_layers
        self.attention_dropout = attention_dropout
        self.mask_token_id = mask_token_id
        self._validate()
        super().__init__(
            bos_token_id=bos_token_id,
            eos_token_id=eos_token_id,
            pad_token_id=pad_token_id,
            tie_word_embeddings=tie_word_embeddings,
            **kwargs,
        )

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    def _validate(self) -> None:
        """Raise ValueError on values that cannot describe a working Dream model."""
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
                raise ValueError(f"DreamConfig.{name} must be a positive int, got {value!r}.")
        if self.hidden_size % self.num_attention_heads != 0 or self.head_dim % 2 != 0:
            raise ValueError(
                f"DreamConfig.hidden_size ({self.hidden_size}) must be num_attention_heads "
                f"({self.num_attention_heads}) times an even head dimension (rotate-half RoPE)."
            )
        if self.num_attention_heads % self.num_key_value_heads != 0:
            raise ValueError(
                f"DreamConfig.num_attention_heads ({self.num_attention_heads}) must be divisible by "
                f"num_key_value_heads ({self.num_key_value_heads})."
            )
        if self.hidden_act not in ACT2FN:
            raise ValueError(f"DreamConfig.hidden_act {self.hidden_act!r} is not a known activation.")
        if not self.rms_norm_eps > 0 or not self.rope_theta > 0:
            raise ValueError(
                f"DreamConfig.rms_norm_eps and rope_theta must be > 0; got {self.rms_norm_eps!r}, {self.rope_theta!r}."
            )
        if not 0.0 <= self.attention_dropout < 1.0:
            raise ValueError(f"DreamConfig.attention_dropout must be in [0, 1), got {self.attention_dropout!r}.")
        if self.use_sliding_window:
            raise ValueError("DreamConfig.use_sliding_window=True is not implemented (Dream attends globally).")
        if self.rope_scaling is not None:
            raise ValueError(
                f"DreamConfig.rope_scaling={self.rope_scaling!r} is not implemented (Dream uses plain RoPE)."
            )


__all__ = ["DreamConfig"]
