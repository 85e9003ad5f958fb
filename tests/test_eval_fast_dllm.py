"""The evaluation layer with Fast-dLLM v2: family files loaded by path are the package's own objects,
the reference's alias file names and the paper's HumanEval command, the Hydra configs of the family
(models, decoding presets, sweeps) through the runner's plan, family-specific keys and models given to
the wrong decoder, and one end-to-end run on a tiny random Fast-dLLM v2 model."""

from __future__ import annotations

import json
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

import fast_dllm_v2.generate
import fast_dllm_v2.generate_ssd_policy
from fast_dllm_v2.modeling_fast_dllm import Fast_dLLM_QwenForCausalLM
from s2d2_eval.config import DecodingParams, register_configs, union_of_fields
from s2d2_eval.model_args import ModelArgError, family_module_name, field_types, load_object
from s2d2_eval.report import describe_decoding
from s2d2_eval.runner import ConfigError, effective_decoding_params, plan, run

REPO = Path(__file__).resolve().parent.parent
FAST_DIR = REPO / "Fast-dLLM-v2"
CONFIGS = REPO / "configs"
FAST_DECODINGS = sorted(p.stem for p in (CONFIGS / "decoding").glob("fast_*.yaml"))
FAST_MODELS = sorted(p.stem for p in (CONFIGS / "model").glob("fast_dllm_v2_*.yaml"))
FAST_SWEEPS = sorted(p.stem for p in (CONFIGS / "sweep").glob("fast_dllm_v2*.yaml"))
register_configs()


@pytest.fixture(scope="session")
def fast_model_dir(tmp_path_factory) -> Path:
    """A random 1-layer Fast-dLLM v2 model with the synthetic tokenizer (bd_size 16, as the tiny model)."""
    from s2d2_eval.testing import build_random_tiny_model

    return build_random_tiny_model(tmp_path_factory.mktemp("rand_fast"), family="fast_dllm_v2")


@pytest.fixture
def no_model_loading(monkeypatch):
    import s2d2_eval.lm

    def fail(*args, **kwargs):
        raise AssertionError("the model started loading before the configuration was validated")

    monkeypatch.setattr(s2d2_eval.lm.HFLM, "__init__", fail)


def _compose(overrides: list[str], hydra_cfg: bool = False):
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        return compose(config_name="eval", overrides=overrides, return_hydra_config=hydra_cfg)


# --- loading family files by path --------------------------------------------------------------------

def test_family_files_map_to_their_package_modules():
    assert family_module_name(FAST_DIR / "generate_ssd_policy.py") == "fast_dllm_v2.generate_ssd_policy"
    assert family_module_name(FAST_DIR / "__init__.py") == "fast_dllm_v2"
    assert family_module_name(REPO / "SDAR" / "generate.py") == "SDAR.generate"
    assert family_module_name(REPO / "synthetic" / "scorer.py") is None


def test_load_object_of_a_family_file_returns_the_package_object(monkeypatch):
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING

    loaded = {name for name in sys.modules if name.startswith("s2d2_custom_")}
    by_repo_path = load_object("Fast-dLLM-v2/generate_ssd_policy.py:generate_ssd_policy", "x", (REPO,))
    by_absolute = load_object(f"{FAST_DIR / 'generate_ssd_policy.py'}:generate_ssd_policy", "x")
    assert by_repo_path is by_absolute is fast_dllm_v2.generate_ssd_policy.generate_ssd_policy
    assert by_repo_path.config_class is fast_dllm_v2.generate_ssd_policy.S2D2Config
    model_class = load_object("Fast-dLLM-v2/modeling_fast_dllm.py:Fast_dLLM_QwenForCausalLM", "x", (REPO,))
    assert model_class is Fast_dLLM_QwenForCausalLM
    assert MODEL_FOR_CAUSAL_LM_MAPPING[model_class.config_class] is model_class  # the registered class
    monkeypatch.chdir(FAST_DIR)  # a relative path from inside the folder, as the reference's commands
    assert load_object("./generate.py:generate", "x") is fast_dllm_v2.generate.generate
    assert {name for name in sys.modules if name.startswith("s2d2_custom_")} == loaded  # no loose copies


