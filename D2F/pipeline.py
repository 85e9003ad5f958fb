"""D2F decoding adapter: the decode configuration, the block table of the pipelined decoder (several
blocks in flight), the KV cache and the kinds of forward it makes (draft-and-store, 2L verify, shifted
causal verify). No decoding policy lives here: `generate.py` (the `d2f` baseline) and
`generate_ssd_policy.py` (S2D2) are small steps plugged into `decode_pipeline`.

Layout (MODEL-FAMILIES.md §4.4, §8.2; ALGORITHM.md §1.4). The prompt is one bidirectional block of any
length; generated blocks of `block_size` start right after it (not at multiples of the block size).
`common.sequence.SequenceBuffer(align="prompt_end")` left-pads every row so that all prompts end on
the same column: generated block k is the same buffer columns in every row, and each row keeps its
batch-1 positions. Attention (`common.masks.prefix_block_causal`): a block sees the prompt, every
earlier block and itself; padding is never a key.

Block table, per row (all state is tensors; one host sync per step reads the window bounds):
* add: at step start, a new all-mask block is appended when the row has fewer than
  ceil(budget / block_size) blocks, has not decoded a stop token, and its newest block's decoded
  fraction is >= `block_add_threshold` (the prompt counts as decoded, so block 0 comes at step 1);
* activation: a block becomes fully activated (for good) once its predecessor's decoded fraction is
  >= `decoded_token_threshold`, checked after adding; the prompt is decoded, so block 0 is fully
  activated at once and the earliest unfinished block always is;
* commit (the baseline step): every block commits its masked drafts with confidence >
  `skip_threshold`; a fully activated block with none commits its most confident draft;
* settled: the leading blocks with no mask. Their K/V depend on final tokens only, so they are
  kept: a row's next forward starts at its old cache end and stores its newly settled columns, which
  also folds the prompt's prefill into the first draft forward.

Each row has its own cache end (`D2F.layers.ColumnCache`, K/V kept by column): the draft forward
feeds every row its own window, from its cache end to its newest block's end, packed to the left of
one [B, W] input (W the widest row's window; a narrower row's extra columns are later blocks or past
the buffer, which none of its blocks can see). So a row's forward is its batch-1 forward, whatever
stage the other rows are at, and a batch gives each row its batch-1 tokens and statistics (for
decoders that draw no random numbers). Where the rows' windows differ enough (`SPLIT_MIN_TOKENS`), the
draft runs as two such forwards, the rows with narrow windows apart from the widest. The step itself
sees one region [settled, end) over the rows (the earliest settled column to the furthest added one);
a row's region columns outside its own blocks in flight have no mask and are never committed. The
verifier forward feeds each row from its own settled end, over the cache below it.

Shift alignment (Dream): the logit at t - 1 predicts token t. A position's draft is the previous row's
logit; the first column of a row's window uses the logit of its last settled column, saved by the
forward that computed it (the reference's `last_logits`). Position alignment (LLaDA): the logit at t.

`cache_ver` (AR-like cache; off by default, inert in the reference): settled generated blocks attend
token-causally (the prompt stays one bidirectional block), so cached K/V are those of block size 1 and
the verifier's q is the AR distribution exactly.

Deliberate differences from the reference decoder (each a fix or an improvement):
* the budget is honoured exactly: ceil(budget / block_size) blocks are decoded and the output is cut
  at the budget (the reference rounds it down to whole blocks);
* a row stops once its output can no longer change: a stop token with no mask before it (the
  reference finishes every block in flight first); the tokens are the same, fewer forwards are spent;
* the prompt's prefill rides in the first draft forward (so no forward is counted as prefill);
* sampling uses `common.sampling` (top-k before top-p; the reference filters top-p first), and the
  mask token is never a draft;
* the margin / negative-entropy confidence variants of the reference are not implemented.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field, replace

import torch
import torch.nn.functional as F
from torch import Tensor

from common.config import require_field_bounds
from common.masks import Predicate, materialize, pipelined_verifier, prefix_block_causal
from common.remasking import select_transfer
from common.sampling import SamplingConfig, draft_tokens, logits_to_probs
from common.sequence import HoldsSequence, SequenceBuffer, forbid_mask_token
from common.spans import Span
from common.stats import DecodeRecorder
from common.token_ids import with_token_ids
from D2F.layers import ColumnCache

SHIFTED_MODEL_TYPES = frozenset({"Dream"})
"""config.json model types whose logit at t - 1 predicts token t (D2F-Dream); the others (D2F-LLaDA)
are position-aligned."""

SPLIT_MIN_TOKENS = 128
"""The draft forward runs as two, the rows with narrow windows apart from the widest ones, when that
feeds at least this many fewer query columns than one forward over every row at the widest row's width.
On the project's CPU with the shipped D2F-LLaDA model, 128 ran the `d2f` and exact S2D2 decoders at
batch 16 and 64 at least as fast as 64 or 256 did (the `d2f` baseline at batch 64: 12% faster than no
split). Only the work changes, never a row's numbers. 0 would split whenever it saves anything."""

