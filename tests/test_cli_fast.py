"""Every single-run command line: `--help` and flag errors without importing torch, one-line refusals of
bad input before any weight is loaded, left truncation of the prompt, and the stored flag specs."""

import json
from pathlib import Path

import pytest
import torch

import families.sdar_cli as sdar_cli
from families import cli, cli_schema, load
from s2d2_eval.testing import run_fresh

REPO = Path(__file__).resolve().parent.parent
SDAR_S2D2 = "SDAR.generate_ssd_policy:block_diffusion_generate"
SDAR_TINY = REPO / "models" / "sdar-tiny"
needs_sdar_tiny = pytest.mark.skipif(not (SDAR_TINY / "config.json").is_file(), reason="models/sdar-tiny absent")

# (script, the decoder whose config holds its flags, a flag error the stored specs catch)
SCRIPTS = [
    ("SDAR/generate.py", "SDAR.generate:block_diffusion_generate", ["--confidence_threshold", "1.5"],
     "confidence_threshold must be in [0, 1], got 1.5"),
    ("SDAR/generate_ssd_policy.py", SDAR_S2D2, ["--do_verify_policy", "sometimes"],
     "argument --do_verify_policy: invalid choice: 'sometimes'"),
    ("Fast-dLLM-v2/example_v2.py", "fast_dllm_v2.generate_ssd_policy:generate_ssd_policy", ["--threshold", "-0.1"],
     "threshold must be in [0, 1], got -0.1"),
    ("LLaDA2/example_llada.py", "LLaDA2.generate_ssd_policy:generate_ssd_policy", ["--editing_threshold", "1.2"],
     "editing_threshold must be in [0, 1], got 1.2"),
    ("D2F/example_d2f.py", "D2F.generate_ssd_policy:generate_ssd_policy", ["--skip_threshold", "2"],
     "skip_threshold must be in [0, 1], got 2.0"),
]

@pytest.mark.parametrize("script,decoder,argv,message", SCRIPTS)
def test_help_and_flag_errors_import_neither_torch_nor_transformers(script, decoder, argv, message):
    """In a fresh interpreter: --help (which lists every choice of every choice flag and the prompt formats
    the shipped models know) and a bad flag end before torch or transformers is imported."""
    run = run_fresh(REPO / script, ["--help"])
    assert run.exit == 0 and run.heavy == [], run
    out = run.stdout
    assert "synthetic suite's prompt formats" in out and "'add 41+79'" in out and "'inc 4 n..t'" in out
    choices = [spec for spec in cli_schema.fields(decoder) if "choices" in spec]
    assert choices and all(f"--{spec['name']} {{{','.join(spec['choices'])}}}" in out for spec in choices), out
    run = run_fresh(REPO / script, argv)
    assert str(run.exit).startswith(f"error: {message}") and run.heavy == [], run


# lengths, budgets and sampling flags are stored bounds too; a flag the chosen decoder does not read is refused
EARLY_ERRORS = [
    ("SDAR/generate_ssd_policy.py", ["--block_length", "0"], "block_length must be in [1, inf], got 0"),
    ("SDAR/generate_ssd_policy.py", ["--gen_length", "-5"], "gen_length must be in [1, inf], got -5"),
    ("SDAR/generate.py", ["--top_p", "2"], "top_p must be in [0, 1], got 2.0"),
    ("SDAR/generate_ssd_policy.py", ["--min_ssd_span_length", "0"], "min_ssd_span_length must be in [1, inf], got 0"),
    ("Fast-dLLM-v2/example_v2.py", ["--max_new_tokens", "0"], "max_new_tokens must be in [1, inf], got 0"),
    ("Fast-dLLM-v2/example_v2.py", ["--temperature", "-1"], "temperature must be in [0, inf], got -1.0"),
    ("Fast-dLLM-v2/example_v2.py", ["--generate_fn", "fast", "--do_verify_policy", "score_threshold"],
     "--generate_fn fast does not read --do_verify_policy"),
    ("LLaDA2/example_llada.py", ["--num_to_transfer", "0"], "num_to_transfer must be in [1, inf], got 0"),
    ("D2F/example_d2f.py", ["--block_size", "0"], "block_size must be in [1, inf], got 0"),
    ("D2F/example_d2f.py", ["--generate_fn", "d2f", "--ucb_beta", "2"], "--generate_fn d2f does not read --ucb_beta"),
    ("SDAR/generate_ssd_policy.py", ["--model_dir", "models/sdar-tinyy"],
     "--model_dir no such model directory: models/sdar-tinyy (did you mean models/sdar-tiny"),
]


@pytest.mark.parametrize("script,argv,message", EARLY_ERRORS)
def test_length_sampling_and_unread_flag_errors_come_before_torch(script, argv, message):
    run = run_fresh(REPO / script, argv)
    assert str(run.exit).startswith(f"error: {message}") and "\n" not in str(run.exit) and run.heavy == [], run


