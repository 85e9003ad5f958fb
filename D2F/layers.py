"""Pieces shared by the two D2F backbones (LLaDA and Dream): the forward's mask contract, the
`store_kv` cache contract, RMSNorm, rotate-half RoPE and SDPA attention.

Both models take the same masks and cache arguments, so a decoder can drive either family with one
call convention. Shapes: B batch, Q query tokens of this call, P cached tokens, K = P + Q keys,
H query heads, Hkv key/value heads, D head dimension, E hidden size.

Mask contract (what `prepare_attention_mask` accepts):
* a FULL mask `[B|1, Q, K]` or `[B|1, 1, Q, K]` (B = 1 broadcasts over the batch):
  - bool: True = may attend;
  - integer: 0/1 with 1 = may attend (the released LLaDA code accepts bool/int8 this way);
  - floating: ADDITIVE, added to the attention scores (0 = may attend, -inf or a large negative
    number = blocked). Positive entries are refused: a float 0/1 keep-mask passed by mistake
    would otherwise be added to the scores and silently attend everywhere.
* a PADDING mask `[B, K]` (bool or 0/1, 1 = real token) that removes padded keys for every query.
  Both may be given; they are combined.
No mask at all means full (bidirectional) attention over cache + current tokens. There is no
implicit causal mask anywhere: the released LLaDA code switches to a causal mask when a cache is
given without one (MODEL-FAMILIES.md §8.2). Here a forward that is given `past_key_values` (empty
or not) and has more than one query token but no full mask is an error (`check_mask_with_cache`).

Cache contract: `past_key_values` is a transformers `DynamicCache` of post-RoPE keys and values.
`store_kv` says how many of this call's tokens are appended: False (none: a read-only forward that
leaves the cache unchanged), True (all Q), or an int n in [0, Q] (the first n, e.g. the committed
blocks at the front of a pipelined D2F window while the blocks behind them are still decoding).
Every call attends over cached + ALL current keys, whatever it stores. `ColumnCache` (a DynamicCache
kept by sequence column, where each batch row writes at its own columns) is what the D2F pipeline
stores into, with store_kv=True.
"""

from typing import Any, Optional, Union

import torch
from torch import nn
from transformers.cache_utils import DynamicCache

from common.layers import apply_rope as shared_apply_rope
from common.layers import angle_dtype, grouped_attention, inverse_frequencies, rope_angles
from common.layers import rms_norm
from common.layers import rope_tables as shared_rope_tables

_MASK_SHAPES = "[B, Q, K] or [B, 1, Q, K] (B may be 1)"


class RMSNorm(nn.Module):
    """RMSNorm in float32, cast back to the input dtype before the weight (LLaDA's and Qwen2's order)."""

    def __init__(self, hidden_size: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size))
        self.variance_epsilon = eps

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:  # [..., E] -> [..., E]
        # float64 stays float64 so a double-precision reference run is not limited to float32.
        return rms_norm(hidden_states, self.weight, self.variance_epsilon, keep_float64=True)

    def extra_repr(self) -> str:
        return f"{tuple(self.weight.shape)}, eps={self.variance_epsilon}"