COMMIT_RULE = "low_confidence_dynamic"
"""The D2F commit rule of one block is the dynamic strategy: every masked draft above the threshold
(strict >), and when there is none, the top `k` (k = 1 for a fully activated block, 0 otherwise)."""


@dataclass(frozen=True)
class D2FDecodeConfig:
    """The pipelined D2F decoder (the reference's `generate_block_single`); field names are the flags of
    the reference's `example_d2f.py`, defaults its CLI's (the S2D2 demo). Sampling is on iff
    `temperature > 0`; drafts and verifier share `common.sampling.logits_to_probs`."""

    mask_id: int | None = field(default=None, metadata={"help": "mask token id; default: the model's config"})
    stopping_criteria_idx: tuple[int, ...] | None = field(
        default=None, metadata={"help": "stop token ids; default: the model's eos"})
    max_new_tokens: int = field(default=256, metadata={"bounds": (1, None), "help": "generation budget in tokens"})
    max_gen_toks: int | None = field(default=None, metadata={"help": "overrides max_new_tokens (lm-eval's name)",
                                                             "bounds": (1, None)})
    block_size: int = field(default=32, metadata={"help": "tokens per generated block (1 = AR mode)",
                                                  "bounds": (1, None)})
    block_add_threshold: float = field(
        default=0.5, metadata={"help": "add a block once the newest one's decoded fraction reaches this",
                              "bounds": (0.0, 1.0)})
    decoded_token_threshold: float = field(
        default=0.8, metadata={"help": "fully activate a block once its predecessor's decoded fraction reaches this",
                              "bounds": (0.0, 1.0)})
    skip_threshold: float = field(
        default=0.9, metadata={"help": "commit every masked draft with confidence > this", "bounds": (0.0, 1.0)})
    temperature: float = field(default=0.0, metadata={"help": "0: argmax drafts; > 0: sampled drafts",
                                                      "bounds": (0.0, None)})
    top_p: float = field(default=1.0, metadata={"bounds": (0.0, 1.0)})
    top_k: int = field(default=0, metadata={"bounds": (0, None), "help": "0 disables top-k"})
    shift_logits: bool | None = field(
        default=None, metadata={"help": "logit t-1 predicts token t (Dream); default: from the model type"})
    cache_ver: bool = field(
        default=False, metadata={"help": "AR-like cache: settled blocks attend token-causally"})
    return_forward_stats: bool = field(default=False, metadata={"help": "also return per-row decoding stats"})
    return_decoding_order: bool = field(default=False, metadata={"help": "add decoding-order markers to the stats"})

    def __post_init__(self) -> None:
        # Fractions and probabilities: above 1 a fraction is never reached (no block would follow, or
        # none would be fully activated); the thresholds' bounds are their fields' metadata.
        require_field_bounds(self)
        if not math.isfinite(self.skip_threshold):
            raise ValueError(f"skip_threshold must be finite, got {self.skip_threshold}")
        self.sampling()

    def sampling(self) -> SamplingConfig:
        return SamplingConfig(temperature=self.temperature, top_k=self.top_k, top_p=self.top_p,
                              do_sample=self.temperature > 0)

    @property
    def budget(self) -> int:
        return self.max_gen_toks if self.max_gen_toks is not None else self.max_new_tokens

    def resolved(self, model: torch.nn.Module) -> "D2FDecodeConfig":
        """mask_id and stop ids filled from the model where not given (common.token_ids precedence), and
        the alignment from its model type."""
        cfg = with_token_ids(self, model)
        if cfg.shift_logits is None:
            model_type = getattr(getattr(model, "config", None), "model_type", None)
            cfg = replace(cfg, shift_logits=model_type in SHIFTED_MODEL_TYPES)
        return cfg


