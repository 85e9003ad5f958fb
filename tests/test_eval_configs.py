"""Hydra configs: every option of every group composes against the structured schema, an unknown
key fails at composition, decoding params fit their decoder, the paper configs carry the paper's
values, and the sweep's block-length rescaling does what the sweep promises."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf

from s2d2_eval.config import DECODER_KINDS, register_configs
from s2d2_eval.model_args import load_object, type_decoding_args, validate_decoding_args
from s2d2_eval.runner import ConfigError, effective_decoding_params, plan

CONFIGS = Path(__file__).resolve().parent.parent / "configs"
register_configs()



def _sdar_dir(tmp_path):
    """A model directory as far as planning reads one: its config.json (no weights are loaded)."""
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    (model_dir / "config.json").write_text('{"model_type": "sdar"}')
    return model_dir

def _options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONFIGS / group).glob("*.yaml"))


def _compose(overrides: list[str], config_dir: Path = CONFIGS, hydra_cfg: bool = False):
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(config_dir), version_base="1.3"):
        return compose(config_name="eval", overrides=overrides, return_hydra_config=hydra_cfg)


def test_every_group_has_options():
    assert {"sdar_tiny", "sdar_8b_chat", "sdar_8b_b16"} <= set(_options("model"))
    assert {"ar", "static", "dynamic", "s2d2_config_a", "s2d2_config_b"} <= set(_options("decoding"))
    assert {"fast_ar", "fast_threshold", "fast_config_a", "fast_config_b", "fast_config_c"} <= set(_options("decoding"))
    assert {"fast_dllm_v2_tiny", "fast_dllm_v2_7b", "fast_dllm_v2_1.5b"} <= set(_options("model"))
    assert {"synthetic", "synthetic_add", "humaneval", "gsm8k"} <= set(_options("task"))
    assert {"d2f_llada_tiny", "d2f_dream_tiny", "d2f_llada_8b", "d2f_dream_7b"} <= set(_options("model"))
    assert {"d2f_ar", "d2f_paper", "d2f_demo", "d2f_s2d2", "d2f_eval_llada_gsm8k", "d2f_eval_dream_humaneval"} <= set(
        _options("decoding"))


@pytest.mark.parametrize("option", _options("model"))
def test_model_options_compose(option):
    cfg = _compose([f"model={option}"])
    assert cfg.model.name == option and cfg.model.pretrained and cfg.model.dtype and cfg.model.device
    assert cfg.model.block_length is None or cfg.model.block_length >= 1


@pytest.mark.parametrize("option", _options("decoding"))
def test_decoding_options_compose_and_fit_their_decoder(option):
    families = {"fast_": "model=fast_dllm_v2_tiny", "d2f_": "model=d2f_llada_tiny", "llada2_": "model=llada2_tiny"}
    model = [m for prefix, m in families.items() if option.startswith(prefix)]  # a preset of the model's family
    cfg = _compose([*model, f"decoding={option}"])
    assert cfg.decoding.name == option and cfg.decoding.kind in DECODER_KINDS
    config_class = load_object(cfg.decoding.generate, "decoding.generate").config_class
    params = effective_decoding_params(cfg)
    validate_decoding_args(config_class, type_decoding_args(config_class, params))


@pytest.mark.parametrize("option", _options("task"))
def test_task_options_compose(option):
    cfg = _compose([f"task={option}"])
    assert cfg.task.name == option and len(cfg.task.tasks) >= 1 and cfg.task.metric


@pytest.mark.parametrize("option", _options("sweep"))
def test_sweep_options_compose(option):
    cfg = _compose([f"sweep={option}"], hydra_cfg=True)
    suffix = "_batch16" if "batch16" in option else ""
    if option.startswith("fast_dllm_v2"):  # presets read block_size from the model (tests/test_eval_fast_dllm.py)
        assert cfg.sweep_name == "fast_dllm_v2" + suffix and cfg.block_length is None and cfg.model.block_length == 16
    elif option.startswith("d2f_"):  # d2f_llada*, d2f_dream*: the family's tiny pair (tests/test_eval_d2f_sweep.py)
        family = "_".join(option.split("_")[:2])
        assert cfg.sweep_name == family and cfg.model.name == f"{family}_tiny" and cfg.model.lora_dir
        assert cfg.block_length is None and cfg.model.block_length == 8
    elif option.startswith("llada2"):  # presets read block_length from the model, as Fast-dLLM v2's
        assert cfg.sweep_name == "llada2" and cfg.block_length is None and cfg.model.block_length == 8
        assert cfg.model.name == "llada2_tiny" and cfg.decoding.generate.startswith("LLaDA2.")
    else:
        assert cfg.sweep_name == "sdar" + suffix and cfg.block_length == cfg.model.block_length == 8
    assert cfg.batch_size == (16 if suffix else 1)
    assert "decoding" in cfg.hydra.sweeper.params and str(cfg.hydra.mode) == "RunMode.MULTIRUN"


def test_local_tasks_exist_for_local_task_configs():
    from lm_eval.tasks import TaskManager

    from s2d2_eval import TASKS_DIR

    manager = TaskManager(include_path=str(TASKS_DIR), include_defaults=False)
    for option in _options("task"):
        cfg = _compose([f"task={option}"])
        if cfg.task.local:
            assert manager.match_tasks(list(cfg.task.tasks)) == list(cfg.task.tasks), option


@pytest.mark.parametrize("override", [
    "decoding.params.blok_length=4", "model.nope=1", "task.nope=1", "nope=1", "decoding.params.block_length=abc",
    "seed=notanint",
])
def test_unknown_or_mistyped_keys_fail_at_composition(override):
    with pytest.raises(ConfigCompositionException):
        _compose([override])


def test_an_option_file_with_an_unknown_key_fails(tmp_path):
    config_dir = tmp_path / "configs"
    shutil.copytree(CONFIGS, config_dir)
    (config_dir / "decoding" / "typo.yaml").write_text(
        "name: typo\nkind: dynamic\nparams:\n  block_length: 4\n  confidense_threshold: 0.9\n")
    with pytest.raises(ConfigCompositionException):
        _compose(["decoding=typo"], config_dir)


def test_paper_configs_carry_the_paper_values():
    a = _compose(["decoding=s2d2_config_a"]).decoding.params
    assert (a.block_length, a.denoising_steps, a.score_penalty_coef, a.do_verify_score_threshold) == (4, 4, 1.0, 0.0)
    assert a.do_verify_policy == "score_threshold" and a.do_verify_score_type == "difference_static"
    assert a.token_acceptance_estimator == "soft_entropy_negexp" and a.cache_ver and a.draft_ver
    assert a.remasking_strategy == "low_confidence_dynamic" and a.confidence_threshold == 0.85
    b = _compose(["decoding=s2d2_config_b"]).decoding.params
    assert (b.block_length, b.denoising_steps, b.score_penalty_coef, b.do_verify_score_threshold) == (16, 16, 0.0, 0.0)
    ar = _compose(["decoding=ar"]).decoding.params
    assert (ar.block_length, ar.denoising_steps) == (1, 1)


def test_block_length_rescales_block_decoders_but_not_ar():
    def params(decoding: str) -> dict:
        return effective_decoding_params(_compose([f"decoding={decoding}", "block_length=8"]))

    assert (params("static")["block_length"], params("static")["denoising_steps"]) == (8, 4)  # 2 tokens/step kept
    assert (params("s2d2_config_b")["block_length"], params("s2d2_config_b")["denoising_steps"]) == (8, 8)
    assert (params("ar")["block_length"], params("ar")["denoising_steps"]) == (1, 1)
    untouched = effective_decoding_params(_compose(["decoding=s2d2_config_b"]))
    assert untouched["block_length"] == 16  # block_length=null (the default) keeps the paper's value


def test_plan_rejects_bad_runs_before_loading(tmp_path):
    model_dir = _sdar_dir(tmp_path)
    ok = plan(_compose([f"model.pretrained={model_dir}", f"results_dir={tmp_path}"]))
    assert ok.record.parent == ok.sweep_dir / "sdar_tiny" / "synthetic" and ok.sweep_dir.parent == tmp_path
    assert ok.sweep_dir.name.startswith("default-") and not ok.published
    for bad in (["decoding=ar", "decoding.params.do_verify_policy=score_threshold"],
                ["decoding.params.remasking_strategy=bogus"], ["task.limit=0"], ["batch_size=0"]):
        with pytest.raises(ConfigError):
            plan(_compose([f"model.pretrained={model_dir}", *bad]))
    with pytest.raises(ConfigError, match="no model directory"):
        plan(_compose(["model.pretrained=models/definitely-missing"]))


def test_record_path_is_a_function_of_the_resolved_config(tmp_path):
    model_dir = _sdar_dir(tmp_path)
    base = [f"model.pretrained={model_dir}", f"results_dir={tmp_path}", "decoding=dynamic"]
    first, again = plan(_compose(base)).record, plan(_compose(base)).record
    other = plan(_compose([*base, "decoding.params.confidence_threshold=0.5"])).record
    moved = plan(_compose([*base, "sweep_name=elsewhere"])).record
    assert first == again and first != other and first.name == moved.name and first != moved
    assert OmegaConf.is_config(_compose(base))


def test_a_sampled_sweep_never_shares_a_folder_with_a_greedy_one(tmp_path):
    model_dir = _sdar_dir(tmp_path)
    base = [f"model.pretrained={model_dir}", f"results_dir={tmp_path}", "task.limit=2"]
    sampled = ["decoding.params.do_sample=true", "decoding.params.temperature=1.0"]
    greedy_dirs = {plan(_compose([*base, f"decoding={name}"])).sweep_dir for name in ("ar", "dynamic", "s2d2_config_a")}
    sampled_dirs = {plan(_compose([*base, f"decoding={name}", *sampled])).sweep_dir
                    for name in ("ar", "dynamic", "s2d2_config_a")}
    assert len(greedy_dirs) == len(sampled_dirs) == 1 and greedy_dirs != sampled_dirs  # one folder per regime


def test_nothing_but_a_documented_command_writes_inside_a_published_folder(tmp_path):
    model_dir = _sdar_dir(tmp_path)
    with pytest.raises(ConfigError, match="sweep_name='sdar/x' must be a plain folder name"):
        plan(_compose([f"model.pretrained={model_dir}", "sweep_name=sdar/x"]))
    with pytest.raises(ConfigError, match="sweep_name='..' must be a plain folder name"):
        plan(_compose([f"model.pretrained={model_dir}", "sweep_name=.."]))
    for inside in ("results/sdar", "results/sdar/sub", str(Path(__file__).resolve().parent.parent / "results" / "d2f_dream")):
        with pytest.raises(ConfigError, match="is inside the published folder results/"):
            plan(_compose([f"model.pretrained={model_dir}", f"results_dir={inside}", "task.limit=2"]))
    assert not plan(_compose([f"model.pretrained={model_dir}", "results_dir=results", "task.limit=2"])).published


def test_a_missing_metric_filter_or_task_fails_before_the_model_loads(tmp_path, monkeypatch):
    import s2d2_eval.lm

    def fail(*args, **kwargs):
        raise AssertionError("the model was loaded before the task check")

    monkeypatch.setattr(s2d2_eval.lm.S2D2LM, "__init__", fail)
    from s2d2_eval.runner import run

    model_dir = _sdar_dir(tmp_path)
    base = [f"model.pretrained={model_dir}", f"results_dir={tmp_path}", "task=synthetic_add"]
    for bad, needle in (("task.metric=acc", "no metric 'acc'"), ("task.filter=strict-match", "no filter"),
                        ("task.tasks=[no_such_task]", "no_such_task")):
        with pytest.raises(ConfigError, match=needle):
            run(_compose([*base, bad]))
    record = run(_compose([*base, "dry_run=true"]))
    assert record.parent.parent.parent.parent == tmp_path and record.parent.name == "synthetic_add"


def test_no_config_confirms_code_execution():
    """Model-written code runs only when the command line says so: no shipped YAML sets the flag."""
    import yaml

    def keys(node) -> list[str]:
        if isinstance(node, dict):
            return [k for k, v in node.items() for k in [k, *keys(v)]]
        if isinstance(node, list):
            return [k for item in node for k in keys(item)]
        return []

    for path in CONFIGS.rglob("*.yaml"):
        assert "confirm_run_unsafe_code" not in keys(yaml.safe_load(path.read_text())), path


@pytest.mark.parametrize("task", ["humaneval", "humaneval_completion", "mbpp"])
def test_code_execution_needs_the_command_line_flag_before_the_model_loads(task, tmp_path, monkeypatch):
    import s2d2_eval.lm
    from s2d2_eval.runner import run

    def fail(*args, **kwargs):
        raise AssertionError("the model was loaded before the code-execution check")

    monkeypatch.setattr(s2d2_eval.lm.S2D2LM, "__init__", fail)
    model_dir = _sdar_dir(tmp_path)
    base = [f"task={task}", f"model.pretrained={model_dir}", f"results_dir={tmp_path}"]
    with pytest.raises(ConfigError, match=r"executes model-written code; .*add task\.confirm_run_unsafe_code=true"):
        run(_compose(base))
    assert run(_compose([*base, "task.confirm_run_unsafe_code=true", "dry_run=true"])).name.startswith(
        "s2d2_config_a-")


def test_d2f_presets_carry_the_d2f_values():
    """MODEL-FAMILIES.md §8.2: the D2F paper's defaults and its eval table (activate 0.95 everywhere)."""
    paper = _compose(["model=d2f_llada_tiny", "decoding=d2f_paper"]).decoding.params
    assert (paper.skip_threshold, paper.block_add_threshold, paper.decoded_token_threshold) == (0.9, 0.1, 0.95)
    table = {("llada", "gsm8k"): (512, 64, 0.7, 0.9), ("llada", "mbpp"): (512, 32, 0.9, 0.9),
             ("llada", "math"): (512, 32, 0.1, 0.9), ("llada", "humaneval"): (512, 32, 0.1, 0.9),
             ("dream", "gsm8k"): (256, 32, 0.1, 0.9), ("dream", "mbpp"): (256, 48, 0.1, 0.9),
             ("dream", "math"): (256, 64, 0.1, 0.9), ("dream", "humaneval"): (256, 32, 0.9, 0.95)}
    for (family, task), values in table.items():
        p = _compose([f"decoding=d2f_eval_{family}_{task}"]).decoding.params
        assert (p.max_new_tokens, p.block_size, p.block_add_threshold, p.skip_threshold) == values
        assert p.decoded_token_threshold == 0.95
    released = {"d2f_llada_8b": ("GSAI-ML/LLaDA-8B-Instruct", "SJTU-Deng-Lab/D2F_LLaDA_Instruct_8B_Lora"),
                "d2f_dream_7b": ("Dream-org/Dream-v0-Base-7B", "SJTU-Deng-Lab/D2F_Dream_Base_7B_Lora")}
    for option, (base, lora) in released.items():
        model = _compose([f"model={option}"]).model
        assert (model.pretrained, model.lora_dir) == (base, lora)