def test_alias_modules_of_the_reference_resolve_to_our_objects(monkeypatch):
    monkeypatch.chdir(FAST_DIR)
    assert load_object("./modeling_fast.py:Fast_dLLM_QwenForCausalLM", "x") is Fast_dLLM_QwenForCausalLM
    generate = load_object("./generate_policy_utils.py:generate_ssd_policy", "x")
    assert generate is fast_dllm_v2.generate_ssd_policy.generate_ssd_policy
    assert sys.modules["fast_dllm_v2.generate_policy_utils"].__file__ == str(FAST_DIR / "generate_policy_utils.py")


# --- the paper's Fast-dLLM v2 HumanEval command (README) ---------------------------------------------

def _readme_fast_dllm_command() -> list[str]:
    """argv of the README's Fast-dLLM v2 HumanEval command (after `cd Fast-dLLM-v2`)."""
    text = (REPO / "README.md").read_text()
    blocks = [chunk.split("```")[0] for chunk in text.split("```bash")[1:]]
    block = next(b for b in blocks if "custom_generate=./generate_policy_utils.py" in b)
    lines = block.replace("\\\n", " ").strip().splitlines()
    assert lines[0].strip() == "cd Fast-dLLM-v2"
    words = shlex.split(lines[1])
    return words[words.index("../scripts/lm_eval_cli.py"):]


def test_readme_fast_dllm_humaneval_command_validates(monkeypatch, no_model_loading):
    from lm_eval._cli import HarnessCLI

    from s2d2_eval.lm import S2D2LM

    argv = _readme_fast_dllm_command()
    monkeypatch.setattr(sys, "argv", argv)
    args = HarnessCLI().parse_args()
    assert args.model == "s2d2" and args.tasks == ["humaneval_local"]
    model_args = dict(args.model_args)
    assert model_args.pop("pretrained") == "Efficient-Large-Model/Fast_dLLM_v2_7B"
    monkeypatch.chdir(FAST_DIR)
    parsed = S2D2LM.parse_model_args(**model_args)
    assert parsed.generate_fn is fast_dllm_v2.generate_ssd_policy.generate_ssd_policy
    assert parsed.custom_model_class is Fast_dLLM_QwenForCausalLM
    assert parsed.decoding_args == {
        "block_size": 32, "small_block_size": 32, "use_block_cache": False, "use_ssd_cache": False,
        "threshold": 0.9, "cache_ver": False, "draft_ver": False, "max_new_tokens": 512,
        "do_verify_policy": "mask_span_length", "min_ssd_span_length": 8,
    }


def test_paper_command_decodes_a_random_model_from_the_fast_dllm_folder(fast_model_dir, monkeypatch):
    """The command's model_args (budget cut to 12 tokens) on the random model: our classes load, the
    budget in model_args wins over the request's, and the decoder reports its stats."""
    from lm_eval.api.instance import Instance

    from s2d2_eval.lm import S2D2LM

    monkeypatch.chdir(FAST_DIR)
    lm = S2D2LM(pretrained=str(fast_model_dir), device="cpu", dtype="float32",
                custom_model_class="./modeling_fast.py:Fast_dLLM_QwenForCausalLM",
                custom_generate="./generate_policy_utils.py:generate_ssd_policy", block_size=16,
                small_block_size=16, use_block_cache=False, use_ssd_cache=False, threshold=0.9, cache_ver=False,
                draft_ver=False, max_new_tokens=12, do_verify_policy="mask_span_length", min_ssd_span_length=8)
    assert type(lm.model) is Fast_dLLM_QwenForCausalLM and lm.mask_id == lm.tokenizer.mask_token_id
    gen = {"until": [], "max_gen_toks": 512, "do_sample": False}
    requests = [Instance(request_type="generate_until", doc={}, arguments=(f"def f{i}(x):\n    return", dict(gen)),
                         idx=0, metadata=("unit", i, 1)) for i in range(2)]
    out = lm.generate_until(requests, disable_tqdm=True)
    for text in out:
        assert text.decode_stats["generated_tokens"] <= 12 and text.decode_stats["nfe"] >= 1


