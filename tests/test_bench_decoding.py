"""End-to-end tests of `scripts/bench_decoding.py` on the shipped tiny models (a tiny setting: two
prompts, batch sizes 1 and 2), its trace counting on literal and real profiles, and its bad-input
handling. Timings are never asserted; counts and invariants are."""

from __future__ import annotations

import contextlib
import io
import json
import os
import statistics
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import pytest
import torch

from s2d2_eval.testing import load_script, run_fresh

REPO_ROOT = Path(__file__).resolve().parent.parent
SCRIPT = REPO_ROOT / "scripts" / "bench_decoding.py"
TINY = ["--tasks", "add,letters", "--per_task", "1", "--repeats", "2", "--batch_sizes", "1,2"]
RESULT_FIELDS = {
    "batch_size", "prompts", "generated_tokens", "nfe", "prefill_nfe", "tpf", "verify_nfe", "forwards",
    "rows_processed", "steps", "wall_s", "thread_cpu_s", "process_cpu_s", "model_forward_wall_s",
    "model_forward_thread_cpu_s", "wall_s_per_repeat", "thread_cpu_s_per_repeat", "tokens_per_second",
    "tokens_per_thread_cpu_second", "outside_forward_cpu_ms_per_step", "outside_forward_cpu_ms_per_forward",
    "tokens_vary_across_repeats", "correct", "accuracy", "stderr", "profile", "mismatched_rows_vs_batch_1",
}
PROFILE_FIELDS = {
    "prompts", "forwards", "steps", "top_level_ops_outside_forwards", "top_level_ops_per_forward",
    "top_level_ops_per_step", "host_syncs_outside_forwards", "host_syncs_tolist_calls", "host_syncs_per_forward",
    "host_syncs_per_step", "host_syncs_inside_forwards", "peak_memory_mib", "peak_memory_method",
}


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    return load_script(SCRIPT)


@pytest.fixture(scope="module", params=["sdar", "fast_dllm_v2", "llada2", "d2f_llada", "d2f_dream"])
def run(request, bench, tmp_path_factory) -> tuple[dict, str, Path]:
    """(returned record, stdout, --out file) of one tiny benchmark run of a family."""
    out = tmp_path_factory.mktemp(request.param) / "bench.json"
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        record = bench.main(["--family", request.param, *TINY, "--out", str(out)])
    return record, stdout.getvalue(), out


def test_one_json_record_last_on_stdout_and_in_the_out_file(run, bench):
    record, stdout, out = run
    assert json.loads(stdout.strip().splitlines()[-1]) == json.loads(out.read_text()) == json.loads(json.dumps(record))
    assert [p.name for p in out.parent.iterdir()] == [out.name]  # no temporary file left behind
    umask = os.umask(0)
    os.umask(umask)
    assert out.stat().st_mode & 0o777 == 0o666 & ~umask  # an ordinary file, not mkstemp's private 0600
    assert record["record"] == "bench_decoding"
    assert list(record["contenders"]) == list(bench.FAMILIES[record["family"]].contenders)
    assert ("hf_generate" in record["contenders"]) == (record["family"] not in ("llada2", "d2f_llada"))
    assert record["batch_sizes"] == [1, 2] and list(record["results"]) == ["1", "2"]
    assert record["prompts"] == 2 and record["repeats"] == 2
    env = record["environment"]
    assert env["torch_threads"] == 1 and len(env["load_average_before"]) == 3 and len(env["load_average_after"]) == 3
    assert env["cpu_model"] is None or isinstance(env["cpu_model"], str)
    for batch in record["results"].values():
        assert list(batch) == list(record["contenders"])
        for result in batch.values():
            assert set(result) == RESULT_FIELDS
            assert set(result["profile"]) == PROFILE_FIELDS
    for name, spec in record["contenders"].items():
        assert spec["greedy"] == (name != "s2d2_config_a")
        if name != "hf_generate":
            assert spec["source"].startswith("configs/decoding/") and ":" in spec["decoder"]


