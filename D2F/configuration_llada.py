"""Configuration of LLaDA-8B-Instruct (GSAI-ML/LLaDA-8B-Instruct), the base model of D2F-LLaDA.

The key names are those of the released `config.json` (OLMo-style: `d_model`, `n_heads`, `n_layers`,
`mlp_hidden_size`, `embedding_size`, ...), and the defaults are the released values, so
`LLaDAConfig()` describes LLaDA-8B-Instruct. The released code's own defaults build a different
model unless every switch is spelled out (MODEL-FAMILIES.md §8.2); here the defaults ARE the 8B.

Only the architecture LLaDA-8B uses is implemented: the "llama" block (pre-norm RMSNorm, RoPE,
SwiGLU `act(ff_proj(x)) * up_proj(x) -> ff_out`), no biases, untied output head. A switch that
would select anything else (ALiBi, LayerNorm, q/k norm, biases, block groups, weight tying, logit
scaling, ...) raises ValueError instead of being ignored. Keys that only steer training or kernels
upstream (`init_*`, `precision`, `flash_attention`, `mlp_ratio` when `mlp_hidden_size` is set) are
stored and round-trip unchanged.
"""

from typing import Any, Optional

from transformers import PretrainedConfig

# Switches of the OLMo-style config that select architectures LLaDA-8B does not use, with the only
# value this implementation accepts.
_FIXED_SWITCHES: dict[str, tuple[Any, ...]] = {
    "block_type": ("llama",),
    "layer_norm_type": ("rms",),
    "activation_type": ("silu",),
    "alibi": (False,),
    "rope": (True,),
    "attention_layer_norm": (False,),
    "input_emb_norm": (False,),
    "scale_logits": (False,),
    "include_bias": (False,),
    "include_qkv_bias": (False,),
    "bias_for_layer_norm": (False, None),
    "layer_norm_with_affine": (True,),
    "weight_tying": (False,),
    "block_group_size": (1,),
}


