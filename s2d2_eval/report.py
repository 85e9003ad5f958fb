"""From run records to the paper-style comparison: labels, speedups, matched-accuracy baselines and
Pareto fronts. Reads records only (never models or torch), so tables and plots are cheap to redo.

Definitions (also printed under every table):
* speedup vs AR = this decoder's TPF (or tokens/s) / AR mode's, same model and task;
* matched dynamic baseline of a point with accuracy a ± s.e. e: among the dynamic-threshold
  points with accuracy >= a - e, the fastest (highest TPF for the TPF ratio, highest tokens/s for
  the tokens/s ratio); none qualifies -> no ratio;
* a point is on the Pareto front when no other point is at least as accurate AND at least as fast
  with one of the two strictly better.

One table (and one plot) compares decoders on the same model, task, sample count and sweep: records
that differ in any of these (`MUST_MATCH`) are refused with one line naming two of them, as is a
record that lacks a metric the table shows.
"""

from __future__ import annotations

import csv
import io
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from families import FAMILIES
from s2d2_eval.records import RecordError, display_path

KIND_ORDER = {"ar": 0, "static": 1, "dynamic": 2, "s2d2": 3}
KIND_TITLES = {"ar": "AR mode", "static": "static", "dynamic": "dynamic", "s2d2": "S2D2"}


def _family_field(params: Mapping[str, Any], attribute: str) -> Any:
    """The first family's `attribute` field (e.g. `block_field`) present in a decoder's keywords."""
    return next((params[name] for name in (getattr(f, attribute) for f in FAMILIES.values()) if name in params), None)


def block_length_of(params: Mapping[str, Any]) -> int | None:
    """Block length of any family's keywords (SDAR `block_length`, Fast-dLLM v2 `block_size`, ...)."""
    return _family_field(params, "block_field")


def threshold_of(params: Mapping[str, Any]) -> float | None:
    """Commit threshold of any family's keywords (SDAR `confidence_threshold`, Fast-dLLM v2 `threshold`, ...)."""
    return _family_field(params, "threshold_field")


POLICY_TITLES = {"mask_span_length": "span", "score_threshold": "score_threshold", "score_hysteresis": "hysteresis",
                 "contextual_bandit_ucb": "ucb"}
"""Short names of the routing policies, for an S2D2 preset whose name does not say it (`d2f_s2d2`)."""


def describe_decoding(kind: str, name: str, params: Mapping[str, Any]) -> str:
    """Short human label of a decoder configuration, e.g. `dynamic τ=0.9 B=8`, with a Fast-dLLM v2
    sub-block size `S2D2 config_a B=16 SB=4`, with LLaDA2's editing threshold `dynamic τ=0.95 τ_edit=0.9 B=32`
    (`τ_edit=off` when no probability can pass it). The pipelined D2F decoder is `d2f τ=0.9 B=8 τ_add=0.1
    τ_act=0.95` (τ its skip threshold; the add and activate thresholds after B, so the matched-baseline
    column, which cuts at ` B=`, stays short), D2F's S2D2 presets `S2D2 span B=8`, `S2D2 ucb B=8`, ..."""
    length, steps = block_length_of(params), params.get("denoising_steps")
    sub_block = f" SB={params['small_block_size']}" if params.get("small_block_size") is not None else ""
    editing = params.get("editing_threshold")
    edit = "" if editing is None else f" τ_edit={editing:g}" if editing < 1 else " τ_edit=off"
    if kind == "ar":
        return "AR mode (B=1)"
    if kind == "static":
        if steps is None:  # LLaDA2: a fixed number of masks filled per iteration, no step count
            return f"static B={length} k={params.get('num_to_transfer', 1)}{edit}"
        return f"static B={length} S={steps}"
    if kind == "dynamic" and "block_add_threshold" in params:
        return (f"d2f τ={threshold_of(params):g} B={length} τ_add={params['block_add_threshold']:g} "
                f"τ_act={params['decoded_token_threshold']:g}")
    if kind == "dynamic":
        return f"dynamic τ={threshold_of(params):g}{edit} B={length}{sub_block}"
    if name == "d2f_s2d2":
        return f"S2D2 {POLICY_TITLES.get(params.get('do_verify_policy'), 'd2f_s2d2')} B={length}"
    short = next((name[len(prefix):] for prefix in ("llada2_s2d2_", "llada2_", "d2f_s2d2_", "s2d2_", "fast_")
                  if name.startswith(prefix)), name)
    return f"S2D2 {short}{edit} B={length}{sub_block}"


