"""A random-init tiny SDAR model with the synthetic tokenizer, saved like a real checkpoint, so the
whole evaluation pipeline (lm-eval adapter, tasks, records, sweeps) can be exercised in seconds
without the trained model. Its answers are garbage; its stats and plumbing are real.

    python -m s2d2_eval.testing /tmp/rand_tiny
"""

from __future__ import annotations

import sys
from pathlib import Path


def build_random_tiny_model(out_dir: str | Path, hidden_size: int = 32, num_layers: int = 1, seed: int = 0) -> Path:
    """Save config, weights, generation config and tokenizer to `out_dir`; returns it.

    The generation config is built explicitly: one loaded from a model config (`_from_model_config`)
    drops keys it does not know, such as `mask_token_id`. Stop ids are EOS then pad, as the shipped
    model's (a block decoded in parallel may show pad before its EOS).
    """
    import torch
    from transformers import GenerationConfig

    from SDAR.configuration_sdar import SDARConfig
    from SDAR.modeling_sdar import SDARForCausalLM
    from synthetic.tokenizer import MODEL_MAX_LENGTH, build_tokenizer, save_tokenizer

    out = Path(out_dir)
    tokenizer = build_tokenizer()
    torch.manual_seed(seed)
    config = SDARConfig(
        vocab_size=len(tokenizer), hidden_size=hidden_size, intermediate_size=2 * hidden_size,
        num_hidden_layers=num_layers, num_attention_heads=2, num_key_value_heads=1, head_dim=hidden_size // 2,
        max_position_embeddings=MODEL_MAX_LENGTH, tie_word_embeddings=False, use_cache=False,
        pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id, bos_token_id=None,
        mask_token_id=tokenizer.mask_token_id, architectures=["SDARForCausalLM"],
    )
    model = SDARForCausalLM(config)
    model.generation_config = GenerationConfig(
        eos_token_id=[tokenizer.eos_token_id, tokenizer.pad_token_id],
        pad_token_id=tokenizer.pad_token_id,
        mask_token_id=tokenizer.mask_token_id,
    )
    model.save_pretrained(out, safe_serialization=True)
    save_tokenizer(out)
    return out


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python -m s2d2_eval.testing OUT_DIR")
    print(build_random_tiny_model(sys.argv[1]))
