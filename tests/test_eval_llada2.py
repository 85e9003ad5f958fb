"""The evaluation layer with LLaDA2: the registry entry, the reference's alias file name through the
lm-eval adapter's `custom_generate`, the Hydra presets (the paper's conservative and quality settings)
through the runner's plan, the command line, and one end-to-end run on a tiny random LLaDA2 model."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

import families
import LLaDA2.generate
import LLaDA2.generate_ssd_policy
from s2d2_eval.config import register_configs
from s2d2_eval.model_args import load_object
from s2d2_eval.report import describe_decoding
from s2d2_eval.runner import ConfigError, effective_decoding_params, plan, run

REPO = Path(__file__).resolve().parent.parent
LLADA2_DIR = REPO / "LLaDA2"
CONFIGS = REPO / "configs"
LLADA2_DECODINGS = sorted(p.stem for p in (CONFIGS / "decoding").glob("llada2_*.yaml"))
LLADA2_MODELS = sorted(p.stem for p in (CONFIGS / "model").glob("llada2*.yaml"))
register_configs()


@pytest.fixture(scope="session")
def llada2_model_dir(tmp_path_factory) -> Path:
    """A random LLaDA2 MoE model (layer 0 dense, 4 experts in 2 groups) with the synthetic tokenizer."""
    from s2d2_eval.testing import build_random_tiny_model

    return build_random_tiny_model(tmp_path_factory.mktemp("rand_llada2"), family="llada2")


def _compose(overrides: list[str]):
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        return compose(config_name="eval", overrides=overrides)


def test_registry_entry_and_tiny_model_builder(llada2_model_dir):
    family = families.FAMILIES["llada2"]
    assert family.decoder("baseline") is LLaDA2.generate.generate_cached
    assert family.decoder("s2d2") is LLaDA2.generate_ssd_policy.generate_ssd_policy
    assert families.check_model(llada2_model_dir) is family
    config = json.loads((llada2_model_dir / "config.json").read_text())
    assert config["model_type"] == "llada2_moe" and config["num_experts"] == 4
    assert config["pad_token_id"] != config["eos_token_id"]  # the suite's pad is not its EOS
    if not family.tiny_model_dir.exists():
        with pytest.raises(families.ModelDirError, match="train_tiny.py --family llada2"):
            families.check_model(family.tiny_model_dir)


def test_alias_module_of_the_reference_resolves_to_our_objects(monkeypatch):
    monkeypatch.chdir(LLADA2_DIR)
    for name in ("generate", "generate_cached", "generate_ssd_policy"):
        fn = load_object(f"./generate_utils.py:{name}", "x")
        assert fn is getattr(sys.modules[fn.__module__], name) and fn.__module__.startswith("LLaDA2.")
    assert sys.modules["LLaDA2.generate_utils"].__file__ == str(LLADA2_DIR / "generate_utils.py")


def test_adapter_decodes_a_random_model_with_the_paper_flags(llada2_model_dir, monkeypatch):
    """custom_generate by the reference's file name, the paper's conservative flags (block cut to 4, budget
    to 12): our classes load without remote code, the mask id comes from the model, stats come back."""
    from lm_eval.api.instance import Instance

    from LLaDA2.modeling_llada2_moe import LLaDA2MoeModelLM
    from s2d2_eval.lm import S2D2LM

    monkeypatch.chdir(LLADA2_DIR)
    lm = S2D2LM(pretrained=str(llada2_model_dir), device="cpu", dtype="float32", trust_remote_code=True,
                custom_generate="./generate_utils.py:generate_ssd_policy", block_length=4, gen_length=12,
                threshold=0.95, editing_threshold=0.9, do_verify_policy="score_threshold",
                do_verify_score_type="difference_static", score_penalty_coef=4.0, do_verify_score_threshold=-5.0,
                token_acceptance_estimator="soft_entropy_negexp")
    assert type(lm.model) is LLaDA2MoeModelLM and lm.mask_id == lm.tokenizer.mask_token_id
    gen = {"until": [], "max_gen_toks": 512, "do_sample": False}
    requests = [Instance(request_type="generate_until", doc={}, arguments=(f"add {i}+{i}", dict(gen)),
                         idx=0, metadata=("unit", i, 1)) for i in range(2)]
    for text in lm.generate_until(requests, disable_tqdm=True):
        stats = text.decode_stats
        assert stats["generated_tokens"] <= 12 and stats["nfe"] >= 1
        assert stats["verifications"] == stats["nfe_by_kind"]["verify"] >= 1  # tau=-5: a span is always verified


@pytest.mark.parametrize("model", LLADA2_MODELS)
@pytest.mark.parametrize("decoding", LLADA2_DECODINGS)
def test_every_llada2_preset_plans_with_every_llada2_model(model, decoding, llada2_model_dir, tmp_path,
                                                           monkeypatch):
    overrides = [f"model={model}", f"decoding={decoding}", f"results_dir={tmp_path}"]
    if model == "llada2_tiny" and not (REPO / "models" / "llada2-tiny" / "config.json").is_file():
        overrides.append(f"model.pretrained={llada2_model_dir}")  # a random model of the same family stands in
    cfg = _compose(overrides)
    if model != "llada2_tiny":  # a hub id: refused in one line while offline, planned with hub access
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
        with pytest.raises(ConfigError, match="HF_HUB_OFFLINE=0"):
            plan(cfg)
        monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    run_plan = plan(cfg)
    assert run_plan.record.name.startswith(f"{decoding}-")
    expected_block = 1 if decoding == "llada2_ar" else cfg.model.block_length
    assert run_plan.decoding_params["block_length"] == expected_block
    assert cfg.decoding.generate.startswith("LLaDA2.")


def test_llada2_models_carry_their_hub_ids_and_block_sizes():
    expected = {"llada2_tiny": ("models/llada2-tiny", "float32"),
                "llada2.1_mini": ("inclusionAI/LLaDA2.1-mini", "bfloat16"),
                "llada2.0_mini": ("inclusionAI/LLaDA2.0-mini", "bfloat16")}
    assert set(LLADA2_MODELS) == set(expected)
    for name, (pretrained, dtype) in expected.items():
        model = _compose([f"model={name}"]).model
        assert (model.name, model.pretrained, model.dtype) == (name, pretrained, dtype)
    assert _compose(["model=llada2.1_mini"]).model.block_length == 32


def test_llada2_paper_presets_carry_the_paper_values():
    def params(decoding: str) -> dict:
        return effective_decoding_params(_compose(["model=llada2.1_mini", f"decoding={decoding}"]))

    base = {"block_length": 32, "max_post_steps": 0, "num_to_transfer": 1, "temperature": 0.0}
    conservative, quality = {"threshold": 0.95, "editing_threshold": 0.9}, {"threshold": 0.7, "editing_threshold": 0.5}
    routing = {"cache_ver": False, "token_acceptance_estimator": "soft_entropy_negexp",
               "do_verify_policy": "score_threshold", "do_verify_score_type": "difference_static",
               "score_penalty_coef": 4.0}
    assert params("llada2_conservative") == {**base, **conservative}
    assert params("llada2_quality") == {**base, **quality}
    assert params("llada2_s2d2_conservative") == {**base, **conservative, **routing, "do_verify_score_threshold": -5.0}
    assert params("llada2_s2d2_quality") == {**base, **quality, **routing, "do_verify_score_threshold": 0.0}
    assert params("llada2_ar") == {"block_length": 1, "max_post_steps": 0, "temperature": 0.0}
    greedy = params("llada2_greedy")
    assert greedy["acceptance"] == "greedy_exact" and greedy["editing_threshold"] >= 1 and greedy["cache_ver"]
    tiny = effective_decoding_params(_compose(["model=llada2_tiny", "decoding=llada2_s2d2_conservative"]))
    assert tiny == {**params("llada2_s2d2_conservative"), "block_length": 8}  # the tiny counterpart


def test_missing_tiny_llada2_model_names_the_training_command():
    if (REPO / "models" / "llada2-tiny").is_dir():
        pytest.skip("the tiny LLaDA2 model exists")
    with pytest.raises(ConfigError, match="train_tiny.py --family llada2"):
        plan(_compose(["model=llada2_tiny", "decoding=llada2_conservative"]))


def test_llada2_decoder_with_another_family_is_refused_before_loading(llada2_model_dir):
    with pytest.raises(ConfigError, match="'sdar'.*llada2_\\* for LLaDA2"):
        plan(_compose(["decoding=llada2_conservative"]))  # the default model is the SDAR tiny model
    with pytest.raises(ConfigError, match="'llada2_moe'"):
        plan(_compose([f"model.pretrained={llada2_model_dir}", "decoding=dynamic"]))
    with pytest.raises(ConfigError, match="editing_threshold is a keyword of LLaDA2\\."):
        plan(_compose([f"model.pretrained={llada2_model_dir}", "decoding=fast_threshold",
                       "decoding.params.editing_threshold=0.5"]))


def test_labels_of_llada2_decoders():
    assert describe_decoding("dynamic", "llada2_conservative", {"block_length": 32, "threshold": 0.95,
                                                                "editing_threshold": 0.9}) == \
        "dynamic τ=0.95 τ_edit=0.9 B=32"
    assert describe_decoding("s2d2", "llada2_s2d2_quality", {"block_length": 32, "editing_threshold": 0.5}) == \
        "S2D2 quality τ_edit=0.5 B=32"
    assert describe_decoding("s2d2", "llada2_greedy", {"block_length": 16, "editing_threshold": 1.0}) == \
        "S2D2 greedy τ_edit=off B=16"


def test_run_writes_a_record_with_editing_stats(llada2_model_dir, tmp_path):
    cfg = _compose(["model=llada2_tiny", f"model.pretrained={llada2_model_dir}", "model.block_length=4",
                    "decoding=llada2_s2d2_quality", "decoding.params.editing_threshold=0.0", "task=synthetic_add",
                    "task.limit=2", "+task.gen_kwargs.max_gen_toks=12", f"results_dir={tmp_path}"])
    record = json.loads(run(cfg).read_text())
    metrics = record["metrics"]
    assert metrics["n"] == 2 and record["decoding"]["generate"].startswith("LLaDA2.")
    assert record["label"] == "S2D2 quality τ_edit=0 B=4" and metrics["generated_tokens_mean"] <= 12
    rows = [json.loads(line) for line in next(tmp_path.rglob("*.samples.jsonl")).read_text().splitlines()]
    assert len(rows) == 2 and all(row["stats"]["nfe"] >= 1 for row in rows)
    assert metrics["edits_mean"] == sum(row["stats"]["edits"] for row in rows) / 2


# --- the command line -------------------------------------------------------------------------------------

def _cli(argv: list[str]):
    from LLaDA2 import example_llada

    return example_llada.main(argv)


def test_cli_decodes_with_each_decoder(llada2_model_dir, capsys):
    rows = {}
    for fn in ("nocache", "cached", "ssd_policy"):
        stats = _cli(["--model", str(llada2_model_dir), "--generate_fn", fn, "--gen_length", "8", "--block_length",
                      "4", "--threshold", "0.5", "--editing_threshold", "0.0", "--max_post_steps", "1",
                      "-p", "add 1+2", "--dtype", "float32", "--device", "cpu"])
        rows[fn] = stats[0]
        out = capsys.readouterr().out
        assert out.startswith("prompt: add 1+2\ncompletion: ") and '"edits"' in out
    assert rows["nocache"]["generated_tokens"] == rows["cached"]["generated_tokens"]
    assert rows["nocache"]["edits"] == rows["cached"]["edits"]


@pytest.mark.parametrize("argv,message", [
    (["--model", "./nope/llada2-tiny"], "no such model directory"),
    (["--min_ssd_span_length", "3"], "--generate_fn cached does not read --min_ssd_span_length"),
    (["--generate_fn", "nocache", "--no-fold_commit"], "--generate_fn nocache does not read --fold_commit"),
    (["--threshold", "nan"], "threshold must be in [0, 1], got nan"),
    (["--max_post_steps", "-1"], "max_post_steps must be in [0, inf], got -1"),
    (["--generate_fn", "fast"], "invalid choice"),
])
def test_cli_rejects_bad_input_in_one_line_before_loading(argv, message, monkeypatch, llada2_model_dir):
    from LLaDA2 import example_llada

    monkeypatch.setattr(example_llada, "load_model_and_tokenizer", lambda *a: pytest.fail("model loaded"))
    with pytest.raises(SystemExit) as exit_info:
        _cli(argv if "--model" in argv else ["--model", str(llada2_model_dir), *argv])
    text = str(exit_info.value.code)
    assert message in text and "\n" not in text


def test_cli_default_model_says_how_it_is_made(monkeypatch):
    if (REPO / "models" / "llada2-tiny").is_dir():
        pytest.skip("the tiny LLaDA2 model exists")
    with pytest.raises(SystemExit, match=r"^error: --model no such model directory: .*llada2-tiny \(the shipped "
                                         r"tiny model is made by `python scripts/train_tiny.py --family llada2`\)$"):
        _cli([])
