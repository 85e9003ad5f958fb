"""Shared pytest fixtures."""

import pytest
import torch

from SDAR.configuration_sdar import SDARConfig

# Every model in the tests is tiny: one thread avoids oversubscribing the 2-core machines (measured
# 30x faster than the default when other processes share the cores).
torch.set_num_threads(1)


@pytest.fixture
def tiny_sdar_config() -> SDARConfig:
    """A tiny random-init SDAR config (vocab 96, hidden 64, 2 layers, 4 heads / 2 KV heads,
    head_dim 16, untied embeddings). Each call returns a fresh object, so tests may edit it,
    e.g. `tiny_sdar_config.tie_word_embeddings = True` before building a model."""
    return SDARConfig(
        vocab_size=96,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        max_position_embeddings=256,
        rope_theta=10000.0,
        rms_norm_eps=1e-6,
        tie_word_embeddings=False,
        use_cache=False,
    )


@pytest.fixture
def tiny_fast_dllm_config():
    """A tiny random-init Fast-dLLM v2 config (vocab 96, hidden 64, 2 layers, 4 heads / 2 KV heads,
    head_dim 16, bd_size 4, untied embeddings). A fresh object per call, so tests may edit it."""
    from fast_dllm_v2.configuration_fast_dllm import Fast_dLLM_QwenConfig

    return Fast_dLLM_QwenConfig(
        vocab_size=96,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        rope_theta=10000.0,
        rms_norm_eps=1e-6,
        bd_size=4,
        tie_word_embeddings=False,
        use_cache=False,
    )
