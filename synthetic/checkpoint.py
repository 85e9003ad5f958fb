"""Tiny checkpoints of both model families over the synthetic tokenizer: a freshly initialised model
and the Hugging Face directory it is saved as (config, weights, generation config, tokenizer).

Shared by the training script (`scripts/train_tiny.py`) and the random test model
(`s2d2_eval.testing`), so both write exactly the layout the decoders and the lm-eval adapter load.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

FAMILIES = ("sdar", "fast_dllm_v2")


def tiny_model(family: str, tokenizer: Any, **config_kwargs: Any) -> Any:
    """A freshly initialised model of `family` (seed torch first): SDARForCausalLM, or
    Fast_dLLM_QwenForCausalLM (pass its `bd_size`). The special-token ids, vocabulary and context
    length come from the synthetic tokenizer, never literals; `config_kwargs` give the sizes."""
    from synthetic.tokenizer import MODEL_MAX_LENGTH

    shared = dict(
        vocab_size=len(tokenizer), max_position_embeddings=MODEL_MAX_LENGTH, tie_word_embeddings=False,
        use_cache=False, pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
        bos_token_id=None, mask_token_id=tokenizer.mask_token_id,
    )
    if family == "sdar":
        from SDAR.configuration_sdar import SDARConfig
        from SDAR.modeling_sdar import SDARForCausalLM

        return SDARForCausalLM(SDARConfig(**shared, **config_kwargs, architectures=["SDARForCausalLM"]))
    if family == "fast_dllm_v2":
        from fast_dllm_v2.configuration_fast_dllm import Fast_dLLM_QwenConfig
        from fast_dllm_v2.modeling_fast_dllm import Fast_dLLM_QwenForCausalLM

        config = Fast_dLLM_QwenConfig(**shared, **config_kwargs, architectures=["Fast_dLLM_QwenForCausalLM"])
        return Fast_dLLM_QwenForCausalLM(config)
    raise ValueError(f"family={family!r}; valid: {', '.join(FAMILIES)}")


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
    save_tokenizer(out)
    return out