@dataclass
class Window:
    """One step's view of the batch: the region [settled, end) holds every row's blocks in flight
    (`settled`: the earliest settled end over the rows). The draft forward feeds row b the columns from
    its cache end to its added end, packed into `width` query columns; `lead` is the smallest count of
    newly settled columns at the head of a row's window. Per-column tensors are [B, L] over the region,
    L = end - settled."""

    settled: int
    end: int
    width: int
    lead: int
    key_end: int  # keys of the draft forward: columns [0, key_end), the furthest row's window end
    groups: list[tuple[Tensor, int]] | None  # (rows [R] long, width) of each draft forward; None: one
    live: Tensor  # [B] bool, rows still decoding
    settled_end: Tensor  # [B] long, column where the row's first unfinished block starts
    added_end: Tensor  # [B] long, end of the row's newest block
    masked: Tensor  # [B, L] bool, masks of the row's blocks (live rows only)
    activated: Tensor  # [B, L] bool, the column's block is fully activated
    earliest: Tensor  # [B, L] bool, the column is in the row's earliest unfinished block
    progress: Tensor  # [B] float, decoded fraction of that block


def block_commits(confidence: Tensor, masked: Tensor, budget: Tensor, block_size: int, threshold: float) -> Tensor:
    """The D2F commit rule per block: masked drafts with confidence > threshold, and where fewer than the
    block's budget qualify, its top `budget` instead (`COMMIT_RULE`).
    confidence, masked: [B, L] (L a multiple of block_size); budget: [B, L // block_size] long.
    Returns [B, L] bool."""
    rows, length = masked.shape
    n = length // block_size
    chosen = select_transfer(COMMIT_RULE, confidence.reshape(rows * n, block_size),
                             masked.reshape(rows * n, block_size), budget.reshape(-1), threshold=threshold)
    return chosen.view(rows, length)


def per_block(values: Tensor, block_size: int) -> Tensor:
    """A per-column [B, L] tensor that is constant inside each block -> [B, L // block_size]."""
    return values.view(values.shape[0], -1, block_size)[..., 0]


