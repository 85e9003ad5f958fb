"""Tests of the tiny-model training and evaluation scripts, and of the shipped model they produce.

The shipped model is what every offline entry point decodes with, so this checks that the training
script writes a loadable HF directory deterministically, rejects bad arguments before spending any
time, builds exactly the SDAR / BD3-LM doubled-sequence mask, and that models/sdar-tiny (when
present) solves a test item in AR mode.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from types import ModuleType

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402
from safetensors.torch import load_file  # noqa: E402

import SDAR  # noqa: E402,F401  (registers model_type "sdar" with the Auto classes)
from SDAR.configuration_sdar import SDARConfig  # noqa: E402
from SDAR.modeling_sdar import SDARForCausalLM  # noqa: E402
from s2d2_eval.testing import load_script  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parent.parent
TRAIN_SCRIPT = REPO_ROOT / "scripts" / "train_tiny.py"
EVAL_SCRIPT = REPO_ROOT / "scripts" / "eval_tiny.py"
SHIPPED_MODEL = REPO_ROOT / "models" / "sdar-tiny"
TINY_FLAGS = ["--hidden_size", "32", "--num_layers", "1", "--num_heads", "2", "--num_kv_heads", "1",
              "--head_dim", "16", "--intermediate_size", "64", "--steps", "3", "--warmup_steps", "1",
              "--batch_size", "4", "--threads", "1", "--log_every", "1"]


@pytest.fixture(scope="module")
def train_tiny() -> ModuleType:
    return load_script(TRAIN_SCRIPT)


def test_training_writes_a_loadable_deterministic_model(train_tiny, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    first, second = tmp_path / "a", tmp_path / "b"
    assert train_tiny.main([*TINY_FLAGS, "--output_dir", str(first), "--seed", "7"]) == 0
    assert train_tiny.main([*TINY_FLAGS, "--output_dir", str(second), "--seed", "7"]) == 0

    config = json.loads((first / "config.json").read_text())
    assert config["model_type"] == "sdar"
    generation = json.loads((first / "generation_config.json").read_text())
    record = json.loads((first / "training_args.json").read_text())
    assert record["seed"] == 7 and record["steps_done"] == 3 and record["final_loss"] > 0
    assert "train_tiny.py" in record["command"] and record["wall_time_s"] > 0

    tokenizer = AutoTokenizer.from_pretrained(first, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(first, local_files_only=True)
    assert isinstance(model, SDARForCausalLM)
    assert generation["mask_token_id"] == tokenizer.mask_token_id
    assert generation["pad_token_id"] == tokenizer.pad_token_id
    assert tokenizer.eos_token_id in generation["eos_token_id"]
    ids = tokenizer("add 1+2", return_tensors="pt").input_ids
    assert model(input_ids=ids).logits.shape == (1, ids.shape[1], len(tokenizer))

    weights_a, weights_b = load_file(first / "model.safetensors"), load_file(second / "model.safetensors")
    assert weights_a.keys() == weights_b.keys()
    assert all(torch.equal(weights_a[k], weights_b[k]) for k in weights_a)


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--tasks", "add,nope"], "--tasks"),
        (["--steps", "0"], "--steps"),
        (["--hidden_size", "-8"], "--hidden_size"),
        (["--batch_size", "0"], "--batch_size"),
        (["--lr", "0"], "--lr"),
        (["--lr", "nan"], "--lr"),
        (["--block_sizes", "1,0,4"], "--block_sizes"),
        (["--num_heads", "3", "--num_kv_heads", "2"], "--num_heads"),
        (["--no_such_flag", "1"], "unrecognized"),
        (["--device", "tpu"], "--device"),
    ],
)
def test_bad_arguments_fail_fast_in_one_line(tmp_path, flags, message):
    _assert_fails_fast([*flags, "--output_dir", str(tmp_path / "out")], message)
    assert not (tmp_path / "out").exists()


def test_unwritable_output_dir_fails_fast(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    _assert_fails_fast(["--output_dir", str(blocker / "model")], "--output_dir")


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_device_without_cuda_fails_before_training(tmp_path):
    proc = subprocess.run([sys.executable, str(TRAIN_SCRIPT), "--device", "cuda", "--output_dir", str(tmp_path / "out")],
                          capture_output=True, text=True, cwd=REPO_ROOT, timeout=120)
    assert proc.returncode != 0 and "--device cuda" in proc.stderr and "no CUDA device" in proc.stderr, proc.stderr
    assert "parameters" not in proc.stderr and not (tmp_path / "out").exists()


def _assert_fails_fast(flags: list[str], message: str) -> None:
    """A fresh interpreter must exit non-zero with one error line in well under the cost of a
    torch import, i.e. before any model is built."""
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, str(TRAIN_SCRIPT), *flags], capture_output=True, text=True,
                          cwd=REPO_ROOT, timeout=60)
    elapsed = time.perf_counter() - start
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "error" in lines[0] and message in lines[0], proc.stderr
    assert elapsed < 2.0, f"took {elapsed:.2f} s: validation must run before torch is imported"


def test_doubled_sequence_mask_matches_literal(train_tiny):
    expected = torch.tensor(
        [
            # x_t 0..3      x_0 0..3
            [1, 1, 0, 0, 0, 0, 0, 0],
            [1, 1, 0, 0, 0, 0, 0, 0],
            [0, 0, 1, 1, 1, 1, 0, 0],
            [0, 0, 1, 1, 1, 1, 0, 0],
            [0, 0, 0, 0, 1, 1, 0, 0],
            [0, 0, 0, 0, 1, 1, 0, 0],
            [0, 0, 0, 0, 1, 1, 1, 1],
            [0, 0, 0, 0, 1, 1, 1, 1],
        ],
        dtype=torch.bool,
    )
    assert torch.equal(train_tiny.doubled_sequence_mask(4, 2), expected)


def test_block_size_one_mask_is_the_ar_verifier(train_tiny):
    """Block size 1: noised i sees itself and clean tokens < i; the clean half is token-causal."""
    n = 5
    mask = train_tiny.doubled_sequence_mask(n, 1)
    eye = torch.eye(n, dtype=torch.bool)
    strictly_lower = torch.ones(n, n, dtype=torch.bool).tril(-1)
    assert torch.equal(mask[:n, :n], eye)
    assert torch.equal(mask[:n, n:], strictly_lower)
    assert torch.equal(mask[n:, :n], torch.zeros(n, n, dtype=torch.bool))
    assert torch.equal(mask[n:, n:], strictly_lower | eye)


@pytest.mark.parametrize("block_size", [1, 2, 4, 8])
def test_rows_mask_only_answer_tokens_and_pad_to_the_block(train_tiny, block_size):
    import random

    rng = random.Random(block_size)
    ids, prompt_len, mask_id, pad_id = list(range(10, 23)), 6, 3, 0  # 6 prompt + 7 answer tokens
    for _ in range(50):
        row = train_tiny.make_row(ids, prompt_len, block_size, rng, mask_id, pad_id)
        length = -(-len(ids) // block_size) * block_size
        clean = ids + [pad_id] * (length - len(ids))
        n_noised = sum(row.noised)
        assert row.input_ids[n_noised:] == clean and row.position_ids[n_noised:] == list(range(length))
        start = row.position_ids[0]
        assert start == prompt_len // block_size * block_size and n_noised == length - start
        for token, pos, label in zip(row.input_ids[:n_noised], row.position_ids, row.labels):
            if pos < prompt_len:
                assert token == clean[pos] and label == -100
            elif token == mask_id:
                assert label == clean[pos]
            else:
                assert token == clean[pos] and label == -100
        for block_start in range(start, length, block_size):
            span = range(block_start - start, block_start - start + block_size)
            assert any(row.labels[i] != -100 for i in span), "every answer block masks at least one token"
        if block_size == 1:
            assert row.labels[:n_noised] == clean[prompt_len:]


def test_trimmed_rows_give_the_full_doubled_sequence_logits(train_tiny, tiny_sdar_config):
    """Leaving out noised blocks that hold only prompt tokens changes no logit that is scored:
    noised tokens attend only inside their own block."""
    import random

    torch.manual_seed(0)
    model = SDARForCausalLM(tiny_sdar_config).to(torch.float64).eval()
    ids, prompt_len, block = list(range(10, 29)), 9, 4
    row = train_tiny.make_row(ids, prompt_len, block, random.Random(0), 3, 0)
    batch = train_tiny.collate([row], pad_id=0)
    trimmed = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                    position_ids=batch["position_ids"]).logits[0]  # [T, V]
    n_noised = sum(row.noised)
    clean = row.input_ids[n_noised:]
    length = len(clean)
    start = length - n_noised  # first position of the kept noised blocks
    full_ids = torch.tensor(clean[:start] + row.input_ids[:n_noised] + clean)[None]  # [1, 2N]: [x_t || x_0]
    full = model(input_ids=full_ids, attention_mask=train_tiny.doubled_sequence_mask(length, block)[None],
                 position_ids=torch.arange(length).repeat(2)[None]).logits[0]  # [2N, V]
    scored = (torch.tensor(row.labels) != -100)[:n_noised]
    assert start > 0 and scored.any()
    torch.testing.assert_close(trimmed[:n_noised][scored], full[start:length][scored], rtol=1e-9, atol=1e-9)


def test_packed_examples_do_not_interact(train_tiny, tiny_sdar_config):
    """Packing several examples into one line gives each the logits it has alone."""
    import random

    torch.manual_seed(0)
    model = SDARForCausalLM(tiny_sdar_config).to(torch.float64).eval()
    rng = random.Random(1)
    rows = [train_tiny.make_row(list(range(10, 10 + n)), p, block, rng, 3, 0)
            for n, p, block in ((21, 9, 4), (9, 5, 1), (8, 3, 2))]
    batch = train_tiny.collate(rows, pad_id=0, packed=True)
    assert batch["input_ids"].shape[0] < len(rows)
    packed = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                   position_ids=batch["position_ids"]).logits  # [lines, T, V]
    scored_packed = packed[batch["labels"] != -100]
    alone = []
    for row in [r for line in train_tiny.pack(rows) for r in line]:  # the packed order
        single = train_tiny.collate([row], pad_id=0)
        logits = model(input_ids=single["input_ids"], attention_mask=single["attention_mask"],
                       position_ids=single["position_ids"]).logits
        alone.append(logits[single["labels"] != -100])
    torch.testing.assert_close(scored_packed, torch.cat(alone), rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("block", [1, 4])
def test_answers_sharing_a_prompt_get_the_logits_they_have_alone(train_tiny, tiny_sdar_config, block):
    """Tree rows (several answers under one copy of the prompt-only blocks) change no scored logit."""
    import random

    torch.manual_seed(0)
    model = SDARForCausalLM(tiny_sdar_config).to(torch.float64).eval()
    rng = random.Random(2)
    prompt = list(range(10, 19))
    answers = [train_tiny.make_row(prompt + tail, len(prompt), block, rng, 3, 0)
               for tail in ([30, 31, 32, 2], [33, 34, 2], [35, 36, 37, 38, 39, 2])]
    tree = train_tiny.share_prompt(answers)
    assert len(tree.input_ids) < sum(len(r.input_ids) for r in answers)
    batch = train_tiny.collate([tree], pad_id=0)
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                   position_ids=batch["position_ids"]).logits[0]
    alone = []
    for row in answers:
        single = train_tiny.collate([row], pad_id=0)
        out = model(input_ids=single["input_ids"], attention_mask=single["attention_mask"],
                    position_ids=single["position_ids"]).logits
        alone.append(out[single["labels"] != -100])
    torch.testing.assert_close(logits[batch["labels"][0] != -100], torch.cat(alone), rtol=1e-9, atol=1e-9)


def test_schedule_follows_steps_unless_the_time_cap_is_nearer(train_tiny):
    """Progress is the step fraction while the run is on time (deterministic), the wall-clock fraction
    when the cap is nearer; LR warms up linearly, then decays from the peak to the floor."""
    progress, grace = train_tiny.training_progress, train_tiny.TIME_GRACE
    assert progress(10, 110, 10, elapsed_s=1.0, budget_s=1000.0) == 0.0
    assert progress(60, 111, 10, elapsed_s=1.0, budget_s=1000.0) == pytest.approx(0.5)
    assert progress(60, 111, 10, elapsed_s=520.0, budget_s=1000.0) == pytest.approx(0.5)  # behind, within grace
    assert progress(60, 111, 10, elapsed_s=905.0, budget_s=1000.0) == pytest.approx((0.905 - grace) / (1 - grace))
    assert progress(60, 111, 10, elapsed_s=1000.0, budget_s=1000.0) == 1.0
    assert progress(200, 111, 10, elapsed_s=1.0, budget_s=1000.0) == 1.0
    factor = train_tiny.lr_factor
    assert [factor(s, 0.0, 4, 0.1) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert factor(10, 0.0, 4, 0.1) == 1.0 and factor(10, 1.0, 4, 0.1) == pytest.approx(0.1)
    assert factor(10, 0.5, 4, 0.1) == pytest.approx(0.55)
    decay = [factor(10, p / 10, 4, 0.1) for p in range(11)]
    assert all(a > b for a, b in zip(decay, decay[1:]))


def _fast_model(config) -> torch.nn.Module:
    from fast_dllm_v2.modeling_fast_dllm import Fast_dLLM_QwenForCausalLM

    torch.manual_seed(0)
    return Fast_dLLM_QwenForCausalLM(config).to(torch.float64).eval()


@pytest.mark.parametrize("block_size, prompt_len", [(1, 7), (2, 7), (4, 9), (4, 8), (8, 5)])
def test_shifted_rows_score_every_answer_token_once_per_role(train_tiny, block_size, prompt_len):
    """Complementary copies: every answer token (EOS and block padding included) is a target; a block
    start only on the clean copy, every other token once masked on a noised copy and once on the
    verifier copy, where it is not masked."""
    import random

    ids = list(range(10, 10 + prompt_len)) + [40, 41, 42, 43, 44, 45, 2]
    length = -(-len(ids) // block_size) * block_size
    padded = ids + [0] * (length - len(ids))
    for seed in range(20):
        row = train_tiny.make_shifted_row(ids, prompt_len, block_size, random.Random(seed), 3, 0)
        n_clean_start = len(row.input_ids) - length
        assert row.position_ids[n_clean_start:] == list(range(length)) and set(row.branch[n_clean_start:]) == {-1}
        assert not any(row.noised[n_clean_start:]) and not any(row.verifier[n_clean_start:])
        targets: dict[int, list[str]] = {}
        for i, label in enumerate(row.labels):
            if label == -100:
                continue
            pos = row.position_ids[i]
            assert label == padded[pos]
            role = "noised" if row.noised[i] else "verifier" if row.verifier[i] else "clean"
            targets.setdefault(pos, []).append(role)
            assert row.input_ids[i] == (3 if role == "noised" else padded[pos])
            if role == "clean":
                assert pos % block_size == 0
            else:
                assert pos % block_size and row.branch[i] == {"noised": row.branch[i], "verifier": 2}[role]
                assert row.position_ids[i - 1] == pos - 1 and row.branch[i - 1] == row.branch[i]
        assert sorted(targets) == list(range(prompt_len, length))
        for pos, roles in targets.items():
            assert sorted(roles) == (["clean"] if pos % block_size == 0 else ["noised", "verifier"])
        assert row.labels[0] == -100 and row.position_ids[0] % block_size == 0
        if block_size == 1:
            assert len(row.input_ids) == length


@pytest.mark.parametrize("causal_clean", [False, True])
@pytest.mark.parametrize("block_size, prompt_len", [(1, 6), (4, 9), (4, 8), (8, 5)])
def test_shifted_rows_give_the_decoders_logits(train_tiny, tiny_fast_dllm_config, block_size, prompt_len,
                                               causal_clean):
    """Every scored logit of a packed Fast-dLLM v2 training line equals the logit a decoder gets for
    that token, over a prefix cache stored block-causally (or causally: `causal_clean`, the decoders'
    cache_ver): a masked token from the draft forward of its block (the noised block over the cache,
    under the model's own block mask), a verifier-copy token from the S2D2 verifier (the block
    causally over the cache), a block start from the last row of the forward that stored the block
    before it."""
    import random

    from transformers import DynamicCache

    model = _fast_model(tiny_fast_dllm_config)
    rng = random.Random(5)
    rows = [train_tiny.make_shifted_row(list(range(10, 10 + prompt_len)) + tail, prompt_len, block_size, rng, 3, 0,
                                        causal_clean=causal_clean)
            for tail in ([40, 41, 42, 43, 44, 45, 2], [50, 51, 2], [60, 61, 62, 63, 64, 65, 66, 67, 68, 69, 2])]
    batch = train_tiny.collate(rows, pad_id=0, packed=True)
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                   position_ids=batch["position_ids"]).logits  # [lines, T, V]
    cache_block = 1 if causal_clean else block_size

    def decoder_logit(prefix: list[int], block: list[int], block_mask: int, row: int = -1) -> torch.Tensor:
        """Logit at `row` of `block` (mask granularity `block_mask`) over a cache holding `prefix`."""
        cache = DynamicCache()
        if prefix:
            model(input_ids=torch.tensor([prefix]), block_size=cache_block, past_key_values=cache, use_cache=True,
                  update_past_key_values=True)
        return model(input_ids=torch.tensor([block]), block_size=block_mask, past_key_values=cache,
                     use_cache=True).logits[0, row]

    checked = 0
    for line_index, line in enumerate(train_tiny.pack(rows)):
        offset = 0
        for row in line:
            clean = row.input_ids[len(row.input_ids) - len([b for b in row.branch if b < 0]):]
            for i, label in enumerate(row.labels):
                if label == -100:
                    continue
                pos = row.position_ids[i]
                start = pos - pos % block_size
                if row.noised[i]:  # the draft forward of this copy's block, read at row pos - 1
                    block = [row.input_ids[j] for j in range(len(row.input_ids)) if row.branch[j] == row.branch[i]
                             and start <= row.position_ids[j] < start + block_size]
                    reference = decoder_logit(clean[:start], block, block_size, row=pos - 1 - start)
                elif row.verifier[i]:
                    reference = decoder_logit(clean[:start], clean[start:pos], 1)
                else:  # the commit (or prefill) forward that stored the block before pos
                    reference = decoder_logit(clean[: pos - block_size], clean[pos - block_size : pos], cache_block)
                torch.testing.assert_close(logits[line_index, offset + i - 1], reference, rtol=1e-9, atol=1e-9)
                checked += 1
            offset += len(row.input_ids)
    assert checked == sum(label != -100 for row in rows for label in row.labels)


def test_fast_dllm_training_writes_a_loadable_model(train_tiny, tmp_path):
    """--family fast_dllm_v2 writes a Fast_dLLM_Qwen checkpoint the Auto classes load without remote code,
    and its shifted logits decode through the family's generate function."""
    import fast_dllm_v2  # noqa: F401  (registers model_type "Fast_dLLM_Qwen")
    from fast_dllm_v2.generate import generate
    from fast_dllm_v2.modeling_fast_dllm import Fast_dLLM_QwenForCausalLM
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = tmp_path / "fast"
    assert train_tiny.main([*TINY_FLAGS, "--family", "fast_dllm_v2", "--block_sizes", "1,4", "--ar_fraction", "0.3",
                            "--causal_clean_fraction", "0.5",
                            "--output_dir", str(out)]) == 0
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == "Fast_dLLM_Qwen" and config["bd_size"] == 4 and config["conplemenrary_mask"]
    model = AutoModelForCausalLM.from_pretrained(out, local_files_only=True)
    tokenizer = AutoTokenizer.from_pretrained(out, local_files_only=True)
    assert isinstance(model, Fast_dLLM_QwenForCausalLM)
    ids = tokenizer.apply_chat_template([{"role": "user", "content": "add 1+2"}], add_generation_prompt=True,
                                        return_tensors="pt")
    output = generate(model, ids, block_size=4, small_block_size=2, max_new_tokens=8)
    assert output.shape == (1, ids.shape[1] + 8)
    assert torch.equal(output[0, : ids.shape[1]], ids[0])

    eval_tiny = load_script(EVAL_SCRIPT)
    for mode, flags in (("ar", []), ("s2d2", ["--block_size", "4", "--small_block_size", "2"])):
        record_path = tmp_path / f"{mode}.jsonl"
        assert eval_tiny.main(["--family", "fast_dllm_v2", "--model_dir", str(out), "--mode", mode, "--limit", "2",
                               "--tasks", "add,letters", "--threads", "1", "--predictions", str(record_path),
                               *flags]) == 0
        predictions = [json.loads(line) for line in record_path.read_text().splitlines()]
        assert [p["task"] for p in predictions] == ["add", "add", "letters", "letters"]
        if mode == "ar":  # one forward per generated token after the prefill (the AR token is free)
            assert all(p["nfe"] >= p["generated_tokens"] - 1 for p in predictions)


