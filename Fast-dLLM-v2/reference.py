"""Slow, obvious reference decoder that the fast paths are tested against (no cache, no batching).

`ar_greedy` is autoregressive greedy decoding written out the long way for a SHIFT-aligned model: for
every new token, one full forward over [prompt, tokens so far] with a plain causal mask (block_size=1)
and no cache, then the argmax of the LAST row (row t predicts token t + 1) over every token but the mask
token (the decoders never emit it either). Greedy-exact S2D2 with
verification always on, and causal caches (`cache_ver`), must reproduce it token for token
(tests/test_fast_dllm_decoding.py).
"""

from __future__ import annotations

import torch
from torch import Tensor


@torch.inference_mode()
def ar_greedy(model: torch.nn.Module, prompt: Tensor, mask_id: int, max_new_tokens: int,
              stop_ids: tuple[int, ...] = ()) -> list[int]:
    """prompt: [P] token ids of one row. Returns the generated ids, the first stop token INCLUDED (the
    Fast-dLLM v2 convention), at most `max_new_tokens` of them."""
    seq = prompt.tolist()
    out: list[int] = []
    for _ in range(max_new_tokens):
        ids = torch.tensor([seq], device=prompt.device)
        logits = model(input_ids=ids, block_size=1, use_cache=False).logits[0, -1]  # [V]
        logits[mask_id] = float("-inf")
        token = int(logits.argmax())
        out.append(token)
        seq.append(token)
        if token in stop_ids:
            break
    return out