@pytest.mark.parametrize("module,command", [
    ("Fast-dLLM-v2/generate.py", "Fast-dLLM-v2/example_v2.py --generate_fn fast"),
    ("Fast-dLLM-v2/generate_ssd_policy.py", "Fast-dLLM-v2/example_v2.py --generate_fn ssd_policy"),
    ("LLaDA2/generate.py", "LLaDA2/example_llada.py --generate_fn cached"),
    ("LLaDA2/generate_ssd_policy.py", "LLaDA2/example_llada.py --generate_fn ssd_policy"),
    ("D2F/generate.py", "D2F/example_d2f.py --generate_fn d2f"),
    ("D2F/generate_ssd_policy.py", "D2F/example_d2f.py --generate_fn ssd_policy"),
])
def test_a_decoder_module_run_as_a_script_names_its_command_line(module, command):
    run = run_fresh(REPO / module, ["--help"])
    assert run.exit == f"error: {module} holds the decoder, not a command line; run python {command} (--help lists " \
                       "its flags)" and run.heavy == [], run


def test_stored_flag_specs_match_the_configs():
    """The copy the command lines parse with equals the config classes (refresh: python -m families.cli_schema)."""
    assert cli_schema.stored() == json.loads(json.dumps(cli_schema.current())), \
        "families/cli_schema.json is stale: run python -m families.cli_schema"


def test_bounds_are_the_configs_own_checks():
    """The bounds the command lines check without torch are the ones `__post_init__` enforces."""
    from D2F.generate import D2FDecodeConfig
    from fast_dllm_v2.blocks import FastDecodeConfig
    from LLaDA2.blocks import LLaDA2DecodeConfig
    from SDAR.blocks import BlockDiffusionConfig

    for cls, name in ((BlockDiffusionConfig, "confidence_threshold"), (FastDecodeConfig, "threshold"),
                      (LLaDA2DecodeConfig, "threshold"), (LLaDA2DecodeConfig, "editing_threshold"),
                      (D2FDecodeConfig, "skip_threshold")):
        for bad in (-0.01, 1.01, float("nan")):
            with pytest.raises(ValueError, match=rf"^{name} must be in \[0, 1\], got"):
                cls(**{name: bad})
        cls(**{name: 1.0}), cls(**{name: 0.0})
    for cls, names in ((BlockDiffusionConfig, ("gen_length", "max_gen_toks", "block_length", "denoising_steps")),
                       (FastDecodeConfig, ("max_new_tokens", "max_gen_toks", "block_size", "small_block_size")),
                       (LLaDA2DecodeConfig, ("gen_length", "max_gen_toks", "block_length", "num_to_transfer")),
                       (D2FDecodeConfig, ("max_new_tokens", "max_gen_toks", "block_size"))):
        for name in names:
            for bad in (0, -3):
                with pytest.raises(ValueError, match=rf"^{name} must be in \[1, inf\], got {bad}$"):
                    cls(**{name: bad})
    with pytest.raises(ValueError, match=r"^denoising_steps \(5\) must be <= block_length \(4\)$"):
        BlockDiffusionConfig(block_length=4, denoising_steps=5)


