"""Tiny checkpoints of both model families over the synthetic tokenizer: a freshly initialised model
and the Hugging Face directory it is saved as (config, weights, generation config, tokenizer).

Shared by the training script (`scripts/train_tiny.py`) and the random test model
(`s2d2_eval.testing`), so both write exactly the layout the decoders and the lm-eval adapter load.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from families import FAMILIES as REGISTRY
from families import load

FAMILIES = tuple(REGISTRY)


def tiny_model(family: str, tokenizer: Any, **config_kwargs: Any) -> Any:
    """A freshly initialised model of `family` (seed torch first): the registry's causal-LM class with
    its configuration (Fast-dLLM v2: pass its `bd_size`). The special-token ids, vocabulary and context
    length come from the synthetic tokenizer, never literals; `config_kwargs` give the sizes under the
    family's own config keys (D2F-LLaDA: `d_model`, `n_heads`, ...; no `head_dim` for either D2F base)."""
    from synthetic.tokenizer import MODEL_MAX_LENGTH

    if family not in REGISTRY:
        raise ValueError(f"family={family!r}; valid: {', '.join(FAMILIES)}")
    shared = dict(
        vocab_size=len(tokenizer), max_position_embeddings=MODEL_MAX_LENGTH, tie_word_embeddings=False,
        use_cache=False, pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
        bos_token_id=None, mask_token_id=tokenizer.mask_token_id,
    )
    if family == "d2f_llada":
        # LLaDA's config keys are OLMo-style: the embedding and output-head rows are `embedding_size`
        # (whose default is the 8B's 126464 rows, not the vocabulary), the context is
        # `max_sequence_length` and tying is `weight_tying`. Sizes come as LLaDA keys (d_model, n_heads,
        # n_kv_heads, n_layers, mlp_hidden_size); the head dimension is d_model / n_heads.
        shared["embedding_size"] = shared["vocab_size"]
        shared["max_sequence_length"] = shared.pop("max_position_embeddings")
        shared["weight_tying"] = shared.pop("tie_word_embeddings")
    if family == "d2f_dream":
        # Dream has no sliding window; max_window_layers (default: the 7B's 28) only names how many
        # layers would skip one, so it follows the layer count. The head dimension is hidden / heads.
        shared["max_window_layers"] = config_kwargs.get("num_hidden_layers", 28)
    config_class, model_class = load(REGISTRY[family].config_class), load(REGISTRY[family].model_class)
    return model_class(config_class(**shared, **config_kwargs, architectures=[model_class.__name__]))


def save_checkpoint(model: Any, out_dir: str | Path) -> Path:
    """Write `model` with its generation config and the synthetic tokenizer to `out_dir`; returns it.

    The generation config is built explicitly: one derived from a model config (`_from_model_config`)
    drops keys it does not know, such as `mask_token_id`. The stop ids are EOS then pad: pad follows
    EOS in every training block, so a block decoded in parallel may show pad before its EOS.
    """
    from transformers import GenerationConfig

    from synthetic.tokenizer import build_tokenizer, save_tokenizer

    out = Path(out_dir)
    tokenizer = build_tokenizer()
    model.generation_config = GenerationConfig(
        eos_token_id=[tokenizer.eos_token_id, tokenizer.pad_token_id],
        pad_token_id=tokenizer.pad_token_id,
        mask_token_id=tokenizer.mask_token_id,
    )
    model.save_pretrained(out, safe_serialization=True)
    # save_pretrained writes it only for models that `can_generate()`; LLaDA2MoeModelLM (no
    # GenerationMixin: our decoders generate) would lose its stop ids.
    model.generation_config.save_pretrained(out)
    save_tokenizer(out)
    return out
