"""Command line shared by `SDAR/generate.py` and `SDAR/generate_ssd_policy.py`.

Every argument is validated (by building the decode config) before the tokenizer or the model is
loaded, so a typo costs milliseconds, not a model load.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Callable

import torch

import families
from families.cli import print_result, sample_problem
from common.cli import OneLineErrorParser, add_dataclass_arguments, dataclass_from_namespace

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_MODEL_DIR = REPO_ROOT / "models" / "sdar-tiny"
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def build_parser(config_cls: type, description: str | None, aliases: dict[str, list[str]] | None,
                 negations: dict[str, str] | None) -> argparse.ArgumentParser:
    parser = OneLineErrorParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    run = parser.add_argument_group("run")
    run.add_argument("--model_dir", default=str(DEFAULT_MODEL_DIR),
                     help="HF model directory or hub id (default: the shipped tiny SDAR model)")
    run.add_argument("--prompt", default=None, help="user prompt (default: a sample problem of the synthetic suite)")
    run.add_argument("--no_chat", action="store_true", help="feed the prompt raw, without the chat template")
    run.add_argument("--prompt_length", type=int, default=4096, help="truncate the prompt to this many tokens")
    run.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    run.add_argument("--dtype", choices=["auto", *DTYPES], default="auto",
                     help="auto: float16 on CUDA, float32 on CPU")
    run.add_argument("--seed", type=int, default=42)
    run.add_argument("--trust_remote_code", action="store_true",
                     help="accepted for compatibility; never needed: our classes are registered for model_type sdar")
    add_dataclass_arguments(parser, config_cls, aliases)
    for dest, flag in (negations or {}).items():
        parser.add_argument(flag, dest=dest, action="store_false", help=f"same as --no-{dest}")
    return parser


def load_model_and_tokenizer(model_dir: str, device: str, dtype: str):
    """Load with our registered SDAR classes (no trust_remote_code). A local directory never touches
    the network."""
    import SDAR  # noqa: F401  (registers model_type "sdar" with the Auto classes)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    local = Path(model_dir).is_dir()
    if not local and model_dir == str(DEFAULT_MODEL_DIR):
        sys.exit(f"error: the shipped model is missing at {model_dir}; pass --model_dir DIR_OR_HUB_ID")
    torch_dtype = DTYPES.get(dtype) or (torch.float16 if device.startswith("cuda") else torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=local)
    model = AutoModelForCausalLM.from_pretrained(model_dir, torch_dtype=torch_dtype, local_files_only=local)
    return model.to(device).eval(), tokenizer


def main(config_cls: type, generate: Callable, description: str | None = None,
         aliases: dict[str, list[str]] | None = None, negations: dict[str, str] | None = None,
         argv: list[str] | None = None) -> list[dict]:
    args = build_parser(config_cls, description, aliases, negations).parse_args(argv)
    try:
        dataclass_from_namespace(config_cls, args)
    except (TypeError, ValueError) as err:
        sys.exit(f"error: {err}")
    families.require_model(args.model_dir, "sdar", "--model_dir")
    problem = {"prompt": args.prompt} if args.prompt is not None else sample_problem()
    model, tokenizer = load_model_and_tokenizer(args.model_dir, args.device, args.dtype)
    args.mask_id = families.require_mask_id(model, tokenizer, "sdar", args.mask_id)
    cfg = dataclass_from_namespace(config_cls, args)
    text = problem["prompt"]
    if not args.no_chat and tokenizer.chat_template:
        text = tokenizer.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True,
                                             tokenize=False, enable_thinking=False)
    enc = tokenizer(text, return_tensors="pt", add_special_tokens=False, truncation=True,
                    max_length=args.prompt_length)
    input_ids = enc.input_ids.to(args.device)
    kwargs = {k: v for k, v in vars(cfg).items()}
    kwargs["return_forward_stats"] = True
    generator = torch.Generator(device=args.device).manual_seed(args.seed)
    ids, stats = generate(model, input_ids, generator=generator, **kwargs)
    row = stats[0]
    completion = tokenizer.decode(ids[0, input_ids.shape[1]:], skip_special_tokens=True)
    print_result(problem, completion, row, cfg.record_decoding_order)
    return stats