def test_presets_are_read_from_configs(run):
    record = run[0]
    params = {name: spec["params"] for name, spec in record["contenders"].items()}
    if record["family"] == "sdar":
        assert params["ar"]["block_length"] == 1 and params["ar"]["denoising_steps"] == 1
        # As sweep_sdar.sh runs them: every block decoder at the model's block length, steps scaled.
        for name in ("baseline", "s2d2_config_a", "s2d2_greedy"):
            assert params[name]["block_length"] == record["block_length"] == 8, name
            assert params[name]["denoising_steps"] == 8, name
        assert params["s2d2_greedy"]["acceptance"] == "greedy_exact"
        assert params["s2d2_config_a"]["do_verify_policy"] == "score_threshold"
        assert all(p["gen_length"] == 64 for name, p in params.items() if name != "hf_generate")
    elif record["family"] == "fast_dllm_v2":
        assert params["ar"]["block_size"] == 1 and params["baseline"]["block_size"] == record["block_length"] == 16
        assert params["s2d2_config_a"]["do_verify_policy"] == "score_hysteresis"
        assert all(p["max_new_tokens"] == 64 for name, p in params.items() if name != "hf_generate")
    elif record["family"] == "llada2":
        assert params["ar"]["block_length"] == 1 and params["baseline"]["block_length"] == record["block_length"] == 8
        assert params["baseline"]["editing_threshold"] == 0.9 and params["s2d2_greedy"]["acceptance"] == "greedy_exact"
        assert all(p["gen_length"] == 64 for name, p in params.items())
    else:  # D2F: the d2f presets at the model's block size
        assert params["ar"]["block_size"] == 1 and params["baseline"]["block_size"] == record["block_length"] == 8
        assert params["s2d2_greedy"]["acceptance"] == "greedy_exact"
        assert all(p["max_new_tokens"] == 64 for name, p in params.items() if name != "hf_generate")


def test_counts_at_batch_1(run):
    """One row: every forward is charged to it, so rows processed = forwards = NFE, and a step is any
    forward but a verification."""
    for name, result in run[0]["results"]["1"].items():
        assert result["rows_processed"] == result["forwards"] == result["nfe"], name
        assert result["steps"] == result["nfe"] - result["verify_nfe"] == result["profile"]["steps"], name
        assert result["tpf"] == round(result["generated_tokens"] / (result["nfe"] - result["prefill_nfe"]), 4)
        assert result["mismatched_rows_vs_batch_1"] == (None if name == "s2d2_config_a" else 0)
        assert result["generated_tokens"] > 0
    ar = run[0]["results"]["1"]["ar"]
    assert ar["verify_nfe"] == 0
    assert ar["generated_tokens"] == ar["nfe"] - (0 if run[0]["family"] == "fast_dllm_v2" else ar["prefill_nfe"])


def test_counts_and_times_at_every_batch_size(run):
    for batch, results in run[0]["results"].items():
        for name, result in results.items():
            assert result["forwards"] <= result["rows_processed"] <= int(batch) * result["forwards"], name
            assert result["wall_s"] == pytest.approx(statistics.median(result["wall_s_per_repeat"]), abs=1e-4)
            assert result["thread_cpu_s"] == pytest.approx(statistics.median(result["thread_cpu_s_per_repeat"]),
                                                           abs=1e-4)
            assert result["model_forward_wall_s"] <= result["wall_s"]
            assert result["model_forward_thread_cpu_s"] <= result["thread_cpu_s"]
            assert result["tokens_per_second"] == pytest.approx(result["generated_tokens"] / result["wall_s"], rel=1e-3)
            assert not result["tokens_vary_across_repeats"]  # seeded: every repeat decodes the same tokens
            # Steps are counted at every batch size: the rows of a batch share its iterations.
            assert 0 < result["profile"]["steps"] <= result["profile"]["forwards"], name
            assert 0 < result["steps"] <= result["forwards"] and result["profile"]["top_level_ops_per_step"] > 0
            if name in ("hf_generate", "ar"):
                assert result["steps"] == result["forwards"], name
            profile = result["profile"]
            assert profile["top_level_ops_outside_forwards"] > 0 and profile["peak_memory_mib"] > 0
            # Every decoder reads something back to decide when to stop.
            assert profile["host_syncs_outside_forwards"] > 0
            assert profile["host_syncs_outside_forwards"] >= profile["host_syncs_tolist_calls"] >= 0
            assert profile["top_level_ops_per_forward"] == round(
                profile["top_level_ops_outside_forwards"] / profile["forwards"], 3)


