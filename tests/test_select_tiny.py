"""Tests of `scripts/select_tiny.py`, which chooses between training runs on the validation split."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from types import ModuleType

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import pytest  # noqa: E402

from s2d2_eval.testing import load_script  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parent.parent
SHIPPED_MODEL = REPO_ROOT / "models" / "sdar-tiny"


@pytest.fixture(scope="module")
def select_tiny() -> ModuleType:
    return load_script(REPO_ROOT / "scripts" / "select_tiny.py")


def _run(per_task: dict[str, tuple[int, int]], seed: int = 0) -> dict:
    """An eval_tiny record reduced to what selection reads: task -> (correct, n)."""
    return {"seed": seed,
            "per_task": {task: {"accuracy": round(c / n, 4), "n": n, "correct": c} for task, (c, n) in per_task.items()}}


def test_pooling_sums_counts_over_seeds(select_tiny):
    runs = [_run({"add": (99, 100), "letters": (93, 100)}, 0), _run({"add": (100, 100), "letters": (98, 100)}, 1)]
    pooled = select_tiny.pooled(runs)
    assert pooled["add"] == {"correct": 199, "n": 200, "accuracy": 0.995}
    assert pooled["letters"] == {"correct": 191, "n": 200, "accuracy": 0.955}
    summary = select_tiny.summarize(Path("m"), runs)
    assert summary["worst_task"] == "letters" and summary["worst_task_accuracy"] == 0.955
    assert summary["overall_accuracy"] == 0.975
    assert summary["per_seed"] == {"0": {"add": 0.99, "letters": 0.93}, "1": {"add": 1.0, "letters": 0.98}}


def test_the_worst_task_decides_then_overall_then_order(select_tiny):
    # a higher mean does not beat a better worst task
    strong_mean = select_tiny.summarize(Path("a"), [_run({"add": (200, 200), "letters": (186, 200)})])
    even = select_tiny.summarize(Path("b"), [_run({"add": (192, 200), "letters": (190, 200)})])
    assert select_tiny.choose([strong_mean, even]) == 1
    # equal worst tasks: the higher overall accuracy wins
    better_rest = select_tiny.summarize(Path("c"), [_run({"add": (196, 200), "letters": (190, 200)})])
    assert select_tiny.choose([even, better_rest]) == 1
    # a full tie keeps the earlier candidate
    same = select_tiny.summarize(Path("d"), [_run({"add": (192, 200), "letters": (190, 200)})])
    assert select_tiny.choose([even, same]) == 0 and select_tiny.choose([same, even]) == 0


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--split", str(REPO_ROOT / "synthetic" / "data" / "test.jsonl")], "selection on the test set"),
        (["--temperature", "0"], "--temperature must be > 0"),
        (["--eval_seeds", "1,1"], "distinct seeds"),
        (["--limit", "0"], "--limit must be a positive integer"),
        (["--out", str(REPO_ROOT)], "is a directory"),
    ],
)
def test_bad_input_fails_before_any_decoding(select_tiny, capsys, tmp_path, extra, message):
    model = tmp_path / "m"
    model.mkdir()
    (model / "config.json").write_text('{"model_type": "sdar"}')  # never loaded: validation fails first
    with pytest.raises(SystemExit) as exc:
        select_tiny.main([str(model), *extra])
    assert exc.value.code != 0 and message in capsys.readouterr().err


def test_missing_or_repeated_candidates_are_refused(select_tiny, capsys, tmp_path):
    with pytest.raises(SystemExit):
        select_tiny.main([str(tmp_path / "absent")])
    assert "config.json missing" in capsys.readouterr().err
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(SystemExit):
        select_tiny.main([str(tmp_path), f"{tmp_path}/."])
    assert "listed twice" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.skipif(not (SHIPPED_MODEL / "config.json").is_file(), reason="models/sdar-tiny not trained yet")
def test_identical_candidates_score_identically_and_the_first_is_chosen(select_tiny, capsys, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(SHIPPED_MODEL, copy)
    out = tmp_path / "choice.json"
    assert select_tiny.main([str(copy), str(SHIPPED_MODEL), "--limit", "2", "--eval_seeds", "0,5",
                             "--threads", "1", "--out", str(out)]) == 0
    record = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert json.loads(out.read_text()) == record
    first, second = record["candidates"]
    assert record["chosen"] == str(copy)
    assert first["per_task"] == second["per_task"] and first["per_seed"] == second["per_seed"]
    assert {task: entry["n"] for task, entry in first["per_task"].items()} == {
        "add": 4, "chain": 4, "digitsum": 4, "letters": 4}
    assert record["split"].endswith("val.jsonl") and record["eval_seeds"] == [0, 5]


def test_d2f_candidates_are_pair_folders_checked_before_decoding(select_tiny, capsys, tmp_path):
    """A D2F candidate is train_tiny.py's output folder (base/ + lora/); both halves must be there."""
    assert select_tiny.candidate_dirs("d2f_llada", tmp_path) == (tmp_path / "base", tmp_path / "lora")
    assert select_tiny.candidate_dirs("sdar", tmp_path) == (tmp_path, None)
    (tmp_path / "base").mkdir()
    (tmp_path / "base" / "config.json").write_text('{"model_type": "Dream"}')  # a D2F-Dream base, never loaded
    with pytest.raises(SystemExit):
        select_tiny.main(["--family", "d2f_dream", str(tmp_path)])
    assert f"no adapter at {tmp_path / 'lora'}" in capsys.readouterr().err


@pytest.mark.slow
def test_a_shipped_d2f_pair_is_scored_with_its_adapter(select_tiny, capsys):
    """The D2F families sample with --temperature alone (their parsers have no --do_sample): two items
    per task, AR mode at T = 1, on the shipped pair."""
    pair = REPO_ROOT / "models" / "d2f-llada-tiny"
    assert select_tiny.main(["--family", "d2f_llada", str(pair), "--limit", "2", "--eval_seeds", "0",
                             "--threads", "1"]) == 0
    record = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    (candidate,) = record["candidates"]
    assert record["chosen"] == str(pair) and candidate["model_dir"] == str(pair)
    assert {task: entry["n"] for task, entry in candidate["per_task"].items()} == {
        "add": 2, "chain": 2, "digitsum": 2, "letters": 2}
