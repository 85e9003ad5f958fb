"""SDAR family adapter: the decode configuration, the sequence buffer, the KV cache and the kinds of
forward a block-diffusion decoder makes (prefill, draft, commit, 2L verify). No decoding policy
lives here: `generate.py` (baseline) and `generate_ssd_policy.py` (S2D2) are loops on top of it.

Layout (ALGORITHM.md §0, §1.1): a row of prompt length P decodes `ceil((P + G) / L)` blocks counted
from its first token; only its whole prompt blocks are prefilled, and the `P mod L` trailing prompt
tokens sit in its first decode block as known tokens. Batches come LEFT-padded (as lm-eval and
tokenizers with padding_side="left" give them); `common.sequence.SequenceBuffer` re-pads each row by
whole blocks so every row's blocks, positions and masks are exactly its batch-1 ones, and a batch gives
each row the tokens it gets alone (for decoders that draw no random numbers).

`fold_commit` (default on; an improvement over the reference, ALGORITHM.md §5.2): instead of a
separate forward that stores a finished block's K/V, the next block's first draft forward carries the
finished block as extra query rows with store_kv=True and the cache is then cropped back. Those rows
see exactly what a separate commit forward would show them, so tokens are unchanged; the forward
count drops by one per block, and no commit is spent after the last block or on a stop.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor
from transformers import DynamicCache

from common.cache import cache_rows, live_rows, row_mask, scatter_rows
from common.config import require_field_bounds
from common.masks import Predicate, block_causal, draft_block, materialize, token_causal, verifier_2l
from common.remasking import REMASKING_STRATEGIES
from common.sampling import SamplingConfig, draft_tokens, logits_to_probs
from common.schedule import num_transfer_tokens
from common.sequence import HoldsSequence, SequenceBuffer, forbid_mask_token
from common.stats import DecodeRecorder
from common.token_ids import with_token_ids


@dataclass(frozen=True)
class BlockDiffusionConfig:
    """Baseline block-diffusion decoding (SDAR `generate.py`). Field names are the reference's flags."""

    mask_id: int | None = field(default=None, metadata={"help": "mask token id; default: the model's generation config"})
    gen_length: int = field(default=128, metadata={"bounds": (1, None), "help": "generation budget in tokens"})
    max_gen_toks: int | None = field(default=None, metadata={"help": "overrides gen_length when set (lm-eval's name)",
                                                             "bounds": (1, None)})
    block_length: int = field(default=4, metadata={"bounds": (1, None), "help": "tokens per block L (1 = AR mode)"})
    denoising_steps: int = field(default=4, metadata={"help": "denoising steps S per block (at most block_length)",
                                                      "bounds": (1, None), "at_most": "block_length"})
    temperature: float = field(default=1.0, metadata={"bounds": (0.0, None)})
    top_k: int = field(default=0, metadata={"bounds": (0, None), "help": "0 disables top-k"})
    top_p: float = field(default=1.0, metadata={"bounds": (0.0, 1.0)})
    do_sample: bool = field(default=False, metadata={"help": "sample drafts (else argmax of the same distribution)"})
    remasking_strategy: str = field(default="low_confidence_dynamic", metadata={"choices": REMASKING_STRATEGIES})
    confidence_threshold: float = field(default=0.85, metadata={"help": "dynamic strategy threshold tau (strict >)",
                                                                  "bounds": (0.0, 1.0)})
    eb_threshold: float = field(default=0.35, metadata={"help": "entropy_bounded cumulative entropy budget (nats)"})
    stopping_criteria_idx: tuple[int, ...] | None = field(default=None, metadata={"help": "stop token ids; default: generation config eos"})
    cache_ver: bool = field(default=False, metadata={"help": "AR-like cache: prefill/commit with a token-causal mask"})
    draft_ver: bool = field(default=False, metadata={"help": "draft forward: decoded block prefix attends causally"})
    fold_commit: bool = field(default=True, metadata={"help": "store a finished block's K/V inside the next draft forward"})
    return_forward_stats: bool = field(default=False, metadata={"help": "also return per-row decoding stats"})
    record_decoding_order: bool = field(default=False, metadata={"help": "add decoding-order markers to the stats"})

    def __post_init__(self) -> None:
        require_field_bounds(self)
        if self.remasking_strategy not in REMASKING_STRATEGIES:
            raise ValueError(
                f"unknown remasking_strategy {self.remasking_strategy!r}; valid: {', '.join(REMASKING_STRATEGIES)}"
            )
        self.sampling()

    def sampling(self) -> SamplingConfig:
        return SamplingConfig(self.temperature, self.top_k, self.top_p, self.do_sample)

    @property
    def budget(self) -> int:
        return self.max_gen_toks if self.max_gen_toks is not None else self.gen_length

    def resolved(self, model: torch.nn.Module) -> "BlockDiffusionConfig":
        """mask_id and stop ids filled from the model where not given (common.token_ids precedence)."""
        return with_token_ids(self, model)


