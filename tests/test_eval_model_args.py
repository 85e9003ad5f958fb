"""lm-eval model_args for the `s2d2` model: typed from the decoder's config dataclass, unknown or
mistyped keywords rejected with a clear message before any model loads, generation-setting
precedence, custom generate/model classes, and the adapter's generate_until on a random tiny model."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch

from s2d2_eval.model_args import ModelArgError, coerce, load_object, type_decoding_args
from SDAR.generate_ssd_policy import S2D2Config

lm_module = pytest.importorskip("s2d2_eval.lm")
S2D2LM = lm_module.S2D2LM

CHAT = "<|im_start|>user\n{}<|im_end|>\n<|im_start|>assistant\n"


@pytest.fixture(scope="session")
def random_model_dir(tmp_path_factory) -> Path:
    from s2d2_eval.testing import build_random_tiny_model

    return build_random_tiny_model(tmp_path_factory.mktemp("rand_tiny"))


@pytest.fixture
def no_model_loading(monkeypatch):
    """Fail the test if HFLM starts loading anything: validation must come first."""
    def fail(*args, **kwargs):
        raise AssertionError("the model started loading before the model_args were validated")

    monkeypatch.setattr(lm_module.HFLM, "__init__", fail)


@pytest.mark.parametrize("value,annotation,expected", [
    ("true", bool, True), ("False", bool, False), ("1", bool, True), ("0", bool, False), (1, bool, True),
    (True, bool, True), ("8", int, 8), (8.0, int, 8), ("0.85", float, 0.85), (1, float, 1.0),
    ("score_threshold", str, "score_threshold"), ("none", int | None, None), (None, float | None, None),
    ("2;0", tuple[int, ...] | None, (2, 0)), ("[2, 0]", tuple[int, ...] | None, (2, 0)), ([2, 0], tuple[int, ...], (2, 0)),
    (7, tuple[int, ...] | None, (7,)),
])
def test_coerce_converts_lm_eval_strings_and_guessed_types(value, annotation, expected):
    out = coerce(value, annotation)
    assert out == expected and type(out) is type(expected)


@pytest.mark.parametrize("value,annotation", [
    ("maybe", bool), (2, bool), ("8.5", int), (True, int), ("fast", float), ("none", int), (3, str),
])
def test_coerce_rejects_bad_values(value, annotation):
    with pytest.raises(ValueError):
        coerce(value, annotation)


def test_type_decoding_args_types_every_field_kind():
    typed = type_decoding_args(S2D2Config, {
        "block_length": "8", "cache_ver": "true", "draft_ver": 1, "confidence_threshold": 1,
        "do_verify_policy": "score_threshold", "stopping_criteria_idx": "2;0", "max_gen_toks": "none",
    })
    assert typed == {"block_length": 8, "cache_ver": True, "draft_ver": True, "confidence_threshold": 1.0,
                     "do_verify_policy": "score_threshold", "stopping_criteria_idx": (2, 0), "max_gen_toks": None}
    S2D2Config(**typed)


def test_unknown_decoding_keyword_names_it_and_the_valid_ones():
    with pytest.raises(ModelArgError) as err:
        type_decoding_args(S2D2Config, {"block_lenght": 8})
    assert "block_lenght" in str(err.value) and "block_length" in str(err.value)


def test_mistyped_keyword_names_it():
    with pytest.raises(ModelArgError, match="cache_ver"):
        type_decoding_args(S2D2Config, {"cache_ver": "maybe"})


@pytest.mark.parametrize("model_args,needle", [
    ({"block_lenght": 8}, "block_lenght"),
    ({"cache_ver": "maybe"}, "cache_ver"),
    ({"remasking_strategy": "random"}, "remasking_strategy"),
    ({"block_length": 0}, "block_length"),
    ({"return_forward_stats": False}, "return_forward_stats"),
    ({"do_verify_policy": "score_threshold", "custom_generate": "SDAR.generate:block_diffusion_generate"},
     "do_verify_policy"),
    ({"custom_generate": "SDAR.generate:no_such_function"}, "no_such_function"),
    ({"custom_generate": "synthetic.scorer:score"}, "config_class"),
    ({"batch_size": "auto"}, "batch_size=auto"),
])
def test_bad_model_args_fail_before_the_model_loads(no_model_loading, model_args, needle):
    with pytest.raises(ModelArgError, match=needle):
        S2D2LM(pretrained="/nonexistent/model", **model_args)


def test_load_object_accepts_module_and_file_paths(tmp_path):
    from SDAR.generate_ssd_policy import block_diffusion_generate

    assert load_object("SDAR.generate_ssd_policy:block_diffusion_generate", "x") is block_diffusion_generate
    repo = Path(__file__).resolve().parent.parent
    by_file = load_object(str(repo / "SDAR" / "generate_ssd_policy.py") + ":block_diffusion_generate", "x")
    assert by_file is block_diffusion_generate  # one module, one config class
    standalone = tmp_path / "my_decoder.py"
    standalone.write_text("from helper_mod import VALUE\n\ndef decode():\n    return VALUE\n")
    (tmp_path / "helper_mod.py").write_text("VALUE = 42\n")
    assert load_object(f"{standalone}:decode", "x")() == 42
    with pytest.raises(ModelArgError, match="no file"):
        load_object("missing_file.py:decode", "x")
    with pytest.raises(ModelArgError, match="PATH.py:NAME"):
        load_object("no_colon", "x")


@pytest.fixture(scope="module")
def lm(random_model_dir):
    return S2D2LM(pretrained=str(random_model_dir), device="cpu", dtype="float32", batch_size=1,
                  block_length=4, denoising_steps=4, cache_ver="true", confidence_threshold="0.9")


def test_model_loads_with_our_classes_and_left_padding(lm):
    from SDAR.modeling_sdar import SDARForCausalLM

    assert isinstance(lm.model, SDARForCausalLM)
    assert lm.tokenizer.padding_side == "left"
    assert lm.mask_id == lm.tokenizer.mask_token_id
    assert lm.stop_ids == (lm.tokenizer.eos_token_id, lm.tokenizer.pad_token_id)


def test_generation_settings_precedence(lm):
    request = {"until": ["<|im_end|>"], "max_gen_toks": 12, "do_sample": True, "temperature": 0.7, "num_beams": 4}
    kwargs, until = lm.decode_kwargs(request)
    assert kwargs["max_gen_toks"] == 12 and kwargs["do_sample"] is True and kwargs["temperature"] == 0.7
    assert "num_beams" not in kwargs and "<|im_end|>" in until
    assert kwargs["block_length"] == 4 and kwargs["cache_ver"] is True  # model_args apply
    lm.decoding_args = {**lm.decoding_args, "temperature": 0.0, "do_sample": False, "max_gen_toks": 5}
    try:
        kwargs, _ = lm.decode_kwargs(request)
        assert kwargs["max_gen_toks"] == 5 and kwargs["do_sample"] is False and kwargs["temperature"] == 0.0
    finally:
        lm.decoding_args = {k: v for k, v in lm.decoding_args.items() if k not in ("temperature", "do_sample", "max_gen_toks")}


def _requests(prompts: list[str], gen_kwargs: dict) -> list:
    from lm_eval.api.instance import Instance

    return [Instance(request_type="generate_until", doc={}, arguments=(CHAT.format(p), dict(gen_kwargs)), idx=0,
                     metadata=("unit", i, 1)) for i, p in enumerate(prompts)]


def test_generate_until_returns_texts_with_stats_in_request_order(lm):
    gen = {"until": ["<|im_end|>"], "max_gen_toks": 8, "do_sample": False}
    requests = _requests(["add 1+2", "inc 3 a..z", "add 12+345"], gen)
    before = len(lm.decode_log)
    out = lm.generate_until(requests, disable_tqdm=True)
    assert len(out) == 3 and all(isinstance(text, str) for text in out)
    for text in out:
        stats = text.decode_stats
        assert stats["generated_tokens"] <= 8 and stats["nfe"] >= 1 and stats["batch_rows"] == 1
    logged = lm.decode_log[before:]
    assert sorted(e["doc_id"] for e in logged) == [0, 1, 2] and all(e["task"] == "unit" for e in logged)
    info = lm.get_model_info()["s2d2"]
    assert info["decoding_stats"]["unit"]["n_samples"] >= 3 and info["decoding_args"]["block_length"] == 4


def test_until_strings_cut_the_text(lm):
    gen = {"until": ["<|im_end|>"], "max_gen_toks": 8, "do_sample": False}
    text = lm.generate_until(_requests(["add 1+2"], gen), disable_tqdm=True)[0]
    assert text  # the random model writes something
    cut = lm.generate_until(_requests(["add 1+2"], {**gen, "until": [text[1:3]]}), disable_tqdm=True)[0]
    assert cut == text.split(text[1:3])[0]


def test_length_bucketed_batches_decode_like_batch_one(random_model_dir):
    """Equal-length prompts batched without padding give exactly the batch-1 tokens (greedy)."""
    kwargs = dict(pretrained=str(random_model_dir), device="cpu", dtype="float32", block_length=4,
                  denoising_steps=4, custom_generate="SDAR.generate:block_diffusion_generate")
    gen = {"until": ["<|im_end|>"], "max_gen_toks": 12, "do_sample": False}
    prompts = ["add 12+34", "add 56+78", "add 9+1", "inc 3 a..z"]
    one = S2D2LM(batch_size=1, **kwargs).generate_until(_requests(prompts, gen), disable_tqdm=True)
    many_lm = S2D2LM(batch_size=4, **kwargs)
    many = many_lm.generate_until(_requests(prompts, gen), disable_tqdm=True)
    assert [str(t) for t in many] == [str(t) for t in one]
    assert max(e["batch_rows"] for e in many_lm.decode_log) == 2  # the two equal-length prompts


def test_trust_remote_code_is_not_passed_for_registered_types(random_model_dir, caplog):
    from SDAR.modeling_sdar import SDARForCausalLM

    with caplog.at_level(logging.WARNING):
        lm = S2D2LM(pretrained=str(random_model_dir), device="cpu", dtype="float32", trust_remote_code="true")
    assert isinstance(lm.model, SDARForCausalLM)
    assert any("unnecessary" in r.getMessage() for r in caplog.records)


def test_custom_model_class_from_a_file_path(random_model_dir):
    repo = Path(__file__).resolve().parent.parent
    lm = S2D2LM(pretrained=str(random_model_dir), device="cpu", dtype="float32",
                custom_model_class=f"{repo / 'SDAR' / 'modeling_sdar.py'}:SDARForCausalLM")
    assert type(lm.model).__name__ == "SDARForCausalLM"


def test_loglikelihood_is_refused(lm):
    with pytest.raises(NotImplementedError, match="generate_until"):
        lm.loglikelihood([])


def test_cuda_request_falls_back_to_cpu_without_cuda(random_model_dir):
    if torch.cuda.is_available():
        pytest.skip("CUDA present")
    lm = S2D2LM(pretrained=str(random_model_dir), device="cuda", dtype="float32")
    assert lm.device.type == "cpu"
