"""Attention masks as index predicates plus one materialiser. True = may attend.

A predicate maps broadcastable index tensors `(q_idx [.., Q, 1], kv_idx [.., 1, K])` to a bool
tensor. Indices are LOCAL to one forward: query q is the q-th token fed in, key k the k-th key of
`[cache | fed tokens]`; a predicate's parameters (cache length C, block length L, offsets) place
them in the sequence. `materialize` turns a predicate into a dense `[B or 1, Q, K]` bool mask and
optionally removes padded keys; the model's SDPA path consumes it as-is, and `to_additive` gives
the 0 / finfo.min form for code that adds masks to scores.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

Predicate = Callable[[Tensor, Tensor], Tensor]


def materialize(
    predicate: Predicate,
    q_len: int,
    kv_len: int,
    *,
    device: torch.device | str | None = None,
    key_valid: Tensor | None = None,
    query_start: int | None = None,
) -> Tensor:
    """Evaluate `predicate` on the full index grid.

    key_valid: optional [B, K] bool; False keys (left padding) are masked out for every query.
    Each query keeps its own key, so a padded query row never becomes all-False: SDPA would turn it
    into NaN and the NaN would leak through the cache. Query q's own key is `query_start + q`; by
    default the fed tokens are the last Q keys (`query_start = K - Q`).
    Returns [1, Q, K] (or [B, Q, K] when the predicate or key_valid is batched).
    A decoder builds masks every forward, so this spends few ops: the query index is built once per
    length and device (predicates must not modify their index tensors in place).
    """
    q_idx = _query_index(q_len, None if device is None else torch.device(device))  # [1, Q, 1]
    kv_idx = torch.arange(kv_len, device=device).view(1, 1, kv_len)
    mask = predicate(q_idx, kv_idx)
    if mask.shape[-2:] != (q_len, kv_len):
        mask = mask.expand(-1, q_len, kv_len)
    if key_valid is not None:
        own_key = kv_idx == q_idx + (kv_len - q_len if query_start is None else query_start)  # [1, Q, K]
        if key_valid.device != mask.device:
            key_valid = key_valid.to(mask.device)
        mask = (mask & key_valid.unsqueeze(1)) | own_key
    return mask


_QUERY_INDEX: dict[tuple[int, torch.device | None], Tensor] = {}


def _query_index(q_len: int, device: torch.device | None) -> Tensor:
    """[1, Q, 1] long: 0..Q-1, built once per length and device (a decoder uses one or two query
    lengths) and shared by every mask of that length, so never written."""
    key = (q_len, device)
    if key not in _QUERY_INDEX:
        if len(_QUERY_INDEX) >= 64:  # prefills of many prompt lengths: keep the table small
            _QUERY_INDEX.clear()
        with torch.inference_mode(False):  # a normal tensor: usable in and out of inference mode
            _QUERY_INDEX[key] = torch.arange(q_len, device=device).view(1, q_len, 1)
    return _QUERY_INDEX[key]


def to_additive(mask: Tensor, dtype: torch.dtype) -> Tensor:
    """Bool mask -> additive float mask (0 where allowed, finfo(dtype).min where not)."""
    return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(
        ~mask, torch.finfo(dtype).min
    )


def full_attention() -> Predicate:
    """Every query sees every key (a draft forward over the current block, no `draft_ver`)."""
    return lambda q, kv: torch.ones(torch.broadcast_shapes(q.shape, kv.shape), dtype=torch.bool, device=q.device)


def token_causal(cache_len: int = 0) -> Predicate:
    """Query q (at sequence index C + q) sees keys at indices <= C + q.

    C=0, Q=K=4:      C=2, Q=2, K=4:
        1 0 0 0          1 1 1 0
        1 1 0 0          1 1 1 1
        1 1 1 0
        1 1 1 1
    """
    return lambda q, kv: kv <= q + cache_len


def block_causal(block_length: int, cache_len: int = 0) -> Predicate:
    """Query at sequence index C + q sees every key whose block is not later than its own block.

    L=2, C=0, Q=K=4 (two blocks; bidirectional inside a block, causal across blocks):
        1 1 0 0
        1 1 0 0
        1 1 1 1
        1 1 1 1
    """
    return lambda q, kv: torch.div(kv, block_length, rounding_mode="floor") <= torch.div(
        q + cache_len, block_length, rounding_mode="floor"
    )


def draft_block(cache_len: int, causal_rows: Tensor | None = None) -> Predicate:
    """Draft forward over one block: every row sees the cache and the whole block.

    With `causal_rows` f ([B] long; the reference's `draft_ver`, paper Eq. 4) the rows before f (the
    block's already-decoded prefix) become token-causal, so their K/V match what the verifier's first
    half computes, while masked rows stay bidirectional. C=1, L=4, f=2:
        1 1 0 0 0
        1 1 1 0 0
        1 1 1 1 1
        1 1 1 1 1
    """
    if causal_rows is None:
        return full_attention()
    f = causal_rows.view(-1, 1, 1)

    def predicate(q: Tensor, kv: Tensor) -> Tensor:
        return (q >= f) | (kv <= q + cache_len)

    return predicate


def verifier_2l(cache_len: int, block_length: int) -> Predicate:
    """The 2L verifier for position-aligned models (paper Eq. 3; ALGORITHM.md §2.2a).

    Keys are `[cache (C) | drafts (L) | masks (L)]`, queries `[drafts (L) | masks (L)]`, with the
    position ids of both halves equal. Draft row i sees the cache and drafts j <= i (token-causal);
    mask row i sees the cache, drafts strictly before i and itself, so its logits are the AR
    (block size 1) distribution q_i given the prefix and the drafts left of i. C=1, L=3:
                 c | d0 d1 d2 | m0 m1 m2
        d0       1 |  1  0  0 |  0  0  0
        d1       1 |  1  1  0 |  0  0  0
        d2       1 |  1  1  1 |  0  0  0
        m0       1 |  0  0  0 |  1  0  0
        m1       1 |  1  0  0 |  0  1  0
        m2       1 |  1  1  0 |  0  0  1
    """
    c, n = cache_len, block_length

    def predicate(q: Tensor, kv: Tensor) -> Tensor:
        # Row i of either half (i = q mod L) sees keys up to draft i (draft row) or draft i - 1 (mask
        # row), the cache included; a mask row also sees its own key, the one at index C + q.
        last_seen = q % n + (c - 1) + (q < n)  # [.., Q, 1]
        return (kv <= last_seen) | (kv == q + c)

    return predicate


def causal_verifier(cache_len: int = 0) -> Predicate:
    """Verifier for shift-aligned models (Fast-dLLM v2, Dream): a plain token-causal forward over the
    draft-filled window; the logit at t-1 then gives q_t (ALGORITHM.md §2.2b)."""
    return token_causal(cache_len)


def _prefix_blocks(index: Tensor, prefix_len: int, block_length: int) -> Tensor:
    """Block number of a sequence index when a prefix of any length is block 0 and blocks of
    `block_length` follow it."""
    # floor((i - P) / L) + 1 after the prefix, and every index before it (where that is <= 0) is block 0
    return torch.div(index - (prefix_len - block_length), block_length, rounding_mode="floor").clamp_min(0)


def prefix_block_causal(prefix_len: int, block_length: int, cache_len: int = 0,
                        causal_until: Tensor | None = None) -> Predicate:
    """Blocks counted from the end of a prefix (D2F's pipelined layout): the prefix (the prompt) is one
    bidirectional block 0 of any length, blocks of L follow it; a query sees every key whose block is
    not later than its own (bidirectional inside a block, causal across blocks).

    causal_until ([B] long sequence index, optional): rows in [prefix_len, causal_until) attend
    token-causally instead, so the K/V of settled blocks are the AR-like ones (`cache_ver`); the
    prefix stays bidirectional. P=2, L=2, C=0, Q=K=6; right: causal_until=4:
        1 1 0 0 0 0      1 1 0 0 0 0
        1 1 0 0 0 0      1 1 0 0 0 0
        1 1 1 1 0 0      1 1 1 0 0 0
        1 1 1 1 0 0      1 1 1 1 0 0
        1 1 1 1 1 1      1 1 1 1 1 1
        1 1 1 1 1 1      1 1 1 1 1 1
    """
    until = None if causal_until is None else causal_until.view(-1, 1, 1)

    def predicate(q: Tensor, kv: Tensor) -> Tensor:
        row = q + cache_len
        allowed = _prefix_blocks(kv, prefix_len, block_length) <= _prefix_blocks(row, prefix_len, block_length)
        if until is None:
            return allowed
        causal_row = (row >= prefix_len) & (row < until)
        return allowed & (~causal_row | (kv <= row))

    return predicate


def pipelined_verifier(cache_len: int, first_len: int, target_block: int, mask_half: bool) -> Predicate:
    """Verifier of a window that starts at the verified region (ALGORITHM.md §2.2, generalised to a target
    block size B_t): each batch row feeds its region from its own first unsettled column, so the same
    rule serves every row (which cache keys a row may see is the caller's key mask).

    Keys are `[cache (C) | first half (n1 tokens, drafts filled in)]`, plus with `mask_half` n1 mask
    tokens repeating the first half's positions (the 2L trick of position-aligned models; without it:
    shift-aligned models, whose logit at t-1 gives q_t). With target blocks T(i) = i // B_t:
      * first-half row i: the cache and first-half tokens with T(j) <= T(i);
      * mask row i: the cache, first-half tokens with T(j) < T(i) (strictly earlier: it conditions on
        the drafts left of i, not on the draft at i), itself and the mask rows of its own target block.
    With B_t = 1 this is `verifier_2l` (or `token_causal` without the mask half). C=1, n1=4, B_t=2:
                 c | f0 f1 f2 f3 | m0 m1 m2 m3
        f0       1 |  1  1  0  0 |  0  0  0  0
        f1       1 |  1  1  0  0 |  0  0  0  0
        f2       1 |  1  1  1  1 |  0  0  0  0
        f3       1 |  1  1  1  1 |  0  0  0  0
        m0       1 |  0  0  0  0 |  1  1  0  0
        m1       1 |  0  0  0  0 |  1  1  0  0
        m2       1 |  1  1  0  0 |  0  0  1  1
        m3       1 |  1  1  0  0 |  0  0  1  1
    """
    c, n1, bt = cache_len, first_len, target_block

    def predicate(q: Tensor, kv: Tensor) -> Tensor:
        if not mask_half:  # cache keys sit in target block <= -1, so one comparison covers them
            return torch.div(kv - c, bt, rounding_mode="floor") <= torch.div(q, bt, rounding_mode="floor")
        mask_row = q >= n1  # [.., Q, 1]
        t_row = torch.div(q - n1 * mask_row, bt, rounding_mode="floor")
        mask_key = kv >= c + n1  # [.., 1, K]
        t_key = torch.div(kv - c - n1 * mask_key, bt, rounding_mode="floor")
        first_seen = ~mask_key & (t_key <= t_row - mask_row.long())  # the cache included (t_key < 0)
        return first_seen | (mask_key & mask_row & (t_key == t_row))

    return predicate