def test_d2f_plan_checks_the_base_family_and_the_adapter_folder(tmp_path):
    base = tmp_path / "base"
    base.mkdir()
    (base / "config.json").write_text('{"model_type": "llada"}')
    (tmp_path / "lora").mkdir()
    shipped = Path(__file__).resolve().parent.parent / "models"
    ok = [f"model=d2f_llada_tiny", f"model.pretrained={base}", f"model.lora_dir={shipped / 'd2f-llada-tiny' / 'lora'}",
          f"results_dir={tmp_path}", "decoding=d2f_paper"]
    ok_plan = plan(_compose(ok))
    assert ok_plan.record.parent == ok_plan.sweep_dir / "d2f_llada_tiny" / "synthetic"
    assert ok_plan.sweep_dir.parent == tmp_path and not ok_plan.published
    with pytest.raises(ConfigError, match="d2f_"):
        plan(_compose([*ok, "decoding=dynamic"]))  # an SDAR preset on a D2F model
    with pytest.raises(ConfigError, match="train_tiny.py --family d2f_llada"):
        plan(_compose([*ok, f"model.lora_dir={tmp_path / 'models' / 'd2f-llada-tiny' / 'lora'}"]))
    # the adapter folder is read before any weight loads: it must be a LoRA adapter for the base's family
    with pytest.raises(ConfigError, match="has no adapter_config.json"):
        plan(_compose([*ok, f"model.lora_dir={tmp_path / 'lora'}"]))
    with pytest.raises(ConfigError, match="is the adapter for the other D2F base"):
        plan(_compose([*ok, f"model.lora_dir={shipped / 'd2f-dream-tiny' / 'lora'}"]))
    with pytest.raises(ConfigError, match="SDAR takes no adapter"):
        plan(_compose(["model=sdar_tiny", f"model.lora_dir={shipped / 'd2f-llada-tiny' / 'lora'}",
                       f"results_dir={tmp_path}"]))