class LLaDAConfig(PretrainedConfig):
    """Hyper-parameters of LLaDA; key names and defaults equal GSAI-ML/LLaDA-8B-Instruct's config.json.

    HF-style aliases (`hidden_size`, `num_attention_heads`, `num_key_value_heads`,
    `num_hidden_layers`, `max_position_embeddings`) read and write the OLMo-style keys.
    """

    model_type = "llada"
    keys_to_ignore_at_inference = ["past_key_values"]
    attribute_map = {
        "hidden_size": "d_model",
        "num_attention_heads": "n_heads",
        "num_key_value_heads": "n_kv_heads",
        "num_hidden_layers": "n_layers",
        "max_position_embeddings": "max_sequence_length",
    }

    def __init__(
        self,
        d_model: int = 4096,
        n_heads: int = 32,
        n_kv_heads: Optional[int] = 32,
        n_layers: int = 32,
        mlp_ratio: int = 4,
        mlp_hidden_size: Optional[int] = 12288,
        activation_type: str = "silu",
        block_type: str = "llama",
        block_group_size: int = 1,
        alibi: bool = False,
        alibi_bias_max: float = 8.0,
        rope: bool = True,
        rope_full_precision: bool = True,
        rope_theta: float = 500000.0,
        flash_attention: bool = False,
        attention_dropout: float = 0.0,
        multi_query_attention: Optional[bool] = None,
        attention_layer_norm: bool = False,
        attention_layer_norm_with_affine: bool = True,
        residual_dropout: float = 0.0,
        embedding_dropout: float = 0.0,
        input_emb_norm: bool = False,
        layer_norm_type: str = "rms",
        layer_norm_with_affine: bool = True,
        rms_norm_eps: float = 1e-5,
        bias_for_layer_norm: Optional[bool] = False,
        include_bias: bool = False,
        include_qkv_bias: bool = False,
        scale_logits: bool = False,
        max_sequence_length: int = 4096,
        vocab_size: int = 126464,
        embedding_size: Optional[int] = 126464,
        weight_tying: bool = False,
        init_device: Optional[str] = "meta",
        init_fn: str = "mitchell",
        init_std: float = 0.02,
        init_cutoff_factor: Optional[float] = None,
        precision: Optional[str] = "amp_bf16",
        mask_token_id: int = 126336,
        eos_token_id: int = 126081,
        pad_token_id: int = 126081,
        use_cache: bool = False,
        **kwargs: Any,
    ) -> None:
        self.d_model = d_model
        self.n_heads = n_heads
        self.n_kv_heads = n_kv_heads
        self.n_layers = n_layers
        self.mlp_ratio = mlp_ratio
        self.mlp_hidden_size = mlp_hidden_size
        self.activation_type = activation_type
        self.block_type = block_type
        self.block_group_size = block_group_size
        self.alibi = alibi
        self.alibi_bias_max = alibi_bias_max
        self.rope = rope
        self.rope_full_precision = rope_full_precision
        self.rope_theta = rope_theta
        self.flash_attention = flash_attention
        self.attention_dropout = attention_dropout
        self.multi_query_attention = multi_query_attention
        self.attention_layer_norm = attention_layer_norm
        self.attention_layer_norm_with_affine = attention_layer_norm_with_affine
        self.residual_dropout = residual_dropout
        self.embedding_dropout = embedding_dropout
        self.input_emb_norm = input_emb_norm
        self.layer_norm_type = layer_norm_type
        self.layer_norm_with_affine = layer_norm_with_affine
        self.rms_norm_eps = rms_norm_eps
        self.bias_for_layer_norm = bias_for_layer_norm
        self.include_bias = include_bias
        self.include_qkv_bias = include_qkv_bias
        self.scale_logits = scale_logits
        self.max_sequence_length = max_sequence_length
        self.vocab_size = vocab_size
        self.embedding_size = embedding_size
        self.weight_tying = weight_tying
        self.init_device = init_device
        self.init_fn = init_fn
        self.init_std = init_std
        self.init_cutoff_factor = init_cutoff_factor
        self.precision = precision
        self.mask_token_id = mask_token_id
        self.use_cache = use_cache
        # PretrainedConfig defaults tie_word_embeddings to True, which would make transformers tie the
        # output head to the embedding; LLaDA's switch for that is weight_tying.
        tie = kwargs.pop("tie_word_embeddings", weight_tying)
        if tie != weight_tying:
            raise ValueError(
                f"tie_word_embeddings ({tie!r}) contradicts weight_tying ({weight_tying!r}); LLaDA configs "
                "set only weight_tying."
            )
        self._validate()
        super().__init__(
            eos_token_id=eos_token_id, pad_token_id=pad_token_id, tie_word_embeddings=weight_tying, **kwargs
        )

    @property
    def effective_n_kv_heads(self) -> int:
        """Key/value heads: 1 under multi_query_attention, else n_kv_heads (n_heads when unset)."""
        if self.multi_query_attention:
            return 1
        return self.n_heads if self.n_kv_heads is None else self.n_kv_heads

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    @property
    def ffn_hidden_size(self) -> int:
        """Width of ff_proj / up_proj: mlp_hidden_size, else mlp_ratio * d_model."""
        return self.mlp_hidden_size if self.mlp_hidden_size is not None else self.mlp_ratio * self.d_model

    @property
    def padded_vocab_size(self) -> int:
        """Rows of wte and of the output head (and the logits' last dimension)."""
        return self.embedding_size if self.embedding_size is not None else self.vocab_size

    def _validate(self) -> None:
        """Raise ValueError on values that this implementation cannot run faithfully."""
        for name, allowed in _FIXED_SWITCHES.items():
            value = getattr(self, name)
            # Compare type and value: `0 == False` and `True == 1` must not pass for each other.
            if not any(type(value) is type(a) and value == a for a in allowed):
                raise ValueError(
                    f"LLaDAConfig.{name}={value!r} is not implemented: this LLaDA supports only the "
                    f"LLaDA-8B architecture ({name} in {list(allowed)})."
                )
        positive = {
            "d_model": self.d_model,
            "n_heads": self.n_heads,
            "n_layers": self.n_layers,
            "vocab_size": self.vocab_size,
            "max_sequence_length": self.max_sequence_length,
            "ffn hidden size (mlp_hidden_size or mlp_ratio * d_model)": self.ffn_hidden_size,
            "effective n_kv_heads": self.effective_n_kv_heads,
        }
        for name, value in positive.items():
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"LLaDAConfig {name} must be a positive int, got {value!r}.")
        if self.d_model % self.n_heads != 0 or (self.d_model // self.n_heads) % 2 != 0:
            raise ValueError(
                f"LLaDAConfig.d_model ({self.d_model}) must be n_heads ({self.n_heads}) times an even "
                "head dimension (rotate-half RoPE)."
            )
        if self.n_heads % self.effective_n_kv_heads != 0:
            raise ValueError(
                f"LLaDAConfig.n_heads ({self.n_heads}) must be divisible by the key/value head count "
                f"({self.effective_n_kv_heads})."
            )
        if self.padded_vocab_size < self.vocab_size:
            raise ValueError(
                f"LLaDAConfig.embedding_size ({self.embedding_size}) must be >= vocab_size ({self.vocab_size})."
            )
        if not self.rms_norm_eps > 0 or not self.rope_theta > 0:
            raise ValueError(
                f"LLaDAConfig.rms_norm_eps and rope_theta must be > 0; got {self.rms_norm_eps!r}, "
                f"{self.rope_theta!r}."
            )
        for name in ("attention_dropout", "residual_dropout", "embedding_dropout"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"LLaDAConfig.{name} must be in [0, 1), got {getattr(self, name)!r}.")


__all__ = ["LLaDAConfig"]