def test_registered_model_type_loads_without_trust_remote_code(fast_model_dir):
    from s2d2_eval.lm import S2D2LM

    lm = S2D2LM(pretrained=str(fast_model_dir), device="cpu", dtype="float32", trust_remote_code=True,
                custom_generate="fast_dllm_v2.generate:generate")
    assert type(lm.model) is Fast_dLLM_QwenForCausalLM


# --- Hydra schema and configs ------------------------------------------------------------------------

def test_decoding_params_schema_is_the_union_of_every_family():
    names = set(field_types(DecodingParams))
    sdar = set(field_types(load_object("SDAR.generate_ssd_policy:block_diffusion_generate", "x").config_class))
    fast = set(field_types(fast_dllm_v2.generate_ssd_policy.S2D2Config))
    d2f = set(field_types(load_object("D2F.generate_ssd_policy:generate_ssd_policy", "x").config_class))
    llada2 = set(field_types(load_object("LLaDA2.generate_ssd_policy:generate_ssd_policy", "x").config_class))
    assert names == (sdar | fast | d2f | llada2) - {"return_forward_stats"}
    assert {"block_length", "denoising_steps", "block_size", "small_block_size", "threshold"} <= names


def test_union_of_fields_refuses_one_name_with_two_types():
    @dataclass(frozen=True)
    class One:
        threshold: float = 0.9

    @dataclass(frozen=True)
    class Other:
        threshold: int = 1

    assert union_of_fields({"a": field_types(One), "b": field_types(One)}) == {"threshold": float}
    with pytest.raises(TypeError, match="threshold"):
        union_of_fields({"a": field_types(One), "b": field_types(Other)})


def test_decoding_params_schema_from_the_stored_specs_is_the_classes_one():
    """The schema is built from families/cli_schema.json (no torch import); it types every field as the
    decoders' config classes do."""
    from s2d2_eval.config import decoder_config_classes, decoding_params_fields, stored_field_types

    from_classes = decoding_params_fields({spec: field_types(cls) for spec, cls in decoder_config_classes().items()})
    assert decoding_params_fields(stored_field_types()) == from_classes
    assert {name: f.type for name, f in DecodingParams.__dataclass_fields__.items()} == from_classes


@pytest.mark.parametrize("model", FAST_MODELS)
@pytest.mark.parametrize("decoding", FAST_DECODINGS)
def test_every_fast_decoding_preset_plans_with_every_fast_model(model, decoding, fast_model_dir, tmp_path,
                                                                 monkeypatch):
    overrides = [f"model={model}", f"decoding={decoding}", f"results_dir={tmp_path}"]
    if model == "fast_dllm_v2_tiny" and not (REPO / "models" / "fast-dllm-v2-tiny" / "config.json").is_file():
        overrides.append(f"model.pretrained={fast_model_dir}")  # a random model of the same family stands in
    cfg = _compose(overrides)
    if model != "fast_dllm_v2_tiny":  # a hub id: refused in one line while offline, planned with hub access
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
        with pytest.raises(ConfigError, match="HF_HUB_OFFLINE=0"):
            plan(cfg)
        monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    run_plan = plan(cfg)
    assert run_plan.record.parent == run_plan.sweep_dir / model / "synthetic" and run_plan.sweep_dir.parent == tmp_path
    assert run_plan.record.name.startswith(f"{decoding}-")
    if decoding != "fast_ar":
        assert run_plan.decoding_params["block_size"] == cfg.model.block_length
    assert cfg.decoding.generate.startswith("fast_dllm_v2.")


def test_fast_models_carry_their_hub_ids_and_block_sizes():
    expected = {"fast_dllm_v2_tiny": ("models/fast-dllm-v2-tiny", 16, "float32"),
                "fast_dllm_v2_7b": ("Efficient-Large-Model/Fast_dLLM_v2_7B", 32, "bfloat16"),
                "fast_dllm_v2_1.5b": ("Efficient-Large-Model/Fast_dLLM_v2_1.5B", 32, "bfloat16")}
    assert set(FAST_MODELS) == set(expected)
    for name, (pretrained, block, dtype) in expected.items():
        model = _compose([f"model={name}"]).model
        assert (model.name, model.pretrained, model.block_length, model.dtype) == (name, pretrained, block, dtype)


