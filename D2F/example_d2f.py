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
import json
from pathlib import Path

import families
from common.cli import OneLineErrorParser, add_field_arguments, defer_default
from families import cli, cli_schema

FAMILY_NAMES = {"llada": "d2f_llada", "dream": "d2f_dream"}
DECODERS = {"d2f": "D2F.generate:generate", "ssd_policy": "D2F.generate_ssd_policy:generate_ssd_policy"}
FLAGS = DECODERS["ssd_policy"]  # its config holds every flag of both decoders
RELEASED_BLOCK_SIZE = 32  # the D2F paper's block size (D2FDecodeConfig's default)


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineErrorParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    run = cli.add_run_arguments(parser, dtype_auto="float16 (the reference's)")
    run.add_argument("--family", "--model", dest="family", choices=sorted(FAMILY_NAMES), default="llada",
                     help="base model family (the reference's --model); picks the default model folders")
    run.add_argument("--base_model_dir", default=None,
                     help="base model folder or hub id (default: the family's shipped tiny model, base/)")
    run.add_argument("--lora_dir", default=None,
                     help="D2F LoRA adapter folder or hub id (default: the family's shipped tiny model, lora/)")
    run.add_argument("--merge_lora", action="store_true", help="fold the adapter into the base weights (faster)")
    run.add_argument("--generate_fn", choices=sorted(DECODERS), default="d2f",
                     help="d2f: the pipelined decoder (the reference's default); ssd_policy: S2D2 on it")
    add_field_arguments(parser, cli_schema.fields(FLAGS), "decoding", {"return_forward_stats": ["--forward_stats"]})
    parser.add_argument("--no_resample", dest="allow_resample", action="store_false",
                        help="same as --no-allow_resample")
    defer_default(parser, "block_size", "tokens per generated block, 1 = AR mode (default: the largest block size "
                  "the pair's adapter was trained at, from the training_args.json beside base/ that "
                  f"scripts/train_tiny.py writes: 8 for the shipped pairs; else the D2F paper's {RELEASED_BLOCK_SIZE})")
    return parser


def trained_block_size(base: str) -> int:
    """The largest of `lora_block_sizes` in the training record beside a base folder (a pair written by
    scripts/train_tiny.py), else the D2F paper's block size."""
    record = Path(base).parent / "training_args.json"
    if record.is_file():
        sizes = json.loads(record.read_text()).get("args", {}).get("lora_block_sizes")
        if sizes:
            return max(sizes)
    return RELEASED_BLOCK_SIZE


def model_folders(args: argparse.Namespace) -> tuple[str, str, families.Family]:
    """(base, adapter, family) after checking both folders; exits with one line on a bad one."""
    family = families.FAMILIES[FAMILY_NAMES[args.family]]
    base = args.base_model_dir or str(family.tiny_model_dir)
    lora = args.lora_dir or str(family.tiny_adapter_dir)
    found = families.require_model(base, tuple(FAMILY_NAMES.values()), "--base_model_dir")
    if found is not None and found is not family:
        flag = next(key for key, name in FAMILY_NAMES.items() if name == found.name)
        raise cli.fail(f"--base_model_dir {base} is a {found.title} model; pass --family {flag}")
    if Path(lora).is_dir():
        from D2F.lora import check_lora_dir  # imports the D2F package (transformers), once the flags are good

        try:
            check_lora_dir(lora, found.model_types[0] if found is not None else family.model_types[0])
        except ValueError as err:
            raise cli.fail(f"--lora_dir {err}") from None
    elif not families.looks_like_hub_id(lora):
        shipped = families.by_tiny_model(lora)
        hint = f" (the shipped tiny model is made by `{shipped.train_command}`)" if shipped else ""
        raise cli.fail(f"--lora_dir no such adapter folder: {lora}{hint}")
    return base, lora, family


def load_model_and_tokenizer(base: str, lora: str, merge: bool, device: str, dtype: str):
    """Base + adapter through `load_d2f` (our registered classes, no trust_remote_code); the tokenizer is
    the base model's. Hub ids are fetched into the hub cache first."""
    from D2F.lora import load_d2f

    base_dir, lora_dir = cli.fetched(base), cli.fetched(lora)
    model = load_d2f(base_dir, lora_dir, merge=merge, dtype=cli.torch_dtype(dtype, device, "float16"), device=device)
    return model, cli.load_tokenizer(base_dir)


def main(argv: list[str] | None = None) -> list[dict]:
    args = build_parser().parse_args(argv)
    decoder = DECODERS[args.generate_fn]
    if args.block_size is None:  # the pair's own block size, read before any load
        family = families.FAMILIES[FAMILY_NAMES[args.family]]
        args.block_size = trained_block_size(args.base_model_dir or str(family.tiny_model_dir))
    cli.check_flags(args, cli_schema.fields(FLAGS))
    cli.reject_unread_flags(decoder, FLAGS, args, args.generate_fn)
    problem = cli.read_prompt(args)
    base, lora, family = model_folders(args)
    config = cli.model_config(base)
    cli.check_token_ids(config, args.mask_id, args.stopping_criteria_idx)
    decode, _ = cli.build_config(decoder, args)  # the config's own checks
    args.device = cli.resolve_device(args.device)
    tokenizer = cli.load_tokenizer(base)
    ids, prompt_tokens = cli.encode_prompt(tokenizer, problem["prompt"], not args.no_chat, args.prompt_length)
    cli.fit_context(config, len(ids), args, cli_schema.fields(FLAGS), "max_new_tokens")
    model, tokenizer = load_model_and_tokenizer(base, lora, args.merge_lora, args.device, args.dtype)
    if (late := cli.loaded_config(model, config)) is not None:  # a hub id: its config is known only now
        cli.check_token_ids(late, args.mask_id, args.stopping_criteria_idx)
        cli.fit_context(late, len(ids), args, cli_schema.fields(FLAGS), "max_new_tokens")
    args.mask_id = families.require_mask_id(model, tokenizer, family.name, args.mask_id)
    _, cfg = cli.build_config(decoder, args)
    return cli.decode_and_print(decode, cfg, model, tokenizer, problem, ids, prompt_tokens, args.device, args.seed,
                                cfg.return_decoding_order)


if __name__ == "__main__":
    main()
