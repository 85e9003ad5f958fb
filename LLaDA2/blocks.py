"""LLaDA2 family adapter: the decode configurations, the sequence buffer, the KV cache, the forwards a
decoder makes (prefill, draft, commit, 2L verify) and the block loop with LLaDA2.1's post steps. No
commit rule lives here: `generate.py` (the M2T + T2T threshold rule, without and with a cache) and
`generate_ssd_policy.py` (S2D2) are steps plugged into `decode_blocks`.

Layout (ALGORITHM.md §0, §1.3): a row of prompt length P decodes `ceil((P + G) / L)` blocks counted
from its first token; its `P // L` whole prompt blocks are prefilled (cached decoders) and the
`P mod L` trailing prompt tokens sit in its first decode block as known tokens, never edited.
Batches come LEFT-padded; `common.sequence.SequenceBuffer` re-pads each row by whole blocks, so
every row's blocks, positions and masks are its batch-1 ones, and a decoder that draws no random
numbers gives each row the tokens it gets alone.

The loop, per block and per row (ALGORITHM.md §1.3; MODEL-FAMILIES.md §8.1 states the code's rule):

    post = 0
    repeat:
        M = the block's masked positions at the iteration's start
        if M is empty: post += 1, and the block ends when post > max_post_steps (no forward spent)
        one draft forward of the block; the step fills masks (M2T) and edits decoded positions (T2T)
        the block ends when M was empty and the iteration edited nothing

Each iteration with masks fills at least one, so a block takes at most L + max_post_steps + 1
iterations. After a block: with `eos_early_stop`, a row whose generated region holds a stop token
(no mask can precede it: the block is complete) is done: it leaves the batch (buffer, cache and
per-row state are compacted), so its K/V are never stored and later forwards skip it.

Deliberate differences from the reference (each a fix; MODEL-FAMILIES.md §8.1):

* every forward passes an explicit bool mask. The reference's no-cache decoder and cached prefill
  pass a 0/1 float mask that SDPA ADDS as a +1 bias (nothing is masked), and its cached draft and
  commit forwards pass `attention_mask=None`, which SDPA under transformers 4.52.4 makes causal.
  Here they are the block-causal and full masks the reference meant, so `cached` gives the tokens of
  `nocache` (tests/test_llada2_decoding.py);
* `fold_commit` (default on; as SDAR): a finished block's K/V are stored by extra query rows of the
  next block's first draft forward instead of a separate forward; those rows see what a commit
  forward would show them, so tokens are unchanged and one forward per block is saved;
* `cache_ver` (our extension, SDAR's flag; off by default as in the paper's LLaDA2 runs): prefill and
  commits store token-causal K/V, so the 2L verifier is exactly AR mode and greedy-exact S2D2
  reproduces AR greedy decoding;
* the mask token is never drafted (its logit is set to -inf), so a filled position never reads as
  masked again.

The output is the reference's: prompt + generation up to and including the first stop token, cut at
the budget (padded with the stop id to [B, P + budget]).
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
from common.editing import token_edits
from common.masks import Predicate, block_causal, full_attention, materialize, token_causal, verifier_2l
from common.sampling import SamplingConfig, draft_tokens, logits_to_probs
from common.sequence import HoldsSequence, SequenceBuffer, forbid_mask_token
from common.stats import COMMIT_EDIT, DecodeRecorder
from common.token_ids import with_token_ids


@dataclass(frozen=True)
class LLaDA2DecodeConfig:
    """Threshold decoding with token editing, no cache: the model card's `generate` (ALGORITHM.md §1.3).
    Field names are the reference's flags; where its CLI and function defaults differ, the CLI's (the
    paper's runs) are used. Sampling is on iff `temperature > 0` (the reference's rule)."""

    mask_id: int | None = field(default=None, metadata={"help": "mask token id; default: the model's generation config"})
    stopping_criteria_idx: tuple[int, ...] | None = field(
        default=None, metadata={"help": "stop token ids (the reference's eos_id); default: the model's eos"})
    gen_length: int = field(default=512, metadata={"bounds": (1, None), "help": "generation budget in tokens"})
    max_gen_toks: int | None = field(default=None, metadata={"help": "overrides gen_length when set (lm-eval's name)",
                                                             "bounds": (1, None)})
    block_length: int = field(default=32, metadata={"bounds": (1, None), "help": "tokens per block L (1 = AR mode)"})
    temperature: float = field(default=0.0, metadata={"help": "0: argmax drafts; > 0: sampled drafts",
                                                      "bounds": (0.0, None)})
    top_k: int = field(default=0, metadata={"bounds": (0, None), "help": "0 disables top-k"})
    top_p: float = field(default=1.0, metadata={"bounds": (0.0, 1.0)})
    threshold: float = field(default=0.7, metadata={"help": "tau_mask: fill every mask whose drawn token has p > it",
                                                          "bounds": (0.0, 1.0)})
    editing_threshold: float = field(
        default=0.5, metadata={"help": "tau_edit: rewrite a decoded token whose new draw differs and has p > it "
                                       "(1: no editing, as for LLaDA2.0)", "bounds": (0.0, 1.0)})
    max_post_steps: int = field(default=0, metadata={"help": "edit-only iterations per block once no mask is left",
                                                     "bounds": (0, None)})
    num_to_transfer: int = field(default=1, metadata={"help": "minimum masks filled per iteration (most confident)",
                                                      "bounds": (1, None)})
    eos_early_stop: bool = field(default=True, metadata={"help": "stop a row after the block that completes a stop token"})
    return_forward_stats: bool = field(default=False, metadata={"help": "also return per-row decoding stats"})
    record_decoding_order: bool = field(default=False, metadata={"help": "add decoding-order markers to the stats"})

    def __post_init__(self) -> None:
        require_field_bounds(self)
        for name in ("threshold", "editing_threshold"):
            if not math.isfinite(getattr(self, name)):
                raise ValueError(f"{name} must be finite, got {getattr(self, name)}")
        self.sampling()

    def sampling(self) -> SamplingConfig:
        return SamplingConfig(temperature=self.temperature, top_k=self.top_k, top_p=self.top_p,
                              do_sample=self.temperature > 0)

    @property
    def budget(self) -> int:
        return self.max_gen_toks if self.max_gen_toks is not None else self.gen_length

    def resolved(self, model: torch.nn.Module) -> "LLaDA2DecodeConfig":
        """mask_id and stop ids filled from the model where not given (common.token_ids precedence)."""
        return with_token_ids(self, model)


@dataclass(frozen=True)
class CachedDecodeConfig(LLaDA2DecodeConfig):
    """The same rule with a KV cache (the reference's `generate_cached`): whole prompt blocks
    prefilled, the current block drafted by read-only forwards, a finished block's K/V stored once."""

    fold_commit: bool = field(default=True, metadata={"help": "store a finished block's K/V inside the next draft forward"})
    cache_ver: bool = field(default=False, metadata={"help": "AR-like cache: prefill/commit with a token-causal mask"})


class LLaDA2Blocks(HoldsSequence):
    """Buffer, optional cache and forwards for one batch of prompts decoded together. A
    `CachedDecodeConfig` selects the cached forwards; a plain `LLaDA2DecodeConfig` re-forwards the
    whole prefix every iteration."""

    def __init__(self, model: torch.nn.Module, input_ids: Tensor, attention_mask: Tensor | None,
                 cfg: LLaDA2DecodeConfig, recorder: DecodeRecorder) -> None:
        self.model, self.cfg, self.recorder = model, cfg, recorder
        self.seq = SequenceBuffer(input_ids, attention_mask, unit=cfg.block_length, budget=cfg.budget,
                                  mask_id=cfg.mask_id, whole_blocks=True)
        self.block_length = cfg.block_length
        self.n_blocks, self.first_block = self.seq.n_blocks, self.seq.first_block
        self.cached = isinstance(cfg, CachedDecodeConfig)
        self.cache_ver = self.cached and cfg.cache_ver
        self.fold_commit = self.cached and cfg.fold_commit
        self.cache = DynamicCache() if self.cached else None
        self.pending_commit: int | None = None
        # [R] long: the rows a draft forward that stores nothing runs over (None: every row). Set by the
        # loop per iteration: rows done with the block skip the forwards until it ends.
        self.draft_rows: Tensor | None = None

    def block(self, b: int) -> Tensor:
        """View of block b's tokens, [B, L]; writing into it writes the buffer."""
        return self.x[:, b * self.block_length : (b + 1) * self.block_length]

    def _forward(self, start: int, end: int, predicate: Predicate, *, store: bool, keep: int,
                 ids: Tensor | None = None, positions: Tensor | None = None, extra_keys: int = 0,
                 rows: Tensor | None = None) -> Tensor:
        """One model call on buffer columns [start, end) (or explicit ids/positions), over the cache
        (whose length is `start`) or, without a cache, from column 0 (`start` = 0). The mask is always
        explicit (the model refuses none for several queries); padded keys are removed from it.
        `extra_keys` fed tokens beyond column `end - extra_keys` are not buffer columns (the verifier's
        mask half) and are valid keys. Returns the last `keep` rows' logits [B, keep, V], the mask
        token's logit at -inf (never a valid output: a filled position must not read as masked)."""
        ids = self.x[:, start:end] if ids is None else ids
        positions = self.positions[:, start:end] if positions is None else positions
        q_len = ids.shape[1]
        kv_len = start + q_len
        key_valid = None
        if self.key_valid is not None:
            key_valid = self.key_valid[:, : kv_len - extra_keys]
            if extra_keys:
                key_valid = torch.cat([key_valid, key_valid.new_ones(key_valid.shape[0], extra_keys)], dim=1)
            if rows is not None:
                key_valid = key_valid[rows]
        mask = materialize(predicate, q_len, kv_len, device=ids.device, key_valid=key_valid)  # [B|1, Q, K]
        cache = self.cache if rows is None or self.cache is None else cache_rows(self.cache, rows)
        logits = self.model(input_ids=ids, attention_mask=mask, position_ids=positions, past_key_values=cache,
                            use_cache=self.cached, store_kv=store, logits_to_keep=keep).logits
        forbid_mask_token(logits, self.seq)
        return logits

    def prefill(self, rows: Tensor) -> None:
        """Cached decoders: store the whole prompt blocks' K/V (block-causal, token-causal with cache_ver)."""
        end = self.first_block * self.block_length
        if not self.cached or end == 0:
            return
        predicate = token_causal() if self.cache_ver else block_causal(self.block_length)
        self._forward(0, end, predicate, store=True, keep=1)
        tokens = self.seq.prompt_block_tokens  # [B]: each row is charged its own prompt blocks
        self.recorder.forward("prefill", rows & (tokens > 0), tokens)

    def draft(self, b: int, rows: Tensor) -> Tensor:
        """Draft logits of block b, [B, L, V]: the block sees its prefix and itself bidirectionally.

        No cache: one forward over columns [0, end of block b) with the block-causal mask (each row is
        charged its own prefix length). Cached: a read-only forward of the block over the cache; a
        pending commit of block b-1 rides along as extra query rows whose K/V are kept."""
        length = self.block_length
        start, end = b * length, (b + 1) * length
        if not self.cached or self.pending_commit is None:
            first = 0 if not self.cached else start
            predicate = block_causal(length) if not self.cached else full_attention()
            subset = self.draft_rows
            if subset is None:
                logits = self._forward(first, end, predicate, store=False, keep=length)
            else:
                # Only the rows in `subset` still decode the block; the others' logits are never read
                # (no mask, no edit), so they are left at 0 to keep every step's tensors [B, L, V].
                part = self._forward(first, end, predicate, store=False, keep=length, ids=self.x[subset, first:end],
                                     positions=self.positions[subset, first:end], rows=subset)  # [R, L, V]
                logits = scatter_rows(part, subset, self.x.shape[0])
            self.recorder.forward("draft", rows, length if self.cached else end - self.seq.offset)
            return logits
        prev = start - length
        prev_rule = token_causal(prev) if self.cache_ver else block_causal(length, prev)

        def joint(q: Tensor, kv: Tensor) -> Tensor:
            return torch.where(q < length, prev_rule(q, kv), kv >= 0)

        logits = self._forward(prev, end, joint, store=True, keep=length)
        self.cache.crop(start)
        self.pending_commit = None
        self.recorder.forward("draft", rows, 2 * length)
        return logits

    def commit(self, b: int, rows: Tensor) -> None:
        """Cached decoders: store block b's final K/V, now (a separate forward) or inside the next draft
        (fold_commit)."""
        if not self.cached:
            return
        if self.fold_commit:
            self.pending_commit = b
            return
        start = b * self.block_length
        predicate = token_causal(start) if self.cache_ver else full_attention()
        self._forward(start, start + self.block_length, predicate, store=True, keep=1)
        self.recorder.forward("commit", rows, self.block_length)

    def verify(self, b: int, drafted: Tensor, rows: Tensor) -> Tensor:
        """2L verifier (common.masks.verifier_2l) of block b: `drafted` [B, L] is the block with this
        iteration's edits applied and every masked position filled by its draft. Returns the mask
        half's logits [B, L, V]: row i is the AR distribution q_i given the cache and the block left of i."""
        length = self.block_length
        start = b * length
        if self.pending_commit is not None:
            raise RuntimeError("verify() before the block's first draft forward stored the previous block")
        ids = torch.cat([drafted, torch.full_like(drafted, self.cfg.mask_id)], dim=1)  # [R, 2L]
        subset = None if rows.numel() == self.x.shape[0] else rows  # every row: no cache copy
        pos = self.positions[:, start : start + length] if subset is None else self.positions[rows, start : start + length]
        logits = self._forward(start, start + 2 * length, verifier_2l(start, length), store=False, keep=length,
                               ids=ids, positions=torch.cat([pos, pos], dim=1), extra_keys=length, rows=subset)
        self.recorder.forward("verify", row_mask(rows, self.x.shape[0]), 2 * length)
        return logits


class IterationStep:
    """One iteration of a block: a draft forward, then the decoder's commit rule."""

    def __init__(self, cfg: LLaDA2DecodeConfig, generator: torch.Generator | None = None) -> None:
        self.cfg, self.sampling, self.generator = cfg, cfg.sampling(), generator

    def select(self, keep: Tensor) -> None:
        """The decoder keeps rows `keep` only ([K] long); per-row state follows."""

    def draft(self, blocks: LLaDA2Blocks, b: int, live: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(p [B, L, V], drawn tokens [B, L], their probabilities [B, L]) at EVERY block position: the
        masks need drafts, the decoded positions need them for editing."""
        probs = logits_to_probs(blocks.draft(b, live), self.sampling)
        drafts, confidence = draft_tokens(probs, self.sampling, self.generator)
        return probs, drafts, confidence

    def edits(self, drafts: Tensor, confidence: Tensor, blk: Tensor, editable: Tensor, live: Tensor) -> Tensor:
        """T2T edits of the live rows ([B, L] bool; common.editing.token_edits)."""
        return token_edits(drafts, confidence, blk, editable & live[:, None], self.cfg.editing_threshold)

    def __call__(self, blocks: LLaDA2Blocks, b: int, blk: Tensor, masked: Tensor, editable: Tensor,
                 live: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """blk: [B, L] the block's tokens at the iteration's start; masked: [B, L] its masks (live rows
        only); editable: [B, L] its decoded generated positions; live: [B] rows taking part.
        Returns (commit [B, L] bool, tokens [B, L] long, kinds [B, L] COMMIT_* codes)."""
        raise NotImplementedError


@torch.inference_mode()
def decode_blocks(model: torch.nn.Module, input_ids: Tensor, attention_mask: Tensor | None,
                  cfg: LLaDA2DecodeConfig, step: IterationStep) -> tuple[Tensor, list[dict]]:
    """The loop shared by the LLaDA2 decoders (see the module docstring). Host syncs: one per
    iteration (how many rows are still decoding this block, and with it whether any / every row stops
    after the block, which is meaningful once none is). Inside a block, the draft forwards after the
    first run over the rows still decoding it."""
    start_time = time.perf_counter()
    batch, device = input_ids.shape[0], input_ids.device
    recorder = DecodeRecorder(batch, device, cfg.record_decoding_order, editing=True)
    blocks = LLaDA2Blocks(model, input_ids, attention_mask, cfg, recorder)
    stop_ids = torch.tensor(cfg.stopping_criteria_idx, dtype=torch.long, device=device)
    finished = torch.zeros(batch, dtype=torch.bool, device=device)
    blocks.prefill(~finished)
    seq, length = blocks.seq, cfg.block_length
    max_iterations = length + cfg.max_post_steps + 1
    for b in range(blocks.first_block, blocks.n_blocks):
        recorder.new_block()
        blk = blocks.block(b)
        start, end = b * length, (b + 1) * length
        generated = seq.decodable(start, end) & ~finished[:, None]  # [B, L]: columns the row decodes here
        positions = blocks.positions[:, start:end]
        done = ~generated.any(-1)  # [B]
        post = torch.zeros_like(done, dtype=torch.long)
        ends_anyway = finished | seq.exhausted(end)  # [B]
        for i in range(max_iterations + 1):
            masked = (blk == cfg.mask_id) & generated  # [B, L]
            has_mask = masked.any(-1)  # [B]
            post += (~has_mask & ~done).long()
            done |= post > cfg.max_post_steps
            live = ~done
            # Once no row is live the block is final: a row stops after it when its generated columns
            # hold a stop token (earlier blocks hold none: such rows have left), as seq.stopped says then.
            ends = ends_anyway
            if cfg.eos_early_stop:
                ends = ends | (torch.isin(blk, stop_ids) & generated).any(-1)
            n_live, all_stopped, any_stopped = torch.stack([live.sum(), ends.all(), ends.any()]).tolist()
            if not n_live:
                break
            # The block's first draft may store the previous block: every row rides it.
            blocks.draft_rows = live_rows(live, n_live) if i > 0 else None
            recorder.post_step(live & ~has_mask)
            commit, tokens, kinds = step(blocks, b, blk, masked & live[:, None], generated & ~masked, live)
            blk.copy_(torch.where(commit, tokens, blk))
            recorder.commits(kinds, positions)
            done |= ~has_mask & ~(kinds == COMMIT_EDIT).any(-1)
        else:
            raise RuntimeError(f"block {b} did not finish within {max_iterations} iterations")
        finished = ends
        if b + 1 == blocks.n_blocks or all_stopped:
            break
        if any_stopped:  # stopped rows leave the batch: the commit and later forwards skip them
            keep = (~finished).nonzero().squeeze(-1)
            for holder in (blocks, step, recorder):
                holder.select(keep)
            finished = finished[keep]
        blocks.commit(b, ~finished)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    wall_time = time.perf_counter() - start_time
    ids, counted = seq.finish(input_ids, stop_ids, keep_stop=True)
    return ids, recorder.finalize(counted, wall_time)