@dataclass
class Point:
    """One record reduced to what the table and the plot need."""

    model: str
    task: str
    kind: str
    label: str
    accuracy: float
    stderr: float
    n: int
    nfe: float
    tpf: float
    tokens_per_second: float
    block_length: int | None
    denoising_steps: int | None
    verify_fraction: float
    mean_accepted: float
    threshold: float | None = None
    path: str = ""


def point_from_record(record: Mapping[str, Any]) -> Point:
    """The table's view of one record; a record without a field the table needs is a RecordError
    naming its file and the field."""
    try:
        return _point(record)
    except KeyError as err:
        raise RecordError(f"{display_path(record.get('_path', '?'))} has no {err.args[0]!r} "
                          "(not a finished run record?)") from None


def _point(record: Mapping[str, Any]) -> Point:
    metrics = record["metrics"]
    params = record["decoding"]["params"]
    acceptance = metrics.get("acceptance", {})
    return Point(
        model=record["model"]["name"], task=record["task"]["name"], kind=record["decoding"]["kind"],
        label=record.get("label") or describe_decoding(record["decoding"]["kind"], record["decoding"]["name"], params),
        accuracy=metrics["accuracy"], stderr=metrics["accuracy_stderr"], n=metrics["n"], nfe=metrics["nfe_mean"],
        tpf=metrics["tpf"], tokens_per_second=metrics["tokens_per_second"],
        block_length=block_length_of(params), denoising_steps=params.get("denoising_steps"),
        verify_fraction=acceptance.get("verify_fraction", 0.0), mean_accepted=acceptance.get("mean_accepted_length", 0.0),
        threshold=threshold_of(params), path=display_path(record["_path"]) if "_path" in record else "",
    )


MUST_MATCH = {
    "model": lambda r: r.get("model"),
    "task (and its limit)": lambda r: r.get("task"),
    "sample count n": lambda r: r.get("metrics", {}).get("n"),
    "seed": lambda r: r.get("seed"),
    "batching": lambda r: (r.get("batch_size"), r.get("bucket_by_length")),
    "top-level block_length": lambda r: r.get("config", {}).get("block_length"),
    "sweep_name": lambda r: r.get("sweep_name"),
}
"""What every record of one (model, task) table must share, and how to read it from a record."""


def check_comparable(records: Sequence[Mapping[str, Any]]) -> None:
    """Refuse records of one (model name, task name) table that differ in anything of MUST_MATCH
    (say a random model saved under the trained one's name, or 25 items next to 400)."""
    first: dict[tuple[Any, Any], Mapping[str, Any]] = {}
    for record in records:
        key = (record.get("model", {}).get("name"), record.get("task", {}).get("name"))
        reference = first.setdefault(key, record)
        for what, read in MUST_MATCH.items():
            if read(record) != read(reference):
                raise RecordError(
                    f"{display_path(reference.get('_path', '?'))} and {display_path(record.get('_path', '?'))} "
                    f"differ in {what} ({_difference(read(reference), read(record))}): one table compares "
                    "runs of one model, task, sample count and sweep; give each its own folder")


def _difference(a: Any, b: Any) -> str:
    """`a vs b`, or for two mappings only their differing keys (`limit: None vs 25`)."""
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        keys = [k for k in sorted(set(a) | set(b), key=str) if a.get(k) != b.get(k)]
        return ", ".join(f"{k}: {a.get(k)!r} vs {b.get(k)!r}" for k in keys)
    return f"{a!r} vs {b!r}"


