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

import families
from common.cli import OneLineErrorParser, add_field_arguments, defer_default
from families import cli, cli_schema

DEFAULT_MODEL = families.FAMILIES["llada2"].tiny_model_dir
DECODERS = {"nocache": "LLaDA2.generate:generate", "cached": "LLaDA2.generate:generate_cached",
            "ssd_policy": "LLaDA2.generate_ssd_policy:generate_ssd_policy"}
FLAGS = DECODERS["ssd_policy"]  # its config holds every flag of the three decoders
STOP_FLAG = "--eos_id/--stopping_criteria_idx"
RELEASED_BLOCK_LENGTH = 32  # the paper's block length for LLaDA2.x-mini


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineErrorParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    run = cli.add_run_arguments(parser, dtype_auto="bfloat16 (the released weights)")
    run.add_argument("--model", default=str(DEFAULT_MODEL),
                     help="model directory or hub id (default: the repository's tiny LLaDA2 model)")
    run.add_argument("--generate_fn", choices=list(DECODERS), default="cached",
                     help="nocache: the model card's decoder; cached: KV-cached (the reference's default); "
                          "ssd_policy: S2D2")
    add_field_arguments(parser, cli_schema.fields(FLAGS), "decoding", aliases={"stopping_criteria_idx": ["--eos_id"]})
    parser.add_argument("--no_resample", dest="allow_resample", action="store_false",
                        help="same as --no-allow_resample")
    defer_default(parser, "block_length", "tokens per block (default: the model config's `block_length`, the block "
                  f"size it was trained at, else the released models' {RELEASED_BLOCK_LENGTH})")
    return parser


def load_model_and_tokenizer(model: str, device: str, dtype: str):
    """Load with our registered classes (no trust_remote_code); a local directory never touches the network."""
    import LLaDA2  # noqa: F401  (registers model_type "llada2_moe" with the Auto classes)
    from transformers import AutoModelForCausalLM

    tokenizer = cli.load_tokenizer(model)
    loaded = AutoModelForCausalLM.from_pretrained(cli.fetched(model),
                                                  torch_dtype=cli.torch_dtype(dtype, device, "bfloat16"),
                                                  local_files_only=True)
    return loaded.to(device).eval(), tokenizer


def main(argv: list[str] | None = None) -> list[dict]:
    args = build_parser().parse_args(argv)
    decoder = DECODERS[args.generate_fn]
    if args.block_length is None:  # the model's own block size (the tiny model records it), read before any load
        args.block_length = int((cli.model_config(args.model) or {}).get("block_length", RELEASED_BLOCK_LENGTH))
    cli.check_flags(args, cli_schema.fields(FLAGS))
    cli.reject_unread_flags(decoder, FLAGS, args, args.generate_fn)
    problem = cli.read_prompt(args)
    families.require_model(args.model, "llada2", "--model")
    config = cli.model_config(args.model)
    cli.check_token_ids(config, args.mask_id, args.stopping_criteria_idx, STOP_FLAG)
    decode, _ = cli.build_config(decoder, args)  # the first torch import: the config's own checks
    args.device = cli.resolve_device(args.device)
    tokenizer = cli.load_tokenizer(args.model)
    ids, prompt_tokens = cli.encode_prompt(tokenizer, problem["prompt"], not args.no_chat, args.prompt_length)
    cli.fit_context(config, len(ids), args, cli_schema.fields(FLAGS), "gen_length")
    model, tokenizer = load_model_and_tokenizer(args.model, args.device, args.dtype)
    if (late := cli.loaded_config(model, config)) is not None:  # a hub id: its config is known only now
        cli.check_token_ids(late, args.mask_id, args.stopping_criteria_idx, STOP_FLAG)
        cli.fit_context(late, len(ids), args, cli_schema.fields(FLAGS), "gen_length")
    args.mask_id = families.require_mask_id(model, tokenizer, "llada2", args.mask_id)
    _, cfg = cli.build_config(decoder, args)
    return cli.decode_and_print(decode, cfg, model, tokenizer, problem, ids, prompt_tokens, args.device, args.seed,
                                cfg.record_decoding_order)


if __name__ == "__main__":
    main()
