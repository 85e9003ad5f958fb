"""Slow, obvious reference decoders that the fast paths are tested against (no cache, no batching, one
row). Both see the D2F mask: the prompt is one bidirectional block, generated blocks follow it.

* `block_decode`: one block in flight at a time. Each step is a full forward over [prompt, blocks so
  far] and commits the masked drafts above `skip_threshold`, else the most confident one. The pipelined
  `d2f` decoder with `block_add_threshold=1` (a block is added only when the previous one is done) must
  give the same tokens.
* `ar_greedy`: AR mode written out: for every new token one full forward with blocks of one token, then
  the argmax (over every token but the mask token) at the new position (position-aligned: the mask
  token appended there; shift-aligned: the last row). Greedy-exact S2D2 with verification always on and
  an AR-like cache must reproduce it (tests/test_d2f_decoding.py).
"""

from __future__ import annotations

import torch
from torch import Tensor

from common.masks import materialize, prefix_block_causal


def _logits(model: torch.nn.Module, seq: list[int], prompt_len: int, block_size: int, shifted: bool,
            mask_id: int) -> Tensor:
    """Per-position prediction logits [len(seq), V] of one uncached forward (shifted: row t - 1 -> t)."""
    ids = torch.tensor([seq])
    mask = materialize(prefix_block_causal(prompt_len, block_size), len(seq), len(seq))
    logits = model(input_ids=ids, attention_mask=mask).logits[0].float()  # [T, V]
    logits[:, mask_id] = float("-inf")
    if shifted:
        logits = torch.cat([logits[:1], logits[:-1]])
    return logits


@torch.inference_mode()
def block_decode(model: torch.nn.Module, prompt: Tensor, mask_id: int, block_size: int, max_new_tokens: int,
                 skip_threshold: float, shifted: bool, stop_ids: tuple[int, ...] = ()) -> list[int]:
    """prompt: [P] ids of one row. Greedy drafts. Returns the generated ids, cut before the first stop
    token, at most `max_new_tokens`."""
    seq = prompt.tolist()
    prompt_len = len(seq)
    n_blocks = -(-max_new_tokens // block_size)
    for _ in range(n_blocks):
        seq += [mask_id] * block_size
        while mask_id in seq[prompt_len:]:
            probs = torch.softmax(_logits(model, seq, prompt_len, block_size, shifted, mask_id)[-block_size:], -1)
            confidence, tokens = probs.max(-1)  # [S]
            masked = torch.tensor(seq[-block_size:]) == mask_id
            chosen = masked & (confidence > skip_threshold)
            if not chosen.any():
                chosen[torch.where(masked, confidence, -1.0).argmax()] = True
            block = seq[-block_size:]
            seq[-block_size:] = [t if c else b for t, c, b in zip(tokens.tolist(), chosen.tolist(), block)]
        if any(t in stop_ids for t in seq[prompt_len:]):
            break
    out = seq[prompt_len : prompt_len + max_new_tokens]
    cut = next((i for i, t in enumerate(out) if t in stop_ids), len(out))
    return out[:cut]


@torch.inference_mode()
def ar_greedy(model: torch.nn.Module, prompt: Tensor, mask_id: int, max_new_tokens: int, shifted: bool,
              stop_ids: tuple[int, ...] = ()) -> list[int]:
    """prompt: [P] ids of one row. Returns the generated ids, the stop token excluded."""
    seq = prompt.tolist()
    prompt_len = len(seq)
    out: list[int] = []
    for _ in range(max_new_tokens):
        logits = _logits(model, seq + [mask_id], prompt_len, 1, shifted, mask_id)[-1]  # [V]
        token = int(logits.argmax())
        if token in stop_ids:
            break
        out.append(token)
        seq.append(token)
    return out
