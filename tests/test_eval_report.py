"""Tables and plots from fixture records: speedups vs AR mode, the matched-accuracy dynamic
baseline, the Pareto front, the CSV numbers, and a PNG written without importing torch."""

from __future__ import annotations

import csv
import io
import math
import subprocess
import sys
from pathlib import Path

import pytest

from s2d2_eval.records import SCHEMA, RecordError, atomic_write_json
from s2d2_eval.report import comparison_rows, group_points, matched_dynamic, pareto_front

REPO = Path(__file__).resolve().parent.parent

# (name, kind, params, accuracy, n, nfe, generated tokens, prefill, wall seconds)
FIXTURE = [
    ("ar", "ar", {"block_length": 1, "denoising_steps": 1}, 0.90, 400, 41.0, 40.0, 1.0, 20.0),
    ("static", "static", {"block_length": 8, "denoising_steps": 4}, 0.70, 400, 21.0, 40.0, 1.0, 12.0),
    ("dynamic", "dynamic", {"block_length": 8, "denoising_steps": 8, "confidence_threshold": 0.95}, 0.88, 400, 21.0, 40.0, 1.0, 10.0),
    ("dynamic", "dynamic", {"block_length": 8, "denoising_steps": 8, "confidence_threshold": 0.8}, 0.80, 400, 11.0, 40.0, 1.0, 6.0),
    ("dynamic", "dynamic", {"block_length": 8, "denoising_steps": 8, "confidence_threshold": 0.5}, 0.60, 400, 9.0, 40.0, 1.0, 5.0),
    ("s2d2_config_a", "s2d2", {"block_length": 8, "denoising_steps": 8}, 0.89, 400, 17.0, 40.0, 1.0, 8.0),
    ("s2d2_config_b", "s2d2", {"block_length": 8, "denoising_steps": 8}, 0.95, 400, 26.0, 40.0, 1.0, 16.0),
]


def _record(name: str, kind: str, params: dict, accuracy: float, n: int, nfe: float, tokens: float, prefill: float,
            seconds: float) -> dict:
    return {
        "schema": SCHEMA, "model": {"name": "tiny"}, "task": {"name": "synthetic"},
        "decoding": {"name": name, "kind": kind, "params": params},
        "metrics": {"accuracy": accuracy, "accuracy_stderr": math.sqrt(accuracy * (1 - accuracy) / n), "n": n,
                    "nfe_mean": nfe, "tpf": tokens / (nfe - prefill), "tokens_per_second": tokens * n / seconds,
                    "acceptance": {"verify_fraction": 0.5 if kind == "s2d2" else 0.0, "mean_accepted_length": 2.0}},
    }


@pytest.fixture
def sweep_dir(tmp_path) -> Path:
    for i, row in enumerate(FIXTURE):
        atomic_write_json(tmp_path / "tiny" / "synthetic" / f"{row[0]}-{i:010d}.json", _record(*row))
    return tmp_path


def _rows(records_dir: Path) -> dict[str, dict]:
    from s2d2_eval.records import iter_records

    (points,) = group_points(iter_records(records_dir)).values()
    return {row["decoder"]: row for row in comparison_rows(points)}


def test_pareto_front_small_cases():
    assert pareto_front([0.9, 0.8, 0.7], [1.0, 2.0, 1.5]) == [True, True, False]
    assert pareto_front([0.5, 0.5], [2.0, 2.0]) == [True, True]  # ties dominate neither
    assert pareto_front([0.9, 0.9], [1.0, 2.0]) == [False, True]


