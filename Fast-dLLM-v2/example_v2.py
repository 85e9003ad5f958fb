r"""Command line for the Fast-dLLM v2 decoders: baseline ("fast") and S2D2 ("ssd_policy").

Flags carry the reference `example_v2.py` names (ALGORITHM.md §4.2) and are generated from the decode
config dataclasses, so the command line and the functions share one set of defaults. Every flag is
validated before the tokenizer or the model is loaded. Prints the completion, whether it is correct
(for a problem of the synthetic suite) and the decoding stats.

    python Fast-dLLM-v2/example_v2.py                                    # tiny model, sample problem, baseline
    python Fast-dLLM-v2/example_v2.py --generate_fn ssd_policy --use_block_cache
    python Fast-dLLM-v2/example_v2.py --model Efficient-Large-Model/Fast_dLLM_v2_7B --prompt "..." \
        --small_block_size 16 --do_verify_policy score_hysteresis --hysteresis_threshold_on 1 \
        --hysteresis_threshold_off -5 --score_penalty_coef 1 --token_acceptance_estimator soft_entropy_negexp
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

import families
from families.cli import print_result, sample_problem
from common.cli import OneLineErrorParser, add_dataclass_arguments, dataclass_from_namespace
from fast_dllm_v2.blocks import FastDecodeConfig
from fast_dllm_v2.generate import generate
from fast_dllm_v2.generate_ssd_policy import S2D2Config, generate_ssd_policy

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_MODEL = REPO_ROOT / "models" / "fast-dllm-v2-tiny"
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
DECODERS = {"fast": (FastDecodeConfig, generate), "ssd_policy": (S2D2Config, generate_ssd_policy)}


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineErrorParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    run = parser.add_argument_group("run")
    run.add_argument("--model", default=str(DEFAULT_MODEL),
                     help="model directory or hub id (default: the repository's tiny Fast-dLLM v2 model)")
    run.add_argument("--generate_fn", choices=sorted(DECODERS), default="fast",
                     help="fast: the baseline decoder (the reference's default); ssd_policy: S2D2")
    run.add_argument("--prompt", default=None, help="user prompt (default: a sample problem of the synthetic suite)")
    run.add_argument("--no_chat", action="store_true", help="feed the prompt raw, without the chat template")
    run.add_argument("--seed", type=int, default=42, help="seeds the generator of drafts and acceptance")
    run.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    run.add_argument("--dtype", choices=["auto", *DTYPES], default="auto",
                     help="auto: bfloat16 on CUDA, float32 on CPU")
    run.add_argument("--use_local_modeling", action=argparse.BooleanOptionalAction, default=True,
                     help="accepted for compatibility: our own modeling code is always used")
    run.add_argument("--use_attention_mask", action=argparse.BooleanOptionalAction, default=True,
                     help="accepted for compatibility: masks are always exact (explicit where padding needs them)")
    add_dataclass_arguments(parser, S2D2Config)
    parser.set_defaults(block_size=None)
    for action in parser._actions:
        if action.dest == "block_size":
            action.help = "tokens per block (default: the model config's bd_size, its training block size)"
    parser.add_argument("--no_resample", dest="allow_resample", action="store_false",
                        help="same as --no-allow_resample")
    return parser


def load_model_and_tokenizer(model: str, device: str, dtype: str):
    """Load with our registered classes (no trust_remote_code); a local directory never touches the network."""
    import fast_dllm_v2  # noqa: F401  (registers model_type "Fast_dLLM_Qwen" with the Auto classes)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    local = Path(model).is_dir()
    if not local and Path(model) == DEFAULT_MODEL:
        sys.exit(f"error: the tiny Fast-dLLM v2 model is not at {model} yet; pass --model DIR_OR_HUB_ID")
    torch_dtype = DTYPES.get(dtype) or (torch.bfloat16 if device.startswith("cuda") else torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(model, local_files_only=local)
    loaded = AutoModelForCausalLM.from_pretrained(model, torch_dtype=torch_dtype, local_files_only=local)
    return loaded.to(device).eval(), tokenizer


def main(argv: list[str] | None = None) -> list[dict]:
    args = build_parser().parse_args(argv)
    config_cls, decode = DECODERS[args.generate_fn]
    block_from_model = args.block_size is None
    if block_from_model:  # checked with the released models' 32 now, with the model's bd_size once loaded
        args.block_size = FastDecodeConfig.block_size
    try:
        dataclass_from_namespace(S2D2Config, args)
        dataclass_from_namespace(config_cls, args)
    except (TypeError, ValueError) as err:
        sys.exit(f"error: {err}")
    families.require_model(args.model, "fast_dllm_v2", "--model")
    problem = {"prompt": args.prompt} if args.prompt is not None else sample_problem()
    model, tokenizer = load_model_and_tokenizer(args.model, args.device, args.dtype)
    args.mask_id = families.require_mask_id(model, tokenizer, "fast_dllm_v2", args.mask_id)
    if block_from_model:
        args.block_size = int(getattr(model.config, "bd_size", FastDecodeConfig.block_size))
    try:
        cfg = dataclass_from_namespace(config_cls, args)
    except (TypeError, ValueError) as err:
        sys.exit(f"error: {err} (block_size {args.block_size} is the model's bd_size; pass --block_size)")
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
    row = stats[0]
    completion = tokenizer.decode(ids[0, input_ids.shape[1]:], skip_special_tokens=True)
    print_result(problem, completion, row, cfg.return_decoding_order)
    return stats


if __name__ == "__main__":
    main()