def test_missing_tiny_fast_model_names_the_training_command():
    if (REPO / "models" / "fast-dllm-v2-tiny").is_dir():
        pytest.skip("the tiny Fast-dLLM v2 model exists")
    with pytest.raises(ConfigError, match="train_tiny.py --family fast_dllm_v2"):
        plan(_compose(["model=fast_dllm_v2_tiny", "decoding=fast_threshold"]))


@pytest.mark.parametrize("model,block", [("fast_dllm_v2_tiny", 16), ("fast_dllm_v2_7b", 32)])
def test_fast_paper_configs_carry_the_paper_values(model, block):
    def params(decoding: str) -> dict:
        return effective_decoding_params(_compose([f"model={model}", f"decoding={decoding}"]))

    hysteresis = {"do_verify_policy": "score_hysteresis", "do_verify_score_type": "difference_dynamic",
                  "score_penalty_coef": 1.0, "hysteresis_threshold_on": 1.0, "hysteresis_threshold_off": -5.0,
                  "token_acceptance_estimator": "soft_entropy_negexp"}
    common = {"block_size": block, "threshold": 0.9, "temperature": 0.0, "cache_ver": False, "draft_ver": False,
              "use_block_cache": False}
    assert params("fast_config_a") == {**common, **hysteresis, "small_block_size": 4}
    assert params("fast_config_b") == {**common, **hysteresis, "small_block_size": 16}
    assert params("fast_config_c") == {**common, "small_block_size": block, "do_verify_policy": "mask_span_length",
                                       "min_ssd_span_length": 8, "token_acceptance_estimator": "soft_entropy_negexp"}
    assert params("fast_greedy") == {**common, "cache_ver": True, "small_block_size": block, "acceptance": "greedy_exact",
                                     "do_verify_policy": "mask_span_length", "min_ssd_span_length": 1}
    assert params("fast_ar") == {"block_size": 1, "small_block_size": 1, "temperature": 0.0}
    assert params("fast_threshold")["threshold"] == 0.9
    assert all(params(d)["temperature"] == 0.0 for d in FAST_DECODINGS)  # Fast-dLLM evals are greedy


@pytest.mark.parametrize("sweep", FAST_SWEEPS)
def test_fast_sweeps_compose_on_the_fast_model(sweep):
    cfg = _compose([f"sweep={sweep}"], hydra_cfg=True)
    assert cfg.sweep_name == ("fast_dllm_v2_batch16" if "batch16" in sweep else "fast_dllm_v2")
    assert cfg.model.name == "fast_dllm_v2_tiny" and cfg.block_length is None
    assert str(cfg.hydra.mode) == "RunMode.MULTIRUN"
    decodings = cfg.hydra.sweeper.params.decoding.split(",")
    assert set(decodings) <= set(FAST_DECODINGS)
    override = _compose([f"sweep={sweep}", "model=fast_dllm_v2_7b"], hydra_cfg=True)
    assert override.model.name == "fast_dllm_v2_7b"  # the command line still picks the model


def test_fast_sweep_runs_through_the_plan_for_each_of_its_decoders(fast_model_dir, tmp_path):
    single = _compose(["sweep=fast_dllm_v2", f"model.pretrained={fast_model_dir}", f"results_dir={tmp_path}"])
    assert single.decoding.name == "fast_config_a"  # what the sweep script's dry run (hydra.mode=RUN) validates
    plan(single)
    sweep = _compose(["sweep=fast_dllm_v2"], hydra_cfg=True)
    for decoding in sweep.hydra.sweeper.params.decoding.split(","):
        cfg = _compose(["sweep=fast_dllm_v2", f"decoding={decoding}", f"model.pretrained={fast_model_dir}",
                        f"results_dir={tmp_path}"])
        run_plan = plan(cfg)  # a random model under the published sweep's name: its own folder, not the published one
        assert not run_plan.published and run_plan.sweep_dir.name.startswith("fast_dllm_v2-")
        assert run_plan.record.parent == run_plan.sweep_dir / "fast_dllm_v2_tiny" / "synthetic"
    grid = _compose(["sweep=fast_dllm_v2_threshold_grid"], hydra_cfg=True).hydra.sweeper.params
    assert grid.decoding == "fast_threshold" and len(grid["decoding.params.threshold"].split(",")) == 5


