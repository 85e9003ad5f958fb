"""Fast-dLLM v2 family adapter: the decode configuration, the sequence buffer, the prefix and block
caches, and the kinds of forward a decoder makes (prefill, draft, causal verify, commit). No decoding
policy lives here: `generate.py` (baseline "fast") and `generate_ssd_policy.py` (S2D2) are small steps
plugged into `decode_blocks`.

Layout (ALGORITHM.md §1.2, MODEL-FAMILIES.md §2.4). Blocks of `block_size` columns are aligned to
column 0; each is decoded as `block_size / small_block_size` sub-blocks, strictly left to right.
The model is SHIFT-aligned: the logit of row t predicts token t + 1, so a position's draft logit is the
previous row's (`shifted[t] = logits[t - 1]`). The first position of every block is therefore never a
mask: it is the prompt tail, or the "AR token" taken as argmax of the last row of the forward that
stored the previous block's K/V (prefill or commit), which costs no extra forward. Only the
`floor(P / block_size)` whole prompt blocks are prefilled. Columns past the current block are
never fed to the model, so the buffer behaves like the reference's canvas that grows by one block
at a time; it is simply allocated once.

Deliberate differences from the reference `generate` (each a fix; see README and the report):

* the prefill runs when `P >= block_size`, not `P > block_size`. Upstream, a prompt of exactly one block
  gets no prefill and is then ignored (the first forward only sees a block of masks);
* the budget `max_new_tokens` is honoured exactly: blocks are added until the generated region covers
  it, and the output is cut there (the reference rounds it down to whole blocks, then returns whatever
  those blocks hold plus one AR token);
* no commit forward is spent after the last block (its AR token would lie past the budget) or once
  every row has stopped, and positions past the budget are never decoded: they stay masks (as in
  the reference's canvas) but no step waits for them;
* a row stops as soon as its generated region holds a stop token with no mask before it, checked after
  every step (the reference finishes the current block first). Nothing before that stop token can
  change afterwards, so the output is the same and only forwards are saved;
* with `use_block_cache`, the block cache is refreshed by a full-block forward whenever the current
  sub-block's first position is masked, so every sub-block starts from fresh K/V and its first
  position gets its real (previous-row) logit; the reference S2D2 refreshed only once per block;
* `draft_ver` makes the rows before the first masked position of the BLOCK causal (upstream indexed the
  block's rows with a sub-block offset).

Batches come LEFT-padded (as lm-eval and tokenizers with padding_side="left" give them);
`common.sequence.SequenceBuffer` re-pads each row by whole blocks, so every row's blocks, positions,
masks and budget are exactly its batch-1 ones and a batch gives each row the tokens it gets alone (for
decoders that draw no random numbers). One exception: with `use_block_cache`, a full-block refresh is
done for every row when any row needs one, which changes the other rows' draft logits.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import torch
from torch import Tensor
from transformers import DynamicCache

from common.cache import cache_rows, live_rows, row_mask, scatter_rows
from common.config import require_field_bounds
from common.masks import Predicate, block_causal, draft_block, materialize
from common.sampling import SamplingConfig, draft_tokens, logits_to_probs
from common.sequence import HoldsSequence, SequenceBuffer, forbid_mask_token
from common.stats import DecodeRecorder
from common.token_ids import with_token_ids


@dataclass(frozen=True)
class FastDecodeConfig:
    """Baseline Fast-dLLM v2 decoding (the reference's `generate`); field names are its flags.

    Sampling is on iff `temperature > 0` (the reference's rule; there is no `do_sample`). Drafts and
    verifier share `common.sampling.logits_to_probs`, so at temperature 0 both use the plain softmax
    (the reference top-p-filtered only the verifier's q there, ALGORITHM.md §0.1).
    """

    mask_id: int | None = field(
        default=None, metadata={"help": "mask token id; default: the model's generation config / config"})
    stopping_criteria_idx: tuple[int, ...] | None = field(
        default=None, metadata={"help": "stop token ids (the reference's stop_token); default: the model's eos"})
    max_new_tokens: int = field(default=512, metadata={"bounds": (1, None), "help": "generation budget in tokens"})
    max_gen_toks: int | None = field(default=None, metadata={"help": "overrides max_new_tokens (lm-eval's name)",
                                                             "bounds": (1, None)})
    block_size: int = field(default=32, metadata={"help": "tokens per block: KV-commit unit, block-causal granularity",
                                                  "bounds": (1, None)})
    small_block_size: int = field(default=8, metadata={"help": "sub-block length; must divide block_size",
                                                       "bounds": (1, None)})
    threshold: float = field(default=0.9, metadata={"help": "commit every masked draft with confidence > threshold",
                                                          "bounds": (0.0, 1.0)})
    top_p: float = field(default=1.0, metadata={"bounds": (0.0, 1.0)})
    temperature: float = field(default=0.0, metadata={"help": "0: argmax drafts; > 0: sampled drafts",
                                                      "bounds": (0.0, None)})
    use_block_cache: bool = field(default=False, metadata={"help": "intra-block K/V cache: sub-block draft forwards"})
    use_ssd_cache: bool = field(default=False, metadata={"help": "not implemented (nor upstream); must stay off"})
    cache_ver: bool = field(default=False, metadata={"help": "AR-like cache: prefill/commit with a causal mask"})
    draft_ver: bool = field(default=False, metadata={"help": "draft forward: the block's decoded prefix is causal"})
    return_forward_stats: bool = field(default=False, metadata={"help": "also return per-row decoding stats"})
    return_decoding_order: bool = field(default=False, metadata={"help": "add decoding-order markers to the stats"})

    def __post_init__(self) -> None:
        require_field_bounds(self)
        if self.block_size % self.small_block_size:
            raise ValueError(f"small_block_size ({self.small_block_size}) must divide block_size ({self.block_size})")
        if not math.isfinite(self.threshold):
            raise ValueError(f"threshold must be finite, got {self.threshold}")
        if self.use_ssd_cache:
            raise ValueError("use_ssd_cache is not implemented (the reference raises NotImplementedError as well)")
        self.sampling()

    def sampling(self) -> SamplingConfig:
        return SamplingConfig(temperature=self.temperature, top_p=self.top_p, do_sample=self.temperature > 0)

    @property
    def budget(self) -> int:
        return self.max_gen_toks if self.max_gen_toks is not None else self.max_new_tokens

    def resolved(self, model: torch.nn.Module) -> "FastDecodeConfig":
        """mask_id and stop ids filled from the model where not given (common.token_ids precedence)."""
        return with_token_ids(self, model)


def shifted_rows(logits: Tensor, first: int, count: int) -> Tensor:
    """Draft logits of `count` consecutive positions from a forward's rows, for a shift-aligned model.

    logits: [B, R, V], row r = the model's output at the r-th token fed. Position `first + i` is predicted
    by row `first + i - 1`. Row 0 has no predecessor; as upstream, its own row is duplicated there. That is
    harmless: callers only ask for position 0 when it is a block's first position, which is never masked.
    Returns [B, count, V].
    """
    if first >= 1:
        return logits[:, first - 1 : first - 1 + count]
    return torch.cat([logits[:, :1], logits[:, : count - 1]], dim=1)


class FastDLLMBlocks(HoldsSequence):
    """Buffer, caches and forwards for one batch of prompts decoded together."""

    def __init__(self, model: torch.nn.Module, input_ids: Tensor, attention_mask: Tensor | None,
                 cfg: FastDecodeConfig, recorder: DecodeRecorder) -> None:
        self.model, self.cfg, self.recorder = model, cfg, recorder
        self.seq = SequenceBuffer(input_ids, attention_mask, unit=cfg.block_size, budget=cfg.budget,
                                  mask_id=cfg.mask_id, whole_blocks=False)
        if not bool((self.seq.prompt_lengths > 0).all()):
            raise ValueError("every row needs at least one real prompt token (a shift-aligned model needs a "
                             "previous token)")
        self.block_size, self.small = cfg.block_size, cfg.small_block_size
        self.n_blocks, self.first_block = self.seq.n_blocks, self.seq.first_block
        self.cache = DynamicCache()
        self.block_cache: DynamicCache | None = None

    def sub_block(self, b: int, s: int) -> Tensor:
        """View of sub-block s of block b, [B, small_block_size]; writing into it writes the buffer."""
        start = b * self.block_size + s * self.small
        return self.x[:, start : start + self.small]

    def sub_positions(self, b: int, s: int) -> Tensor:
        start = b * self.block_size + s * self.small
        return self.positions[:, start : start + self.small]

    def _forward(self, start: int, end: int, *, block_size: int, rule: Predicate | None = None,
                 ids: Tensor | None = None, update: bool = False, block_call: str | None = None,
                 logits_to_keep: int = 0, rows: Tensor | None = None) -> Tensor:
        """One model call on buffer columns [start, end) (or explicit `ids` for them) over the prefix cache.

        `rule` None means the model's own mask for `block_size` (block-causal from column 0; full for a
        sub-block call), sent as attention_mask=None unless padding forces an explicit mask. A rule is a
        `common.masks` predicate of (query index within this call, key column), i.e. with cache length
        `start`.
        block_call: None, "fill" (this call refreshes the block cache) or "patch" (a sub-block call).
        rows ([R] long): a read-only forward over those batch rows only (`ids` are then theirs).
        Returns logits [B, end - start or logits_to_keep, V], the mask token's logit set to -inf.
        """
        ids = self.x[:, start:end] if ids is None else ids
        block_end = (start // self.block_size + 1) * self.block_size
        kv_len = block_end if block_call == "patch" else end
        valid = self.key_valid if rows is None or self.key_valid is None else self.key_valid[rows]
        positions = self.positions[:, start:end] if rows is None else self.positions[rows, start:end]
        mask = None
        if rule is not None or valid is not None:
            key_valid = None if valid is None else valid[:, :kv_len]
            mask = materialize(rule or block_causal(block_size, start), end - start, kv_len, device=self.x.device,
                               key_valid=key_valid, query_start=start)
        kwargs = {}
        if block_call is not None:
            patch = block_call == "patch"
            kwargs = dict(use_block_cache=True, block_past_key_values=self.block_cache if patch else None,
                          replace_position=start % self.block_size if patch else None)
        out = self.model(
            input_ids=ids, attention_mask=mask, position_ids=positions,
            past_key_values=self.cache if rows is None else cache_rows(self.cache, rows), use_cache=True, update_past_key_values=update, block_size=block_size, logits_to_keep=logits_to_keep,
            **kwargs,
        )
        if block_call == "fill":
            self.block_cache = out.block_past_key_values
        logits = out.logits
        # The mask token is never an output: drafting or accepting it would leave a "decoded" position
        # that still reads as masked (upstream then loops forever on a model that predicts it). Removing
        # it before the sampling transform keeps p, q and the AR token consistent with each other.
        forbid_mask_token(logits, self.seq)
        return logits

    def _ar_token(self, column: int, logits: Tensor) -> None:
        """Where `column` is still a mask (a row's next block starts there), write the argmax of the last
        row (argmax even when sampling, as upstream) and mark it in the decoding order as
        -(position + 0.5). Rows whose prompt runs past `column` keep their prompt token."""
        open_rows = self.x[:, column] == self.cfg.mask_id  # [B]
        self.x[:, column] = torch.where(open_rows, logits[:, -1].argmax(-1), self.x[:, column])
        if self.recorder.record_order:
            for row, (pos, hit) in enumerate(zip(self.positions[:, column].tolist(), open_rows.tolist())):
                if hit:
                    self.recorder.order[row].append(-(pos + 0.5))

    def prefill(self, rows: Tensor) -> None:
        """Store K/V of the whole prompt blocks (block-causal, or causal with cache_ver). A row whose
        prompt ends on a block boundary takes the last row's argmax as its next block's first token."""
        end = self.first_block * self.block_size
        if end == 0:
            return
        logits = self._forward(0, end, block_size=1 if self.cfg.cache_ver else self.block_size, update=True,
                               logits_to_keep=1)
        tokens = self.seq.prompt_block_tokens  # [B]: each row is charged its own prompt blocks
        self.recorder.forward("prefill", rows & (tokens > 0), tokens)
        self._ar_token(end, logits)

    def draft(self, b: int, s: int, rows: Tensor, refresh: bool, subset: Tensor | None = None) -> Tensor:
        """Shifted draft logits of sub-block s of block b, [B, small_block_size, V].

        Without the block cache: one forward of the whole block, over the batch rows `subset` only when
        given ([R] long; the other rows' logits are then 0: they have no mask here and are never read).
        With it (`subset` must be None: the block cache holds every row): a full-block forward that
        refreshes the block cache when `refresh` (some row's sub-block starts with a mask, so its first
        logit needs the row before the sub-block) or when no block cache exists yet; otherwise a
        forward of the sub-block alone that patches its K/V into the block cache.
        """
        start, offset = b * self.block_size, s * self.small
        first_masked = None
        if self.cfg.draft_ver:
            first_masked = (self.x[:, start : start + self.block_size] == self.cfg.mask_id).int().argmax(-1)  # [B]
        if self.cfg.use_block_cache and not refresh and self.block_cache is not None:
            rule = None if first_masked is None else draft_block(start + offset, causal_rows=first_masked - offset)
            logits = self._forward(start + offset, start + offset + self.small, block_size=self.block_size,
                                   rule=rule, block_call="patch")
            self.recorder.forward("draft", rows, self.small)
            return shifted_rows(logits, 0, self.small)
        end = start + self.block_size
        if subset is not None:
            causal = None if first_masked is None else first_masked[subset]  # [R]
            rule = None if causal is None else draft_block(start, causal_rows=causal)
            part = self._forward(start, end, block_size=self.block_size, rule=rule, ids=self.x[subset, start:end],
                                 rows=subset)
            self.recorder.forward("draft", rows, self.block_size)
            part = shifted_rows(part, offset, self.small)  # [R, S, V]
            return scatter_rows(part, subset, self.x.shape[0])
        rule = None if first_masked is None else draft_block(start, causal_rows=first_masked)
        logits = self._forward(start, end, block_size=self.block_size, rule=rule,
                               block_call="fill" if self.cfg.use_block_cache else None)
        self.recorder.forward("draft", rows, self.block_size)
        return shifted_rows(logits, offset, self.small)

    def verify(self, b: int, s: int, drafted: Tensor, rows: Tensor) -> Tensor:
        """Causal verifier (ALGORITHM.md §2.2b) over batch rows `rows` ([R] long): ONE forward with
        block_size=1 over the block from its start to the end of sub-block s, whose masked positions are
        filled with their drafts (`drafted` [R, small_block_size]); prefix from the cache, nothing written,
        no block cache. The shifted logit of position t then conditions on the tokens and drafts left of
        t only: the AR (block size 1) distribution q_t. Returns [R, small_block_size, V]."""
        start, offset = b * self.block_size, s * self.small
        subset = None if rows.numel() == self.x.shape[0] else rows  # every row: no cache copy
        prefix = self.x[:, start : start + offset] if subset is None else self.x[rows, start : start + offset]
        ids = torch.cat([prefix, drafted], dim=1)  # [R, offset + small]
        keep = self.small + (1 if offset else 0)  # rows from the one before the sub-block on
        logits = self._forward(start, start + offset + self.small, block_size=1, ids=ids, logits_to_keep=keep,
                               rows=subset)
        self.recorder.forward("verify", row_mask(rows, self.x.shape[0]), offset + self.small)
        return shifted_rows(logits, 1 if offset else 0, self.small)

    def commit(self, b: int, rows: Tensor) -> None:
        """Store block b's final K/V (block-causal, or causal with cache_ver) and take the next block's
        first token from the last row."""
        start = b * self.block_size
        end = start + self.block_size
        logits = self._forward(start, end, block_size=1 if self.cfg.cache_ver else self.block_size, update=True,
                               logits_to_keep=1)
        self.recorder.forward("commit", rows, self.block_size)
        self.block_cache = None
        self._ar_token(end, logits)

class SubBlockStep:
    """One denoising step of a decoder: given the sub-block's draft logits, choose what to commit."""

    def __init__(self, cfg: FastDecodeConfig, generator: torch.Generator | None = None) -> None:
        self.cfg = cfg
        self.sampling = cfg.sampling()
        self.generator = generator

    def select(self, keep: Tensor) -> None:
        """The decoder keeps rows `keep` only ([K] long); per-row state follows."""

    def draft(self, logits: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(p [B, S, V], draft tokens [B, S], confidence [B, S]) from shifted draft logits [B, S, V]."""
        probs = logits_to_probs(logits, self.sampling)
        drafts, confidence = draft_tokens(probs, self.sampling, self.generator)
        return probs, drafts, confidence

    def __call__(self, blocks: FastDLLMBlocks, b: int, s: int, logits: Tensor, sub: Tensor, masked: Tensor,
                 live: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """logits: [B, S, V] shifted draft logits; sub: [B, S] tokens; masked: [B, S] (live rows only);
        live: [B]. Returns (commit [B, S] bool, tokens [B, S] long, kinds [B, S] COMMIT_* codes)."""
        raise NotImplementedError


@torch.inference_mode()
def decode_blocks(model: torch.nn.Module, input_ids: Tensor, attention_mask: Tensor | None, cfg: FastDecodeConfig,
                  step: SubBlockStep) -> tuple[Tensor, list[dict]]:
    """The loop shared by the Fast-dLLM v2 decoders: prefill; per block, per sub-block, draft + step until
    the sub-block has no mask; then commit the block. Host syncs: one per block and one per step. Each
    reads, for the sub-blocks from the current one on, how many rows have a mask there and whether any
    needs a block-cache refresh, and whether every / any row has stopped (for the block's end), so that
    finished and empty sub-blocks are passed over without a read of their own."""
    start_time = time.perf_counter()
    batch, device = input_ids.shape[0], input_ids.device
    recorder = DecodeRecorder(batch, device, cfg.return_decoding_order)
    blocks = FastDLLMBlocks(model, input_ids, attention_mask, cfg, recorder)
    stop_ids = torch.tensor(cfg.stopping_criteria_idx, dtype=torch.long, device=device)
    finished = torch.zeros(batch, dtype=torch.bool, device=device)
    blocks.prefill(~finished)
    seq, size, small = blocks.seq, cfg.block_size, cfg.small_block_size
    n_sub = size // small
    finished |= seq.stopped(blocks.first_block * size + 1, stop_ids)  # the prefill's AR token may be a stop

    def masked_of(start: int, end: int) -> Tensor:
        """[B, end - start] bool: the columns a row still has to decode (masks, in budget, not finished)."""
        return (blocks.x[:, start:end] == cfg.mask_id) & ~finished[:, None] & seq.decodable(start, end)

    def read_ahead(b: int, s: int) -> tuple[list[int], list[int], list[int]]:
        """One read: (rows with a mask, refresh needed) of each sub-block s.. of block b, and (every row
        stopped, any row stopped) at the block's end."""
        masked = masked_of(b * size + s * small, (b + 1) * size).view(-1, n_sub - s, small)  # [B, n, S]
        live = masked.any(-1)  # [B, n]
        done = finished | seq.exhausted((b + 1) * size)  # [B]
        values = torch.cat([live.sum(0), (masked[:, :, 0] & live).any(0),
                            torch.stack([done.all(), done.any()])]).tolist()
        n = n_sub - s
        return values[:n], values[n : 2 * n], values[2 * n :]

    for b in range(blocks.first_block, blocks.n_blocks):
        recorder.new_block()
        block_end = (b + 1) * size
        n_live_of, refresh_of, (all_stopped, any_stopped) = read_ahead(b, 0)
        for s in range(n_sub):
            n_live, refresh = n_live_of[s], refresh_of[s]
            first_column = b * size + s * small
            sub, positions = blocks.sub_block(b, s), blocks.sub_positions(b, s)
            while n_live:
                masked = masked_of(first_column, first_column + small)  # [B, S]
                live = masked.any(-1)  # [B]
                subset = None if cfg.use_block_cache else live_rows(live, n_live)  # [R] or None
                logits = blocks.draft(b, s, live, bool(refresh), subset)
                commit, tokens, kinds = step(blocks, b, s, logits, sub, masked, live)
                sub.copy_(torch.where(commit, tokens, sub))
                recorder.commits(kinds, positions)
                finished |= seq.stopped(block_end, stop_ids)
                ahead, refresh_ahead, (all_stopped, any_stopped) = read_ahead(b, s)
                n_live_of[s:], refresh_of[s:] = ahead, refresh_ahead
                n_live, refresh = ahead[0], refresh_ahead[0]
        finished |= seq.exhausted(block_end)
        if b + 1 == blocks.n_blocks or all_stopped:
            break
        if any_stopped:  # stopped rows leave the batch: the commit and later forwards skip them
            keep = (~finished).nonzero().squeeze(-1)
            for holder in (blocks, step, recorder):
                holder.select(keep)
            finished = finished[keep]
        blocks.commit(b, ~finished)
        finished |= seq.stopped(block_end + 1, stop_ids)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    wall_time = time.perf_counter() - start_time
    ids, counted = seq.finish(input_ids, stop_ids, keep_stop=True)
    return ids, recorder.finalize(counted, wall_time)
