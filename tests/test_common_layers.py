"""`common.layers` gives the same bits as the plain HF-order formulation it replaces, in every dtype,
with and without autograd, and its gradients are the plain formulation's."""

from __future__ import annotations

import pytest
import torch

from common.layers import apply_rope, rms_norm, rope_tables


def plain_rms_norm(hidden: torch.Tensor, weight: torch.Tensor, eps: float, wide=torch.float32) -> torch.Tensor:
    as_wide = hidden.to(wide)
    normed = as_wide * torch.rsqrt(as_wide.pow(2).mean(-1, keepdim=True) + eps)
    return weight * normed.to(hidden.dtype)


def plain_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    first, second = x.chunk(2, dim=-1)
    rotated = torch.cat((-second, first), dim=-1)
    return x * cos.unsqueeze(1).to(x.dtype) + rotated * sin.unsqueeze(1).to(x.dtype)


def tables(batch: int, q_len: int, dim: int, dtype: torch.dtype, generator: torch.Generator):
    positions = torch.randint(0, 4096, (batch, q_len), generator=generator).to(dtype)
    inv_freq = 1.0 / (10000.0 ** (torch.arange(0, dim, 2, dtype=dtype) / dim))
    angles = positions[..., None] * inv_freq
    angles = torch.cat((angles, angles), dim=-1)
    return angles.cos(), angles.sin()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.float64])
@pytest.mark.parametrize("dim", [48, 64, 192, 1024])
def test_rms_norm_is_bitwise_the_plain_formulation(dtype, dim):
    generator = torch.Generator().manual_seed(dim)
    for rows, scale, eps in ((1, 1.0, 1e-6), (5, 1e-3, 1e-6), (33, 40.0, 1e-5)):
        hidden = (torch.randn(2, rows, dim, generator=generator) * scale).to(dtype)
        weight = torch.randn(dim, generator=generator).to(dtype)
        with torch.inference_mode():
            assert torch.equal(rms_norm(hidden, weight, eps), plain_rms_norm(hidden, weight, eps))
        strided = hidden.transpose(0, 1).contiguous().transpose(0, 1)  # same values, other strides
        with torch.no_grad():
            assert torch.equal(rms_norm(strided, weight, eps), plain_rms_norm(hidden, weight, eps))
            # keep_float64 (LLaDA2, D2F): float64 is normalised in float64, every other dtype as above
            wide = torch.float64 if dtype == torch.float64 else torch.float32
            assert torch.equal(rms_norm(hidden, weight, eps, keep_float64=True),
                               plain_rms_norm(hidden, weight, eps, wide))


def test_rms_norm_under_autograd_matches_values_and_gradients():
    generator = torch.Generator().manual_seed(0)
    hidden = torch.randn(3, 7, 192, generator=generator, requires_grad=True)
    weight = torch.randn(192, generator=generator, requires_grad=True)
    out = rms_norm(hidden, weight, 1e-6)
    reference = plain_rms_norm(hidden, weight, 1e-6)
    assert torch.equal(out, reference)
    upstream = torch.randn(out.shape, generator=generator)
    grads = torch.autograd.grad(out, (hidden, weight), upstream)
    reference_grads = torch.autograd.grad(reference, (hidden, weight), upstream)
    assert all(torch.equal(a, b) for a, b in zip(grads, reference_grads))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("shape", [(1, 4, 1, 48), (2, 2, 9, 64), (3, 8, 16, 128)])
def test_rope_is_bitwise_the_plain_formulation(dtype, shape):
    generator = torch.Generator().manual_seed(sum(shape))
    batch, heads, q_len, dim = shape
    angle_dtype = torch.float64 if dtype == torch.float64 else torch.float32
    cos, sin = tables(batch, q_len, dim, angle_dtype, generator)
    x = torch.randn(batch, q_len, heads, dim, generator=generator).to(dtype).transpose(1, 2)  # as the layers pass it
    cos_t, sin_t = rope_tables(cos, sin, dtype)
    assert cos_t.shape == sin_t.shape == (batch, 1, q_len, dim) and cos_t.dtype == dtype
    assert torch.equal(apply_rope(x, cos_t, sin_t), plain_rope(x, cos, sin))
    if dtype != torch.float64:  # tables made in float64 (exact for float32 angles) are cast to x's dtype first
        assert torch.equal(apply_rope(x, *rope_tables(cos, sin, torch.float64)), plain_rope(x, cos, sin))


def test_rope_gradients_are_the_plain_formulations():
    generator = torch.Generator().manual_seed(1)
    cos, sin = tables(2, 6, 64, torch.float32, generator)
    x = torch.randn(2, 4, 6, 64, generator=generator, requires_grad=True)
    upstream = torch.randn(2, 4, 6, 64, generator=generator)
    grad = torch.autograd.grad(apply_rope(x, *rope_tables(cos, sin, torch.float32)), x, upstream)[0]
    assert torch.equal(grad, torch.autograd.grad(plain_rope(x, cos, sin), x, upstream)[0])
