"""Tests of the D2F tiny-model recipe (`scripts/train_tiny.py --family d2f_llada / d2f_dream`,
`synthetic/train_d2f.py`): the pair it writes (base/ + lora/ in the released adapter format) loads and
decodes, runs are deterministic, bad flags fail in one line before training, the rows are the ones the
recipe promises (prompt never masked, trailing padding trained, monotonic per-block noise), the AR rows
give exactly the AR-mode forward's logits, and the distillation target is the adapter-disabled
full-attention base.
"""

from __future__ import annotations

import json
import math
import os
import random
import re
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402
from safetensors.torch import load_file  # noqa: E402

from common.masks import materialize, prefix_block_causal  # noqa: E402
from s2d2_eval.testing import load_script  # noqa: E402
from synthetic import train_d2f  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parent.parent
TRAIN_SCRIPT = REPO_ROOT / "scripts" / "train_tiny.py"
TINY_FLAGS = ["--hidden_size", "32", "--num_layers", "2", "--num_heads", "2", "--num_kv_heads", "1",
              "--head_dim", "16", "--intermediate_size", "64", "--steps", "3", "--warmup_steps", "1",
              "--lora_steps", "3", "--lora_warmup_steps", "1", "--lora_rank", "4", "--lora_block_sizes", "1,2,4",
              "--batch_size", "6", "--threads", "1", "--log_every", "1"]
ADAPTER_KEY = {
    "d2f_llada": r"base_model\.model\.model\.transformer\.blocks\.(\d+)\.(q_proj|k_proj|v_proj|attn_out)\.lora_[AB]\.weight",
    "d2f_dream": r"base_model\.model\.model\.layers\.(\d+)\.self_attn\.(q_proj|k_proj|v_proj|o_proj)\.lora_[AB]\.weight",
}
MASK_ID, PAD_ID = 3, 0


def _train_tiny():
    return load_script(TRAIN_SCRIPT)


@pytest.mark.parametrize("family", ["d2f_llada", "d2f_dream"])
def test_smoke_run_writes_a_deterministic_pair_that_loads_and_decodes(tmp_path, family):
    from transformers import AutoTokenizer

    from D2F.generate import generate
    from D2F.generate_ssd_policy import generate_ssd_policy
    from D2F.lora import load_d2f

    first, second = tmp_path / "a", tmp_path / "b"
    # One family's adapter keeps the base's AR mode, sharpened to T = 0.5, as its AR rows' target (--ar_distill,
    # AR rows weighted 3), the other's the data.
    distill = ["--ar_distill", "--ar_weight", "3", "--ar_distill_temperature", "0.5"] if family == "d2f_dream" else []
    choice = ["--choice_weight", "1.5"] if family == "d2f_llada" else ["--choice_weight", "0"]
    for out in (first, second):
        flags = [*TINY_FLAGS, *distill, *choice, "--family", family, "--output_dir", str(out), "--seed", "3"]
        assert _train_tiny().main(flags) == 0

    record = json.loads((first / "training_args.json").read_text())
    assert record["family"] == family and record["seed"] == 3
    assert record["base"]["steps_done"] == 3 and record["lora"]["steps_done"] == 3
    assert record["base"]["time_bound_steps"] == 0 and record["lora"]["time_bound_steps"] == 0
    # The AR warm start: the warmup step and the steps before --ar_fraction of the schedule train AR rows
    # (steps 0 and 1 of 3), the rest masked-diffusion rows.
    assert record["base"]["ar_steps"] == 2
    # After it, --ar_mix (0.5) of each batch's rows are still AR rows: both losses are logged.
    assert "mdm_ema" not in record["log"]["base"][0] and {"ar_ce_ema", "mdm_ema"} <= set(record["log"]["base"][-1])
    assert f"--family {family}" in record["command"] and record["log"]["lora"][-1]["step"] == 3
    assert ("ar_kl_ema" in record["log"]["lora"][-1]) == bool(distill)
    on = family == "d2f_llada"
    assert all(("ar_choice_ema" in entry) == on for entry in record["log"]["base"] + record["log"]["lora"])
    card = (first / "README.md").read_text()
    assert ("its own AR mode, `--ar_distill`" in card) == ("loss weighs 3× a D2F row's" in card) == bool(distill)
    assert ("at temperature 0.5" in card) == ("`--ar_distill_temperature 0.5`" in card) == bool(distill)
    assert ("pays 1.5 × −log(the probability of the written range)" in card) == on
    assert record["command"] in card and "3 steps" in card and "Not measured yet" in card
    assert not (first / "lora" / "README.md").exists()
    # Rewriting the card from its record keeps evaluation sections once they are filled in.
    filled = card[: card.index(train_d2f.MEASURED_HEADER)] + train_d2f.MEASURED_HEADER + "\n\n| add | 100% |\n"
    (first / "README.md").write_text(filled.replace(record["command"], "stale command"))
    rewritten = train_d2f.write_model_card(first, record).read_text()
    assert rewritten == filled

    # The released adapter format: exactly one lora_A and one lora_B per target module and layer.
    adapter_config = json.loads((first / "lora" / "adapter_config.json").read_text())
    model_type = train_d2f.MODEL_TYPES[family]
    from D2F.lora import RELEASED_TARGET_MODULES

    assert adapter_config["peft_type"] == "LORA" and adapter_config["r"] == 4 and adapter_config["lora_alpha"] == 4
    assert sorted(adapter_config["target_modules"]) == sorted(RELEASED_TARGET_MODULES[model_type])
    adapter = load_file(first / "lora" / "adapter_model.safetensors")
    parsed = [re.fullmatch(ADAPTER_KEY[family], key) for key in adapter]
    assert all(parsed), [k for k, m in zip(adapter, parsed) if not m]
    modules = RELEASED_TARGET_MODULES[model_type]
    assert len(adapter) == 2 * 2 * len(modules)  # 2 layers, A and B
    assert {(m.group(1), m.group(2)) for m in parsed} == {(str(i), mod) for i in range(2) for mod in modules}
    assert any(float(v.abs().max()) > 0 for k, v in adapter.items() if "lora_B" in k), "the adapter was trained"

    # Two runs with one seed give the same weights, base and adapter.
    for name in ("base/model.safetensors", "lora/adapter_model.safetensors"):
        a, b = load_file(first / name), load_file(second / name)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name

    # load_d2f refuses missing or unexpected adapter keys; both decoders run end to end.
    model = load_d2f(first / "base", first / "lora", merge=False, dtype=torch.float32, device="cpu")
    tokenizer = AutoTokenizer.from_pretrained(first / "base", local_files_only=True)
    ids = tokenizer.apply_chat_template([{"role": "user", "content": "add 12+34"}], add_generation_prompt=True,
                                        return_tensors="pt")
    for decode in (generate, generate_ssd_policy):
        out = decode(model, ids, block_size=4, max_new_tokens=8)
        assert out.shape == (1, ids.shape[1] + 8) and torch.equal(out[0, : ids.shape[1]], ids[0])


