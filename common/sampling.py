"""Logits -> probabilities: the ONE transform used by the drafter and the verifier alike.

Glossary of shape letters used throughout `common/`:
    B  batch rows              L  block (or sub-block / window) length
    V  vocabulary size         Q  query tokens of a forward    K  key tokens (cache + queries)

Temperature-0 semantics (decided here, once, for every family):
    `temperature == 0` or `do_sample=False` means the *token* is the argmax. The *distribution*
    reported for it (draft confidence p, verifier q, estimators, residual) is what this module
    returns for the configured temperature, except that temperature 0 maps to the plain softmax
    (temperature 1, no top-k/top-p). Drafter and verifier go through the same call, so p and q are
    always comparable. This fixes the reference's per-family mismatches (ALGORITHM.md §0.1): there,
    Fast-dLLM v2 filters only q with top-p at T=0 and SDAR takes p at T=1 but q at T when
    `do_sample=False`.
All probabilities are float32, whatever the model dtype (the reference's bf16 confidences at T=0
are a known source of spurious ties).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

GREEDY_TEMPERATURE = 1e-6
"""Temperatures below this are treated as 0 (greedy), as the SDAR reference does."""


@dataclass(frozen=True)
class SamplingConfig:
    """How draft tokens are chosen and how logits become distributions."""

    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    do_sample: bool = False

    def __post_init__(self) -> None:
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0 (0 disables it), got {self.top_k}")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")

    @property
    def greedy(self) -> bool:
        """True when draft tokens are argmax rather than sampled."""
        return (not self.do_sample) or self.temperature < GREEDY_TEMPERATURE


def logits_to_probs(logits: Tensor, cfg: SamplingConfig) -> Tensor:
    """Temperature, top-k and top-p filtering followed by a float32 softmax.

    logits: [..., V] in any dtype. Returns [..., V] float32 rows summing to 1.
    """
    if logits.dtype != torch.float32:
        logits = logits.float()
    if cfg.temperature < GREEDY_TEMPERATURE:
        return torch.softmax(logits, dim=-1)
    if cfg.temperature != 1.0:
        logits = logits / cfg.temperature
    if 0 < cfg.top_k < logits.shape[-1]:
        kth = torch.topk(logits, cfg.top_k, dim=-1).values[..., -1:]  # [..., 1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if cfg.top_p < 1.0:
        logits = _top_p_filter(logits, cfg.top_p)
    return torch.softmax(logits, dim=-1)


def _top_p_filter(logits: Tensor, top_p: float) -> Tensor:
    """Keep the smallest prefix of tokens (by probability) whose mass reaches top_p; always keep one."""
    sorted_logits, order = torch.sort(logits, dim=-1, descending=True)  # [..., V]
    sorted_probs = torch.softmax(sorted_logits, dim=-1)
    mass_before = torch.cumsum(sorted_probs, dim=-1) - sorted_probs  # mass of strictly better tokens
    drop_sorted = mass_before >= top_p
    drop_sorted[..., 0] = False
    drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
    return logits.masked_fill(drop, float("-inf"))


def draft_tokens(
    probs: Tensor, cfg: SamplingConfig, generator: torch.Generator | None = None
) -> tuple[Tensor, Tensor]:
    """Pick one token per row of `probs` and return it with its probability (the confidence).

    probs: [B, L, V] from `logits_to_probs`. Returns (tokens [B, L] long, confidence [B, L] float32).
    When sampling, all B*L rows are drawn by ONE `torch.multinomial`-equivalent call (`sample_rows`), in
    row-major order, which is the order the reference draws them for batch 1 (so seeded runs are
    comparable token for token).
    """
    if cfg.greedy:  # max: the argmax (first of ties, as argmax) and its probability in one op
        confidence, tokens = probs.max(dim=-1)
        return tokens, confidence
    tokens = sample_rows(probs.reshape(-1, probs.shape[-1]), generator).view(probs.shape[:-1])  # [B, L]
    confidence = probs.gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
    return tokens, confidence


def sample_rows(probs: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """One draw per row of `probs` [N, V] -> [N] long, identical to `torch.multinomial(probs, 1)` with the
    same generator state, draw for draw, and leaving the generator in the same state: that is how
    `torch.multinomial` draws one sample (argmax of p / E with E ~ Exp(1), one E per entry). It skips
    multinomial's input checks, which read values back to the host (two syncs per call); callers pass
    normalised distributions."""
    noise = torch.empty_like(probs).exponential_(1.0, generator=generator)  # [N, V]
    return (probs / noise).argmax(-1)