def group_points(records: Sequence[Mapping[str, Any]]) -> dict[tuple[str, str], list[Point]]:
    """Points per (model, task), ordered AR, static, dynamic (by threshold), S2D2 (by name); records
    that must not share a table raise RecordError (check_comparable)."""
    check_comparable(records)
    groups: dict[tuple[str, str], list[Point]] = defaultdict(list)
    for record in records:
        point = point_from_record(record)
        groups[(point.model, point.task)].append(point)
    for points in groups.values():
        seen: dict[str, Point] = {}
        for point in points:
            if point.label in seen:
                raise RecordError(
                    f"{seen[point.label].path or '?'} and {point.path or '?'} are both "
                    f"'{point.label}': one table cannot tell them apart; give each run its own folder")
            seen[point.label] = point
        points.sort(key=lambda p: (KIND_ORDER.get(p.kind, 9), (p.threshold or 0.0) if p.kind == "dynamic" else 0.0,
                                   p.label))
    return dict(sorted(groups.items()))


def pareto_front(accuracy: Sequence[float], speed: Sequence[float]) -> list[bool]:
    """True for points no other point dominates (>= on both axes, > on at least one)."""
    flags = []
    for i, (a_i, s_i) in enumerate(zip(accuracy, speed)):
        dominated = any(
            a_j >= a_i and s_j >= s_i and (a_j > a_i or s_j > s_i)
            for j, (a_j, s_j) in enumerate(zip(accuracy, speed)) if j != i
        )
        flags.append(not dominated)
    return flags


def matched_dynamic(point: Point, dynamic: Sequence[Point], speed: str) -> Point | None:
    """The fastest dynamic point (by `speed`: 'tpf' or 'tokens_per_second') whose accuracy is at
    least point.accuracy - point.stderr; None when no dynamic point is that accurate."""
    eligible = [d for d in dynamic if d.accuracy >= point.accuracy - point.stderr]
    return max(eligible, key=lambda d: getattr(d, speed)) if eligible else None


def _ratio(a: float, b: float | None) -> float | None:
    return a / b if b else None


def comparison_rows(points: Sequence[Point]) -> list[dict[str, Any]]:
    """One row per point with speedups vs AR mode and vs the matched dynamic baseline (S2D2 rows)."""
    ar = next((p for p in points if p.kind == "ar"), None)
    dynamic = [p for p in points if p.kind == "dynamic"]
    on_front_tpf = pareto_front([p.accuracy for p in points], [p.tpf for p in points])
    on_front_tps = pareto_front([p.accuracy for p in points], [p.tokens_per_second for p in points])
    rows = []
    for point, front_tpf, front_tps in zip(points, on_front_tpf, on_front_tps):
        by_tpf = matched_dynamic(point, dynamic, "tpf") if point.kind == "s2d2" else None
        by_tps = matched_dynamic(point, dynamic, "tokens_per_second") if point.kind == "s2d2" else None
        rows.append({
            "model": point.model, "task": point.task, "decoder": point.label, "kind": point.kind,
            "block_length": point.block_length, "denoising_steps": point.denoising_steps,
            "accuracy": point.accuracy, "accuracy_stderr": point.stderr, "n": point.n,
            "nfe": point.nfe, "tpf": point.tpf, "tokens_per_second": point.tokens_per_second,
            "speedup_vs_ar_tpf": _ratio(point.tpf, ar.tpf if ar else None),
            "speedup_vs_ar_tokens_per_second": _ratio(point.tokens_per_second, ar.tokens_per_second if ar else None),
            "matched_dynamic_tpf": by_tpf.label if by_tpf else None,
            "speedup_vs_dynamic_tpf": _ratio(point.tpf, by_tpf.tpf if by_tpf else None),
            "matched_dynamic_tokens_per_second": by_tps.label if by_tps else None,
            "speedup_vs_dynamic_tokens_per_second": _ratio(point.tokens_per_second,
                                                           by_tps.tokens_per_second if by_tps else None),
            "verify_fraction": point.verify_fraction, "mean_accepted": point.mean_accepted,
            "pareto_tpf": front_tpf, "pareto_tokens_per_second": front_tps, "record": point.path,
        })
    return rows


