"""Run records: schema and metrics of one run, atomic writes, skip-if-exists, and a sweep killed
after its first record that, rerun, ends with every record exactly once and nothing rewritten; the
file mode, the record-and-samples unit, the per-record lock, unusable records named, and a multirun
that finishes its other jobs when one fails."""

from __future__ import annotations

import json
import math
import os
import signal
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from s2d2_eval.config import register_configs
from s2d2_eval.records import (
    SCHEMA,
    RecordError,
    atomic_write_json,
    atomic_write_text,
    iter_records,
    load_record,
    record_lock,
    samples_path,
    write_record,
)

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


def test_hidden_files_are_skipped_and_unusable_ones_are_named(tmp_path):
    atomic_write_json(tmp_path / "a.json", {"schema": SCHEMA, "v": 1})
    (tmp_path / ".a.json.123.tmp").write_text("{")
    (tmp_path / ".a.json.lock").write_text("")
    assert [Path(r["_path"]).name for r in iter_records(tmp_path)] == ["a.json"]
    assert load_record(tmp_path / "missing.json") is None
    (tmp_path / "other.json").write_text(json.dumps({"not": "a record"}))
    (tmp_path / "broken.json").write_text('{"schema": "s2d2-eval-record/1", "metr')
    with pytest.raises(RecordError, match="broken.json is not a whole record"):
        load_record(tmp_path / "broken.json")
    with pytest.raises(RecordError, match=r"2 unusable record file\(s\): .*broken.json.*other.json is not a run record"):
        iter_records(tmp_path)


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
    assert path.parent.parent.parent.parent == Path(cfg.results_dir) and path.parent.name == "synthetic_add"
    assert path.parent.parent.name == "rand" and path.parent.parent.parent.name.startswith("default-")


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


# --- one record, one writer; record and samples as one unit; what a reader is told ----------------------

def test_records_and_samples_are_created_with_the_umask_mode(tmp_path):
    old = os.umask(0o022)
    try:
        write_record(tmp_path / "r.json", {"schema": SCHEMA}, [{"a": 1}])
        atomic_write_text(tmp_path / "table.md", "x")
    finally:
        os.umask(old)
    for name in ("r.json", "r.samples.jsonl", "table.md"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o644, name


def test_record_and_samples_are_one_unit(tmp_path, monkeypatch):
    record = tmp_path / "run.json"
    write_record(record, {"schema": SCHEMA, "v": 1}, [{"v": 1}])
    assert load_record(record)["v"] == 1 and json.loads(samples_path(record).read_text())["v"] == 1
    real_replace = os.replace

    def crash_on_the_record(src, dst):
        if Path(dst) == record:
            raise OSError("killed between the two renames")
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", crash_on_the_record)
    with pytest.raises(OSError):
        write_record(record, {"schema": SCHEMA, "v": 2}, [{"v": 2}])
    # The new samples are in place, so the old record is gone with them: the run is redone, and no
    # record ever sits next to another run's samples.
    assert load_record(record) is None and json.loads(samples_path(record).read_text())["v"] == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run.samples.jsonl"]  # no temporaries left
    monkeypatch.setattr(os, "replace", real_replace)
    write_record(record, {"schema": SCHEMA, "v": 3}, None)  # without samples, a stale samples file goes
    assert load_record(record)["v"] == 3 and not samples_path(record).exists()


def test_record_lock_makes_a_second_writer_wait(tmp_path, capsys):
    record = tmp_path / "deep" / "run.json"
    events: list[str] = []
    held = threading.Event()

    def first_writer() -> None:
        with record_lock(record) as waited:
            events.append(f"first waited={waited}")
            held.set()
            time.sleep(0.3)
            events.append("first done")

    thread = threading.Thread(target=first_writer)
    thread.start()
    held.wait(10)
    with record_lock(record) as waited:
        events.append(f"second waited={waited}")
    thread.join()
    assert events == ["first waited=False", "first done", "second waited=True"]
    assert "waiting: another run is writing" in capsys.readouterr().err
    assert list(record.parent.iterdir()) == []  # the lock file is removed on release


def test_a_second_identical_run_waits_then_skips(one_run, capsys):
    """While another process holds the record's lock, run() waits before loading anything; when
    that run has written the record, this one skips it with one line."""
    from s2d2_eval.runner import run

    cfg, path = one_run
    rerun = _compose([*_tiny_run(Path(cfg.model.pretrained), Path(cfg.results_dir), "decoding=s2d2_config_b",
                                 "block_length=4"), "overwrite=true"])
    holding = threading.Event()

    def other_run() -> None:
        with record_lock(path):
            holding.set()
            time.sleep(0.5)
            os.utime(path)  # it "writes" the record

    thread = threading.Thread(target=other_run)
    thread.start()
    holding.wait(10)
    before = path.read_bytes()
    assert run(rerun) == path
    thread.join()
    out = capsys.readouterr()
    assert "skip (written by a concurrent run while this one waited)" in out.out and "waiting" in out.err
    assert path.read_bytes() == before


def test_a_truncated_record_is_an_error_naming_it_not_a_silent_rerun(one_run):
    from s2d2_eval.runner import ConfigError, run

    cfg, path = one_run
    whole = path.read_text()
    try:
        path.write_text(whole[: len(whole) // 2])
        with pytest.raises(ConfigError, match=rf"{path.name} is not a whole record .*delete it, or pass overwrite=true"):
            run(cfg)
    finally:
        path.write_text(whole)


@pytest.mark.slow
def test_one_failing_job_of_a_multirun_does_not_stop_the_others(random_model_dir, tmp_path):
    """Job 0 (AR mode with an S2D2-only key) fails at planning; job 1 still runs and writes its
    record; the failure is listed at the end with its reason, and the exit status is 1."""
    results = tmp_path / "results"
    command = [sys.executable, str(REPO / "scripts" / "run_eval.py"), "-m", "decoding=ar,s2d2_config_b",
               "decoding.params.do_verify_policy=score_threshold", *_tiny_run(random_model_dir, results),
               f"hydra.sweep.dir={tmp_path / 'multirun'}"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 1, done.stderr[-3000:]
    assert [load_record(p)["decoding"]["name"] for p in _records(results)] == ["s2d2_config_b"]
    summary = done.stderr[done.stderr.index("1 run(s) of this multirun failed"):].splitlines()
    assert len(summary) == 2 and "job 0 (" in summary[1] and "decoding=ar" in summary[1]
    assert "do_verify_policy" in summary[1] and "Traceback" not in done.stderr
