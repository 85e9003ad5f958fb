"""Tests of `scripts/probe_d2f_base.py`: cross entropy of masked answer tokens by kind and mask ratio."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from types import ModuleType, SimpleNamespace

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

from s2d2_eval.testing import build_random_d2f_model, load_script, run_fresh  # noqa: E402
from synthetic.tasks import load_jsonl  # noqa: E402
from synthetic.tokenizer import build_tokenizer, encode_example  # noqa: E402
from synthetic.train_d2f import pad_examples  # noqa: E402
from synthetic.validation import VAL_SPLIT_PATH  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def probe_script() -> ModuleType:
    return load_script(REPO_ROOT / "scripts" / "probe_d2f_base.py")


@pytest.fixture(scope="module")
def items() -> list[dict]:
    return [item for item in load_jsonl(VAL_SPLIT_PATH) if item["task"] == "add"][:6]


class NeighbourReader:
    """A stand-in base that reads its answer: a masked token whose right neighbour is visible is predicted
    with certainty (the true ids are known to it), any other masked token uniformly. Position-aligned."""

    def __init__(self, ids: torch.Tensor, mask_id: int, vocab: int) -> None:
        self.ids, self.mask_id, self.vocab = ids, mask_id, vocab

    def __call__(self, input_ids: torch.Tensor) -> SimpleNamespace:
        logits = torch.zeros(*input_ids.shape, self.vocab)
        masked = input_ids == self.mask_id
        right_visible = torch.cat([~masked[:, 1:], torch.zeros_like(masked[:, :1])], 1)
        sure = (masked & right_visible)[..., None] & (torch.arange(self.vocab) == self.ids[..., None])
        return SimpleNamespace(logits=logits.masked_fill(sure, 1e4))


def test_a_base_that_reads_its_neighbours_gains_and_a_blind_one_does_not(probe_script, items):
    tokenizer = build_tokenizer()
    ids, _ = pad_examples([encode_example(tokenizer, item) for item in items], tokenizer.pad_token_id)
    reader = NeighbourReader(ids, tokenizer.mask_token_id, len(tokenizer))
    uniform = math.log(len(tokenizer))
    result = probe_script.probe(reader, tokenizer, items, [0.05, 0.95], shifted=False, seed=3, draws=40)
    low, high = result["0.05"]["content"], result["0.95"]["content"]
    # CE = ln V times the fraction of masked tokens whose right neighbour is masked too, which is r in
    # expectation; the tolerance is three standard errors of that fraction at the low ratio's count.
    spread = 3 * uniform * math.sqrt(0.05 * 0.95 / low["tokens"])
    assert low["ce"] == pytest.approx(0.05 * uniform, abs=spread) and high["ce"] == pytest.approx(0.95 * uniform, abs=spread)

    def blind(input_ids: torch.Tensor) -> SimpleNamespace:
        return SimpleNamespace(logits=torch.zeros(*input_ids.shape, len(tokenizer)))

    flat = probe_script.probe(blind, tokenizer, items, [0.05, 0.95], shifted=True, seed=3, draws=6)
    for ratio in ("0.05", "0.95"):
        for kind in probe_script.KINDS:
            if flat[ratio][kind]["tokens"]:
                assert flat[ratio][kind]["ce"] == pytest.approx(uniform, abs=1e-4)


def test_counts_and_cross_entropy_match_a_direct_float64_computation(probe_script, items, tmp_path):
    base_dir, _ = build_random_d2f_model(tmp_path / "pair", family="d2f_dream")
    from transformers import AutoModelForCausalLM

    import D2F  # noqa: F401

    model = AutoModelForCausalLM.from_pretrained(str(base_dir)).double().eval()
    tokenizer = build_tokenizer()
    result = probe_script.probe(model, tokenizer, items, [0.3, 1.0], shifted=True, seed=5, draws=2)
    ids, prompt_len = pad_examples([encode_example(tokenizer, item) for item in items], tokenizer.pad_token_id)
    answer = torch.arange(ids.shape[1])[None] >= prompt_len[:, None]
    kinds = probe_script.token_kinds(ids, tokenizer)
    generator = torch.Generator().manual_seed(5)
    sums, counts = [0.0] * 3, [0] * 3
    for _ in range(2):
        masked = answer & (torch.rand(ids.shape, generator=generator) < 0.3)
        with torch.no_grad():
            logits = model(input_ids=torch.where(masked, tokenizer.mask_token_id, ids)).logits
        log_probs = torch.log_softmax(torch.cat([logits[:, :1], logits[:, :-1]], 1), -1)  # Dream: t - 1 predicts t
        for b, t in masked.nonzero().tolist():
            kind = int(kinds[b, t])
            sums[kind] -= float(log_probs[b, t, ids[b, t]])
            counts[kind] += 1
    for index, kind in enumerate(probe_script.KINDS):
        assert result["0.3"][kind]["tokens"] == counts[index]
        assert result["0.3"][kind]["ce"] == pytest.approx(sums[index] / counts[index], abs=1e-4)
    # At ratio 1 every answer token is masked in each draw.
    assert sum(result["1"][kind]["tokens"] for kind in probe_script.KINDS) == 2 * int(answer.sum())


def test_bad_input_fails_in_one_line_before_loading(probe_script, capsys, tmp_path):
    with pytest.raises(SystemExit) as refused:
        probe_script.main([str(REPO_ROOT / "models" / "sdar-tiny")])
    assert "is a SDAR model" in str(refused.value.code)
    for argv, message in [(["--ratios", "0.5"], "two or more"), (["--draws", "0"], "--draws"),
                          (["--tasks", "nope"], "unknown")]:
        with pytest.raises(SystemExit):
            probe_script.main([str(tmp_path), *argv])
        assert message in capsys.readouterr().err


def test_the_record_is_one_json_line_with_a_gain_per_task(probe_script, capsys, tmp_path):
    base_dir, _ = build_random_d2f_model(tmp_path / "pair", family="d2f_llada")
    assert probe_script.main([str(base_dir), "--limit", "2", "--draws", "1", "--tasks", "chain,letters",
                              "--threads", "1"]) == 0
    record = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert record["family"] == "d2f_llada" and set(record["tasks"]) == {"chain", "letters"}
    for task in record["tasks"].values():
        content = task["by_ratio"]
        assert task["content_gain"] == pytest.approx(content["0.95"]["content"]["ce"] - content["0.05"]["content"]["ce"],
                                                     abs=2e-4)


def test_flag_errors_end_before_torch_is_imported(tmp_path):
    run = run_fresh(REPO_ROOT / "scripts" / "probe_d2f_base.py", [str(REPO_ROOT / "models" / "sdar-tiny")], cwd=tmp_path)
    assert "is a SDAR model" in str(run.exit) and run.heavy == [], run