def _no_loading(monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError("the weights were loaded before the input was checked")

    monkeypatch.setattr(sdar_cli, "load_model_and_tokenizer", fail)


def _error(argv: list[str]) -> str:
    with pytest.raises(SystemExit) as exc:
        sdar_cli.main(SDAR_S2D2, argv=argv)
    message = str(exc.value.code)
    assert message.startswith("error: ") and "\n" not in message, message
    return message


@needs_sdar_tiny
@pytest.mark.parametrize("argv,message", [
    (["--prompt", " \n"], "error: --prompt: the prompt is empty"),
    (["--denoising_steps", "8"], "error: denoising_steps (8) must be <= block_length (4)"),
    (["--mask_id", "65"], "error: --mask_id 65 is outside the vocabulary (vocab_size 65)"),
    (["--stopping_criteria_idx", "3", "-1", "99"], "error: --stopping_criteria_idx -1 99 outside the vocabulary"),
    (["--prompt_length", "0"], "error: --prompt_length must be a positive number of tokens, got 0"),
    (["--device", "gpu"], "error: --device 'gpu' is not one of auto, cpu, mps, cuda, cuda:N"),
    (["--gen_length", "250"], "error: the prompt (28 tokens) plus --gen_length 250 is 278 tokens, past the "
                              "model's 256 positions; shorten with --prompt_length or lower --gen_length"),
])
def test_bad_input_is_refused_before_the_weights_load(monkeypatch, argv, message):
    _no_loading(monkeypatch)
    assert _error(argv).startswith(message)


def test_empty_prompt_file_is_refused(monkeypatch, tmp_path):
    _no_loading(monkeypatch)
    (tmp_path / "p.txt").write_text("\n")
    message = _error(["--prompt_file", str(tmp_path / "p.txt")])
    assert message == f"error: --prompt_file {tmp_path / 'p.txt'}: the prompt is empty"


def test_cuda_without_cuda_is_refused_before_loading(monkeypatch):
    _no_loading(monkeypatch)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert _error(["--device", "cuda"]).startswith("error: --device cuda: CUDA is not available here")
    assert cli.resolve_device("auto") == "cpu"


def test_a_default_budget_is_lowered_to_fit_and_a_given_one_refused(capsys):
    specs = [{"name": "gen_length", "default": 128}, {"name": "max_gen_toks", "default": None}]
    config = {"max_sequence_length": 100}  # LLaDA's name for the positions
    args = type("Args", (), {"gen_length": 128, "max_gen_toks": None})()
    cli.fit_context(config, 30, args, specs, "gen_length")
    assert args.gen_length == 70 and "lowered from its default 128 to 70" in capsys.readouterr().err
    args.max_gen_toks = 71
    with pytest.raises(SystemExit, match=r"^error: the prompt \(30 tokens\) plus --max_gen_toks 71 is 101 tokens"):
        cli.fit_context(config, 30, args, specs, "gen_length")
    args.max_gen_toks = 70
    cli.fit_context(config, 30, args, specs, "gen_length")
    assert args.max_gen_toks == 70


@needs_sdar_tiny
def test_left_truncation_keeps_the_generation_prompt():
    tokenizer = cli.load_tokenizer(str(SDAR_TINY))
    full, total = cli.encode_prompt(tokenizer, "add 41+79", True, None, enable_thinking=False)
    kept, counted = cli.encode_prompt(tokenizer, "add 41+79", True, 12, enable_thinking=False)
    tail = tokenizer("<|im_start|>assistant\n", add_special_tokens=False).input_ids
    assert total == counted == len(full) > 12
    assert kept == full[-12:] and kept[-len(tail):] == tail


@needs_sdar_tiny
def test_the_cli_prints_what_the_model_decoded(capsys):
    stats = sdar_cli.main(SDAR_S2D2, argv=["--device", "cpu", "--gen_length", "4", "--prompt_length", "12"])
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "prompt: add 41+79"
    assert out[1].startswith("decoded input (left-truncated): (last 12 of 28 tokens) '")
    assert out[1].endswith("<|im_start|>assistant\\n'")
    assert stats[0]["generated_tokens"] <= 4


@needs_sdar_tiny
def test_progress_counts_every_forward(monkeypatch):
    """On a terminal the progress display advances once per model forward: its count is the decode's NFE."""
    import tqdm

    class Counter:
        def __init__(self, **kwargs):
            self.n, self.closed = 0, False
            bars.append(self)

        def update(self, k):
            self.n += k
            return True  # as tqdm's does: the hook must not hand it on as the forward's output

        def close(self):
            self.closed = True

    bars: list = []
    monkeypatch.setattr(tqdm, "tqdm", Counter)
    model, _ = sdar_cli.load_model_and_tokenizer(str(SDAR_TINY), "cpu", "float32")
    decode = load(SDAR_S2D2)
    ids = torch.tensor([[5, 6, 7, 8, 9, 10]])
    with cli.decoding_progress(model, enabled=True):
        _, stats = decode(model, ids, gen_length=8, return_forward_stats=True, stopping_criteria_idx=())
    with cli.decoding_progress(model, enabled=False):
        decode(model, ids, gen_length=8)
    assert len(bars) == 1 and bars[0].closed and bars[0].n == stats[0]["nfe"] > 1


@pytest.mark.skipif(not (REPO / "models" / "fast-dllm-v2-tiny" / "config.json").is_file(),
                    reason="models/fast-dllm-v2-tiny absent")
@pytest.mark.parametrize("argv,message", [
    (["--mask_id", "65"], "error: --mask_id 65 is outside the vocabulary (vocab_size 65)"),
    (["--prompt", ""], "error: --prompt: the prompt is empty"),
    (["--max_new_tokens", "300"], "error: the prompt (28 tokens) plus --max_new_tokens 300 is 328 tokens"),
])
def test_fast_dllm_cli_refuses_bad_input_before_the_weights_load(monkeypatch, argv, message):
    from fast_dllm_v2 import example_v2

    monkeypatch.setattr(example_v2, "load_model_and_tokenizer", lambda *a: pytest.fail("weights loaded"))
    with pytest.raises(SystemExit) as exc:
        example_v2.main(argv)
    assert str(exc.value.code).startswith(message) and "\n" not in str(exc.value.code)
