"""RMSNorm, rotate-half RoPE (in the order of transformers' Qwen2/Qwen3) and grouped-head attention,
with fewer ops per call.

A tiny model's forward on the CPU costs about as much in op dispatch as in arithmetic, so the decoders'
per-step cost depends on how many ops a layer issues. Both helpers give the same bits as the plain
formulation they replace (tests/test_common_layers.py checks it against it):

* `rms_norm`: normalise in float32, cast back to the input dtype, then scale by the weight. Float32
  input and weight outside autograd take torch's fused kernel (one op instead of seven); everything
  else (other dtypes, training) runs the plain sequence, so training and its gradients are unchanged.
* `rope_tables` + `apply_rope`: the cos/sin tables are cast and broadcast once per forward instead of
  in every layer, and rotate_half(x) * sin is computed as roll(x) * signed_sin, where signed_sin
  carries rotate_half's minus sign: (-a) * b and a * (-b) are the same float, so the result is exact.
* `grouped_attention`: SDPA over fewer K/V heads than query heads, with the heads shared inside the
  kernel wherever the kernel SDPA picks takes them (the CPU's, always: the same bits as expanded heads
  at half the attention cost of a small query), and expanded explicitly where it does not.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

FLASH_DTYPES = (torch.float16, torch.bfloat16)
"""The dtypes flash-attention kernels take."""
FLASH_MAX_HEAD_DIM = 256
"""The largest head_dim flash-attention kernels take."""


def rms_norm(hidden: torch.Tensor, weight: torch.Tensor, eps: float, keep_float64: bool = False) -> torch.Tensor:
    """weight * (hidden / sqrt(mean(hidden^2) + eps)), the normalisation in float32 and cast back to
    hidden's dtype before the weight (HF Qwen order). hidden [..., E], weight [E] -> [..., E].
    `keep_float64`: a float64 input is normalised in float64 (the LLaDA2 and D2F models' choice, so that
    a double-precision reference is not limited to float32), not in float32 as HF does."""
    if (hidden.dtype == torch.float32 and weight.dtype == torch.float32
            and not (torch.is_grad_enabled() and (hidden.requires_grad or weight.requires_grad))):
        return F.rms_norm(hidden, weight.shape, weight, eps)
    wide = hidden.to(torch.float64 if keep_float64 and hidden.dtype == torch.float64 else torch.float32)
    normed = wide * torch.rsqrt(wide.pow(2).mean(-1, keepdim=True) + eps)
    return weight * normed.to(hidden.dtype)


def angle_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype RoPE angles are computed in for a model of `dtype`: float32 (as transformers), float64
    for a float64 model, so that a double-precision reference run is not limited by float32 tables."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def inverse_frequencies(dim: int, theta: float, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """theta^(-2i/dim) for i < dim/2, in `dtype` -> [dim/2] (plain RoPE, no scaling)."""
    even = torch.arange(0, dim, 2, device=device, dtype=torch.int64).to(dtype)
    return 1.0 / (theta ** (even / dim))


def rope_angles(position_ids: torch.Tensor, inv_freq: torch.Tensor, dtype: torch.dtype
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """position_ids [B|1, Q], inv_freq [D/2] -> (cos, sin), each [B|1, Q, D] in `dtype`. One product per
    element: the same bits as transformers' rank-1 matmul in float32."""
    freqs = position_ids[..., None].to(dtype) * inv_freq.to(dtype)  # [B|1, Q, D/2]
    angles = torch.cat((freqs, freqs), dim=-1)  # [B|1, Q, D]
    return angles.cos(), angles.sin()


