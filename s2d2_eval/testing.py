"""A random-init tiny model (SDAR or Fast-dLLM v2) with the synthetic tokenizer, saved like a real
checkpoint, so the whole evaluation pipeline (lm-eval adapter, tasks, records, sweeps) can be
exercised in seconds without a trained model. Its answers are garbage; its stats and plumbing are real.

    python -m s2d2_eval.testing /tmp/rand_tiny
    python -m s2d2_eval.testing /tmp/rand_fast --family fast_dllm_v2
"""

from __future__ import annotations

import argparse
from pathlib import Path

FAMILIES = ("sdar", "fast_dllm_v2")


def build_random_tiny_model(out_dir: str | Path, hidden_size: int = 32, num_layers: int = 1, seed: int = 0,
                            family: str = "sdar", block_size: int = 16) -> Path:
    """Save config, weights, generation config and tokenizer to `out_dir`; returns it.

    `family` picks the architecture: `sdar` (SDARForCausalLM) or `fast_dllm_v2`
    (Fast_dLLM_QwenForCausalLM, whose `bd_size` is `block_size`). The generation config is built
    explicitly: one loaded from a model config (`_from_model_config`) drops keys it does not know,
    such as `mask_token_id`. Stop ids are EOS then pad, as the shipped model's (a block decoded in
    parallel may show pad before its EOS).
    """
    import torch
    from transformers import GenerationConfig

    from synthetic.tokenizer import MODEL_MAX_LENGTH, build_tokenizer, save_tokenizer

    if family not in FAMILIES:
        raise ValueError(f"family={family!r}; valid: {', '.join(FAMILIES)}")
    out = Path(out_dir)
    tokenizer = build_tokenizer()
    torch.manual_seed(seed)
    shared = dict(
        vocab_size=len(tokenizer), hidden_size=hidden_size, intermediate_size=2 * hidden_size,
        num_hidden_layers=num_layers, num_attention_heads=2, num_key_value_heads=1, head_dim=hidden_size // 2,
        max_position_embeddings=MODEL_MAX_LENGTH, tie_word_embeddings=False, use_cache=False,
        pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id, bos_token_id=None,
        mask_token_id=tokenizer.mask_token_id,
    )
    if family == "sdar":
        from SDAR.configuration_sdar import SDARConfig
        from SDAR.modeling_sdar import SDARForCausalLM

        model = SDARForCausalLM(SDARConfig(**shared, architectures=["SDARForCausalLM"]))
    else:
        from fast_dllm_v2.configuration_fast_dllm import Fast_dLLM_QwenConfig
        from fast_dllm_v2.modeling_fast_dllm import Fast_dLLM_QwenForCausalLM

        config = Fast_dLLM_QwenConfig(**shared, bd_size=block_size, architectures=["Fast_dLLM_QwenForCausalLM"])
        model = Fast_dLLM_QwenForCausalLM(config)
    model.generation_config = GenerationConfig(
        eos_token_id=[tokenizer.eos_token_id, tokenizer.pad_token_id],
        pad_token_id=tokenizer.pad_token_id,
        mask_token_id=tokenizer.mask_token_id,
    )
    model.save_pretrained(out, safe_serialization=True)
    save_tokenizer(out)
    return out


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m s2d2_eval.testing", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--family", choices=FAMILIES, default="sdar")
    args = parser.parse_args()
    print(build_random_tiny_model(args.out_dir, family=args.family))
