"""`common.layers` gives the same bits as the plain HF-order formulation it replaces, in every dtype,
with and without autograd, and its gradients are the plain formulation's; grouped-head attention gives
the bits of attention over explicitly expanded heads."""

from __future__ import annotations

import pytest
import torch

import torch.nn.functional as F

from common import layers
from common.layers import (ScaledRotaryEmbedding, apply_rope, grouped_attention, inverse_frequencies,
                           kernel_shares_heads, rms_norm, rope_angles, rope_tables)


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



def expanded_attention(query, key, value, mask, scale=None):
    groups = query.shape[1] // key.shape[1]
    key, value = key.repeat_interleave(groups, dim=1), value.repeat_interleave(groups, dim=1)
    return F.scaled_dot_product_attention(query, key, value, attn_mask=mask, scale=scale)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.float64])
@pytest.mark.parametrize("mask_kind", ["none", "bool", "bool_broadcast", "additive"])
@pytest.mark.parametrize("groups", [1, 2, 7])
@pytest.mark.parametrize("in_kernel", [True, False], ids=["heads_shared_in_kernel", "heads_expanded"])
def test_grouped_attention_is_bitwise_attention_over_expanded_heads(dtype, mask_kind, groups, in_kernel, monkeypatch):
    # Both branches run here: the CPU shares heads in the kernel; the expansion is what a masked GPU call takes.
    monkeypatch.setattr(layers, "kernel_shares_heads", lambda *args: in_kernel)
    generator = torch.Generator().manual_seed(groups)
    for batch, q_len, k_len in ((1, 1, 101), (3, 16, 116), (2, 64, 64), (2, 300, 700)):
        query = torch.randn(batch, 2 * groups, q_len, 48, generator=generator).to(dtype)
        key, value = (torch.randn(batch, 2, k_len, 48, generator=generator).to(dtype) for _ in range(2))
        mask = None
        if mask_kind != "none":
            keep = torch.rand(batch if mask_kind != "bool_broadcast" else 1, 1, q_len, k_len, generator=generator) > 0.3
            keep[..., -1] = True
            mask = keep if mask_kind != "additive" else torch.zeros(keep.shape, dtype=dtype).masked_fill(~keep, float("-inf"))
        out = grouped_attention(query, key, value, mask, scale=0.3)
        assert out.shape == query.shape
        assert torch.equal(out, expanded_attention(query, key, value, mask, scale=0.3))


def test_kernel_shares_heads_only_where_a_fused_kernel_takes_them(monkeypatch):
    cpu, gpu = torch.device("cpu"), torch.device("cuda", 0)
    for dtype in (torch.float32, torch.bfloat16, torch.float64):
        assert kernel_shares_heads(cpu, dtype, 48, masked=True) and kernel_shares_heads(cpu, dtype, 512, masked=False)
    capability = {"value": (9, 0)}
    monkeypatch.setattr(layers.torch.cuda, "get_device_capability", lambda device=None: capability["value"])
    assert kernel_shares_heads(gpu, torch.bfloat16, 128, masked=False)  # flash-attention takes grouped heads
    assert kernel_shares_heads(gpu, torch.float16, 256, masked=False)
    # a mask, float32, or head_dim > 256 leave only the math kernel for grouped heads: expand instead
    assert not kernel_shares_heads(gpu, torch.bfloat16, 128, masked=True)
    assert not kernel_shares_heads(gpu, torch.float32, 128, masked=False)
    assert not kernel_shares_heads(gpu, torch.bfloat16, 512, masked=False)
    capability["value"] = (7, 5)  # no flash-attention before sm80
    assert not kernel_shares_heads(gpu, torch.bfloat16, 128, masked=False)
    assert not kernel_shares_heads(torch.device("meta"), torch.bfloat16, 128, masked=False)



class _Rotary(ScaledRotaryEmbedding):
    def __init__(self, scaling: float) -> None:
        self.scaling, self.calls = scaling, []
        super().__init__()

    def frequencies(self, device):
        self.calls.append(device)
        return inverse_frequencies(8, 10000.0, torch.float64, device), self.scaling


@pytest.mark.parametrize("scaling", [1.0, 0.5])
def test_scaled_rotary_tables_are_the_plain_formula(scaling):
    positions = torch.tensor([[0, 3, 17, 4095]])
    rotary = _Rotary(scaling)
    assert rotary.inv_freq.dtype == torch.float32  # no model dtype cast can round it
    expected_inv = torch.tensor([10000.0 ** (-i / 8) for i in (0, 2, 4, 6)], dtype=torch.float64).float()
    assert torch.equal(rotary.inv_freq, expected_inv)
    for dtype, wide in ((torch.bfloat16, torch.float32), (torch.float32, torch.float32), (torch.float64, torch.float64)):
        cos, sin = rotary(positions, dtype)
        angles = positions[..., None].to(wide) * expected_inv.to(wide)
        angles = torch.cat((angles, angles), dim=-1)
        assert cos.dtype == wide and torch.equal(cos, angles.cos() * scaling) and torch.equal(sin, angles.sin() * scaling)
    rotary.inv_freq = torch.empty(4, device="meta")  # left on the meta device by low-memory loading: recomputed
    rotary(positions, torch.float32)
    assert len(rotary.calls) == 2 and rotary.inv_freq.device.type == "cpu" and torch.equal(rotary.inv_freq, expected_inv)
    assert torch.equal(torch.stack(rope_angles(positions, expected_inv, torch.float32)),
                       torch.stack(rotary(positions, torch.float32)) / scaling)