# --- keys and models of the other family ---------------------------------------------------------------

def test_fast_dllm_key_on_an_sdar_decoder_is_a_clear_error(no_model_loading, tmp_path):
    from s2d2_eval.lm import S2D2LM

    sdar_model = tmp_path / "model"
    sdar_model.mkdir()
    (sdar_model / "config.json").write_text('{"model_type": "sdar"}')
    with pytest.raises(ConfigError, match=r"small_block_size is a keyword of fast_dllm_v2\."):
        plan(_compose([f"model.pretrained={sdar_model}", "decoding=dynamic", "decoding.params.small_block_size=4"]))
    with pytest.raises(ConfigError, match=r"denoising_steps is a keyword of SDAR\."):
        plan(_compose([f"model.pretrained={sdar_model}", "decoding=fast_threshold",
                       "decoding.params.denoising_steps=4"]))
    with pytest.raises(ModelArgError, match="small_block_size"):
        S2D2LM(pretrained="/nonexistent/model", small_block_size=4)  # the lm-eval path: the default SDAR decoder


def test_decoder_of_the_other_family_is_refused_before_loading(fast_model_dir):
    with pytest.raises(ConfigError, match="'sdar'"):
        plan(_compose(["decoding=fast_config_a"]))  # the default model is the SDAR tiny model
    with pytest.raises(ConfigError, match="'Fast_dLLM_Qwen'"):
        plan(_compose([f"model.pretrained={fast_model_dir}", "decoding=dynamic"]))


def test_top_level_block_length_is_an_error_for_fast_block_decoders(fast_model_dir):
    base = ["model=fast_dllm_v2_tiny", f"model.pretrained={fast_model_dir}", "block_length=8"]
    with pytest.raises(ConfigError, match="model.block_length"):
        plan(_compose([*base, "decoding=fast_config_a"]))
    assert plan(_compose([*base, "decoding=fast_ar"])).decoding_params["block_size"] == 1  # AR mode is untouched
    moved = plan(_compose([*base[:2], "model.block_length=8", "decoding=fast_config_c"])).decoding_params
    assert moved["block_size"] == moved["small_block_size"] == 8


def test_labels_of_fast_decoders():
    assert describe_decoding("dynamic", "fast_threshold", {"block_size": 16, "small_block_size": 8,
                                                           "threshold": 0.9}) == "dynamic τ=0.9 B=16 SB=8"
    assert describe_decoding("s2d2", "fast_config_a", {"block_size": 32, "small_block_size": 4}) == \
        "S2D2 config_a B=32 SB=4"
    assert describe_decoding("ar", "fast_ar", {"block_size": 1}) == "AR mode (B=1)"


# --- end to end ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("decoding", ["fast_config_a", "fast_ar"])
def test_run_writes_a_record_with_decoding_stats(decoding, fast_model_dir, tmp_path):
    cfg = _compose(["model=fast_dllm_v2_tiny", f"model.pretrained={fast_model_dir}", f"decoding={decoding}",
                    "task=synthetic_add", "task.limit=2", "+task.gen_kwargs.max_gen_toks=12",
                    f"results_dir={tmp_path}"])
    record = json.loads(run(cfg).read_text())
    metrics = record["metrics"]
    assert metrics["n"] == 2 and record["decoding"]["generate"].startswith("fast_dllm_v2.")
    assert metrics["nfe_mean"] >= 1 and metrics["tpf"] > 0 and metrics["generated_tokens_mean"] <= 12
    if decoding == "fast_ar":  # one forward per token; the prefill's forward writes the first one
        assert metrics["tpf_with_prefill"] == pytest.approx(1.0)
        assert metrics["nfe_by_kind_mean"]["draft"] == 0 and record["label"] == "AR mode (B=1)"
    else:
        assert record["label"] == "S2D2 config_a B=16 SB=4" and "acceptance" in metrics
    rows = [json.loads(line) for line in tmp_path.glob("default-*/fast_dllm_v2_tiny/synthetic_add/*.samples.jsonl")
            .__next__().read_text().splitlines()]
    assert len(rows) == 2 and all(row["stats"]["nfe"] >= 1 for row in rows)