class ScaledRotaryEmbedding(torch.nn.Module):
    """cos/sin tables of rotate-half RoPE from inverse frequencies and an attention scaling that a
    subclass computes (`frequencies`, e.g. with transformers' RoPE initialisers for rope_scaling).

    The inverse frequencies are a plain float32 tensor, not a buffer, so `model.to(torch.bfloat16)`
    cannot round them; they are recomputed when loading left them on the meta device and follow the
    positions' device lazily. Angles are in `angle_dtype(model dtype)`."""

    def __init__(self) -> None:
        super().__init__()
        self.inv_freq, self.attention_scaling = self._float32_frequencies(torch.device("cpu"))

    def frequencies(self, device: torch.device) -> tuple[torch.Tensor, float]:
        """(inverse frequencies [D/2], attention scaling) on `device`."""
        raise NotImplementedError

    def _float32_frequencies(self, device: torch.device) -> tuple[torch.Tensor, float]:
        inv_freq, scaling = self.frequencies(device)
        return inv_freq.to(torch.float32), scaling

    @torch.no_grad()
    def forward(self, position_ids: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """position_ids [B|1, Q], model dtype -> (cos, sin), each [B|1, Q, D] in `angle_dtype(dtype)`."""
        if self.inv_freq.is_meta:
            self.inv_freq, self.attention_scaling = self._float32_frequencies(position_ids.device)
        if self.inv_freq.device != position_ids.device:
            self.inv_freq = self.inv_freq.to(position_ids.device)
        cos, sin = rope_angles(position_ids, self.inv_freq, angle_dtype(dtype))
        if self.attention_scaling == 1.0:  # x * 1.0 is x: two ops saved per forward
            return cos, sin
        return cos * self.attention_scaling, sin * self.attention_scaling


def rope_tables(cos: torch.Tensor, sin: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin [B|1, Q, D] (float32 or float64) -> (cos, signed_sin), each [B|1, 1, Q, D] in `dtype`,
    for `apply_rope`; signed_sin is sin with its first half negated (rotate_half's sign)."""
    half = sin.shape[-1] // 2
    signed_sin = torch.cat((-sin[..., :half], sin[..., half:]), dim=-1)
    return cos.unsqueeze(1).to(dtype), signed_sin.unsqueeze(1).to(dtype)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, signed_sin: torch.Tensor) -> torch.Tensor:
    """x * cos + rotate_half(x) * sin for x [B, H, Q, D] and tables from `rope_tables`, whose dtype is
    used when it is x's (otherwise they are cast to x's dtype first, as HF casts its tables)."""
    if cos.dtype != x.dtype:
        cos, signed_sin = cos.to(x.dtype), signed_sin.to(x.dtype)
    return x * cos + torch.roll(x, x.shape[-1] // 2, dims=-1) * signed_sin


def kernel_shares_heads(device: torch.device, dtype: torch.dtype, head_dim: int, masked: bool) -> bool:
    """Whether SDPA's `enable_gqa` keeps a fused kernel for such a call. On the CPU it does (the CPU
    flash kernel takes masks and grouped heads). On a GPU only flash-attention (or cuDNN) takes grouped
    heads: no mask, half precision, head_dim <= 256, compute capability >= 8.0; with a mask, or in
    float32, the memory-efficient kernel would be dropped for the math one, so heads are expanded."""
    if device.type == "cpu":
        return True
    if device.type != "cuda" or masked or dtype not in FLASH_DTYPES or head_dim > FLASH_MAX_HEAD_DIM:
        return False
    return torch.cuda.get_device_capability(device) >= (8, 0)


def grouped_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, mask: torch.Tensor | None,
                      dropout_p: float = 0.0, scale: float | None = None) -> torch.Tensor:
    """Non-causal SDPA: query [B, H, Q, D] over key/value [B, Hkv, K, D] (H a multiple of Hkv, query
    head h reading K/V head h // (H / Hkv)), mask [B|1, 1, Q, K] (bool, True = may attend, or additive)
    or None (full attention) -> [B, H, Q, D]."""
    groups = query.shape[1] // key.shape[1]
    shared = groups > 1 and kernel_shares_heads(query.device, query.dtype, query.shape[-1], mask is not None)
    if groups > 1 and not shared:
        key = key.repeat_interleave(groups, dim=1)  # [B, H, K, D]
        value = value.repeat_interleave(groups, dim=1)  # [B, H, K, D]
    return F.scaled_dot_product_attention(query, key, value, attn_mask=mask, dropout_p=dropout_p, is_causal=False,
                                          scale=scale, enable_gqa=shared)
