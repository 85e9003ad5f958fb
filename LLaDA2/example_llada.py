r"""Command line for the LLaDA2 decoders: no cache ("nocache"), KV-cached ("cached", the reference's
default) and S2D2 ("ssd_policy"), all with LLaDA2.1's token editing.

Flags carry the reference `example_llada.py` names (ALGORITHM.md §4.3; `--eos_id` sets the stop ids) and
are generated from the decode config dataclasses, so the command line and the functions share one set
of defaults. Every flag is validated before the tokenizer or the model is loaded; a flag the chosen
decoder does not read is an error. Prints the completion, whether it is correct (for a problem of the
synthetic suite) and the decoding stats.

    python LLaDA2/example_llada.py                                   # tiny model, sample problem, cached
    python LLaDA2/example_llada.py --generate_fn nocache --max_post_steps 4
    python LLaDA2/example_llada.py --model inclusionAI/LLaDA2.1-mini -p "..." --generate_fn ssd_policy \
        --threshold 0.95 --editing_threshold 0.9 --do_verify_policy score_threshold \
        --do_verify_score_threshold -5 --do_verify_score_type difference_static --score_penalty_coef 4 \
        --token_acceptance_estimator soft_entropy_negexp            # the paper's conservative setting
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

import torch

import families
from common.cli import OneLineErrorParser, add_dataclass_arguments, dataclass_from_namespace
from families.cli import print_result, sample_problem
from LLaDA2.blocks import CachedDecodeConfig, LLaDA2DecodeConfig
from LLaDA2.generate import generate, generate_cached
from LLaDA2.generate_ssd_policy import S2D2Config, generate_ssd_policy

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_MODEL = REPO_ROOT / "models" / "llada2-tiny"
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
DECODERS = {"nocache": (LLaDA2DecodeConfig, generate), "cached": (CachedDecodeConfig, generate_cached),
            "ssd_policy": (S2D2Config, generate_ssd_policy)}


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineErrorParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    run = parser.add_argument_group("run")
    run.add_argument("--model", default=str(DEFAULT_MODEL),
                     help="model directory or hub id (default: the repository's tiny LLaDA2 model)")
    run.add_argument("--generate_fn", choices=list(DECODERS), default="cached",
                     help="nocache: the model card's decoder; cached: KV-cached (the reference's default); "
                          "ssd_policy: S2D2")
    source = run.add_mutually_exclusive_group()
    source.add_argument("-p", "--prompt", default=None,
                        help="user prompt (default: a sample problem of the synthetic suite)")
    source.add_argument("--prompt_file", type=Path, default=None, help="read the prompt from a file ('-': stdin)")
    run.add_argument("--no_chat", action="store_true", help="feed the prompt raw, without the chat template")
    run.add_argument("--seed", type=int, default=42, help="seeds the generator of drafts and acceptance")
    run.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    run.add_argument("--dtype", choices=["auto", *DTYPES], default="auto",
                     help="auto: bfloat16 on CUDA (the released weights), float32 on CPU")
    add_dataclass_arguments(parser, S2D2Config, aliases={"stopping_criteria_idx": ["--eos_id"]})
    parser.add_argument("--no_resample", dest="allow_resample", action="store_false",
                        help="same as --no-allow_resample")
    return parser


def unused_flags(config_cls: type, args: argparse.Namespace) -> list[str]:
    """Flags set away from their default that `config_cls` (the chosen decoder) does not read."""
    used = {f.name for f in dataclasses.fields(config_cls)}
    return [f.name for f in dataclasses.fields(S2D2Config)
            if f.name not in used and getattr(args, f.name) != f.default]


def read_prompt(args: argparse.Namespace) -> dict:
    if args.prompt is not None:
        return {"prompt": args.prompt}
    if args.prompt_file is not None:
        if str(args.prompt_file) == "-":
            return {"prompt": sys.stdin.read()}
        if not args.prompt_file.is_file():
            sys.exit(f"error: --prompt_file {args.prompt_file} is not a file")
        return {"prompt": args.prompt_file.read_text()}
    return sample_problem()


def load_model_and_tokenizer(model: str, device: str, dtype: str):
    """Load with our registered classes (no trust_remote_code); a local directory never touches the network."""
    import LLaDA2  # noqa: F401  (registers model_type "llada2_moe" with the Auto classes)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    local = Path(model).is_dir()
    torch_dtype = DTYPES.get(dtype) or (torch.bfloat16 if device.startswith("cuda") else torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(model, local_files_only=local)
    loaded = AutoModelForCausalLM.from_pretrained(model, torch_dtype=torch_dtype, local_files_only=local)
    return loaded.to(device).eval(), tokenizer


def main(argv: list[str] | None = None) -> list[dict]:
    args = build_parser().parse_args(argv)
    config_cls, decode = DECODERS[args.generate_fn]
    try:
        dataclass_from_namespace(S2D2Config, args)
    except (TypeError, ValueError) as err:
        sys.exit(f"error: {err}")
    unused = unused_flags(config_cls, args)
    if unused:
        sys.exit(f"error: --generate_fn {args.generate_fn} does not read --{', --'.join(unused)}")
    families.require_model(args.model, "llada2", "--model")
    problem = read_prompt(args)
    model, tokenizer = load_model_and_tokenizer(args.model, args.device, args.dtype)
    args.mask_id = families.require_mask_id(model, tokenizer, "llada2", args.mask_id)
    cfg = dataclass_from_namespace(config_cls, args)
    text = problem["prompt"]
    if not args.no_chat and tokenizer.chat_template:
        text = tokenizer.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True,
                                             tokenize=False)
    input_ids = tokenizer(text, return_tensors="pt", add_special_tokens=False).input_ids.to(args.device)
    generator = torch.Generator(device=args.device).manual_seed(args.seed)
    kwargs = {**vars(cfg), "return_forward_stats": True}
    try:
        ids, stats = decode(model, input_ids, generator=generator, **kwargs)
    except ValueError as err:
        sys.exit(f"error: {err}")
    completion = tokenizer.decode(ids[0, input_ids.shape[1]:], skip_special_tokens=True)
    print_result(problem, completion, stats[0], cfg.record_decoding_order)
    return stats


if __name__ == "__main__":
    main()