class SDARBlocks(HoldsSequence):
    """Buffer, cache and forwards for one batch of prompts decoded together."""

    def __init__(
        self,
        model: torch.nn.Module,
        input_ids: Tensor,
        attention_mask: Tensor | None,
        cfg: BlockDiffusionConfig,
        recorder: DecodeRecorder,
    ) -> None:
        self.model, self.cfg, self.recorder = model, cfg, recorder
        self.seq = SequenceBuffer(input_ids, attention_mask, unit=cfg.block_length, budget=cfg.budget,
                                  mask_id=cfg.mask_id, whole_blocks=True)
        self.block_length = cfg.block_length
        self.n_blocks, self.first_block = self.seq.n_blocks, self.seq.first_block
        self.cache = DynamicCache()
        self.pending_commit: int | None = None
        self._masks: dict[tuple[str, int], Tensor] = {}  # [B|1, Q, K] masks reused by every step of a block
        # [R] long: the rows a read-only draft forward runs over (None: every row). Set by the loop per
        # step: rows with no mask left in the block skip the forwards until the block ends.
        self.draft_rows: Tensor | None = None

    def rows_dropped(self) -> None:
        self._masks.clear()

    def block(self, b: int) -> Tensor:
        """View of block b's tokens, [B, L]; writing into it writes the buffer."""
        return self.x[:, b * self.block_length : (b + 1) * self.block_length]

    def _forward(self, start: int, end: int, predicate: Predicate | None, store: bool, ids: Tensor | None = None,
                 positions: Tensor | None = None, extra_keys: int = 0, keep: int = 0,
                 rows: Tensor | None = None, memo: str | None = None) -> Tensor:
        """One model call on columns [start, end) (or explicit ids/positions) over the cache; logits
        [B, Q, V] (the last `keep` rows only when keep > 0: the head runs on those alone) with the mask
        token's logit at -inf. `rows` ([R] long): a read-only forward over those batch rows only (`ids`
        and `positions` are then theirs). `memo`: the mask is the same for every call of this name at
        this `start` (every step of a block), so it is built once per block and row set.
        predicate None means full attention; with no padding it is sent as attention_mask=None so a
        GPU can take the flash-attention path."""
        ids = self.x[:, start:end] if ids is None else ids
        positions = self.positions[:, start:end] if positions is None else positions
        q_len = ids.shape[1]
        kv_len = start + q_len
        mask = self._masks.get((memo, start)) if memo else None
        if mask is None and (predicate is not None or self.key_valid is not None):
            key_valid = None
            if self.key_valid is not None:
                key_valid = self.key_valid[:, : start + q_len - extra_keys]
                if extra_keys:
                    key_valid = torch.cat([key_valid, key_valid.new_ones(key_valid.shape[0], extra_keys)], dim=1)
            mask = materialize(
                predicate if predicate is not None else (lambda q, kv: kv >= 0),
                q_len, kv_len, device=ids.device, key_valid=key_valid,
            )
            if memo:
                if any(at != start for _, at in self._masks):  # a new block: the old block's masks are done
                    self._masks.clear()
                self._masks[memo, start] = mask
        if mask is not None and rows is not None and mask.shape[0] > 1:
            mask = mask[rows]
        logits = self.model(
            input_ids=ids, attention_mask=mask, position_ids=positions,
            past_key_values=self.cache if rows is None else cache_rows(self.cache, rows), use_cache=True,
            store_kv=store, logits_to_keep=keep,
        ).logits
        # The mask token is never a valid output: a trained model gives it ~0 mass anyway, and an
        # untrained one must not commit it (the output is trimmed at the first mask token).
        forbid_mask_token(logits, self.seq)
        return logits

    def prefill(self, rows: Tensor) -> None:
        """Store K/V of the whole prompt blocks (block-causal, or token-causal with cache_ver)."""
        end = self.first_block * self.block_length
        if end == 0:
            return
        predicate = token_causal() if self.cfg.cache_ver else block_causal(self.block_length)
        self._forward(0, end, predicate, store=True, keep=1)  # K/V only: no full-vocabulary logits
        tokens = self.seq.prompt_block_tokens  # [B]: each row is charged its own prompt blocks
        self.recorder.forward("prefill", rows & (tokens > 0), tokens)

    def draft(self, b: int, rows: Tensor, causal_rows: Tensor | None = None) -> Tensor:
        """Draft logits for block b, [B, L, V]: the block attends to the cache and to itself
        bidirectionally (rows before `causal_rows` token-causally with draft_ver). A pending commit of
        block b-1 rides along (fold_commit) and its K/V are kept; the draft's own K/V are not."""
        length = self.block_length
        start = b * length
        cur = draft_block(start, causal_rows)
        if self.pending_commit is None:
            uses_default = causal_rows is None
            subset, end = self.draft_rows, start + length
            if subset is None:
                logits = self._forward(start, end, None if uses_default else cur, store=False,
                                       memo="draft" if uses_default else None)
            else:
                # Only the rows in `subset` still have masks; the others' logits are never read (no
                # commit without a mask), so they are left at 0 to keep every step's tensors [B, L, V].
                part = self._forward(start, end, None if uses_default else cur, store=False,
                                     ids=self.x[subset, start:end], positions=self.positions[subset, start:end],
                                     rows=subset, memo="draft" if uses_default else None)  # [R, L, V]
                logits = scatter_rows(part, subset, self.x.shape[0])
            self.recorder.forward("draft", rows, length)
            return logits
        prev = start - length
        prev_rule = token_causal(prev) if self.cfg.cache_ver else block_causal(length, prev)
        # With cache_ver the previous block's rows are token-causal and so are the current block's rows
        # before its first mask (all of them bidirectional without draft_ver): one comparison each.
        bidirectional_from = length + (0 if causal_rows is None else causal_rows.view(-1, 1, 1))

        def joint(q: Tensor, kv: Tensor) -> Tensor:
            if self.cfg.cache_ver:
                return (kv <= q + prev) | (q >= bidirectional_from)
            return torch.where(q < length, prev_rule(q, kv), cur(q - length, kv))

        logits = self._forward(prev, start + length, joint, store=True, keep=length)
        self.cache.crop(start)
        self.pending_commit = None
        self.recorder.forward("draft", rows, 2 * length)
        return logits

    def commit(self, b: int, rows: Tensor) -> None:
        """Store block b's final K/V: now (a separate forward) or inside the next draft (fold_commit)."""
        if self.cfg.fold_commit:
            self.pending_commit = b
            return
        start = b * self.block_length
        predicate = token_causal(start) if self.cfg.cache_ver else None
        self._forward(start, start + self.block_length, predicate, store=True, keep=1)
        self.recorder.forward("commit", rows, self.block_length)

    def verify(self, b: int, drafted: Tensor, rows: Tensor) -> Tensor:
        """2L verifier (common.masks.verifier_2l) for block b over batch rows `rows` ([R] long): `drafted`
        [R, L] is their block with every masked position filled by its draft. Returns the mask half's
        logits, [R, L, V]: row i is the AR distribution q_i given the cache and drafts left of i."""
        length = self.block_length
        start = b * length
        ids = F.pad(drafted, (0, length), value=self.cfg.mask_id)  # [R, 2L]: drafts, then L masks
        subset = None if rows.numel() == self.x.shape[0] else rows  # every row: no cache copy
        pos = self.positions[:, start : start + length] if subset is None else self.positions[rows, start : start + length]
        logits = self._forward(start, start + 2 * length, verifier_2l(start, length), store=False, ids=ids,
                               positions=torch.cat([pos, pos], dim=1), extra_keys=length, keep=length, rows=subset,
                               memo="verify")
        self.recorder.forward("verify", row_mask(rows, self.x.shape[0]), 2 * length)
        return logits