def _assert_fails_fast(flags: list[str], message: str) -> None:
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, str(TRAIN_SCRIPT), *flags], capture_output=True, text=True,
                          cwd=REPO_ROOT, timeout=60)
    elapsed = time.perf_counter() - start
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode != 0 and len(lines) == 1 and "error" in lines[0] and message in lines[0], proc.stderr
    assert elapsed < 2.0, f"took {elapsed:.2f} s: validation must run before torch is imported"


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--family", "d2f_llada", "--lora_steps", "0"], "--lora_steps must be a positive integer"),
        (["--family", "d2f_dream", "--lora_block_sizes", "1,0"], "--lora_block_sizes"),
        (["--family", "d2f_llada", "--data_weight", "-1"], "--data_weight"),
        (["--family", "d2f_llada", "--min_mask_ratio", "0"], "--min_mask_ratio"),
        (["--family", "d2f_dream", "--lora_warmup_steps", "5", "--lora_steps", "5"], "--lora_warmup_steps"),
        (["--family", "d2f_llada", "--lora_dropout", "1"], "--lora_dropout"),
        (["--family", "d2f_dream", "--ar_mix", "1"], "--ar_mix must be in [0, 1)"),
        (["--family", "sdar", "--ar_mix", "0.2"], "--ar_mix only applies to --family d2f_llada / d2f_dream"),
        (["--family", "fast_dllm_v2", "--ar_distill"], "--ar_distill only applies to --family"),
        (["--family", "d2f_llada", "--ar_weight", "0"], "--ar_weight must be a positive number"),
        (["--family", "d2f_dream", "--choice_weight", "-1"], "--choice_weight must be >= 0"),
        (["--family", "d2f_llada", "--ar_distill", "--ar_distill_temperature", "0"],
         "--ar_distill_temperature must be a positive number"),
        (["--family", "d2f_dream", "--ar_distill_temperature", "0.5"], "add --ar_distill"),
        (["--family", "sdar", "--choice_weight", "1"], "--choice_weight only applies to --family"),
        (["--family", "d2f_llada", "--head_dim", "48"], "--head_dim must be 32"),
        (["--family", "d2f_dream", "--answers_per_prompt", "2"], "--answers_per_prompt does not apply to --family d2f_dream"),
        (["--family", "d2f_llada", "--block_sizes", "1,4"], "--block_sizes does not apply"),
        (["--lora_rank", "8"], "--lora_rank only applies to --family d2f_llada / d2f_dream"),
        (["--family", "sdar", "--base_from", "models/d2f-llada-tiny"], "--base_from only applies to --family"),
        (["--family", "d2f_llada", "--base_from", "models"], "--base_from models: not a folder written by"),
        (["--family", "d2f_dream", "--base_from", "models/d2f-llada-tiny"], "holds a d2f_llada pair, not d2f_dream"),
        (["--family", "d2f_llada", "--base_from", "models/d2f-llada-tiny", "--steps", "900"],
         "--steps shapes the base stage; with --base_from the base is models/d2f-llada-tiny's"),
        (["--family", "d2f_llada", "--base_from", "models/d2f-llada-tiny", "--max_minutes", "5"],
         "all of --max_minutes 5"),
    ],
)
def test_bad_arguments_fail_fast_in_one_line(tmp_path, flags, message):
    _assert_fails_fast([*flags, "--output_dir", str(tmp_path / "out")], message)
    assert not (tmp_path / "out").exists()


