"""Accuracy-speed frontiers from run records: accuracy vs TPF and accuracy vs tokens/s, one series
per decoder family (AR mode, static, dynamic, S2D2), the Pareto front drawn over all points.
One PNG per (model, task). Reads records only; never imports a model. Refuses records that must not
share a plot, as make_table.py does.

    python scripts/plot_frontier.py                   # results/sdar -> results/sdar/frontier_<model>_<task>.png
    python scripts/plot_frontier.py results/my_sweep --out /tmp/plots
"""

from __future__ import annotations

import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from s2d2_eval import REPO_ROOT  # noqa: E402
from s2d2_eval.records import RecordError, display_path, records_from_command_line  # noqa: E402
from s2d2_eval.report import KIND_TITLES, Point, group_points, pareto_front  # noqa: E402

STYLE = {  # colour, marker, connect the family's points with a line (TPF panel)
    "ar": ("#222222", "s", False),
    "static": ("#8c6d31", "^", True),
    "dynamic": ("#1f77b4", "o", True),
    "s2d2": ("#d62728", "D", False),
}
AXES = (("tpf", "tokens per forward (TPF)"), ("tokens_per_second", "tokens / s (decode wall time)"))


def _short(point: Point) -> str:
    """Point annotation: the threshold for dynamic, the config name for S2D2, S for static."""
    if point.kind == "dynamic":
        return point.label.split(" ")[1]
    if point.kind == "s2d2":
        return point.label.split(" ")[1]
    if point.kind == "static":
        return f"S={point.denoising_steps}"
    return "AR"


LABEL_OFFSETS = ((5, 5), (5, -11), (5, 13), (5, -19))
"""Annotation offsets (points) cycled along each family, so neighbouring labels do not overprint."""


def _sweep_order(point: Point) -> float:
    """Connect a family's points in parameter order (threshold, steps): a line along the sweep,
    not a zigzag through timing noise."""
    return point.threshold if point.threshold is not None else float(point.denoising_steps or 0)


def plot_group(points: list[Point], title: str, out: Path) -> Path:
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.8), constrained_layout=True)
    for ax, (attr, xlabel) in zip(axes, AXES):
        for kind, (colour, marker, connect) in STYLE.items():
            family = sorted((p for p in points if p.kind == kind), key=_sweep_order)
            if not family:
                continue
            xs = [getattr(p, attr) for p in family]
            ys = [100 * p.accuracy for p in family]
            errs = [100 * p.stderr for p in family]
            line = "-" if connect and attr == "tpf" else ""  # wall-clock noise would zigzag a line on tokens/s
            # The threshold baseline is named by its labels' first word ("dynamic", or "d2f" for D2F's).
            series = family[0].label.split(" ")[0] if kind == "dynamic" else KIND_TITLES[kind]
            ax.errorbar(xs, ys, yerr=errs, fmt=marker + line, color=colour, ms=7, lw=1.2,
                        capsize=2, alpha=0.9, label=series)
            by_x = sorted(range(len(family)), key=lambda i: xs[i])
            for rank, i in enumerate(by_x):
                ax.annotate(_short(family[i]), (xs[i], ys[i]), textcoords="offset points",
                            xytext=LABEL_OFFSETS[rank % len(LABEL_OFFSETS)], fontsize=7, color=colour)
        # The staircase bounds what is reachable: at speed x, the best accuracy at that speed or faster.
        flags = pareto_front([p.accuracy for p in points], [getattr(p, attr) for p in points])
        front = sorted((p for p, on in zip(points, flags) if on), key=lambda p: getattr(p, attr))
        if front:
            ax.step([getattr(p, attr) for p in front], [100 * p.accuracy for p in front], where="pre",
                    color="#2ca02c", lw=2, alpha=0.35, zorder=0)
            ax.scatter([getattr(p, attr) for p in front], [100 * p.accuracy for p in front], s=180,
                       facecolors="none", edgecolors="#2ca02c", linewidths=1.5, label="Pareto front", zorder=3)
        ax.set_xlabel(xlabel)
        ax.set_ylabel("accuracy (%) ± s.e.")
        ax.grid(alpha=0.3)
    axes[0].legend(loc="best", fontsize=8)
    fig.suptitle(title)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp.png")
    fig.savefig(tmp, dpi=130)
    plt.close(fig)
    tmp.replace(out)
    return out


def main(argv: list[str] | None = None) -> int:
    args, root, records = records_from_command_line(__doc__, "output folder (default: the sweep folder)", argv,
                                                    REPO_ROOT / "results" / "sdar")
    out_dir = Path(args.out) if args.out else root
    try:
        groups = group_points(records)
    except RecordError as err:
        sys.exit(f"plot_frontier.py: error: {err}")
    for (model, task), points in groups.items():
        n = points[0].n
        path = plot_group(points, f"{model} — {task} (n = {n})", out_dir / f"frontier_{model}_{task}.png")
        print(f"wrote {display_path(path)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
