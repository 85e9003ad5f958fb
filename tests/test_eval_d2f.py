"""The lm-eval adapter with a base + LoRA family (D2F): `lora_dir` puts the adapter on the base through the
family's loader, the D2F decoders run as `custom_generate`, and misuse fails in one line."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from s2d2_eval import TASKS_DIR
from s2d2_eval.model_args import ModelArgError

lm_module = pytest.importorskip("s2d2_eval.lm")
S2D2LM = lm_module.S2D2LM


@pytest.fixture(scope="module")
def pair(tmp_path_factory) -> tuple[Path, Path]:
    from s2d2_eval.testing import build_random_d2f_model

    return build_random_d2f_model(tmp_path_factory.mktemp("d2f_pair"), family="d2f_dream")


@pytest.mark.parametrize("merge", [False, True])
def test_lora_dir_loads_the_adapter_and_decodes(pair, merge):
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager
    from peft import PeftModel

    base, lora = pair
    lm = S2D2LM(pretrained=str(base), lora_dir=str(lora), merge_lora=merge, device="cpu", dtype="float32",
                custom_generate="D2F.generate_ssd_policy:generate_ssd_policy", block_size=4,
                acceptance="greedy_exact")
    assert isinstance(lm.model, PeftModel) is not merge
    plain = torch.nn.Module.state_dict(lm.model)
    assert any("lora" in key for key in plain) is not merge
    results = simple_evaluate(model=lm, tasks=["synthetic_add"], limit=2, apply_chat_template=True, log_samples=True,
                              bootstrap_iters=0, gen_kwargs={"max_gen_toks": 8},
                              task_manager=TaskManager(include_path=str(TASKS_DIR), include_defaults=False))
    sample = results["samples"]["synthetic_add"][0]
    assert sample["nfe"] >= 1 and sample["generated_tokens"] <= 8
    info = results["config"]["s2d2"]
    assert info["lora_dir"] == str(lora) and info["merge_lora"] is merge


def test_lora_dir_misuse_is_one_line(pair, tmp_path):
    from s2d2_eval.testing import build_random_tiny_model

    base, lora = pair
    with pytest.raises(ModelArgError, match="no such adapter folder"):
        S2D2LM(pretrained=str(base), lora_dir=str(tmp_path / "missing"), device="cpu",
               custom_generate="D2F.generate:generate")
    sdar = build_random_tiny_model(tmp_path / "sdar")
    with pytest.raises(ModelArgError, match="D2F"):
        S2D2LM(pretrained=str(sdar), lora_dir=str(lora), device="cpu")
    with pytest.raises(ModelArgError, match="D2F-Dream"):  # a D2F decoder refuses an SDAR model and vice versa
        S2D2LM(pretrained=str(base), device="cpu")
