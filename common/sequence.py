"""The sequence buffer every block decoder works on: prompts laid out so that each row's blocks sit
exactly where they would sit if the row were decoded alone (ALGORITHM.md §0, §1.1-1.2).

A block decoder cuts a row into blocks of `unit` tokens counted from the row's FIRST token: the
`P // unit` whole prompt blocks are prefilled, the `P % unit` trailing prompt tokens sit at the start
of the first decode block as known tokens, and generation fills the rest. A left-padded batch whose
blocks followed buffer columns would shift each row's blocks by its padding and decode it differently
from batch 1. Here each row is moved right by a whole number of blocks instead:

    row r: prompt P_r, prompt blocks n_r = P_r // unit, tail t_r = P_r % unit
    F = max_r n_r                       (every row's first decode block is block F of the buffer)
    offset_r = (F - n_r) * unit         (columns of padding before row r's first token)
    generation starts at column F * unit + t_r

so block b of the buffer is block b - offset_r / unit of row r, and the row's positions, masks and
block layout equal its batch-1 ones. Padding columns are invalid keys for every query. Each row also
has its own end: the budget (`whole_blocks=False`, e.g. Fast-dLLM v2 never decodes past it) or the end
of the block holding the budget's last token (`whole_blocks=True`, as the SDAR reference decodes).

`align="prompt_end"` is the other layout, for decoders whose blocks are counted from the END of the
prompt (D2F: the prompt is one block of any length, generated blocks follow it, MODEL-FAMILIES.md
§4.4, §8.2). Every row's prompt then ends at the same column:

    F = ceil(max_r P_r / unit)          (buffer blocks the prompts occupy)
    offset_r = F * unit - P_r           (padding before row r's first token)
    generation starts at column F * unit for every row

so generated block k is buffer block F + k of every row, the prompt is never split, and
`prompt_block_tokens` is the whole prompt. Positions are again the row's batch-1 ones.

Shapes: B rows, P prompt columns of the input, T buffer columns (a multiple of `unit`).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor


class SequenceBuffer:
    """Tokens, positions, key validity and stop bookkeeping for a batch of prompts decoded together."""

    def __init__(self, input_ids: Tensor, attention_mask: Tensor | None, *, unit: int, budget: int, mask_id: int,
                 whole_blocks: bool, align: str = "first_token") -> None:
        """input_ids: [B, P] left-padded prompts; attention_mask: [B, P] (1 = real token) or None.
        align: "first_token" (blocks counted from each row's first token) or "prompt_end" (from the end
        of its prompt); see the module docstring."""
        if align not in ("first_token", "prompt_end"):
            raise ValueError(f"align must be 'first_token' or 'prompt_end', got {align!r}")
        if input_ids.dim() != 2:
            raise ValueError(f"input_ids must be [batch, prompt_len], got shape {tuple(input_ids.shape)}")
        real = torch.ones_like(input_ids, dtype=torch.bool) if attention_mask is None else attention_mask.bool()
        if real.shape != input_ids.shape:
            raise ValueError(f"attention_mask {tuple(real.shape)} must match input_ids {tuple(input_ids.shape)}")
        device = input_ids.device
        self.unit, self.budget, self.mask_id = unit, budget, mask_id
        self.mask_column = torch.tensor([mask_id], device=device)  # [1]: `forbid_mask_token`'s index
        self.input_width = width = input_ids.shape[1]
        lengths = real.sum(-1)  # [B] real prompt tokens per row
        self.prompt_lengths = lengths
        if align == "first_token":
            prompt_blocks = torch.div(lengths, unit, rounding_mode="floor")  # [B]
            tail = lengths - prompt_blocks * unit  # [B]
            blocks = prompt_blocks  # F = their max
            prefilled = prompt_blocks * unit  # [B]
        else:
            blocks = torch.div(lengths + unit - 1, unit, rounding_mode="floor")  # [B] F = ceil(max P / unit)
            tail = torch.zeros_like(lengths)
            prefilled = lengths
        if whole_blocks:  # each row's end, past column F * unit
            end_past_first = torch.div(tail + budget + unit - 1, unit, rounding_mode="floor") * unit  # [B]
        else:
            end_past_first = tail + budget  # [B]
        # One host read for the layout: F, the furthest end past F * unit, the row needing the most
        # padding (none: no key mask at all), and whether the mask is LEFT padding (0s before 1s).
        first_block, furthest, least, right_padded = (
            torch.stack([blocks.max(), end_past_first.max(), (lengths if align == "prompt_end" else blocks).min(),
                         (real[:, :-1] > real[:, 1:]).any() if attention_mask is not None else lengths.new_zeros(())
                         ]).tolist() if lengths.numel() else (0, 0, 0, False))
        if right_padded:
            raise ValueError("attention_mask must describe LEFT padding (0s before 1s in every row)")
        self.first_block = first_block
        self.offset = (first_block - prompt_blocks) * unit if align == "first_token" else first_block * unit - lengths
        self.gen_start = first_block * unit + tail  # [B]
        self.row_end = first_block * unit + end_past_first  # [B]
        self.prompt_block_tokens = prefilled  # [B] tokens each row prefills
        self.n_blocks = first_block + math.ceil(furthest / unit) if lengths.numel() else 0
        total = self.n_blocks * unit
        self.columns = torch.arange(total, device=device)  # [T]
        # Column j of row r holds input column j - offset_r + pad_r when that is one of the row's tokens;
        # the prompt blocks' other columns are padding (token 0: never a key, never output), the rest masks.
        pad = width - lengths  # [B] left padding of the input
        source = self.columns[None, :] + (pad - self.offset)[:, None]  # [B, T]
        is_token = (source >= pad[:, None]) & (source < width)  # [B, T]
        empty = torch.where(self.columns < first_block * unit, 0, mask_id)  # [T]
        self.x = (torch.where(is_token, input_ids.gather(1, source.clamp(0, max(width - 1, 0))), empty) if width
                  else empty.expand(input_ids.shape[0], total).clone())  # [B, T]
        self.valid = self.columns[None, :] >= self.offset[:, None]  # [B, T]
        # [B, T]: the columns a row generates (after its prompt, before its end), sliced per block
        self.generates = (self.columns >= self.gen_start[:, None]) & (self.columns < self.row_end[:, None])
        padded = least < (first_block * unit if align == "prompt_end" else first_block)
        self.key_valid = self.valid if padded else None
        self.positions = (self.columns[None, :] - self.offset[:, None]).clamp_min(0)  # [B, T]
        self.rows = torch.arange(input_ids.shape[0], device=device)  # [B] original row of each held row
        self._all_x, self._all_gen_start = self.x, self.gen_start  # every row, for `finish`

    def _write_back(self) -> None:
        """Copy the held rows' tokens into the buffer of every row (a no-op before the first `select`)."""
        if self.x is not self._all_x:
            self._all_x[self.rows] = self.x

    _PER_ROW = ("x", "valid", "generates", "positions", "offset", "gen_start", "row_end", "prompt_lengths",
                "prompt_block_tokens", "rows")

    def select(self, keep: Tensor) -> None:
        """Keep only the held rows `keep` ([K] long indices into the held rows): rows that have stopped
        leave the batch, so later forwards skip them. Their tokens are kept for `finish`."""
        self._write_back()
        for name in self._PER_ROW:
            setattr(self, name, getattr(self, name)[keep])
        self.key_valid = None if bool((self.offset == 0).all()) else self.valid

    def block(self, b: int) -> Tensor:
        """View of buffer block b, [B, unit]; writing into it writes the buffer."""
        return self.x[:, b * self.unit : (b + 1) * self.unit]

    def decodable(self, start: int, end: int) -> Tensor:
        """[B, end - start] bool: columns of [start, end) that a row generates (after its prompt, before
        its end). Positions outside stay as they are and are never waited for. A view: never written."""
        return self.generates[:, start:end]

    def exhausted(self, end: int) -> Tensor:
        """[B] bool: rows with nothing left to generate at or after column `end`."""
        return self.row_end <= end

    def stopped(self, end: int, stop_ids: Tensor) -> Tensor:
        """[B] bool: the row's generated columns before `end` hold a stop token with no mask before it
        (nothing before it can change any more, so the row is done)."""
        cols = self.columns[:end][None, :]
        region = self.x[:, :end]
        generated = cols >= self.gen_start[:, None]  # [B, end]
        is_stop = torch.isin(region, stop_ids) & generated
        before_first_stop = torch.cumsum(is_stop.int(), dim=-1) == 0
        mask_before = ((region == self.mask_id) & generated & before_first_stop).any(-1)
        return is_stop.any(-1) & ~mask_before

    def finish(self, input_ids: Tensor, stop_ids: Tensor, keep_stop: bool) -> tuple[Tensor, list[int]]:
        """Cut each row at its first stop token (kept with `keep_stop`, as Fast-dLLM; dropped, as SDAR)
        or before its first mask, at most the budget, and pad the rest with the first stop id (else the
        mask id). Returns the [B, P + budget] ids (the input prompt as given, then the generation) and the
        generated-token counts, the stop token included (MEASURING.md)."""
        width = self.budget
        self._write_back()
        index = self._all_gen_start[:, None] + torch.arange(width, device=self.x.device)  # [B, G]
        gen = self._all_x.gather(1, index)  # [B, G]
        none = torch.full_like(gen[:, 0], width)
        is_stop, is_mask = torch.isin(gen, stop_ids), gen == self.mask_id
        first_stop = torch.where(is_stop.any(-1), is_stop.int().argmax(-1), none)
        first_mask = torch.where(is_mask.any(-1), is_mask.int().argmax(-1), none)
        stops_first = first_stop < first_mask
        counted = torch.where(stops_first, first_stop + 1, first_mask)  # [B]
        keep = counted if keep_stop else counted - stops_first.long()
        pad_id = stop_ids[0] if stop_ids.numel() else self.mask_id  # a tensor value: no read back
        tail = torch.arange(width, device=gen.device)[None, :] >= keep[:, None]
        return torch.cat([input_ids, gen.masked_fill(tail, pad_id)], dim=1), counted.tolist()


