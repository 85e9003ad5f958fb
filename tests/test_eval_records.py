"""Run records: schema and metrics of one run, atomic writes, skip-if-exists, and a sweep killed
after its first record that, rerun, ends with every record exactly once and nothing rewritten."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from s2d2_eval.config import register_configs
from s2d2_eval.records import SCHEMA, atomic_write_json, atomic_write_text, iter_records, load_record, samples_path

REPO = Path(__file__).resolve().parent.parent
register_configs()


@pytest.fixture(scope="session")
def random_model_dir(tmp_path_factory) -> Path:
    from s2d2_eval.testing import build_random_tiny_model

    return build_random_tiny_model(tmp_path_factory.mktemp("rand_tiny"))


def _compose(overrides: list[str]):
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(REPO / "configs"), version_base="1.3"):
        return compose(config_name="eval", overrides=overrides)


def _tiny_run(model_dir: Path, results: Path, *extra: str) -> list[str]:
    """A few items, a short budget: the random model never stops on its own."""
    return [f"model.pretrained={model_dir}", "model.name=rand", f"results_dir={results}", "task=synthetic_add",
            "task.limit=2", "+task.gen_kwargs.max_gen_toks=12", *extra]


def test_atomic_write_replaces_whole_files_and_cleans_up(tmp_path, monkeypatch):
    target = tmp_path / "deep" / "record.json"
    atomic_write_json(target, {"schema": SCHEMA, "v": 1})
    assert json.loads(target.read_text())["v"] == 1

    def crash(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError):
        atomic_write_text(target, "partial")
    assert json.loads(target.read_text())["v"] == 1  # the old record is intact
    assert [p.name for p in target.parent.iterdir()] == ["record.json"]  # no temporary left behind


def test_hidden_temporaries_and_foreign_files_are_not_records(tmp_path):
    atomic_write_json(tmp_path / "a.json", {"schema": SCHEMA, "v": 1})
    (tmp_path / ".a.json.123.tmp").write_text("{")
    (tmp_path / "other.json").write_text(json.dumps({"not": "a record"}))
    (tmp_path / "broken.json").write_text("{")
    assert [Path(r["_path"]).name for r in iter_records(tmp_path)] == ["a.json"]
    assert load_record(tmp_path / "broken.json") is None


@pytest.fixture(scope="module")
def one_run(random_model_dir, tmp_path_factory):
    from s2d2_eval.runner import run

    results = tmp_path_factory.mktemp("results")
    cfg = _compose(_tiny_run(random_model_dir, results, "decoding=s2d2_config_b", "block_length=4"))
    return cfg, run(cfg)


def test_record_schema_and_metrics(one_run):
    cfg, path = one_run
    record = load_record(path)
    assert record is not None and record["schema"] == SCHEMA
    for key in ("key", "created", "sweep_name", "label", "model", "decoding", "task", "seed", "batch_size", "config",
                "git", "versions", "device", "metrics", "lm_eval", "timing"):
        assert key in record, key
    assert record["config"]["decoding"]["name"] == "s2d2_config_b" and record["seed"] == cfg.seed
    assert record["decoding"]["params"]["block_length"] == 4 and record["decoding"]["params"]["score_penalty_coef"] == 0.0
    assert record["git"]["sha"] is None or len(record["git"]["sha"]) == 40
    assert record["versions"]["lm_eval"] == "0.4.13" and record["versions"]["torch"] and record["device"]["type"] == "cpu"
    metrics = record["metrics"]
    n, accuracy = metrics["n"], metrics["accuracy"]
    assert n == 2 and metrics["accuracy_stderr"] == pytest.approx(math.sqrt(accuracy * (1 - accuracy) / n))
    assert metrics["generated_tokens_mean"] <= 12 and metrics["nfe_mean"] > 0
    decode_forwards = metrics["nfe_mean"] - metrics["nfe_by_kind_mean"]["prefill"]
    assert metrics["tpf"] == pytest.approx(metrics["generated_tokens_mean"] / decode_forwards)
    assert metrics["tokens_per_second"] == pytest.approx(
        metrics["generated_tokens_total"] / metrics["wall_time_total"])
    assert metrics["acceptance"]["verify_fraction"] == 1.0  # config B verifies whenever a span exists
    assert metrics["acceptance"]["verifications_total"] > 0
    assert metrics["per_task"]["synthetic_add"]["n"] == 2
    lines = samples_path(path).read_text().splitlines()
    assert len(lines) == n and "exact_match" in json.loads(lines[0]) and "nfe" in json.loads(lines[0])["stats"]
    assert path.parent == Path(cfg.results_dir) / "default" / "rand" / "synthetic_add"


def test_existing_record_is_skipped_and_overwrite_reruns(one_run, capsys):
    from s2d2_eval.runner import run

    cfg, path = one_run
    before = path.read_bytes(), path.stat().st_mtime_ns
    assert run(cfg) == path
    assert "skip" in capsys.readouterr().out
    assert (path.read_bytes(), path.stat().st_mtime_ns) == before
    rerun = _compose([*_tiny_run(Path(cfg.model.pretrained), Path(cfg.results_dir), "decoding=s2d2_config_b",
                                 "block_length=4"), "overwrite=true"])
    assert run(rerun) == path and path.stat().st_mtime_ns != before[1]


def _records(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*.json") if not p.name.startswith(".") and "multirun" not in p.parts)


@pytest.mark.slow
def test_killed_sweep_resumes_without_losing_or_duplicating(random_model_dir, tmp_path):
    results = tmp_path / "results"
    command = [sys.executable, str(REPO / "scripts" / "run_eval.py"), "-m", "decoding=ar,static,dynamic",
               *_tiny_run(random_model_dir, results), f"hydra.sweep.dir={tmp_path / 'multirun'}"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    first = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                             start_new_session=True)
    deadline = time.time() + 300
    try:
        while not _records(results) and time.time() < deadline and first.poll() is None:
            time.sleep(0.05)
    finally:
        if first.poll() is None:
            os.killpg(first.pid, signal.SIGKILL)
        first.wait()
    at_kill = _records(results)
    assert len(at_kill) == 1, f"expected to kill the sweep after its first record, found {at_kill}"
    assert all(load_record(p) is not None for p in at_kill)  # nothing partial
    kept = at_kill[0].read_bytes()

    done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "skip (record exists)" in done.stdout
    final = _records(results)
    names = sorted(load_record(p)["decoding"]["name"] for p in final)
    assert names == ["ar", "dynamic", "static"]  # each run exactly once
    assert at_kill[0].read_bytes() == kept  # the finished run was not redone
    assert all(samples_path(p).exists() for p in final)
