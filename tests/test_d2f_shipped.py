"""The shipped tiny D2F pairs (`models/d2f-llada-tiny/`, `models/d2f-dream-tiny/`): what they are on disk,
that the adapter is a real one, that AR mode solves test items, and the exact-S2D2 invariant on a trained
model whose drafts are really accepted and rejected (tests/test_d2f_decoding.py checks it on random
models). Each test skips while its pair is not trained."""

from __future__ import annotations

import json

import pytest
import torch

from D2F import example_d2f
from D2F.generate import generate
from D2F.generate_ssd_policy import generate_ssd_policy
from D2F.lora import load_d2f
from families import FAMILIES, REPO_ROOT
from synthetic.scorer import score
from synthetic.tasks import TASKS, load_test_split
from synthetic.tokenizer import format_prompt

PAIRS = ("d2f_llada", "d2f_dream")


def _shipped(family: str):
    spec = FAMILIES[family]
    present = (spec.tiny_model_dir / "config.json").is_file() and (spec.tiny_adapter_dir / "adapter_config.json").is_file()
    missing = pytest.mark.skipif(not present, reason=f"{spec.tiny_model_dir.parent} not trained yet")
    return pytest.param(family, marks=missing)


SHIPPED = [_shipped(family) for family in PAIRS]


@pytest.fixture(scope="module")
def pairs() -> dict[str, tuple[torch.nn.Module, object]]:
    from transformers import AutoTokenizer

    loaded = {}
    for family in PAIRS:
        spec = FAMILIES[family]
        if (spec.tiny_adapter_dir / "adapter_config.json").is_file():
            model = load_d2f(spec.tiny_model_dir, spec.tiny_adapter_dir, merge=True, dtype=torch.float32, device="cpu")
            tokenizer = AutoTokenizer.from_pretrained(spec.tiny_model_dir, local_files_only=True)
            tokenizer.padding_side = "left"
            loaded[family] = (model, tokenizer)
    return loaded


def _first_items(per_task: int) -> list[dict]:
    items = load_test_split()
    return [item for task in TASKS for item in [i for i in items if i["task"] == task][:per_task]]


@pytest.mark.parametrize("family", SHIPPED)
def test_pair_is_small_and_in_the_released_format(family):
    spec = FAMILIES[family]
    folder = spec.tiny_model_dir.parent
    size_mb = sum(f.stat().st_size for sub in ("base", "lora") for f in (folder / sub).iterdir()) / 2**20
    assert size_mb <= 20, f"{folder} is {size_mb:.1f} MB"
    adapter = json.loads((spec.tiny_adapter_dir / "adapter_config.json").read_text())
    assert adapter["peft_type"] == "LORA" and adapter["r"] >= 1
    record = json.loads((folder / "training_args.json").read_text())
    assert record["family"] == family and record["base"]["ar_steps"] > 0
    assert record["base"]["steps_done"] > record["base"]["ar_steps"], "the base ends in its masked-diffusion phase"
    assert (folder / "README.md").read_text().startswith(f"# {folder.name}")


@pytest.mark.parametrize("family", SHIPPED)
def test_adapter_changes_the_base(pairs, family):
    """The D2F adapter is trained: base + adapter and the base alone give different logits."""
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(FAMILIES[family].tiny_model_dir, local_files_only=True,
                                                torch_dtype=torch.float32).eval()
    pair, _ = pairs[family]
    ids = torch.arange(4, 24)[None]
    with torch.no_grad():
        gap = (base(input_ids=ids).logits - pair(input_ids=ids).logits).abs().max()
    assert float(gap) > 0.1


@pytest.mark.parametrize("family", SHIPPED)
def test_ar_mode_solves_test_items_and_exact_s2d2_gives_its_tokens_in_fewer_forwards(pairs, family):
    """The first 4 test items of each task, one left-padded batch: AR mode (block size 1) solves at least 15
    of the 16 (one miss allowed: the published greedy AR records miss up to 2 digitsum items), and
    exact S2D2 (the d2f_s2d2_greedy preset: greedy-exact acceptance, verify every step) returns AR
    mode's tokens with fewer forwards, having rejected some drafts."""
    model, tokenizer = pairs[family]
    items = _first_items(4)
    enc = tokenizer([format_prompt(tokenizer, item["prompt"]) for item in items], return_tensors="pt",
                    padding=True, add_special_tokens=False)
    common = dict(max_new_tokens=64, temperature=0.0, stopping_criteria_idx=(2, 0), return_forward_stats=True,
                  generator=torch.Generator().manual_seed(0))
    ar, ar_stats = generate(model, enc.input_ids, enc.attention_mask, block_size=1, **common)
    exact, exact_stats = generate_ssd_policy(model, enc.input_ids, enc.attention_mask, block_size=8,
                                             block_add_threshold=0.1, decoded_token_threshold=1.0, skip_threshold=0.9,
                                             cache_ver=True, do_verify_policy="mask_span_length", min_ssd_span_length=1,
                                             acceptance="greedy_exact", **common)
    width = enc.input_ids.shape[1]
    completions = [tokenizer.decode(row[width:], skip_special_tokens=True) for row in ar]
    solved = [score(item, text) for item, text in zip(items, completions)]
    assert sum(solved) >= len(items) - 1, [(item["prompt"], text) for item, text, ok in zip(items, completions, solved)
                                           if not ok]
    for row in range(len(items)):
        n = ar_stats[row]["generated_tokens"]
        assert exact[row, width : width + n].tolist() == ar[row, width : width + n].tolist(), items[row]["prompt"]
    assert sum(s["nfe"] for s in exact_stats) < sum(s["nfe"] for s in ar_stats)
    accepted = [length for s in exact_stats for length in s["accepted_lengths"]]
    assert max(accepted) > 1 and sum(s["resamples"] for s in exact_stats) > 0, "drafts are both accepted and rejected"


@pytest.mark.parametrize("family", SHIPPED)
def test_example_runs_on_the_shipped_pair_by_default_at_its_block_size(family, capsys):
    """The command line defaults to the shipped pair at the block size its sweep uses (the largest its
    adapter was trained at); both decoders take fewer forwards than tokens, and S2D2 solves the sample
    problem. `d2f` at the D2F paper's thresholds is lossy (81-84% on the test split) and is not asked
    to: on the D2F-Dream pair its parallel commits write `#### 122` for `add 41+79`."""
    import yaml

    spec = FAMILIES[family]
    sweep_block = yaml.safe_load((REPO_ROOT / "configs" / "model" / f"{family}_tiny.yaml")
                                 .read_text())["block_length"]
    assert example_d2f.trained_block_size(str(spec.tiny_model_dir)) == sweep_block == 8
    for decoder in ("d2f", "ssd_policy"):
        stats = example_d2f.main(["--family", family.removeprefix("d2f_"), "--generate_fn", decoder, "--device", "cpu"])
        printed = capsys.readouterr().out
        assert "completion: " in printed and stats[0]["generated_tokens"] > stats[0]["nfe"], decoder
        assert decoder == "d2f" or "correct: True" in printed, printed