class HoldsSequence:
    """Mixin for a family's block adapter that holds a `SequenceBuffer` as `self.seq` and a K/V cache
    (duck-typed on transformers' DynamicCache) as `self.cache`: the buffer's per-row tensors as
    attributes that follow row selection, and `select` for buffer and cache together."""

    seq: SequenceBuffer
    cache: Any  # None for a decoder without a cache

    @property
    def x(self) -> Tensor:  # [B, T] tokens of the rows still decoding
        return self.seq.x

    @property
    def positions(self) -> Tensor:  # [B, T]
        return self.seq.positions

    @property
    def key_valid(self) -> Tensor | None:  # [B, T] or None (no padding)
        return self.seq.key_valid

    def select(self, keep: Tensor) -> None:
        """Drop every row but `keep` ([K] long) from the buffer and the cache (stopped rows leave;
        called between blocks)."""
        self.seq.select(keep)
        if self.cache is not None:  # a decoder without a cache re-forwards the prefix instead
            self.cache.batch_select_indices(keep)
        self.rows_dropped()

    def rows_dropped(self) -> None:
        """Called after `select`: state built for the old row set is stale."""


def forbid_mask_token(logits: Tensor, seq: SequenceBuffer) -> Tensor:
    """Set the mask token's logit to -inf in place (one op) and return the logits [..., V]: the mask token
    is never an output of a decoder."""
    return logits.index_fill_(-1, seq.mask_column, float("-inf"))
