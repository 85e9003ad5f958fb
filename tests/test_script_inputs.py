"""Bad input to scripts/eval_tiny.py, bench_decoding.py, select_tiny.py and check_published.py: ONE line on
stderr, exit status 2, before torch is imported. A model directory's family is read from its config.json
and checked against --family (no weights loaded); check_published refuses a folder that is not a sweep
results folder; run_eval.py refuses a preset name that configs/ does not hold. Every script runs in a fresh interpreter (`run_fresh` reports which heavy modules it
imported); none of these tests loads a model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from s2d2_eval.testing import run_fresh

REPO_ROOT = Path(__file__).resolve().parent.parent
SCRIPTS = REPO_ROOT / "scripts"
FAMILY_TITLES = {"sdar": "SDAR", "fast_dllm_v2": "Fast-dLLM v2", "llada2": "LLaDA2", "d2f_llada": "D2F-LLaDA",
                 "d2f_dream": "D2F-Dream"}
MODEL_TYPES = {"sdar": "sdar", "fast_dllm_v2": "Fast_dLLM_Qwen", "llada2": "llada2_moe", "d2f_llada": "llada",
               "d2f_dream": "Dream"}


def _model(folder: Path, family: str) -> Path:
    """A model folder that is only a config.json naming `family`'s model_type (never loaded)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps({"model_type": MODEL_TYPES[family]}))
    return folder


def _one_line_error(script: str, argv: list[str]) -> str:
    """The single stderr line of a run that must fail on its input before importing torch."""
    run = run_fresh(SCRIPTS / script, argv, timeout=60)
    assert run.exit == 2 and run.stdout.strip() == "" and "torch" not in run.heavy, run
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"{script}: error: "), run.stderr
    return lines[0]


@pytest.mark.parametrize("family, found", [("llada2", "sdar"), ("sdar", "llada2"), ("fast_dllm_v2", "sdar"),
                                           ("d2f_dream", "d2f_llada"), ("d2f_llada", "d2f_dream")])
def test_eval_tiny_refuses_a_model_of_another_family(tmp_path, family, found):
    line = _one_line_error("eval_tiny.py", ["--family", family, "--model_dir", str(_model(tmp_path / "m", found)),
                                            "--limit", "1"])
    assert f"is a {FAMILY_TITLES[found]} model (model_type '{MODEL_TYPES[found]}'), not {FAMILY_TITLES[family]}" \
        in line and f"use --family {found}" in line


def test_eval_tiny_checks_a_d2f_adapter_folder(tmp_path):
    base = _model(tmp_path / "base", "d2f_llada")
    line = _one_line_error("eval_tiny.py", ["--family", "d2f_llada", "--model_dir", str(base),
                                            "--lora_dir", str(tmp_path / "lora")])
    assert f"no adapter at {tmp_path / 'lora'} (adapter_config.json missing)" in line


@pytest.mark.parametrize("argv, message", [
    (["--limit", "0"], "--limit must be a positive integer, got 0"),
    (["--bogus"], "unrecognized arguments: --bogus"),
    (["--family", "llada"], "argument --family: invalid choice"),
    (["--mode", "baseline", "--acceptance", "greedy_exact"], "only apply to --mode s2d2"),
    (["--mode", "ar", "--block_length", "8"], "--mode ar fixes block_length=1"),
    (["--model_dir", "/nonexistent"], "no model at /nonexistent (config.json missing)"),
])
def test_eval_tiny_argument_errors_are_one_line_before_torch(argv, message):
    assert message in _one_line_error("eval_tiny.py", argv)


def test_eval_tiny_help_is_fast_and_names_every_family():
    run = run_fresh(SCRIPTS / "eval_tiny.py", ["--help"], timeout=60)
    assert run.exit == 0 and run.heavy == [], run
    assert all(f"`{name}`" in run.stdout for name in FAMILY_TITLES), run.stdout
    assert "--acceptance" in run.stdout and "--confidence_threshold" in run.stdout  # SDAR's S2D2 config flags
    d2f = run_fresh(SCRIPTS / "eval_tiny.py", ["--family", "d2f_dream", "--help"], timeout=60)
    assert d2f.exit == 0 and d2f.heavy == [] and "--lora_dir" in d2f.stdout and "--skip_threshold" in d2f.stdout


def test_bench_decoding_refuses_a_model_of_another_family(tmp_path):
    line = _one_line_error("bench_decoding.py", ["--family", "llada2", "--model_dir", str(_model(tmp_path, "sdar")),
                                                 "--per_task", "1", "--batch_sizes", "1"])
    assert "is a SDAR model (model_type 'sdar'), not LLaDA2; use --family sdar" in line


