"""The SDAR command lines: one set of defaults with the functions, and bad input rejected with a
one-line error before any tokenizer or model is loaded."""

import dataclasses

import pytest

import families.sdar_cli as run
from SDAR.generate_ssd_policy import S2D2Config

S2D2 = "SDAR.generate_ssd_policy:block_diffusion_generate"


def _no_loading(monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError("a model was loaded before the arguments were validated")

    monkeypatch.setattr(run, "load_model_and_tokenizer", fail)


def test_cli_defaults_are_the_config_defaults():
    parser = run.build_parser(S2D2, None, None, {"allow_resample": "--no_resample"})
    args = parser.parse_args([])
    for f in dataclasses.fields(S2D2Config):
        assert getattr(args, f.name) == f.default, f.name
    assert parser.parse_args(["--no_resample"]).allow_resample is False
    assert parser.parse_args(["--cache_ver", "--stopping_criteria_idx", "3", "4"]).stopping_criteria_idx == [3, 4]


@pytest.mark.parametrize("argv,needle", [
    (["--do_verify_policy", "sometimes"], "policy"),
    (["--remasking_strategy", "random"], "remasking_strategy"),
    (["--do_verify_policy", "score_hysteresis", "--hysteresis_threshold_on", "-2"], "hysteresis"),
    (["--block_length", "0"], "block_length"),
    (["--denoising_steps", "0"], "denoising_steps"),
    (["--token_acceptance_estimator", "psychic"], "estimator|psychic"),
])
def test_bad_arguments_fail_before_loading(monkeypatch, capsys, argv, needle):
    import re

    _no_loading(monkeypatch)
    with pytest.raises(SystemExit) as exc:
        run.main(S2D2, argv=argv)
    message = str(exc.value.code)
    assert message.startswith("error:") and "\n" not in message
    assert re.search(needle, message)


def test_missing_model_dir_names_the_flag(monkeypatch, tmp_path):
    _no_loading(monkeypatch)
    with pytest.raises(SystemExit) as exc:
        run.main(S2D2, argv=["--model_dir", str(tmp_path / "absent")])
    assert str(exc.value.code).startswith("error: --model_dir no such model directory")


def test_generate_signatures_list_every_config_field():
    import inspect

    from SDAR import generate, generate_ssd_policy

    for module, cls in ((generate, generate.BlockDiffusionConfig), (generate_ssd_policy, S2D2Config)):
        params = inspect.signature(module.block_diffusion_generate).parameters
        assert list(params)[:3] == ["model", "input_ids", "attention_mask"]
        for f in dataclasses.fields(cls):
            assert params[f.name].default == f.default
        assert module.block_diffusion_generate.config_class is cls


def test_a_mistyped_local_path_is_no_hub_id_and_a_failed_fetch_is_one_line(monkeypatch, tmp_path):
    import huggingface_hub

    import families
    from families import cli

    monkeypatch.chdir(tmp_path)
    (tmp_path / "models" / "sdar-tiny").mkdir(parents=True)
    assert not families.looks_like_hub_id("models/sdar-tinyy")  # below an existing local folder: a typo
    assert families.looks_like_hub_id("JetLM/SDAR-1.7B-Chat")
    with pytest.raises(families.ModelDirError, match=r"^no such model directory: models/sdar-tinyy \(did you mean "
                                                     r"models/sdar-tiny\?\)$"):
        families.check_model("models/sdar-tinyy")

    def unreachable(repo_id, **kwargs):
        raise OSError(f"cannot reach the hub for {repo_id}\nsecond line\nthird line")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", unreachable)
    with pytest.raises(SystemExit) as exc:
        cli.fetched("JetLM/SDAR-1.7B-Chat")
    assert str(exc.value.code) == ("error: JetLM/SDAR-1.7B-Chat is no local directory, and fetching it as a hub id "
                                   "failed: OSError: cannot reach the hub for JetLM/SDAR-1.7B-Chat")