def test_hf_generate_and_our_ar_mode_do_the_same_work(run):
    """Fast-dLLM v2 is shift-aligned: transformers' greedy generate on its weights IS our AR mode, token
    for token. SDAR and D2F-Dream (whose prompt is one bidirectional block) are not: HF generate there
    writes exactly as many tokens as AR mode, unscored. LLaDA2 and D2F-LLaDA have no twin."""
    record = run[0]
    if "hf_generate" not in record["contenders"]:
        assert record["token_identity"]["hf_generate_vs_ar_mismatched_rows"] is None
        return
    hf, ar = record["results"]["1"]["hf_generate"], record["results"]["1"]["ar"]
    identity = record["token_identity"]
    assert hf["generated_tokens"] == ar["generated_tokens"]
    if record["family"] == "fast_dllm_v2":
        assert identity["hf_generate_vs_ar_mismatched_rows"] == 0
        assert hf["accuracy"] == ar["accuracy"] and hf["correct"] == ar["correct"]
        assert identity["hf_generate_forced_lengths"] is None
        assert not record["contenders"]["hf_generate"]["params"]["forced_length"]
    else:
        assert identity["hf_generate_vs_ar_mismatched_rows"] is None
        assert hf["accuracy"] is None and hf["correct"] is None
        assert sum(identity["hf_generate_forced_lengths"]) == ar["generated_tokens"]
        assert identity["hf_generate_forced_lengths_equal_ar_batch_1"] is True
    assert hf["prefill_nfe"] == record["prompts"]  # one prefill forward per prompt at batch 1


def test_headline_ratios(run):
    record = run[0]
    first = record["results"]["1"]
    speed = record["headline"]["speed_vs_hf_generate_batch_1"]
    if "hf_generate" in record["contenders"]:
        assert set(speed) == {"ar", "baseline", "s2d2_config_a", "s2d2_greedy"}
    else:
        assert not speed
    for name, ratio in speed.items():
        assert ratio == round(first[name]["tokens_per_second"] / first["hf_generate"]["tokens_per_second"], 3)
    scaling = record["headline"]["batch_scaling"]
    assert (scaling["from"], scaling["to"]) == (1, 2)
    for name, ratio in scaling["rows_processed_ratio"].items():
        assert ratio == round(record["results"]["2"][name]["rows_processed"] / first[name]["rows_processed"], 3)


# ------------------------------------------------------------------------------------ trace counting


@dataclass
class FakeEvent:
    """The part of a raw kineto event that count_trace reads."""

    label: str
    start: int
    end: int
    thread: int = 1
    bytes: int = 0

    def name(self) -> str:
        return self.label

    def start_ns(self) -> int:
        return self.start

    def end_ns(self) -> int:
        return self.end

    def start_thread_id(self) -> int:
        return self.thread

    def is_async(self) -> bool:
        return False

    def nbytes(self) -> int:
        return self.bytes