class D2FPipeline(HoldsSequence):
    """Buffer, block table, cache and forwards for one batch of prompts decoded together."""

    def __init__(self, model: torch.nn.Module, input_ids: Tensor, attention_mask: Tensor | None,
                 cfg: D2FDecodeConfig, recorder: DecodeRecorder) -> None:
        self.model, self.cfg, self.recorder = model, cfg, recorder
        self.seq = SequenceBuffer(input_ids, attention_mask, unit=cfg.block_size, budget=cfg.budget,
                                  mask_id=cfg.mask_id, whole_blocks=True, align="prompt_end")
        if cfg.shift_logits and not bool((self.seq.prompt_lengths > 0).all()):
            raise ValueError("every row needs at least one real prompt token (a shift-aligned model predicts "
                             "the first generated token from the last prompt token)")
        self.size = cfg.block_size
        self.origin = self.seq.first_block * self.size  # first generated column, the same for every row
        self.n_blocks = self.seq.n_blocks - self.seq.first_block  # generated blocks per row
        batch, device = input_ids.shape[0], input_ids.device
        self.cache = ColumnCache(capacity=self.x.shape[1])
        self.last_logits: Tensor | None = None  # [B, V] logit of each row's last cached column (shifted models)
        self.row_cache_end = self.seq.offset.clone()  # [B] where each row's next window starts
        self.n_added = torch.zeros(batch, dtype=torch.long, device=device)  # [B]
        self.activated = torch.zeros(batch, self.n_blocks, dtype=torch.bool, device=device)  # [B, NB]
        self.eos_seen = torch.zeros(batch, dtype=torch.bool, device=device)  # [B]
        self.done = torch.zeros(batch, dtype=torch.bool, device=device)  # [B]
        self.kept: Tensor | None = None  # [K] rows the last `plan` kept, when finished rows left the batch

    def select(self, keep: Tensor) -> None:
        """Drop every row but `keep` ([K] long): buffer, cache and the block table."""
        super().select(keep)
        self.row_cache_end, self.n_added, self.activated, self.eos_seen, self.done = (
            t[keep] for t in (self.row_cache_end, self.n_added, self.activated, self.eos_seen, self.done))
        if self.last_logits is not None:
            self.last_logits = self.last_logits[keep]

    def region(self, w: Window) -> Tensor:
        """View of the region's tokens, [B, L]; writing into it writes the buffer."""
        return self.x[:, w.settled : w.end]

    def plan(self) -> Window | None:
        """Add blocks, activate blocks, find what is settled; None when every row is done. Rows that are
        done leave the batch here (`kept` then holds the rows kept, for the step's and the recorder's
        state): the window is the live rows' anyway, so the others' tokens do not change."""
        cfg, size, nb = self.cfg, self.size, self.n_blocks
        gen = self.x[:, self.origin : self.origin + nb * size].view(-1, nb, size)  # [B, NB, S]
        is_mask = gen == cfg.mask_id
        frac = 1.0 - is_mask.float().mean(-1)  # [B, NB] decoded fraction (not-yet-added blocks: 0)
        behind = F.pad(frac, (1, 0), value=1.0)  # [B, NB + 1]: column k is block k - 1's, the prompt's is 1
        newest = behind.gather(1, self.n_added[:, None]).squeeze(1)  # [B]
        self.n_added += (~self.done & ~self.eos_seen & (self.n_added < nb) & (newest >= cfg.block_add_threshold)).long()
        index = torch.arange(nb, device=gen.device)
        added = index[None, :] < self.n_added[:, None]  # [B, NB]
        self.activated |= added & (behind[:, :-1] >= cfg.decoded_token_threshold)  # the predecessor's fraction
        pending = is_mask.any(-1) & added  # [B, NB]
        n_settled = torch.cumprod((added & ~pending).long(), dim=-1).sum(-1)  # [B]
        self.done |= ~pending.any(-1) & ((self.n_added == nb) | self.eos_seen)
        live = ~self.done
        settled_end = self.origin + n_settled * size  # [B]
        added_end = self.origin + self.n_added * size  # [B]
        width = self.x.shape[1]
        windows = torch.where(live, added_end - self.row_cache_end, 0)  # [B] each row's own window
        bounds = torch.stack([live.any().long(), torch.where(live, settled_end, width).min(),
                              torch.where(live, added_end, 0).max(), self.done.sum(), windows.max(),
                              torch.where(live, settled_end - self.row_cache_end, width).min(),
                              torch.where(live, self.row_cache_end, 0).max(), *self._split(windows, live)])
        # the step's one host sync
        any_live, settled, end, n_done, window, lead, last_start, saving, narrow, n_wide = bounds.tolist()
        if not any_live:
            return None
        self.kept = None
        if n_done:  # finished rows leave the batch: later forwards run on the others only
            keep = torch.argsort(self.done.to(torch.uint8), stable=True)[: self.done.shape[0] - n_done]  # [K]
            self.select(keep)
            self.kept = keep
            frac, n_settled, settled_end, added_end, windows = (
                t[keep] for t in (frac, n_settled, settled_end, added_end, windows))
            live = ~self.done
        groups = None
        if saving >= SPLIT_MIN_TOKENS:  # the rows whose window is wider than `narrow` run apart
            wide = (windows > narrow).to(torch.uint8)
            order = torch.argsort(wide, stable=True)
            groups = [(order[: order.shape[0] - n_wide], narrow), (order[order.shape[0] - n_wide :], window)]
        columns = torch.arange(settled, end, device=gen.device)
        block = torch.div(columns - self.origin, size, rounding_mode="floor")  # [L] generated block index
        masked = (self.x[:, settled:end] == cfg.mask_id) & (block[None, :] < self.n_added[:, None]) & live[:, None]
        first = n_settled.clamp(max=nb - 1)
        return Window(
            settled=settled, end=end, width=window, lead=lead, key_end=last_start + window, groups=groups,
            live=live, settled_end=settled_end, added_end=added_end, masked=masked,
            activated=self.activated[:, block], earliest=block[None, :] == n_settled[:, None],
            progress=frac.gather(1, first[:, None]).squeeze(1),
        )

    @staticmethod
    def _split(windows: Tensor, live: Tensor) -> list[Tensor]:
        """The best two-forward split of the draft (`SPLIT_MIN_TOKENS`), on the device: [the query columns
        it saves, the narrow forward's width, how many rows run in the wide one]; zeros for one row. The
        wide forward takes the k widest live rows at the widest width, the narrow one the others at the
        widest of theirs; k is the one that feeds the fewest columns."""
        if windows.shape[0] < 2:
            return [windows.new_zeros(())] * 3
        widest_first = windows.sort(descending=True).values  # [B]; rows that are done count 0
        k = torch.arange(1, windows.shape[0], device=windows.device)  # [B - 1] rows in the wide forward
        n_live = live.sum()
        fed = k * widest_first[0] + (n_live - k) * widest_first[1:]  # past n_live the narrow width is 0
        least, best = fed.min(0)  # tensors: indexing with `best` would read it on the host
        narrow = widest_first[1:].gather(0, best.view(1)).squeeze(0)
        return [n_live * widest_first[0] - least, narrow, (windows > narrow).sum()]

    def _settled_rule(self, w: Window, cache_len: int | Tensor, index: Tensor | None = None) -> Predicate:
        """The mask a forward starting at `cache_len` (or at [B, 1, 1] columns, one per row) gives its
        queries (module docstring); `index`: for those batch rows only ([R] long)."""
        until = None
        if self.cfg.cache_ver:
            until = w.settled_end if index is None else w.settled_end[index]
        return prefix_block_causal(self.origin, self.size, cache_len, until)

    def draft(self, w: Window) -> Tensor:
        """The step's forward: row b's window runs from its cache end to its added end (packed, module
        docstring), storing what it computes; returns the draft logits of the region, [B, L, V] (shifted
        for shift-aligned models; a row's columns outside its blocks in flight hold some row's logits).
        With `w.groups` the rows run in two forwards, the narrow windows' and the wide ones'."""
        shifted = bool(self.cfg.shift_logits)
        # Logits of window columns from `first` on: those of each row's region columns (and, shifted,
        # of the column before them, where that is in the window).
        first = max(w.lead - 1, 0) if shifted else w.lead
        if w.groups is None:
            out = self._draft_rows(w, None, w.width, first)
        else:
            parts = [(rows, self._draft_rows(w, rows, width, first)) for rows, width in w.groups]
            out = parts[0][1].new_zeros(self.x.shape[0], *parts[0][1].shape[1:])
            for rows, part in parts:
                out.index_copy_(0, rows, part)
        self.recorder.forward("draft", w.live, w.added_end - self.row_cache_end)
        self.row_cache_end = torch.where(w.live, w.settled_end, self.row_cache_end)
        return out

    def _draft_rows(self, w: Window, rows: Tensor | None, width: int, first: int) -> Tensor:
        """The packed draft forward over batch rows `rows` ([R] long; None: every row) with `width` query
        columns each; the region's draft logits of those rows, [R, L, V]."""
        def of_rows(t: Tensor) -> Tensor:
            return t if rows is None else t[rows]

        starts, columns = of_rows(self.row_cache_end), self.x.shape[1]
        count, device = starts.shape[0], starts.device
        # [R, W] columns of the queries; columns past the buffer feed a copy of its last one (never seen)
        src = (starts[:, None] + torch.arange(width, device=device)).clamp(max=columns - 1)
        key_valid = None
        if self.key_valid is not None:  # keys past the buffer (a wide window's tail) are never valid
            key_valid = of_rows(self.key_valid)[:, : w.key_end]
            if w.key_end > columns:
                key_valid = torch.cat([key_valid, key_valid.new_zeros(count, w.key_end - columns)], dim=1)
        offset = starts.view(-1, 1, 1)
        mask = materialize(self._settled_rule(w, offset, rows), width, w.key_end, device=device,
                           key_valid=key_valid, query_start=offset)
        self.cache.begin(starts, width, w.key_end, self.x.shape[0], rows)
        logits = self.model(input_ids=of_rows(self.x).gather(1, src), attention_mask=mask,
                            position_ids=of_rows(self.positions).gather(1, src), past_key_values=self.cache,
                            use_cache=True, store_kv=True, logits_to_keep=width - first).logits  # [R, W - first, V]
        forbid_mask_token(logits, self.seq)
        # Region column c of row b is window column c - starts[b] (c - 1 - starts[b] shifted): a row's
        # columns before its window are settled for it and past its window not added, so clamped.
        region = w.settled + torch.arange(w.end - w.settled, device=device)
        at = region[None, :] - starts[:, None] - first  # [R, L] index into the kept logits
        if self.cfg.shift_logits:  # prepend each row's last cached logit: index 0 is window column -1
            if self.last_logits is None:
                self.last_logits = logits.new_zeros(self.x.shape[0], logits.shape[-1])
            logits = torch.cat([of_rows(self.last_logits)[:, None], logits], dim=1)
            # [R, V]: the logit of each row's new last cached column
            last = take_columns(logits, (of_rows(w.settled_end) - starts - first)[:, None]).squeeze(1)
            self.last_logits = last if rows is None else self.last_logits.index_copy(0, rows, last)
        return take_columns(logits, at)

    def verify_bounds(self, w: Window, rows: Tensor, span: Span) -> Tensor:
        """[2] long on the device, over the `rows` ([B] bool): the furthest settled end (the verifier's
        cache length) and the longest stretch from a row's settled end to its span end (its first half),
        which `verify` reads to size its forward."""
        span_end = w.settled + span.start + span.length  # [B]
        return torch.stack([torch.where(rows, w.settled_end, 0).max(),
                            torch.where(rows, span_end - w.settled_end, 0).max()])

    def verify(self, w: Window, drafted: Tensor, rows: Tensor, span: Span, target_block: int,
               index: Tensor | None = None, bounds: list[int] | None = None) -> Tensor:
        """Verifier logits of the region, [B, L, V]: at the span positions of the `rows` ([B] bool), the
        distribution of the position given the cache, the row's settled tokens and the drafts left of it
        (strictly earlier target blocks of `target_block` tokens; 1 = AR). drafted: [B, L] region with
        every mask drafted. Row b feeds the columns from its settled end to the longest span's stretch
        past it (nothing to its right is visible to a span position) over the cache below its settled
        end. Position-aligned: the 2L forward; shift-aligned: one causal forward whose row t - 1 gives
        q_t (the Fast-dLLM v2 construction). Nothing is stored. `index` ([R] long, the True entries of
        `rows` in order): the forward runs over those rows only and returns [R, L, V]. `bounds`:
        `verify_bounds` already read on the host (otherwise read here: one host sync). A row's columns
        outside its fed ones hold some fed row's logits (never read)."""
        cache_end, first = bounds if bounds is not None else self.verify_bounds(w, rows, span).tolist()

        def of_rows(t: Tensor) -> Tensor:  # [B, ...] -> the rows the forward runs over
            return t if index is None else t[index]

        starts, drafted = of_rows(w.settled_end), of_rows(drafted)  # [R], [R, L]
        batch, length, device = drafted.shape[0], drafted.shape[1], drafted.device
        fed = starts[:, None] + torch.arange(first, device=device)  # [R, n1] columns of the first half
        ids = drafted.gather(1, (fed - w.settled).clamp(0, length - 1))  # past the region: never seen
        positions = of_rows(self.positions).gather(1, fed.clamp(max=self.x.shape[1] - 1))
        shifted = bool(self.cfg.shift_logits)
        if not shifted:  # the 2L trick: a mask token at each first-half position
            ids = torch.cat([ids, torch.full_like(ids, self.cfg.mask_id)], dim=1)
            positions = torch.cat([positions, positions], dim=1)
        # Cache keys: a row sees its own settled columns only (its later columns hold window K/V).
        key_valid = torch.arange(cache_end, device=device)[None, :] < starts[:, None]  # [R, C]
        if self.key_valid is not None:
            key_valid &= of_rows(self.key_valid)[:, :cache_end]
        key_valid = torch.cat([key_valid, key_valid.new_ones(batch, ids.shape[1])], dim=1)
        q_len = ids.shape[1]
        mask = materialize(pipelined_verifier(cache_end, first, target_block, mask_half=not shifted), q_len,
                           cache_end + q_len, device=device, key_valid=key_valid)
        logits = self.model(input_ids=ids, attention_mask=mask, position_ids=positions,
                            past_key_values=self.cache.prefix(cache_end, index), use_cache=True, store_kv=False,
                            logits_to_keep=first).logits  # [R, n1, V]
        forbid_mask_token(logits, self.seq)
        span_end = w.settled + span.start + span.length  # [B]
        if shifted:  # q at the row's first column is the logit of its last settled one
            logits = torch.cat([of_rows(self.last_logits)[:, None], logits[:, :-1]], dim=1)
            self.recorder.forward("verify", rows, span_end - w.settled_end)
        else:
            self.recorder.forward("verify", rows, 2 * (span_end - w.settled_end))
        region = w.settled + torch.arange(length, device=device)
        return take_columns(logits, region[None, :] - starts[:, None])  # region column -> fed column

    def apply(self, w: Window, commit: Tensor, tokens: Tensor, kinds: Tensor, stop_ids: Tensor) -> None:
        """Write the step's commits; note stop tokens (no more blocks) and rows whose output is final."""
        region = self.region(w)
        region.copy_(torch.where(commit, tokens, region))
        self.eos_seen |= (commit & torch.isin(tokens, stop_ids)).any(-1)
        self.recorder.commits(kinds, self.positions[:, w.settled : w.end])
        self.done |= self.seq.stopped(w.end, stop_ids)