class BlockStep:
    """One denoising step of a decoder: given the block and its mask, choose what to commit."""

    def __init__(self, cfg: BlockDiffusionConfig, generator: torch.Generator | None = None) -> None:
        self.cfg = cfg
        self.sampling = cfg.sampling()
        self.schedule = num_transfer_tokens(cfg.block_length, cfg.denoising_steps)
        self.generator = generator

    def begin_block(self, b: int, masked: Tensor) -> None:
        """Called when block b starts (masked: [B, L])."""

    @property
    def rows_left(self) -> int | None:
        """How many rows still have masks in the block after the last step, where the step has read it
        on the host already (None: the loop reads it)."""
        return None

    def select(self, keep: Tensor) -> None:
        """The decoder keeps rows `keep` only ([K] long); per-row state follows."""

    def draft(self, blocks: "SDARBlocks", b: int, masked: Tensor, live: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Draft forward of block b and its drafts: (p [B, L, V], draft tokens [B, L], confidence [B, L]).
        With `draft_ver` the block's decoded prefix (rows before the first mask) attends causally."""
        first_masked = masked.int().argmax(-1) if self.cfg.draft_ver else None
        probs = logits_to_probs(blocks.draft(b, live, first_masked), self.sampling)  # [B, L, V]
        drafts, confidence = draft_tokens(probs, self.sampling, self.generator)
        return probs, drafts, confidence

    def __call__(self, blocks: SDARBlocks, b: int, step: int, blk: Tensor, masked: Tensor,
                 live: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Returns (commit [B, L] bool, tokens [B, L] long, kinds [B, L] COMMIT_* codes)."""
        raise NotImplementedError


@torch.inference_mode()
def decode_blocks(model: torch.nn.Module, input_ids: Tensor, attention_mask: Tensor | None,
                  cfg: BlockDiffusionConfig, step: BlockStep) -> tuple[Tensor, list[dict]]:
    """The outer loop shared by every SDAR decoder: prefill, then per block up to `denoising_steps`
    steps until no mask is left, a commit, and a stop check. Host syncs: one per step (how many rows
    still have masks, which also picks the rows of the next draft; how many rows stop after this block;
    a block left incomplete after `denoising_steps` is an error, since every remasking strategy commits
    at least its scheduled count). When the step has read how many rows still have masks itself
    (`BlockStep.rows_left`), the loop reads only after the block's last step: how many rows stop."""
    start_time = time.perf_counter()
    batch = input_ids.shape[0]
    device = input_ids.device
    recorder = DecodeRecorder(batch, device, cfg.record_decoding_order)
    blocks = SDARBlocks(model, input_ids, attention_mask, cfg, recorder)
    stop_ids = torch.tensor(cfg.stopping_criteria_idx, dtype=torch.long, device=device)
    blocks.prefill(torch.ones(batch, dtype=torch.bool, device=device))
    seq, length = blocks.seq, cfg.block_length
    for b in range(blocks.first_block, blocks.n_blocks):
        recorder.new_block()
        blk = blocks.block(b)
        start, end = b * length, (b + 1) * length
        decodable = seq.decodable(start, end)  # [B, L]; rows that stopped have left the batch
        masked = (blk == cfg.mask_id) & decodable  # [B, L]
        exhausted = seq.exhausted(end)  # [B]
        step.begin_block(b, masked)
        positions = blocks.positions[:, start:end]
        live = masked.any(-1)  # [B]: a new block of a live batch always has masks
        blocks.draft_rows = None  # the block's first draft also stores the previous block: every row
        for s in range(cfg.denoising_steps):
            commit, tokens, kinds = step(blocks, b, s, blk, masked, live)
            blk.copy_(torch.where(commit, tokens, blk))
            masked &= ~commit
            recorder.commits(kinds, positions)
            live = masked.any(-1)  # [B]
            # One read per step: how many rows still have masks, and (meaningful once none has) how many
            # stop here. A row with a stop token in an earlier block has left the batch, and a complete
            # block has no mask before any of its tokens, so a stop token in this block stops the row.
            stopped = (torch.isin(blk, stop_ids) & decodable).any(-1) | exhausted  # [B]
            if step.rows_left is None:
                n_live, n_stopped = torch.stack([live.sum(), stopped.sum()]).tolist()
            else:
                n_live = step.rows_left
                n_stopped = 0 if n_live else int(stopped.sum())
            if not n_live:
                break
            blocks.draft_rows = live_rows(live, n_live)
        if n_live:
            raise RuntimeError(f"block {b} still has masks after {cfg.denoising_steps} steps")
        blocks.commit(b, torch.ones_like(stopped))
        if n_stopped == stopped.shape[0]:
            break
        if n_stopped:  # stopped rows leave the batch: later forwards run on the others only
            keep = torch.argsort(stopped.to(torch.uint8), stable=True)[: stopped.shape[0] - n_stopped]  # [K]
            for holder in (blocks, step, recorder):
                holder.select(keep)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    wall_time = time.perf_counter() - start_time
    ids, counted = seq.finish(input_ids, stop_ids, keep_stop=False)
    return ids, recorder.finalize(counted, wall_time)