def test_causal_clean_fraction_is_fast_dllm_only(tmp_path):
    _assert_fails_fast(["--causal_clean_fraction", "0.5", "--output_dir", str(tmp_path)],
                       "--causal_clean_fraction only applies to --family fast_dllm_v2")
    _assert_fails_fast(["--family", "fast_dllm_v2", "--causal_clean_fraction", "1.5", "--output_dir", str(tmp_path)],
                       "--causal_clean_fraction must be in [0, 1]")


def test_answers_per_prompt_is_sdar_only(tmp_path):
    _assert_fails_fast(["--family", "fast_dllm_v2", "--answers_per_prompt", "2", "--output_dir", str(tmp_path)],
                       "--answers_per_prompt only applies to --family sdar")


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--mode", "baseline", "--acceptance", "greedy_exact"], "only apply to --mode s2d2"),
        (["--mode", "ar", "--block_length", "8"], "--mode ar fixes block_length=1"),
        (["--tasks", "add,nope"], "unknown task"),
    ],
)
def test_eval_rejects_bad_flags(capsys, tmp_path, flags, message):
    eval_tiny = load_script(EVAL_SCRIPT)
    with pytest.raises(SystemExit) as exc:
        eval_tiny.main([*flags, "--model_dir", str(tmp_path)])
    assert exc.value.code != 0 and message in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.skipif(not (SHIPPED_MODEL / "config.json").is_file(), reason="models/sdar-tiny not trained yet")
def test_shipped_model_solves_a_test_item_in_ar_mode():
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from SDAR.generate import block_diffusion_generate
    from synthetic.scorer import score
    from synthetic.tasks import load_test_split
    from synthetic.tokenizer import format_prompt

    size_mb = sum(f.stat().st_size for f in SHIPPED_MODEL.iterdir()) / 2**20
    assert size_mb <= 20, f"shipped model is {size_mb:.1f} MB"
    tokenizer = AutoTokenizer.from_pretrained(SHIPPED_MODEL, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(SHIPPED_MODEL, local_files_only=True).eval()
    item = next(i for i in load_test_split() if i["task"] == "add")
    ids = tokenizer(format_prompt(tokenizer, item["prompt"]), return_tensors="pt", add_special_tokens=False).input_ids
    out = block_diffusion_generate(model, ids, block_length=1, denoising_steps=1, gen_length=64)
    completion = tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True)
    assert completion == item["target"]
    assert score(item, completion)