class PipelineStep:
    """One step of a D2F decoder: given the window's draft logits, choose what to commit."""

    def __init__(self, cfg: D2FDecodeConfig, generator: torch.Generator | None = None) -> None:
        self.cfg = cfg
        self.sampling = cfg.sampling()
        self.generator = generator

    def select(self, keep: Tensor) -> None:
        """The pipeline keeps rows `keep` only ([K] long); per-row state follows."""

    def draft(self, logits: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(p [B, L, V], draft tokens [B, L], confidence [B, L]) from draft logits [B, L, V]."""
        probs = logits_to_probs(logits, self.sampling)
        drafts, confidence = draft_tokens(probs, self.sampling, self.generator)
        return probs, drafts, confidence

    def __call__(self, pipe: D2FPipeline, w: Window, logits: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Returns (commit [B, L] bool, tokens [B, L] long, kinds [B, L] COMMIT_* codes)."""
        raise NotImplementedError


def take_columns(values: Tensor, index: Tensor) -> Tensor:
    """values [R, W, V], index [R, L] long -> [R, L, V]: row r's entries at columns index[r], each index
    clamped into [0, W) (the columns a row never reads)."""
    index = index.clamp(0, values.shape[1] - 1)
    return values.gather(1, index[..., None].expand(-1, -1, values.shape[-1]))


def baseline_commits(w: Window, confidence: Tensor, masked: Tensor, block_size: int, threshold: float) -> Tensor:
    """The `d2f` step: semi-activated blocks commit drafts above the threshold, fully activated blocks
    also their top draft when none is above it. Returns [B, L] bool."""
    budget = per_block(w.activated, block_size).long()  # [B, NL]: 1 fully activated, 0 semi-activated
    return block_commits(confidence, masked, budget, block_size, threshold) & w.live[:, None]


@torch.inference_mode()
def decode_pipeline(model: torch.nn.Module, input_ids: Tensor, attention_mask: Tensor | None, cfg: D2FDecodeConfig,
                    step: PipelineStep) -> tuple[Tensor, list[dict]]:
    """The loop shared by the D2F decoders: plan the window, one forward, one step, apply; until every
    row is done. Every step commits at least one token of every live row's earliest unfinished block
    (it is fully activated), so the loop ends within one step per generated token."""
    start_time = time.perf_counter()
    batch, device = input_ids.shape[0], input_ids.device
    recorder = DecodeRecorder(batch, device, cfg.return_decoding_order)
    pipe = D2FPipeline(model, input_ids, attention_mask, cfg, recorder)
    stop_ids = torch.tensor(cfg.stopping_criteria_idx, dtype=torch.long, device=device)
    for _ in range(pipe.n_blocks * cfg.block_size + 1):
        window = pipe.plan()
        if window is None:
            break
        if pipe.kept is not None:
            step.select(pipe.kept)
            recorder.select(pipe.kept)
        commit, tokens, kinds = step(pipe, window, pipe.draft(window))
        pipe.apply(window, commit, tokens, kinds, stop_ids)
    else:
        raise RuntimeError("D2F decoding made no progress (a step committed nothing in an activated block)")
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    wall_time = time.perf_counter() - start_time
    ids, counted = pipe.seq.finish(input_ids, stop_ids, keep_stop=False)
    return ids, recorder.finalize(counted, wall_time)