def test_speedups_and_matched_dynamic(sweep_dir):
    rows = _rows(sweep_dir)
    assert list(rows) == ["AR mode (B=1)", "static B=8 S=4", "dynamic τ=0.5 B=8", "dynamic τ=0.8 B=8",
                          "dynamic τ=0.95 B=8", "S2D2 config_a B=8", "S2D2 config_b B=8"]
    a = rows["S2D2 config_a B=8"]
    assert a["tpf"] == pytest.approx(2.5) and a["speedup_vs_ar_tpf"] == pytest.approx(2.5)
    assert a["speedup_vs_ar_tokens_per_second"] == pytest.approx((40 * 400 / 8) / (40 * 400 / 20))
    # config A: 0.89 ± 0.0156 -> eligible dynamic points need >= 0.874: only tau=0.95 (0.88, TPF 2.0)
    assert a["matched_dynamic_tpf"] == "dynamic τ=0.95 B=8" and a["speedup_vs_dynamic_tpf"] == pytest.approx(1.25)
    assert a["speedup_vs_dynamic_tokens_per_second"] == pytest.approx(10.0 / 8.0)
    # config B is more accurate than every dynamic point: no matched baseline
    b = rows["S2D2 config_b B=8"]
    assert b["matched_dynamic_tpf"] is None and b["speedup_vs_dynamic_tpf"] is None
    assert rows["dynamic τ=0.8 B=8"]["speedup_vs_dynamic_tpf"] is None  # only S2D2 rows get the comparison


def test_matched_dynamic_picks_the_fastest_eligible_point(sweep_dir):
    from s2d2_eval.records import iter_records

    (points,) = group_points(iter_records(sweep_dir)).values()
    dynamic = [p for p in points if p.kind == "dynamic"]
    weak = next(p for p in points if p.label == "static B=8 S=4")  # 0.70: tau 0.8 and 0.95 qualify, 0.5 does not
    assert matched_dynamic(weak, dynamic, "tpf").label == "dynamic τ=0.8 B=8"


def test_pareto_membership_in_rows(sweep_dir):
    rows = _rows(sweep_dir)
    on_front = {name for name, row in rows.items() if row["pareto_tpf"]}
    # accuracy/TPF: config_b (best accuracy), config_a (0.89 @ 2.5), dynamic 0.8 (0.80 @ 4.0), dynamic 0.5 (fastest)
    assert on_front == {"S2D2 config_b B=8", "S2D2 config_a B=8", "dynamic τ=0.8 B=8", "dynamic τ=0.5 B=8"}


def test_make_table_writes_markdown_and_csv_with_the_numbers(sweep_dir):
    done = subprocess.run([sys.executable, str(REPO / "scripts" / "make_table.py"), str(sweep_dir)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    markdown = (sweep_dir / "table.md").read_text()
    assert "| S2D2 config_a B=8 | 89.0 ± 1.6 |" in markdown and "1.25× (dynamic τ=0.95)" in markdown
    assert "minus its s.e." in markdown  # the definition of matched accuracy is printed
    table = list(csv.DictReader(io.StringIO((sweep_dir / "table.csv").read_text())))
    by_name = {row["decoder"]: row for row in table}
    assert float(by_name["S2D2 config_a B=8"]["speedup_vs_ar_tpf"]) == pytest.approx(2.5)
    assert float(by_name["AR mode (B=1)"]["tpf"]) == pytest.approx(1.0)
    assert by_name["S2D2 config_b B=8"]["speedup_vs_dynamic_tpf"] == ""
    assert by_name["dynamic τ=0.5 B=8"]["pareto_tpf"] == "True"


def test_plot_frontier_writes_a_png_without_torch(sweep_dir, tmp_path):
    out = tmp_path / "plots"
    code = ("import sys, runpy; sys.modules['torch'] = None; "
            f"sys.argv = ['plot_frontier.py', {str(sweep_dir)!r}, '--out', {str(out)!r}]; "
            f"runpy.run_path({str(REPO / 'scripts' / 'plot_frontier.py')!r}, run_name='__main__')")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    png = out / "frontier_tiny_synthetic.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000


def test_scripts_reject_an_empty_folder(tmp_path):
    for script in ("make_table.py", "plot_frontier.py"):
        done = subprocess.run([sys.executable, str(REPO / "scripts" / script), str(tmp_path)],
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 2 and "no run records" in done.stderr


def test_two_runs_with_one_label_are_refused(tmp_path):
    """Two records a table could not tell apart (say one folder holding a greedy and a sampled run of
    the same preset) are refused in one line naming both, not shown as two identical rows."""
    from s2d2_eval.records import iter_records

    row = FIXTURE[0]
    for i in range(2):
        atomic_write_json(tmp_path / "tiny" / "synthetic" / f"{row[0]}-{i:010d}.json", _record(*row))
    with pytest.raises(RecordError, match=r"are both '.*': one table cannot tell them apart"):
        group_points(iter_records(tmp_path))