def rope_tables(
    position_ids: torch.Tensor, head_dim: int, theta: float, dtype: torch.dtype, full_precision: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotate-half RoPE tables for position_ids [B|1, Q] -> (cos, signed_sin), each [B|1, 1, Q, D], as
    `apply_rope` takes them (`common.layers.rope_tables`: built once per forward, not per layer).

    Frequencies and angles are float32 (float64 for a float64 model) whatever the model dtype, as
    LLaDA's `rope_full_precision` and HF's Qwen2 rotary embedding both compute them; with
    `full_precision` the tables stay in that dtype (x is rotated in it), otherwise they are cast to the
    model dtype first (HF Qwen2, hence Dream). The two agree exactly in float32 and differ by rounding
    in bfloat16/float16. The tables are built per call from the config, so no buffer can be rounded by
    `model.to(bfloat16)` or left on the meta device by low-memory loading.
    """
    wide = angle_dtype(dtype)
    inv_freq = inverse_frequencies(head_dim, theta, wide, position_ids.device)  # [D/2]
    return shared_rope_tables(*rope_angles(position_ids, inv_freq, wide), wide if full_precision else dtype)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, signed_sin: torch.Tensor) -> torch.Tensor:
    """Rotate x [B, H, Q, D] by the tables of `rope_tables`: in their dtype, the result cast back to x's
    (LLaDA's `rope_full_precision` when they are wider than x)."""
    if cos.dtype == x.dtype:
        return shared_apply_rope(x, cos, signed_sin)
    return shared_apply_rope(x.to(cos.dtype), cos, signed_sin).to(x.dtype)


def _full_mask(mask: torch.Tensor, batch: int, q_len: int, kv_len: int, name: str) -> torch.Tensor:
    """Validate a full mask and return it as [B|1, 1, Q, K] (bool, or floating additive)."""
    expected = f"{_MASK_SHAPES} with Q = {q_len}, K = cached + Q = {kv_len}, B = {batch}"
    if mask.dim() == 3:
        mask = mask[:, None]
    if mask.dim() != 4 or mask.shape[1] != 1:
        raise ValueError(f"{name} must have shape {expected}; got {tuple(mask.shape)}.")
    if mask.shape[0] not in (1, batch) or mask.shape[2] != q_len or mask.shape[3] != kv_len:
        raise ValueError(f"{name} must have shape {expected}; got {tuple(mask.shape)}.")
    if mask.dtype == torch.bool:
        return mask
    if mask.is_floating_point():
        # One host sync per forward; it guards against a 0/1 keep-mask read as additive scores.
        if bool((mask > 0).any()) or bool(mask.isnan().any()):
            raise ValueError(
                f"A floating {name} is ADDITIVE (0 = may attend, -inf or a large negative value = "
                "blocked) and must have no positive or NaN entries; pass a bool mask for a 0/1 "
                "keep-mask."
            )
        return mask
    if not bool(((mask == 0) | (mask == 1)).all()):
        raise ValueError(f"An integer {name} must hold 0/1 (1 = may attend); got other values.")
    return mask != 0


def prepare_attention_mask(
    full_mask: Optional[torch.Tensor],
    padding_mask: Optional[torch.Tensor],
    batch: int,
    q_len: int,
    kv_len: int,
    device: torch.device,
) -> Optional[torch.Tensor]:
    """Combine a full mask and a padding mask (module docstring) into one SDPA mask.

    Returns None (full attention), a bool [B|1, 1, Q, K] mask (True = may attend) or an additive
    floating [B|1, 1, Q, K] mask.
    """
    mask = None
    if full_mask is not None:
        mask = _full_mask(full_mask.to(device), batch, q_len, kv_len, "attention mask")
    if padding_mask is None:
        return mask
    if padding_mask.shape != (batch, kv_len):
        raise ValueError(
            f"A 2-D padding attention_mask must have shape [B, K] = [{batch}, {kv_len}] (K = cached + Q "
            f"keys, 1 = real token); got {tuple(padding_mask.shape)}."
        )
    padding_mask = padding_mask.to(device)
    if padding_mask.dtype != torch.bool:
        if not bool(((padding_mask == 0) | (padding_mask == 1)).all()):
            raise ValueError("A 2-D padding attention_mask must hold 0/1 or bool (1 = real token).")
        padding_mask = padding_mask != 0
    keys_valid = padding_mask[:, None, None, :]  # [B, 1, 1, K]
    if mask is None:
        return keys_valid
    if mask.dtype == torch.bool:
        return mask & keys_valid
    return mask.masked_fill(~keys_valid, torch.finfo(mask.dtype).min)


def split_masks(
    attention_mask: Optional[torch.Tensor], attention_bias: Optional[torch.Tensor]
) -> tuple[Optional[torch.Tensor], Optional[torch.Tensor]]:
    """Read the two mask keywords -> (full mask or None, padding mask or None).

    `attention_bias` (the released LLaDA name, also used at the paper's Dream call sites) is always a
    full mask. `attention_mask` is a 2-D padding mask or, when it has 3 or 4 dimensions, a full mask
    (the released Dream name); giving a full mask under both names is ambiguous and refused.
    """
    for name, mask in (("attention_mask", attention_mask), ("attention_bias", attention_bias)):
        if mask is not None and not isinstance(mask, torch.Tensor):
            raise TypeError(f"{name} must be a tensor or None; got {type(mask)}.")
    if attention_mask is None or attention_mask.dim() == 2:
        return attention_bias, attention_mask
    if attention_bias is not None:
        raise ValueError(
            "Got a full (3-D/4-D) mask as both attention_mask and attention_bias; pass it once "
            "(attention_mask may then only be the 2-D [B, K] padding mask)."
        )
    return attention_mask, None


def check_mask_with_cache(
    full_mask: Optional[torch.Tensor], past_key_values: Optional[DynamicCache], q_len: int
) -> None:
    """Refuse a cached forward with Q > 1 and no full mask (module docstring: no implicit causal mask)."""
    if full_mask is None and past_key_values is not None and q_len > 1:
        raise ValueError(
            f"A forward with past_key_values and {q_len} query tokens needs an explicit full attention "
            "mask [B|1, 1, Q, K] (attention_bias, or a 3-D/4-D attention_mask). None is refused "
            "rather than guessed: the released LLaDA code silently turns it into a causal mask."
        )


def tokens_to_store(store_kv: Union[bool, int], q_len: int) -> int:
    """store_kv (False / True / int n) -> how many leading query tokens to append to the cache."""
    if isinstance(store_kv, bool):
        return q_len if store_kv else 0
    if not isinstance(store_kv, int) or not 0 <= store_kv <= q_len:
        raise ValueError(
            f"store_kv must be a bool or an int in [0, Q] = [0, {q_len}] (the number of leading query "
            f"tokens whose K/V are appended); got {store_kv!r}."
        )
    return store_kv


def keys_values_with_cache(
    key: torch.Tensor,
    value: torch.Tensor,
    past_key_values: Optional[DynamicCache],
    layer_idx: int,
    n_store: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """key/value [B, Hkv, Q, D] -> keys/values over cache + all current tokens [B, Hkv, K, D].

    The first n_store current tokens are appended to the cache; the rest are attended to but not kept.
    """
    if past_key_values is None:
        return key, value
    if n_store > 0:
        cached_key, cached_value = past_key_values.update(
            key[:, :, :n_store], value[:, :, :n_store], layer_idx
        )  # [B, Hkv, P + n, D]
        if n_store == key.shape[2]:
            return cached_key, cached_value
        return (
            torch.cat([cached_key, key[:, :, n_store:]], dim=-2),
            torch.cat([cached_value, value[:, :, n_store:]], dim=-2),
        )
    if past_key_values.get_seq_length(layer_idx) == 0:
        return key, value
    return (
        torch.cat([past_key_values.key_cache[layer_idx], key], dim=-2),
        torch.cat([past_key_values.value_cache[layer_idx], value], dim=-2),
    )


class ColumnCache(DynamicCache):
    """A K/V cache indexed by sequence column, where each batch row writes at its own columns.

    A decoder whose rows are at different stages (D2F's pipeline: one row has settled more blocks than
    another) feeds each row its own window, packed to the left of one [B, W] input: row b's query j is
    column `starts[b] + j`. `begin(starts, width, key_end)` announces such a forward; the model's
    `update` then writes the forward's K/V of row b at columns starts[b]..starts[b] + W - 1 and returns
    columns [0, key_end) of every row as the keys. Column c of row b holds what the last forward that
    covered c computed there, so the caller's mask must show row b only its columns below starts[b]
    (final K/V, written when they were settled) and its current window; everything else (columns a row
    has not reached, never-written zeros) must stay hidden. A forward may run over some rows only
    (`begin(..., rows=...)`): it writes and reads theirs. `prefix(end, rows)` gives a plain DynamicCache
    of columns [0, end) for a read-only forward that starts at one column for every row.

    Storage starts at `capacity` columns (the decoder's buffer width) and grows to what a forward reaches
    past it (a wide window's tail near the buffer's end), so it is never much larger than the K/V kept."""

    def __init__(self, capacity: int = 0) -> None:
        super().__init__()
        self.capacity = capacity
        self._columns: torch.Tensor | None = None  # [R, W] long: the columns of this forward's queries
        self._rows: torch.Tensor | None = None  # [R] long: the batch rows it runs over (None: all)
        self._batch = 0
        self._key_end = 0

    def begin(self, starts: torch.Tensor, width: int, key_end: int, batch: int,
              rows: torch.Tensor | None = None) -> None:
        """The next forward feeds `width` query columns per row from `starts` ([R] long) and attends to
        columns [0, key_end) (at least max(starts) + width), over the batch's `batch` rows or, given
        `rows` ([R] long), over those rows only."""
        self._columns = starts[:, None] + torch.arange(width, device=starts.device)
        self._rows, self._batch, self._key_end = rows, batch, key_end

    def get_seq_length(self, layer_idx: int | None = 0) -> int:
        """Keys of the announced forward minus its queries: the forward's keys are its cached length
        plus its queries, as the models count them."""
        return self._key_end - (0 if self._columns is None else self._columns.shape[1])

    def _stored(self, layer: int, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if len(self.key_cache) <= layer:
            _, heads, _, dim = like.shape
            size = max(self._key_end, self.capacity)
            self.key_cache.append(like.new_zeros(self._batch, heads, size, dim))
            self.value_cache.append(like.new_zeros(self._batch, heads, size, dim))
        elif self.key_cache[layer].shape[2] < self._key_end:
            extra = self._key_end - self.key_cache[layer].shape[2]

            def grown(t: torch.Tensor) -> torch.Tensor:
                return torch.cat([t, t.new_zeros(*t.shape[:2], extra, t.shape[3])], dim=2)

            self.key_cache[layer] = grown(self.key_cache[layer])
            self.value_cache[layer] = grown(self.value_cache[layer])
        return self.key_cache[layer], self.value_cache[layer]

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, layer_idx: int,
               cache_kwargs: dict[str, Any] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Write this forward's K/V ([R, H, W, D]) at each row's columns; keys/values [R, H, key_end, D]."""
        if self._columns is None or self._columns.shape[1] != key_states.shape[2]:
            raise RuntimeError("ColumnCache.update without a matching begin(starts, width, key_end, batch)")
        keys, values = self._stored(layer_idx, key_states)
        if self._rows is None:
            index = self._columns.view(-1, 1, key_states.shape[2], 1).expand(-1, key_states.shape[1], -1,
                                                                               key_states.shape[3])
            keys.scatter_(2, index, key_states)
            values.scatter_(2, index, value_states)
            return keys[:, :, : self._key_end], values[:, :, : self._key_end]
        rows = self._rows[:, None]  # with the columns [R, W]: the written entries, [R, W, H, D]
        keys[rows, :, self._columns] = key_states.transpose(1, 2)
        values[rows, :, self._columns] = value_states.transpose(1, 2)
        return (keys[:, :, : self._key_end].index_select(0, self._rows),
                values[:, :, : self._key_end].index_select(0, self._rows))

    def prefix(self, end: int, rows: torch.Tensor | None = None) -> DynamicCache:
        """A DynamicCache of columns [0, end) (of batch rows `rows` only, [R] long), for a read-only
        forward; every row's columns below `end` must be final."""
        view = DynamicCache()
        for layer, (keys, values) in enumerate(zip(self.key_cache, self.value_cache)):
            keys, values = keys[:, :, :end], values[:, :, :end]
            if rows is not None:
                keys, values = keys.index_select(0, rows), values.index_select(0, rows)
            view.update(keys, values, layer)
        return view


def attend(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    mask: Optional[torch.Tensor],
    dropout_p: float,
) -> torch.Tensor:
    """Non-causal SDPA with grouped K/V heads (`common.layers.grouped_attention`) and scale 1/sqrt(D).

    query [B, H, Q, D], key/value [B, Hkv, K, D], mask from `prepare_attention_mask` -> [B, Q, H, D].
    """
    if mask is not None and mask.dtype != torch.bool:
        mask = mask.to(query.dtype)
    out = grouped_attention(query, key, value, mask, dropout_p)
    return out.transpose(1, 2)  # [B, Q, H, D]


def reject_unsupported_kwargs(
    family: str, labels: Optional[torch.Tensor], output_attentions: Optional[bool], kwargs: dict
) -> None:
    """One clear error for keywords this model would otherwise ignore silently."""
    if labels is not None:
        raise ValueError(
            f"{family} forward computes no loss: D2F losses (masked-token cross entropy, soft cross "
            "entropy to a teacher) are computed from the returned logits by the training code."
        )
    if output_attentions:
        raise ValueError(f"{family} attention runs in SDPA, which returns no attention weights.")
    if "update_kvcache" in kwargs:
        raise TypeError(
            "update_kvcache is the reference code's cache switch; use store_kv (False, True or the "
            "number of leading query tokens to append)."
        )
    if kwargs:
        raise TypeError(f"Unexpected keyword arguments for {family} forward: {sorted(kwargs)}.")


def check_logits_to_keep(logits_to_keep: int) -> None:
    if not isinstance(logits_to_keep, int) or isinstance(logits_to_keep, bool) or logits_to_keep < 0:
        raise ValueError(f"logits_to_keep must be a non-negative int (0 = all rows); got {logits_to_keep!r}.")


def prepare_inputs(
    embed: nn.Module,
    config: Any,
    input_ids: Optional[torch.LongTensor],
    attention_mask: Optional[torch.Tensor],
    attention_bias: Optional[torch.Tensor],
    position_ids: Optional[torch.LongTensor],
    past_key_values: Optional[DynamicCache],
    inputs_embeds: Optional[torch.Tensor],
    use_cache: Optional[bool],
    store_kv: Union[bool, int],
    rope_full_precision: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, Optional[DynamicCache], int]:
    """The shared front of both models' forward: validate the call (exactly one of ids / embeddings, a
    DynamicCache, an explicit mask with a cache and several queries, store_kv), embed, and build the
    mask and RoPE tables. Returns (embeddings [B, Q, E], mask [B|1, 1, Q, K], cos, signed sin [B|1, 1, Q, D],
    the cache, the number of leading query tokens whose K/V are stored)."""
    if (input_ids is None) == (inputs_embeds is None):
        raise ValueError("Pass exactly one of input_ids [B, Q] or inputs_embeds [B, Q, E].")
    if past_key_values is not None and not isinstance(past_key_values, DynamicCache):
        raise TypeError(f"past_key_values must be a transformers DynamicCache; got {type(past_key_values)}.")
    full_mask, padding_mask = split_masks(attention_mask, attention_bias)
    q_len = (input_ids if input_ids is not None else inputs_embeds).shape[1]
    check_mask_with_cache(full_mask, past_key_values, q_len)
    n_store = tokens_to_store(store_kv, q_len)
    use_cache = config.use_cache if use_cache is None else use_cache
    if past_key_values is None and use_cache:
        past_key_values = DynamicCache()
    if n_store > 0 and past_key_values is None:
        raise ValueError(
            "store_kv asks to append K/V but there is no cache: pass past_key_values or use_cache=True."
        )

    if inputs_embeds is None:
        inputs_embeds = embed(input_ids)  # [B, Q, E]
    batch = inputs_embeds.shape[0]
    device = inputs_embeds.device
    past_len = past_key_values.get_seq_length() if past_key_values is not None else 0
    if position_ids is None:
        position_ids = torch.arange(past_len, past_len + q_len, device=device)[None]  # [1, Q]
    elif position_ids.shape[1:] != (q_len,) or position_ids.shape[0] not in (1, batch):
        raise ValueError(
            f"position_ids must have shape [B|1, Q] = [{batch}, {q_len}]; got {tuple(position_ids.shape)}."
        )
    mask = prepare_attention_mask(full_mask, padding_mask, batch, q_len, past_len + q_len, device)  # [B|1, 1, Q, K]
    cos, signed_sin = rope_tables(
        position_ids.to(device), config.head_dim, config.rope_theta, inputs_embeds.dtype, rope_full_precision
    )  # [B|1, 1, Q, D] each
    return inputs_embeds, mask, cos, signed_sin, past_key_values, n_store
