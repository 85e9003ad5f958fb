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


@dataclass
class DecodeRecorder:
    """Accumulates statistics for a batch of rows decoded together."""

    batch_size: int
    device: torch.device | str = "cpu"
    record_order: bool = False
    nfe: Tensor = field(init=False)  # [B, 4] long
    query_tokens: Tensor = field(init=False)  # [B] long, summed query width of charged forwards
    decisions: Tensor = field(init=False)  # [B] long, routing decisions taken
    resamples: Tensor = field(init=False)  # [B] long
    edits: Tensor = field(init=False)  # [B] long, T2T edits committed
    post_steps: Tensor = field(init=False)  # [B] long, draft forwards of blocks without masks (editing only)
    _accepted: list[tuple[Tensor, Tensor, Tensor]] = field(init=False, default_factory=list)
    order: list[list[float | str]] = field(init=False)
    index: Tensor = field(init=False)  # [B'] original row of each row the decoder still holds

    def __post_init__(self) -> None:
        b = self.batch_size
        self.nfe = torch.zeros(b, len(NFE_KINDS), dtype=torch.long, device=self.device)
        self.query_tokens = torch.zeros(b, dtype=torch.long, device=self.device)
        self.decisions = torch.zeros(b, dtype=torch.long, device=self.device)
        self.resamples = torch.zeros(b, dtype=torch.long, device=self.device)
        self.edits = torch.zeros(b, dtype=torch.long, device=self.device)
        self.post_steps = torch.zeros(b, dtype=torch.long, device=self.device)
        self.order = [[] for _ in range(b)]
        self.index = torch.arange(b, device=self.device)

    def select(self, keep: Tensor) -> None:
        """The decoder keeps only rows `keep` (indices into the rows it holds): later calls pass tensors
        over those rows, charged to their original rows."""
        self.index = self.index[keep]

    def forward(self, kind: str, rows: Tensor, width: int | Tensor) -> None:
        """Charge one forward of `width` query tokens (an int, or [B] per row) to the rows where `rows`
        ([B] bool) is True."""
        charged = rows.long()
        self.nfe[self.index, NFE_KINDS.index(kind)] += charged
        self.query_tokens[self.index] += charged * width

    def post_step(self, rows: Tensor) -> None:
        """The draft forward just charged to `rows` ([B] bool) was a post step (no mask left)."""
        self.post_steps[self.index] += rows.long()

    def decision(self, rows: Tensor) -> None:
        self.decisions[self.index] += rows.long()

    def verification(self, rows: Tensor, n_accepted: Tensor, resampled: Tensor) -> None:
        """Record one verification for `rows` with accepted-prefix lengths and resample flags ([B'])."""
        self._accepted.append((self.index, rows.clone(), n_accepted.clone()))  # filtered at finalize: no sync
        self.resamples[self.index] += (resampled & rows).long()

    def new_block(self) -> None:
        if self.record_order:
            for row in self.index.tolist():
                self.order[row].append("|")

    def commits(self, kinds: Tensor, positions: Tensor) -> None:
        """Append markers for this step's commits. kinds: [B, L] COMMIT_* codes; positions: [B, L]
        absolute positions. Edits are counted on device; the markers cost a host transfer, so they are
        only written with `record_order`."""
        self.edits[self.index] += (kinds == COMMIT_EDIT).sum(-1)
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
        nfe = self.nfe.tolist()
        width = self.query_tokens.tolist()
        decisions = self.decisions.tolist()
        resamples = self.resamples.tolist()
        edits, post_steps = self.edits.tolist(), self.post_steps.tolist()
        accepted: list[list[int]] = [[] for _ in range(self.batch_size)]
        if self._accepted:  # one transfer: every verification's (original row, accepted length), in order
            hit = torch.cat([verified for _, verified, _ in self._accepted])
            rows = torch.cat([index for index, _, _ in self._accepted])[hit].tolist()
            lengths = torch.cat([n for _, _, n in self._accepted])[hit].tolist()
            for row, n in zip(rows, lengths):
                accepted[row].append(n)
        out = []
        for row in range(self.batch_size):
            by_kind = dict(zip(NFE_KINDS, nfe[row]))
            total = sum(nfe[row])
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
                    "mean_query_width": width[row] / total if total else 0.0,
                    "routing_decisions": decisions[row],
                    "verifications": n_ver,
                    "verify_fraction": n_ver / decisions[row] if decisions[row] else 0.0,
                    "accepted_lengths": accepted[row],
                    "mean_accepted": sum(accepted[row]) / n_ver if n_ver else 0.0,
                    "resamples": resamples[row],
                    "edits": edits[row],
                    "post_steps": post_steps[row],
                    "wall_time": wall_time,
                    "tokens_per_second": gen / wall_time if wall_time > 0 else 0.0,
                    **({"decoding_order": self.order[row]} if self.record_order else {}),
                }
            )
        return out