def test_select_tiny_refuses_candidates_of_another_family(tmp_path):
    sdar, fast = _model(tmp_path / "a", "sdar"), _model(tmp_path / "b", "fast_dllm_v2")
    line = _one_line_error("select_tiny.py", ["--family", "llada2", str(sdar), str(fast)])
    assert f"candidate {sdar}: " in line and "is a SDAR model" in line and "not LLaDA2" in line
    # a D2F candidate is a base/ + lora/ pair: a plain model folder is named by its own family
    line = _one_line_error("select_tiny.py", ["--family", "d2f_llada", str(sdar)])
    assert "is a SDAR model (model_type 'sdar'), not D2F-LLaDA; use --family sdar" in line
    pair = tmp_path / "pair"
    _model(pair / "base", "d2f_dream")
    line = _one_line_error("select_tiny.py", ["--family", "d2f_llada", str(pair)])
    assert "is a D2F-Dream model" in line and "not D2F-LLaDA" in line


def test_select_tiny_argument_errors_are_one_line(tmp_path):
    line = _one_line_error("select_tiny.py", ["--eval_seeds", "x", str(_model(tmp_path, "sdar"))])
    assert "argument --eval_seeds: expected comma-separated integers" in line
    assert "required: candidates" in _one_line_error("select_tiny.py", [])


def test_check_published_refuses_a_folder_that_is_not_a_results_folder(tmp_path):
    line = _one_line_error("check_published.py", [str(_model(tmp_path / "model", "sdar"))])
    assert "is not a sweep results folder" in line and "config.json is not a run record" in line
    (tmp_path / "empty").mkdir()
    assert "holds no run records" in _one_line_error("check_published.py", [str(tmp_path / "empty")])
    bare = tmp_path / "bare"
    bare.mkdir()
    (bare / "run.json").write_text(json.dumps({"schema": "s2d2-eval-record/1", "config": {}}))
    assert "run.json is not a usable run record: it has no decoding" in _one_line_error("check_published.py",
                                                                                         [str(bare)])


@pytest.mark.parametrize("argv, message", [
    (["--per_task", "0"], "--per_task and --batch_size must be >= 1"),
    (["--bogus"], "unrecognized arguments: --bogus"),
    (["/nonexistent"], "no such results folder: /nonexistent"),
    (["results/sdar", "--match", "no-such-record"], "no record path under results/sdar contains it"),
])
def test_check_published_argument_errors_are_one_line(argv, message):
    assert message in _one_line_error("check_published.py", argv)


def test_check_published_reads_the_published_folders_without_torch():
    """Every committed results folder passes the record checks (the run then needs torch: not made here)."""
    folders = sorted(str(p.relative_to(REPO_ROOT)) for p in (REPO_ROOT / "results").iterdir() if p.is_dir())
    line = _one_line_error("check_published.py", [*folders, "--match", "no-such-record"])
    assert "no record path under" in line  # reached only after every record was read and found usable


@pytest.mark.parametrize("argv,message", [
    (["decoding=s2d2_config_z"], "no decoding config 's2d2_config_z' in configs/decoding/ (did you mean s2d2_config_"),
    (["-m", "model=sdar_tiny,sdar_tinyy"], "no model config 'sdar_tinyy' in configs/model/ (did you mean sdar_tiny"),
    (["task=synthetc"], "no task config 'synthetc' in configs/task/ (did you mean synthetic"),
])
def test_run_eval_unknown_preset_is_one_line_before_hydra_and_torch(argv, message):
    run = run_fresh(SCRIPTS / "run_eval.py", argv)
    assert str(run.exit).startswith(f"run_eval.py: error: {message}") and "\n" not in str(run.exit), run
    assert run.heavy == [], run


def test_run_eval_help_needs_no_torch():
    """The Hydra schema is built from the stored flag specs: --help imports no decoder."""
    run = run_fresh(SCRIPTS / "run_eval.py", ["--help"])
    assert run.exit in (0, None) and "decoding" in run.stdout and run.heavy == [], run


@pytest.mark.parametrize("script,argv,message", [
    ("make_table.py", ["/nonexistent/sweep"], "no such folder: /nonexistent/sweep"),
    ("plot_frontier.py", ["/nonexistent/sweep"], "no such folder: /nonexistent/sweep"),
    ("compare_batches.py", ["/nonexistent/a", "/nonexistent/b"], "no such folder: /nonexistent/a"),
    ("probe_d2f_base.py", [], "the following arguments are required: base_model_dir"),
])
def test_report_and_probe_scripts_argument_errors_are_one_line(script, argv, message):
    assert _one_line_error(script, argv) == f"{script}: error: {message}"