def test_base_from_trains_only_the_adapter_on_an_earlier_base(tmp_path):
    """--base_from: the new pair's base is the earlier run's, byte for byte, and the adapter is trained from
    --seed (deterministic); the record and the card carry the base's command and wall time, also through a
    chain of --base_from runs; the pair loads."""
    from D2F.lora import load_d2f

    main = _train_tiny().main
    first, second, again, chained = (tmp_path / name for name in ("first", "second", "again", "chained"))
    assert main([*TINY_FLAGS, "--family", "d2f_llada", "--output_dir", str(first), "--seed", "3"]) == 0
    adapter_only = ["--family", "d2f_llada", "--lora_steps", "4", "--lora_warmup_steps", "1", "--lora_rank", "4",
                    "--lora_block_sizes", "1,4", "--batch_size", "6", "--threads", "1", "--log_every", "1",
                    "--task_weights", "3,2,4,6", "--choice_weight", "1", "--seed", "5"]
    for out, source in ((second, first), (again, first), (chained, second)):
        assert main([*adapter_only, "--base_from", str(source), "--output_dir", str(out)]) == 0
    records = {path: json.loads((path / "training_args.json").read_text()) for path in (first, second, chained)}

    for out in (second, chained):
        assert (out / "base" / "model.safetensors").read_bytes() == (first / "base" / "model.safetensors").read_bytes()
        record = records[out]
        assert record["base"] == records[first]["base"] and record["log"]["base"] == records[first]["log"]["base"]
        assert record["base_from"]["command"] == records[first]["command"]
        assert record["base_from"]["args"] == records[first]["args"]
        assert record["lora"]["steps_done"] == 4 and record["args"]["task_weights"] == [3, 2, 4, 6]
        assert record["wall_time_s"] == round(record["base"]["wall_time_s"] + record["lora"]["wall_time_s"], 3)
        card = (out / "README.md").read_text()
        assert "Training commands" in card and records[first]["command"] in card and record["command"] in card
        stage_1 = f"({records[first]['args']['steps']:,} steps, batch 6"
        assert stage_1 in card, "stage 1 is described by the base's flags"
        assert "pays 1 in the adapter stage and 2 in the base's" in card and "In both stages" not in card
    assert records[chained]["base_from"]["dir"] == str(second)
    a = load_file(second / "lora" / "adapter_model.safetensors")
    b = load_file(again / "lora" / "adapter_model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), "one seed, one adapter"
    c = load_file(first / "lora" / "adapter_model.safetensors")
    assert not all(torch.equal(a[k], c[k]) for k in a), "the adapter was retrained"
    load_d2f(second / "base", second / "lora", merge=True, dtype=torch.float32, device="cpu")


def test_d2f_defaults_and_output_folder():
    """A D2F run gets its own step counts and writes next to the registry's base/ and lora/ folders."""
    from families import FAMILIES

    parser = _train_tiny().build_parser()
    parser.set_defaults(**train_d2f.family_defaults("d2f_llada"))
    args = parser.parse_args(["--family", "d2f_llada", "--steps", "7"])
    assert args.steps == 7 and args.warmup_steps == train_d2f.family_defaults("d2f_llada")["warmup_steps"]
    assert args.ar_weight == 5.0 and parser.get_default("ar_weight") == 5.0, "the shipped adapters weigh AR rows 5x"
    assert args.choice_weight == 2.0 and args.task_weights == [2, 2, 4, 6], "the shipped pairs' recipe"
    family = FAMILIES["d2f_llada"]
    assert args.output_dir / "base" == family.tiny_model_dir and args.output_dir / "lora" == family.tiny_adapter_dir


def test_block_mask_matches_literals():
    plain = train_d2f.block_mask(torch.tensor([[0, 0, 1, 2]]))[0]
    assert torch.equal(plain, torch.tensor([[1, 1, 0, 0], [1, 1, 0, 0], [1, 1, 1, 0], [1, 1, 1, 1]], dtype=torch.bool))
    doubled = train_d2f.block_mask(torch.tensor([[0, 1, 2, 1, 2, -1]]),
                                   torch.tensor([[False, False, False, True, True, True]]))[0]
    expected = torch.tensor([
        [1, 0, 0, 0, 0, 0],
        [1, 1, 0, 0, 0, 0],
        [1, 1, 1, 0, 0, 0],
        [1, 0, 0, 1, 0, 0],
        [1, 1, 0, 0, 1, 0],
        [0, 0, 0, 0, 0, 1],  # batch padding: itself only
    ], dtype=torch.bool)
    assert torch.equal(doubled, expected)


def _examples(seed: int, count: int = 6) -> list[tuple[list[int], int]]:
    rng = random.Random(seed)
    out = []
    for _ in range(count):
        prompt = [rng.randrange(5, 60) for _ in range(rng.randrange(4, 9))]
        answer = [rng.randrange(5, 60) for _ in range(rng.randrange(3, 14))] + [2]
        out.append((prompt + answer, len(prompt)))
    return out


def test_base_rows_never_mask_the_prompt_and_train_the_padding():
    ids, prompt_len = train_d2f.pad_examples(_examples(0), PAD_ID)
    generator = torch.Generator().manual_seed(0)
    padding_scored = 0
    for _ in range(30):
        rows = train_d2f.base_rows(ids, prompt_len, MASK_ID, generator)
        prompt = torch.arange(ids.shape[1])[None] < prompt_len[:, None]
        assert not rows["scored"][prompt].any()
        assert torch.equal(rows["input_ids"], torch.where(rows["scored"], MASK_ID, ids))
        assert torch.equal(rows["answer_len"], ids.shape[1] - prompt_len)
        weight = rows["weight"][:, 0]
        assert bool((weight >= 1).all()) and bool((weight <= 1 / train_d2f.MASK_RATIO_EPS + 1e-6).all())
        padding_scored += int((rows["scored"] & (ids == PAD_ID)).sum())
    assert padding_scored > 0, "trailing padding is an answer token"


def test_mixed_batches_keep_some_ar_rows_but_never_all():
    assert [train_d2f.mixed_ar_rows(32, mix) for mix in (0.0, 0.25, 0.5, 0.99)] == [0, 8, 16, 31]
    assert train_d2f.mixed_ar_rows(1, 0.5) == 0 and train_d2f.mixed_ar_rows(6, 0.5) == 3


def test_base_rows_stratify_the_mask_ratio_over_the_batch():
    """Sorted, the batch's B ratios hold one draw in each of B equal slices of [eps, 1]; over many batches
    every row's ratio is still uniform (so the 1/t-weighted objective keeps LLaDA's expectation)."""
    ids, prompt_len = train_d2f.pad_examples(_examples(0), PAD_ID)
    batch, eps = ids.shape[0], train_d2f.MASK_RATIO_EPS
    generator = torch.Generator().manual_seed(3)
    first_row = []
    for _ in range(400):
        ratio = 1.0 / train_d2f.base_rows(ids, prompt_len, MASK_ID, generator)["weight"][:, 0]  # [B]
        slot = ((ratio.sort().values - eps) / (1 - eps) * batch).floor()  # [B]
        assert slot.tolist() == [float(i) for i in range(batch)]
        first_row.append(float(ratio[0]))
    # The first row's slice is uniform over the B slices: each is hit about 400 / B times.
    hits = torch.bincount(((torch.tensor(first_row) - eps) / (1 - eps) * batch).floor().long(), minlength=batch)
    expected = 400 / batch
    assert float(((hits - expected) ** 2 / expected).sum()) < 20.5  # chi-square, B - 1 = 5 dof: p < 0.001

def test_d2f_rows_have_prompt_relative_blocks_and_monotonic_noise():
    ids, prompt_len = train_d2f.pad_examples(_examples(1), PAD_ID)
    sizes = torch.tensor([2, 4, 8, 4, 2, 3])
    generator = torch.Generator().manual_seed(1)
    blocks = train_d2f.prompt_blocks(prompt_len, ids.shape[1], sizes)
    for row in range(len(sizes)):  # literal layout: prompt 0, then runs of `size` from the prompt's end
        p, size = int(prompt_len[row]), int(sizes[row])
        expected = [0] * p + [1 + (i // size) for i in range(ids.shape[1] - p)]
        assert blocks[row].tolist() == expected
    seen_settled = False
    for _ in range(40):
        rows = train_d2f.d2f_rows(ids, prompt_len, sizes, MASK_ID, 0.1, generator)
        assert rows["teacher"] and not rows["scored"][blocks == 0].any()
        for row in range(len(sizes)):
            ratios = {}
            for pos in rows["scored"][row].nonzero().flatten().tolist():
                ratios.setdefault(int(blocks[row, pos]), set()).add(round(1 / float(rows["weight"][row, pos]), 6))
            assert all(len(r) == 1 for r in ratios.values()), "one ratio per block"
            ordered = [next(iter(ratios[b])) for b in sorted(ratios)]
            assert ordered == sorted(ordered) and all(0.1 - 1e-6 <= r <= 1 for r in ordered)
            seen_settled |= bool(ratios) and min(ratios) > 1
        expected_mask = torch.stack([materialize(prefix_block_causal(int(p), int(s)), ids.shape[1], ids.shape[1])[0]
                                     for p, s in zip(prompt_len, sizes)])
        assert torch.equal(rows["attention_mask"], expected_mask)
    assert seen_settled, "some rows keep leading blocks clean (settled)"


def _tiny_base(family: str):
    from synthetic.checkpoint import tiny_model
    from synthetic.tokenizer import build_tokenizer

    torch.manual_seed(0)
    sizes = (dict(d_model=32, n_heads=2, n_kv_heads=1, n_layers=2, mlp_hidden_size=64) if family == "d2f_llada"
             else dict(hidden_size=32, num_attention_heads=2, num_key_value_heads=1, num_hidden_layers=2,
                       intermediate_size=64))
    return tiny_model(family, build_tokenizer(), **sizes).to(torch.float64).eval()


@pytest.mark.parametrize("family", ["d2f_llada", "d2f_dream"])
def test_ar_rows_give_the_ar_mode_logits(family):
    """Every scored logit of an AR row equals the AR-mode forward for that token: LLaDA, [prompt, answer
    before p, MASK] with the prefix-block-causal mask at block size 1, read at the mask; Dream, [prompt,
    answer before p] under that mask, read at the last row."""
    model = _tiny_base(family)
    shifted = family == "d2f_dream"
    ids, prompt_len = train_d2f.pad_examples(_examples(2, count=3), PAD_ID)
    rows = train_d2f.ar_rows(ids, prompt_len, MASK_ID, PAD_ID, shifted)
    inputs = {k: rows[k] for k in ("input_ids", "attention_mask", "position_ids") if k in rows}
    log_probs = train_d2f.aligned_log_probs(model(**inputs).logits, shifted)  # [B, W, V]
    checked = 0
    for row in range(ids.shape[0]):
        p0 = int(prompt_len[row])
        for index in rows["scored"][row].nonzero().flatten().tolist():
            pos = int(rows["position_ids"][row, index]) if "position_ids" in rows else index
            assert int(rows["targets"][row, index]) == int(ids[row, pos])
            context = ids[row, :pos].tolist() + ([] if shifted else [MASK_ID])
            mask = materialize(prefix_block_causal(p0, 1), len(context), len(context))
            logits = model(input_ids=torch.tensor([context]), attention_mask=mask).logits[0, -1]
            torch.testing.assert_close(log_probs[row, index], torch.log_softmax(logits, -1), rtol=1e-9, atol=1e-9)
            checked += 1
    assert checked == int((ids.shape[1] - prompt_len).sum())


def _suite_batch():
    """Real suite items (two with free choices, one without) encoded and padded as training encodes them:
    the tokenizer, ids [3, T], prompt_len [3] and the items' target texts."""
    from synthetic.tasks import digitsum_solutions, make_add_item, make_digitsum_item, make_letters_item, \
        letters_solutions
    from synthetic.tokenizer import build_tokenizer, encode_example

    tokenizer = build_tokenizer()
    items = [make_digitsum_item(14, 2, 8, digitsum_solutions(14, 2, 8)[3]),
             make_letters_item(4, "c", "p", letters_solutions(4, "c", "p")[7]), make_add_item(41, 79)]
    examples = [encode_example(tokenizer, item) for item in items]
    for item, (ids, prompt_len) in zip(items, examples):
        assert len(ids) - prompt_len == len(item["target"]) + 1  # one token per character, then EOS
    ids, prompt_len = train_d2f.pad_examples(examples, tokenizer.pad_token_id)
    return tokenizer, ids, prompt_len, [item["target"] for item in items]


def test_choice_ranges_are_the_written_ranges():
    tokenizer, ids, prompt_len, targets = _suite_batch()
    lo, hi = train_d2f.choice_ranges(ids, *tokenizer.convert_tokens_to_ids([":", "."]))
    for row, target in enumerate(targets):
        expected = {int(prompt_len[row]) + m.start(3): (m.group(1), m.group(2))
                    for m in re.finditer(r"(.)\.\.(.):(.)", target)}
        found = {p: tuple(tokenizer.convert_ids_to_tokens([int(lo[row, p]), int(hi[row, p])]))
                 for p in (lo[row] >= 0).nonzero().flatten().tolist()}
        assert found == expected
        assert bool((hi[row] >= 0).eq(lo[row] >= 0).all())
    # digitsum writes two free digits, letters three free letters (the first is the prompt's), add none.
    assert [int((lo[row] >= 0).sum()) for row in range(3)] == [2, 3, 0]
    chosen = ids[lo >= 0]
    assert bool(((chosen >= lo[lo >= 0]) & (chosen <= hi[lo >= 0])).all())


@pytest.mark.parametrize("family", ["d2f_llada", "d2f_dream"])
def test_choice_term_is_minus_the_log_mass_of_the_written_range(family):
    """--choice_weight adds, per AR row, weight x the sum over its free choices of -log P(token in lo..hi),
    divided by the answer length (float64 against a direct sum); at weight 0 the loss is the CE alone."""
    tokenizer, ids, prompt_len, _ = _suite_batch()
    model = _tiny_base(family)
    shifted = family == "d2f_dream"
    rows = train_d2f.ar_rows(ids, prompt_len, tokenizer.mask_token_id, tokenizer.pad_token_id, shifted,
                             tuple(tokenizer.convert_tokens_to_ids([":", "."])))
    assert (rows["choice_lo"] >= 0).sum() == 5 and not bool(((rows["choice_lo"] >= 0) & ~rows["scored"]).any())
    with torch.no_grad():
        plain = train_d2f.row_losses(model, rows, shifted, data_weight=0.0)
        ranged = train_d2f.row_losses(model, rows, shifted, data_weight=0.0, choice_weight=2.0)
        inputs = {k: rows[k] for k in ("input_ids", "attention_mask", "position_ids") if k in rows}
        log_probs = train_d2f.aligned_log_probs(model(**inputs).logits, shifted)  # [B, W, V]
    assert torch.equal(plain["loss"], plain["data"]) and not bool(plain["choice"].any())
    expected = torch.zeros(ids.shape[0], dtype=torch.float64)
    for row, index in (rows["choice_lo"] >= 0).nonzero().tolist():
        lo, hi = int(rows["choice_lo"][row, index]), int(rows["choice_hi"][row, index])
        assert lo <= int(rows["targets"][row, index]) <= hi
        expected[row] -= math.log(sum(math.exp(float(log_probs[row, index, v])) for v in range(lo, hi + 1)))
    expected /= rows["answer_len"].double()
    torch.testing.assert_close(ranged["choice"], expected, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(ranged["loss"], plain["data"] + 2.0 * expected, rtol=1e-9, atol=1e-12)
    assert expected[2] == 0 and bool((expected[:2] > 0).all())


def _with_adapter(base, family: str):
    """`base` wrapped in a rank-4 PEFT LoRA on the released target modules (lora_B zero: the base exactly)."""
    from peft import LoraConfig, get_peft_model

    from D2F.lora import RELEASED_TARGET_MODULES

    targets = list(RELEASED_TARGET_MODULES[train_d2f.MODEL_TYPES[family]])
    return get_peft_model(base, LoraConfig(r=4, lora_alpha=4, target_modules=targets))


def _move_adapter(model) -> None:
    """Give every lora_B a seeded random value, so the adapted model differs from its base."""
    for name, param in model.named_parameters():
        if "lora_B" in name:
            param.normal_(0.0, 0.3, generator=torch.Generator().manual_seed(len(name)))


@pytest.mark.parametrize("family", ["d2f_llada", "d2f_dream"])
def test_distillation_target_is_the_adapter_disabled_full_attention_base(family):
    """With the adapter's B still zero (PEFT's init, step 0), the KL term equals the KL between the base
    under the block-causal mask (the student) and the base under full attention (the teacher), 1/ratio
    weighted per masked token and divided by the answer length; it is not zero, so the student really
    sees less than the teacher."""
    shifted = family == "d2f_dream"
    base = _tiny_base(family)
    ids, prompt_len = train_d2f.pad_examples(_examples(3, count=4), PAD_ID)
    sizes = torch.tensor([4, 2, 4, 3])
    rows = train_d2f.d2f_rows(ids, prompt_len, sizes, MASK_ID, 0.1, torch.Generator().manual_seed(3))
    assert rows["scored"].any()
    with torch.no_grad():
        student_ref, teacher_ref = [], []
        for row in range(ids.shape[0]):
            x = rows["input_ids"][row : row + 1]
            mask = materialize(prefix_block_causal(int(prompt_len[row]), int(sizes[row])), x.shape[1], x.shape[1])
            student_ref.append(base(input_ids=x, attention_mask=mask).logits[0])
            teacher_ref.append(base(input_ids=x).logits[0])
    student_ref, teacher_ref = torch.stack(student_ref), torch.stack(teacher_ref)  # [B, T, V]
    if shifted:  # the logit at p - 1 scores token p
        student_ref = torch.cat([student_ref[:, :1], student_ref[:, :-1]], 1)
        teacher_ref = torch.cat([teacher_ref[:, :1], teacher_ref[:, :-1]], 1)
    log_s, log_t = torch.log_softmax(student_ref, -1), torch.log_softmax(teacher_ref, -1)
    kl_token = (log_t.exp() * (log_t - log_s)).sum(-1)  # [B, T]
    expected = (kl_token * rows["weight"] * rows["scored"]).sum(1) / (ids.shape[1] - prompt_len)

    model = _with_adapter(base, family)
    assert all(float(p.detach().abs().max()) == 0 for n, p in model.named_parameters() if "lora_B" in n)
    with torch.no_grad():
        parts = train_d2f.row_losses(model, rows, shifted, data_weight=0.5, teacher=model.disable_adapter)
    torch.testing.assert_close(parts["kl"], expected, rtol=1e-9, atol=1e-12)
    assert bool((parts["kl"] > 0).all())
    torch.testing.assert_close(parts["loss"], parts["kl"] + 0.5 * parts["data"])

    # Once the adapter has moved, the teacher is still the base (the logits computed before wrapping),
    # while the student is the adapted model under the block-causal mask.
    with torch.no_grad():
        _move_adapter(model)
        adapted = torch.stack([
            model(input_ids=rows["input_ids"][row : row + 1],
                  attention_mask=materialize(prefix_block_causal(int(prompt_len[row]), int(sizes[row])),
                                             ids.shape[1], ids.shape[1])).logits[0]
            for row in range(ids.shape[0])])  # [B, T, V]
        parts = train_d2f.row_losses(model, rows, shifted, data_weight=0.0, teacher=model.disable_adapter)
    log_a = torch.log_softmax(torch.cat([adapted[:, :1], adapted[:, :-1]], 1) if shifted else adapted, -1)
    expected = ((log_t.exp() * (log_t - log_a)).sum(-1) * rows["weight"] * rows["scored"]).sum(1) / (
        ids.shape[1] - prompt_len)
    assert not torch.allclose(log_a, log_s)
    torch.testing.assert_close(parts["kl"], expected, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("family", ["d2f_llada", "d2f_dream"])
def test_ar_distill_target_is_the_base_ar_mode(family):
    """--ar_distill: AR rows' teacher is the adapter-disabled model on the student's own rows, mask and
    positions (the base's AR mode), so the KL is exactly 0 at the adapter's init and, once the adapter has
    moved, equals KL(base AR mode || adapted AR mode) per scored token over the answer length."""
    shifted = family == "d2f_dream"
    base = _tiny_base(family)
    ids, prompt_len = train_d2f.pad_examples(_examples(5, count=3), PAD_ID)
    rows = {**train_d2f.ar_rows(ids, prompt_len, MASK_ID, PAD_ID, shifted), "teacher": "same"}
    inputs = {key: rows[key] for key in ("input_ids", "attention_mask", "position_ids") if key in rows}
    with torch.no_grad():
        reference = train_d2f.aligned_log_probs(base(**inputs).logits, shifted)  # [B, T, V]
    model = _with_adapter(base, family)
    with torch.no_grad():
        parts = train_d2f.row_losses(model, rows, shifted, data_weight=0.5, teacher=model.disable_adapter)
    torch.testing.assert_close(parts["kl"], torch.zeros_like(parts["kl"]), rtol=0, atol=1e-12)
    torch.testing.assert_close(parts["loss"], 0.5 * parts["data"])
    with torch.no_grad():
        _move_adapter(model)
        adapted = train_d2f.aligned_log_probs(model(**inputs).logits, shifted)
        parts = train_d2f.row_losses(model, rows, shifted, data_weight=0.0, teacher=model.disable_adapter)
    kl_token = (reference.exp() * (reference - adapted)).sum(-1)  # [B, T]
    expected = (kl_token * rows["weight"] * rows["scored"]).sum(1) / rows["answer_len"]
    torch.testing.assert_close(parts["kl"], expected, rtol=1e-9, atol=1e-12)
    assert bool((parts["kl"] > 0).all())

    # --ar_distill_temperature 0.5: the target is the base's AR mode at T = 0.5, p_base^2 renormalised, a
    # direct float64 computation from the reference log-probabilities; its argmax is the base's.
    sharp = torch.log_softmax(2.0 * reference, dim=-1)
    assert torch.equal(sharp.argmax(-1), reference.argmax(-1))
    with torch.no_grad():
        sharpened = train_d2f.row_losses(model, rows, shifted, data_weight=0.0, teacher=model.disable_adapter,
                                         teacher_temperature=0.5)
    kl_token = (sharp.exp() * (sharp - adapted)).sum(-1)  # [B, T]
    expected = (kl_token * rows["weight"] * rows["scored"]).sum(1) / rows["answer_len"]
    torch.testing.assert_close(sharpened["kl"], expected, rtol=1e-9, atol=1e-12)
    assert not torch.allclose(sharpened["kl"], parts["kl"])


def test_wall_clock_cap_stops_both_stages_and_still_saves(tmp_path):
    """--max_minutes covers both stages: a cap far below one step's time ends each stage after at most
    one step, and the pair is still written and loads."""
    from D2F.lora import load_d2f

    out = tmp_path / "capped"
    flags = [*TINY_FLAGS, "--family", "d2f_dream", "--steps", "50", "--lora_steps", "50", "--max_minutes", "0.00001"]
    assert _train_tiny().main([*flags, "--output_dir", str(out)]) == 0
    record = json.loads((out / "training_args.json").read_text())
    for stage in ("base", "lora"):
        assert record[stage]["stopped_early_by_max_minutes"] and record[stage]["steps_done"] <= 1
    assert "stopped by --max_minutes" in (out / "README.md").read_text()
    load_d2f(out / "base", out / "lora", merge=True, dtype=torch.float32, device="cpu")


def test_eval_tiny_decodes_a_d2f_pair_with_its_adapter(tmp_path):
    """eval_tiny puts the LoRA adapter on the base for a D2F family (AR mode with and without the adapter
    differ on a random pair, so the adapter really is applied)."""
    from s2d2_eval.testing import build_random_d2f_model

    base, lora = build_random_d2f_model(tmp_path / "pair", family="d2f_llada")
    eval_tiny = load_script(REPO_ROOT / "scripts" / "eval_tiny.py")
    outputs = {}
    for name, adapter in (("with", lora), ("without", tmp_path / "empty")):
        if name == "without":  # an adapter with B = 0: exactly the base model
            import shutil

            import torch
            from safetensors.torch import load_file, save_file

            shutil.copytree(lora, adapter)
            weights = load_file(adapter / "adapter_model.safetensors")
            save_file({k: torch.zeros_like(v) if "lora_B" in k else v for k, v in weights.items()},
                      str(adapter / "adapter_model.safetensors"))
        path = tmp_path / f"{name}.jsonl"
        assert eval_tiny.main(["--family", "d2f_llada", "--model_dir", str(base), "--lora_dir", str(adapter),
                               "--mode", "ar", "--limit", "1", "--tasks", "add,letters", "--threads", "1",
                               "--predictions", str(path)]) == 0
        outputs[name] = [json.loads(line)["completion"] for line in path.read_text().splitlines()]
    assert outputs["with"] != outputs["without"]