CSV_COLUMNS = ("model", "task", "decoder", "kind", "block_length", "denoising_steps", "accuracy", "accuracy_stderr",
               "n", "nfe", "tpf", "tokens_per_second", "speedup_vs_ar_tpf", "speedup_vs_ar_tokens_per_second",
               "matched_dynamic_tpf", "speedup_vs_dynamic_tpf", "matched_dynamic_tokens_per_second",
               "speedup_vs_dynamic_tokens_per_second", "verify_fraction", "mean_accepted", "pareto_tpf",
               "pareto_tokens_per_second", "record")


def to_csv(rows: Sequence[Mapping[str, Any]]) -> str:
    """Full-precision CSV (empty cell = not applicable)."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: ("" if row.get(k) is None else row.get(k)) for k in CSV_COLUMNS})
    return buffer.getvalue()


def _x(value: float | None) -> str:
    return "—" if value is None else f"{value:.2f}×"


def to_markdown(groups: Mapping[tuple[str, str], Sequence[Mapping[str, Any]]]) -> str:
    """Paper-style tables, one per (model, task), with the definitions underneath."""
    lines: list[str] = []
    for (model, task), rows in groups.items():
        lines += [f"### {model} — {task} (n = {rows[0]['n'] if rows else 0})", "",
                  "| decoder | accuracy (%) | NFE | TPF | tokens/s | vs AR (TPF) | vs AR (tok/s) "
                  "| vs dynamic (TPF) | vs dynamic (tok/s) | verify frac. | Pareto |",
                  "|---|---|---|---|---|---|---|---|---|---|---|"]
        for row in rows:
            front = ", ".join(name for name, flag in (("TPF", row["pareto_tpf"]), ("tok/s", row["pareto_tokens_per_second"]))
                              if flag) or ""
            vs_dyn_tpf = _x(row["speedup_vs_dynamic_tpf"])
            if row["matched_dynamic_tpf"]:
                vs_dyn_tpf += f" ({row['matched_dynamic_tpf'].split(' B=')[0]})"
            vs_dyn_tps = _x(row["speedup_vs_dynamic_tokens_per_second"])
            if row["matched_dynamic_tokens_per_second"]:
                vs_dyn_tps += f" ({row['matched_dynamic_tokens_per_second'].split(' B=')[0]})"
            verify = f"{row['verify_fraction']:.2f}" if row["kind"] == "s2d2" else "—"
            lines.append(
                f"| {row['decoder']} | {100 * row['accuracy']:.1f} ± {100 * row['accuracy_stderr']:.1f} "
                f"| {row['nfe']:.1f} | {row['tpf']:.2f} | {row['tokens_per_second']:.1f} "
                f"| {_x(row['speedup_vs_ar_tpf'])} | {_x(row['speedup_vs_ar_tokens_per_second'])} "
                f"| {vs_dyn_tpf} | {vs_dyn_tps} | {verify} | {front} |"
            )
        lines.append("")
    lines += [
        "Accuracy ± its standard error sqrt(a(1-a)/n). NFE: forwards per sample (prefill included).",
        "TPF: generated tokens (stop token included) per non-prefill forward, pooled over samples; "
        "tokens/s: generated tokens / decode wall time, pooled (model load and tokenisation excluded).",
        "vs AR: ratio to AR mode (block length 1, one forward per token) of the same model and task.",
        "vs dynamic: ratio to the fastest dynamic-threshold point whose accuracy is >= this point's "
        "accuracy minus its s.e. (that point in brackets; — when none is that accurate).",
        "Pareto: not dominated in (accuracy, TPF) / (accuracy, tokens/s) by any other point.",
        "",
    ]
    return "\n".join(lines)

