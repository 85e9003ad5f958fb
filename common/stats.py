"""Per-row decoding statistics, counted on device and read back once at the end.

NFE is split by kind (MEASURING.md): `prefill`, `draft`, `verify`, `commit`. A forward counts for a
row only when the row used it (an idle row riding along in a batched forward is not charged).
A decoder with token editing (LLaDA2) runs "post steps": draft forwards of a block that has no mask
left, spent only on edits. They are draft forwards (`nfe_by_kind["draft"]` includes them, as the
reference counts every iteration forward) and are also counted on their own as `post_steps`.
Decoding-order markers follow the SDAR reference (ALGORITHM.md §2.3): "|" opens a block; for a
position p, p = accepted speculative token, p + 0.5 = residual resample, p + 0.2 = ratio-threshold
commit, -p - 0.4 = high-confidence commit, -p = diffusion (fallback or baseline) commit, and
-p - 0.9 = token edit (T2T: p already held a decoded token, which was rewritten; `edits` counts them).
A position therefore has exactly one non-edit marker once decoded, plus one per edit.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

NFE_KINDS = ("prefill", "draft", "verify", "commit")

COMMIT_NONE, COMMIT_ACCEPTED, COMMIT_RESAMPLED, COMMIT_RATIO, COMMIT_HIGH_CONF, COMMIT_DIFFUSION, COMMIT_EDIT = range(7)
_MARKER_OFFSET = {COMMIT_ACCEPTED: 0.0, COMMIT_RESAMPLED: 0.5, COMMIT_RATIO: 0.2}
_NEGATIVE_MARKER_OFFSET = {COMMIT_HIGH_CONF: 0.4, COMMIT_EDIT: 0.9}
_MARKER_ORDER = (COMMIT_ACCEPTED, COMMIT_RESAMPLED, COMMIT_RATIO, COMMIT_HIGH_CONF, COMMIT_DIFFUSION, COMMIT_EDIT)


_COUNTERS = (*NFE_KINDS, "query_tokens", "decisions", "resamples", "edits", "post_steps")
_COLUMN = {name: i for i, name in enumerate(_COUNTERS)}


@dataclass
class DecodeRecorder:
    """Accumulates statistics for a batch of rows decoded together.

    Per step the recorder only logs the tensors it is given (no tensor op); the log is reduced with a few
    ops into one [B', C] counter tensor of the rows the decoder still holds, and that into the totals of
    the original rows (`index_add_`), only when rows leave the batch (`select`) and at `finalize`, which
    reads everything back in one transfer. Logged tensors must not be modified in place afterwards (the
    decoders pass fresh ones).
    `editing`: count T2T edits in `commits` (families that edit; the others skip that work).
    """

    batch_size: int
    device: torch.device | str = "cpu"
    record_order: bool = False
    editing: bool = False
    totals: Tensor = field(init=False)  # [B, C] long, counters of every original row (see _COUNTERS)
    held: Tensor = field(init=False)  # [B', C] long, counters of the held rows since the last flush
    _log: list[tuple[int, Tensor, int | Tensor | None]] = field(init=False, default_factory=list)
    _verified: list[tuple[Tensor, Tensor, Tensor]] = field(init=False, default_factory=list)
    _accepted: list[tuple[Tensor, Tensor]] = field(init=False, default_factory=list)
    _weights: dict[tuple[int, int], Tensor] = field(init=False, default_factory=dict)
    order: list[list[float | str]] = field(init=False)
    index: Tensor = field(init=False)  # [B'] original row of each row the decoder still holds

    def __post_init__(self) -> None:
        b = self.batch_size
        self.totals = torch.zeros(b, len(_COUNTERS), dtype=torch.long, device=self.device)
        self.held = torch.zeros_like(self.totals)
        self.order = [[] for _ in range(b)]
        self.index = torch.arange(b, device=self.device)

    def _weight(self, column: int, width: int) -> Tensor:
        """[C] long: what one logged row adds to each counter: 1 to `column`, `width` query tokens.
        Built once per (column, width) and reused, so a flush stacks them without building any."""
        key = (column, width)
        if key not in self._weights:  # written in place on device: no host-to-device copy (a sync on a GPU)
            weight = torch.zeros(len(_COUNTERS), dtype=torch.long, device=self.device)
            weight[column] = 1
            weight[_COLUMN["query_tokens"]] += width
            self._weights[key] = weight
        return self._weights[key]

    def _flush(self) -> None:
        """Add the logged charges to the held rows' counters, then the held counters to the original
        rows' totals: every charge with a fixed width in one broadcast product ([N, B', 1] rows x [N, 1, C]
        weights, summed over N), per-row widths and resamples with one op each."""
        if self._log:
            fixed = [(rows, self._weight(column, width if isinstance(width, int) else 0))
                     for column, rows, width in self._log]
            rows = torch.stack([r for r, _ in fixed])  # [N, B'] bool
            weights = torch.stack([w for _, w in fixed])  # [N, C] long
            self.held += (rows[:, :, None] * weights[:, None, :]).sum(0)
            per_row = [rows * width for _, rows, width in self._log if isinstance(width, Tensor)]
            if per_row:
                self.held[:, _COLUMN["query_tokens"]] += torch.stack(per_row).sum(0)
        if self._verified:
            rows, n_accepted, resampled = (torch.cat(parts) for parts in zip(*self._verified))
            self.held[:, _COLUMN["resamples"]].index_add_(0, rows, resampled.long())
            self._accepted.append((self.index[rows], n_accepted))
        self._log, self._verified = [], []
        self.totals.index_add_(0, self.index, self.held)
        self.held.zero_()

    def select(self, keep: Tensor) -> None:
        """The decoder keeps only rows `keep` (indices into the rows it holds): later calls pass tensors
        over those rows, charged to their original rows."""
        self._flush()
        self.index = self.index[keep]
        self.held = self.held[keep]

    def forward(self, kind: str, rows: Tensor, width: int | Tensor) -> None:
        """Charge one forward of `width` query tokens (an int, or [B] per row) to the rows where `rows`
        ([B] bool, not modified afterwards) is True. Logged; counted at the next flush."""
        self._log.append((_COLUMN[kind], rows, width))

    def post_step(self, rows: Tensor) -> None:
        """The draft forward just charged to `rows` ([B] bool) was a post step (no mask left)."""
        self._log.append((_COLUMN["post_steps"], rows, None))

    def decision(self, rows: Tensor) -> None:
        self._log.append((_COLUMN["decisions"], rows, None))

    def verification(self, rows: Tensor, n_accepted: Tensor, resampled: Tensor) -> None:
        """Record one verification of the held rows `rows` ([R] long indices) with their accepted-prefix
        lengths and resample flags ([R]). Logged; counted at the next flush."""
        self._verified.append((rows, n_accepted, resampled))

    def new_block(self) -> None:
        if self.record_order:
            for row in self.index.tolist():
                self.order[row].append("|")

    def commits(self, kinds: Tensor, positions: Tensor) -> None:
        """Append markers for this step's commits. kinds: [B, L] COMMIT_* codes; positions: [B, L]
        absolute positions. Edits are counted on device; the markers cost a host transfer, so they are
        only written with `record_order`."""
        if self.editing:
            self.held[:, _COLUMN["edits"]] += (kinds == COMMIT_EDIT).sum(-1)
        if not self.record_order:
            return
        for row, kind_row, pos_row in zip(self.index.tolist(), kinds.tolist(), positions.tolist()):
            for code in _MARKER_ORDER:
                for kind, pos in zip(kind_row, pos_row):
                    if kind != code:
                        continue
                    if code in _MARKER_OFFSET:
                        self.order[row].append(pos + _MARKER_OFFSET[code])
                    elif code in _NEGATIVE_MARKER_OFFSET:
                        self.order[row].append(-pos - _NEGATIVE_MARKER_OFFSET[code])
                    else:
                        self.order[row].append(-pos)

    def finalize(self, generated_tokens: list[int], wall_time: float) -> list[dict]:
        """One dict per row. TPF excludes prefill (MEASURING.md); `tpf_with_prefill` includes it."""
        self._flush()
        # One transfer: the counters, then every verification's original row and accepted length, in order.
        flat = torch.cat([self.totals.flatten(), *(part for pair in self._accepted for part in pair)]).tolist()
        width, size = len(_COUNTERS), self.totals.numel()
        counters = [dict(zip(_COUNTERS, flat[start : start + width])) for start in range(0, size, width)]
        accepted: list[list[int]] = [[] for _ in range(self.batch_size)]
        at = size
        for index, _ in self._accepted:  # each flush's (rows [N], lengths [N])
            n = index.numel()
            for row, length in zip(flat[at : at + n], flat[at + n : at + 2 * n]):
                accepted[row].append(length)
            at += 2 * n
        out = []
        for row in range(self.batch_size):
            count = counters[row]
            by_kind = {kind: count[kind] for kind in NFE_KINDS}
            decisions = count["decisions"]
            total = sum(by_kind.values())
            decode_nfe = total - by_kind["prefill"]
            n_ver = len(accepted[row])
            gen = generated_tokens[row]
            out.append(
                {
                    "generated_tokens": gen,
                    "nfe": total,
                    "nfe_by_kind": by_kind,
                    "tpf": gen / decode_nfe if decode_nfe else 0.0,
                    "tpf_with_prefill": gen / total if total else 0.0,
                    "mean_query_width": count["query_tokens"] / total if total else 0.0,
                    "routing_decisions": decisions,
                    "verifications": n_ver,
                    "verify_fraction": n_ver / decisions if decisions else 0.0,
                    "accepted_lengths": accepted[row],
                    "mean_accepted": sum(accepted[row]) / n_ver if n_ver else 0.0,
                    "resamples": count["resamples"],
                    "edits": count["edits"],
                    "post_steps": count["post_steps"],
                    "wall_time": wall_time,
                    "tokens_per_second": gen / wall_time if wall_time > 0 else 0.0,
                    **({"decoding_order": self.order[row]} if self.record_order else {}),
                }
            )
        return out
