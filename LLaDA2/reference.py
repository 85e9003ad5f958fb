"""Slow, obvious reference decoder that the fast paths are tested against (no cache, no batching).

`ar_greedy` is AR mode written out the long way for a position-aligned model: for every new token, one
full forward over [prompt, tokens so far, mask] with a token-causal mask, then the argmax at the mask
over every token but the mask token. Greedy-exact S2D2 with verification at every step, editing off
and the AR-like cache (`cache_ver`) must reproduce it token for token (tests/test_llada2_decoding.py).
"""

from __future__ import annotations

import torch
from torch import Tensor

from common.masks import materialize, token_causal


@torch.inference_mode()
def ar_greedy(model: torch.nn.Module, prompt: Tensor, mask_id: int, max_new_tokens: int,
              stop_ids: tuple[int, ...] = ()) -> list[int]:
    """prompt: [P] token ids of one row. Returns the generated ids, the first stop token INCLUDED (the
    LLaDA2 decoders' output convention), at most `max_new_tokens` of them."""
    seq = prompt.tolist()
    out: list[int] = []
    for _ in range(max_new_tokens):
        ids = torch.tensor([seq + [mask_id]], device=prompt.device)
        mask = materialize(token_causal(), ids.shape[1], ids.shape[1], device=prompt.device)
        logits = model(input_ids=ids, attention_mask=mask).logits[0, -1]  # [V]
        logits[mask_id] = float("-inf")  # never emit the mask token, as the decoders
        token = int(logits.argmax())
        out.append(token)
        seq.append(token)
        if token in stop_ids:
            break
    return out