def test_count_trace_on_a_literal_trace(bench):
    scope = bench.MODEL_SCOPE
    events = [
        FakeEvent("aten::where", 0, 10),  # top level
        FakeEvent("aten::empty", 1, 2),  # nested in where
        FakeEvent(scope, 20, 60),  # a model forward
        FakeEvent("aten::linear", 21, 30),  # inside it
        FakeEvent("aten::_local_scalar_dense", 22, 23),  # a sync inside the model
        FakeEvent("aten::item", 70, 80),  # top level ...
        FakeEvent("aten::_local_scalar_dense", 71, 79),  # ... whose sync is outside the model
        FakeEvent("aten::index", 90, 100),
        FakeEvent("aten::nonzero", 91, 95),  # nested sync, outside
        FakeEvent("aten::add", 95, 99, thread=2),  # another thread: its own nesting, top level
        FakeEvent("[memory]", 3, 3, bytes=100),
        FakeEvent("[memory]", 25, 25, bytes=50),
        FakeEvent("[memory]", 26, 26, bytes=-120),
        FakeEvent("[memory]", 27, 27, bytes=30),
    ]
    counts = bench.count_trace(events[::-1])  # order must not matter
    assert counts.top_level_ops == 4  # where, item, index, add (the model scope is not an op)
    assert (counts.syncs_outside, counts.syncs_inside) == (2, 1)
    assert counts.peak_bytes == 150


def test_count_trace_on_a_real_profile(bench):
    from torch.profiler import ProfilerActivity, profile, record_function

    x = torch.arange(10)
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        with record_function(bench.MODEL_SCOPE):
            doubled = x * 2
            doubled.sum().item()
        bool(doubled.any())
        doubled.nonzero()
    counts = bench.count_trace(prof.profiler.kineto_results.events())
    assert counts.top_level_ops == 3  # any, is_nonzero (item and _local_scalar_dense nest in it), nonzero
    assert (counts.syncs_outside, counts.syncs_inside) == (2, 1)
    assert counts.peak_bytes >= doubled.numel() * doubled.element_size()


# ------------------------------------------------------------------------------------ bad input


@pytest.mark.parametrize("argv, message", [
    (["--batch_sizes", "2,4"], "--batch_sizes must be distinct positive integers including 1"),
    (["--batch_sizes", "1,x"], "--batch_sizes must be comma-separated integers"),
    (["--per_task", "1", "--batch_sizes", "1,5"], "--batch_sizes 5 exceeds the 4 prompts chosen"),
    (["--per_task", "0"], "--per_task must be a positive integer, got 0"),
    (["--per_task", "101"], "--per_task 101: task add has only 100 items"),
    (["--repeats", "-1"], "--repeats must be a positive integer"),
    (["--tasks", "add,nope"], "--tasks: unknown task(s) ['nope']"),
    (["--contenders", "hf_generate"], "hf_generate on sdar generates as many tokens as our AR mode"),
    (["--contenders", "ar,ar"], "--contenders must name distinct contenders"),
    (["--family", "llada"], "argument --family: invalid choice"),
    (["--model_dir", "/nonexistent"], "no model at /nonexistent"),
    (["--device", "tpu"], "--device must be cpu, cuda or cuda:N"),
    (["--block_length", "0"], "--block_length must be a positive integer, got 0"),
    (["--family", "llada2", "--contenders", "hf_generate,ar"], "hf_generate: llada2 has no transformers twin"),
    (["--family", "fast_dllm_v2", "--block_length", "4"], "--block_length moves SDAR's block decoders"),
    (["--out", "/nonexistent/x.json"], "--out: directory /nonexistent does not exist"),
])
def test_bad_input_is_one_line_before_torch(argv, message):
    run = run_fresh(SCRIPT, argv, timeout=60)
    assert run.stdout.strip() == "" and run.exit == 2 and "torch" not in run.heavy, run
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("bench_decoding.py: error: ") and message in lines[0], run.stderr


def test_block_length_moves_the_sdar_block_decoders(bench):
    """--block_length N runs SDAR's block decoders at N (steps scaled), AR mode stays at 1."""
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        record = bench.main(["--family", "sdar", "--tasks", "add", "--per_task", "1", "--repeats", "1",
                             "--batch_sizes", "1", "--contenders", "ar,s2d2_greedy", "--block_length", "4"])
    params = {name: spec["params"] for name, spec in record["contenders"].items()}
    assert record["block_length"] == 4 and params["ar"]["block_length"] == 1
    assert params["s2d2_greedy"]["block_length"] == 4 and params["s2d2_greedy"]["denoising_steps"] == 4
