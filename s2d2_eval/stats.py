"""Per-sample decoding statistics for evaluation, and how they are pooled.

The decoders return one stats dict per row (`common.stats.DecodeRecorder.finalize`). The adapter
adds two batch fields: `batch_rows` (rows decoded together) and `wall_time_share` (the batch's wall
time divided by its rows), so that summing shares over samples gives the real elapsed decode time
at any batch size.

Pooled metrics are ratios of sums, never means of ratios (docs/METHOD.md §5): TPF = Σ generated tokens /
Σ non-prefill forwards; tokens/s = Σ generated tokens / Σ decode wall time. Pure Python, so lm-eval
task utilities and the table/plot scripts can import it without torch.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from typing import Any

NFE_KINDS = ("prefill", "draft", "verify", "commit")


class Completion(str):
    """A generated text that also carries its decoding stats.

    lm-eval hands a response object unchanged through `take_first` filters to the task's
    `process_results`, so a str subclass is how per-sample stats reach a task's per-sample metrics
    (and the logged samples) without patching lm-eval. Everywhere else it is an ordinary string.
    """

    decode_stats: dict[str, Any] | None

    def __new__(cls, text: str, decode_stats: dict[str, Any] | None = None) -> "Completion":
        obj = super().__new__(cls, text)
        obj.decode_stats = decode_stats
        return obj

    def __reduce__(self):
        """Pickle (lm-eval's --use_cache stores responses) with the stats."""
        return (Completion, (str(self), self.decode_stats))


def decode_nfe(row: Mapping[str, Any]) -> int:
    """Forwards that produced tokens: all but prefill (docs/METHOD.md §5: TPF excludes prefill)."""
    return int(row["nfe"]) - int(row["nfe_by_kind"].get("prefill", 0))


def sample_metrics(row: Mapping[str, Any] | None) -> dict[str, Any]:
    """Per-sample metrics an lm-eval task returns from `process_results` (empty without stats).

    Plain numbers are averaged by lm-eval. `tpf` and `tokens_per_second` are small dicts so the
    task's aggregation can pool them as ratios of sums (`pooled_tpf`, `pooled_tokens_per_second`).
    """
    if not row:
        return {}
    by_kind = row["nfe_by_kind"]
    metrics: dict[str, Any] = {
        "nfe": row["nfe"],
        **{f"nfe_{kind}": by_kind.get(kind, 0) for kind in NFE_KINDS},
        "generated_tokens": row["generated_tokens"],
        "verifications": row["verifications"],
        "accepted_tokens": sum(row["accepted_lengths"]),
        "resamples": row["resamples"],
        "wall_time": wall_share(row),
        "tpf": {"tokens": row["generated_tokens"], "forwards": decode_nfe(row)},
        "tokens_per_second": {"tokens": row["generated_tokens"], "seconds": wall_share(row)},
    }
    return metrics


def wall_share(row: Mapping[str, Any]) -> float:
    """This sample's share of its batch's decode wall time (the whole time at batch 1)."""
    return float(row.get("wall_time_share", row["wall_time"]))


def pooled_tpf(items: list[Mapping[str, float]]) -> float:
    """lm-eval aggregation: Σ tokens / Σ forwards over the per-sample `tpf` dicts."""
    forwards = sum(item["forwards"] for item in items)
    return sum(item["tokens"] for item in items) / forwards if forwards else 0.0


def pooled_tokens_per_second(items: list[Mapping[str, float]]) -> float:
    """lm-eval aggregation: Σ tokens / Σ seconds over the per-sample `tokens_per_second` dicts."""
    seconds = sum(item["seconds"] for item in items)
    return sum(item["tokens"] for item in items) / seconds if seconds > 0 else 0.0


def summarize(rows: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """Pooled decoding metrics over samples: means per sample, TPF and tokens/s as ratios of sums,
    and the acceptance statistics of docs/METHOD.md §5."""
    rows = list(rows)
    n = len(rows)
    if n == 0:
        return {"n_samples": 0}
    tokens = sum(r["generated_tokens"] for r in rows)
    nfe = sum(r["nfe"] for r in rows)
    by_kind = {kind: sum(r["nfe_by_kind"].get(kind, 0) for r in rows) for kind in NFE_KINDS}
    decode = nfe - by_kind["prefill"]
    seconds = sum(wall_share(r) for r in rows)
    accepted = [length for r in rows for length in r["accepted_lengths"]]
    verifications = sum(r["verifications"] for r in rows)
    decisions = sum(r.get("routing_decisions", 0) for r in rows)
    resamples = sum(r["resamples"] for r in rows)
    histogram = Counter(accepted)
    return {
        "n_samples": n,
        "generated_tokens_total": tokens,
        "generated_tokens_mean": tokens / n,
        "nfe_mean": nfe / n,
        "nfe_by_kind_mean": {kind: count / n for kind, count in by_kind.items()},
        "tpf": tokens / decode if decode else 0.0,
        "tpf_with_prefill": tokens / nfe if nfe else 0.0,
        "tokens_per_second": tokens / seconds if seconds > 0 else 0.0,
        "wall_time_total": seconds,
        "wall_time_mean": seconds / n,
        "max_batch_rows": max(int(r.get("batch_rows", 1)) for r in rows),
        # token editing (LLaDA2): T2T edits and edit-only post-step forwards per sample (0 elsewhere)
        "edits_mean": sum(r.get("edits", 0) for r in rows) / n,
        "post_steps_mean": sum(r.get("post_steps", 0) for r in rows) / n,
        "acceptance": {
            "verifications_total": verifications,
            "verifications_per_sample": verifications / n,
            "verify_fraction": verifications / decisions if decisions else 0.0,
            "mean_accepted_length": sum(accepted) / len(accepted) if accepted else 0.0,
            "accepted_length_histogram": {str(k): histogram[k] for k in sorted(histogram)},
            "resamples_total": resamples,
            "tokens_per_verify": (sum(accepted) + resamples) / verifications if verifications else 0.0,
        },
    }
