r"""Command line for the D2F decoders: the pipelined baseline ("d2f") and S2D2 on it ("ssd_policy").

Flags carry the reference `example_d2f.py` names (ALGORITHM.md §4.4) and are generated from the decode
config dataclasses, so the command line and the functions share one set of defaults. The model is a
base checkpoint plus its D2F LoRA adapter, loaded through `D2F.lora.load_d2f` (PEFT; `--merge_lora`
folds the adapter into the base weights). Every flag and both folders are validated before the tokenizer
or the model is loaded. Prints the completion, whether it is correct (for a problem of the synthetic
suite) and the decoding stats.

    python D2F/example_d2f.py                                   # tiny D2F-LLaDA, sample problem, d2f
    python D2F/example_d2f.py --family dream --generate_fn ssd_policy
    python D2F/example_d2f.py --base_model_dir GSAI-ML/LLaDA-8B-Instruct \
        --lora_dir SJTU-Deng-Lab/D2F_LLaDA_Instruct_8B_Lora --merge_lora --prompt "..." \
        --generate_fn ssd_policy --token_acceptance_estimator soft_entropy_negexp
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

import families
from common.cli import OneLineErrorParser, add_dataclass_arguments, dataclass_from_namespace
from families.cli import print_result, sample_problem

FAMILY_NAMES = {"llada": "d2f_llada", "dream": "d2f_dream"}
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
DECODERS = {"d2f": ("D2F.generate", "generate"), "ssd_policy": ("D2F.generate_ssd_policy", "generate_ssd_policy")}


def build_parser() -> argparse.ArgumentParser:
    from D2F.generate_ssd_policy import S2D2Config

    parser = OneLineErrorParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    run = parser.add_argument_group("run")
    run.add_argument("--family", "--model", dest="family", choices=sorted(FAMILY_NAMES), default="llada",
                     help="base model family (the reference's --model); picks the default model folders")
    run.add_argument("--base_model_dir", default=None,
                     help="base model folder or hub id (default: the family's shipped tiny model, base/)")
    run.add_argument("--lora_dir", default=None,
                     help="D2F LoRA adapter folder or hub id (default: the family's shipped tiny model, lora/)")
    run.add_argument("--merge_lora", action="store_true", help="fold the adapter into the base weights (faster)")
    run.add_argument("--generate_fn", choices=sorted(DECODERS), default="d2f",
                     help="d2f: the pipelined decoder (the reference's default); ssd_policy: S2D2 on it")
    run.add_argument("--prompt", default=None, help="user prompt (default: a sample problem of the synthetic suite)")
    run.add_argument("--no_chat", action="store_true", help="feed the prompt raw, without the chat template")
    run.add_argument("--seed", type=int, default=42, help="seeds the generator of drafts and acceptance")
    run.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    run.add_argument("--dtype", choices=["auto", *DTYPES], default="auto",
                     help="auto: float16 on CUDA (the reference's), float32 on CPU")
    add_dataclass_arguments(parser, S2D2Config, {"return_forward_stats": ["--forward_stats"]})
    parser.add_argument("--no_resample", dest="allow_resample", action="store_false",
                        help="same as --no-allow_resample")
    return parser


def model_folders(args: argparse.Namespace) -> tuple[str, str, families.Family]:
    """(base, adapter, family) after checking both folders; exits with one line on a bad one."""
    from D2F.lora import check_lora_dir

    family = families.FAMILIES[FAMILY_NAMES[args.family]]
    base = args.base_model_dir or str(family.tiny_model_dir)
    lora = args.lora_dir or str(family.tiny_adapter_dir)
    found = families.require_model(base, tuple(FAMILY_NAMES.values()), "--base_model_dir")
    if found is not None and found is not family:
        flag = next(key for key, name in FAMILY_NAMES.items() if name == found.name)
        sys.exit(f"error: --base_model_dir {base} is a {found.title} model; pass --family {flag}")
    if Path(lora).is_dir():
        try:
            check_lora_dir(lora, found.model_types[0] if found is not None else family.model_types[0])
        except ValueError as err:
            sys.exit(f"error: --lora_dir {err}")
    elif not families.looks_like_hub_id(lora):
        shipped = families.by_tiny_model(lora)
        hint = f" (the shipped tiny model is made by `{shipped.train_command}`)" if shipped else ""
        sys.exit(f"error: --lora_dir no such adapter folder: {lora}{hint}")
    return base, lora, family


def load_model_and_tokenizer(base: str, lora: str, merge: bool, device: str, dtype: str):
    """Base + adapter through `load_d2f` (our registered classes, no trust_remote_code); the tokenizer is
    the base model's. Hub ids are fetched into the hub cache first."""
    from transformers import AutoTokenizer

    from D2F.lora import load_d2f

    torch_dtype = DTYPES.get(dtype) or (torch.float16 if device.startswith("cuda") else torch.float32)
    base_dir, lora_dir = families.local_dir(base), families.local_dir(lora)
    tokenizer = AutoTokenizer.from_pretrained(base_dir, local_files_only=True)
    return load_d2f(base_dir, lora_dir, merge=merge, dtype=torch_dtype, device=device), tokenizer


def main(argv: list[str] | None = None) -> list[dict]:
    import importlib

    args = build_parser().parse_args(argv)
    module, name = DECODERS[args.generate_fn]
    decode = getattr(importlib.import_module(module), name)
    try:
        cfg = dataclass_from_namespace(decode.config_class, args)
    except (TypeError, ValueError) as err:
        sys.exit(f"error: {err}")
    base, lora, family = model_folders(args)
    problem = {"prompt": args.prompt} if args.prompt is not None else sample_problem()
    model, tokenizer = load_model_and_tokenizer(base, lora, args.merge_lora, args.device, args.dtype)
    args.mask_id = families.require_mask_id(model, tokenizer, family.name, args.mask_id)
    cfg = dataclass_from_namespace(decode.config_class, args)
    text = problem["prompt"]
    if not args.no_chat and tokenizer.chat_template:
        text = tokenizer.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True,
                                             tokenize=False)
    input_ids = tokenizer(text, return_tensors="pt", add_special_tokens=False).input_ids.to(args.device)
    generator = torch.Generator(device=args.device).manual_seed(args.seed)
    try:
        ids, stats = decode(model, input_ids, generator=generator, **{**vars(cfg), "return_forward_stats": True})
    except ValueError as err:
        sys.exit(f"error: {err}")
    completion = tokenizer.decode(ids[0, input_ids.shape[1]:], skip_special_tokens=True)
    print_result(problem, completion, stats[0], cfg.return_decoding_order)
    return stats


if __name__ == "__main__":
    main()
