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

import families
from common.cli import OneLineErrorParser, add_field_arguments, defer_default
from families import cli, cli_schema

DEFAULT_MODEL = families.FAMILIES["fast_dllm_v2"].tiny_model_dir
DECODERS = {"fast": "fast_dllm_v2.generate:generate",
            "ssd_policy": "fast_dllm_v2.generate_ssd_policy:generate_ssd_policy"}
FLAGS = DECODERS["ssd_policy"]  # its config holds every flag of both decoders
DEFAULT_BLOCK_SIZE = 32  # the released models' bd_size, for a model whose config.json is not readable yet


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineErrorParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    run = cli.add_run_arguments(parser, dtype_auto="bfloat16")
    run.add_argument("--model", default=str(DEFAULT_MODEL),
                     help="model directory or hub id (default: the repository's tiny Fast-dLLM v2 model)")
    run.add_argument("--generate_fn", choices=sorted(DECODERS), default="fast",
                     help="fast: the baseline decoder (the reference's default); ssd_policy: S2D2")
    run.add_argument("--use_local_modeling", action=argparse.BooleanOptionalAction, default=True,
                     help="accepted for compatibility: our own modeling code is always used")
    run.add_argument("--use_attention_mask", action=argparse.BooleanOptionalAction, default=True,
                     help="accepted for compatibility: masks are always exact (explicit where padding needs them)")
    add_field_arguments(parser, cli_schema.fields(FLAGS), "decoding")
    defer_default(parser, "block_size",
                  "tokens per block (default: the model config's bd_size, its training block size)")
    parser.add_argument("--no_resample", dest="allow_resample", action="store_false",
                        help="same as --no-allow_resample")
    return parser


def load_model_and_tokenizer(model: str, device: str, dtype: str):
    """Load with our registered classes (no trust_remote_code); a local directory never touches the network."""
    import fast_dllm_v2  # noqa: F401  (registers model_type "Fast_dLLM_Qwen" with the Auto classes)
    from transformers import AutoModelForCausalLM

    tokenizer = cli.load_tokenizer(model)
    loaded = AutoModelForCausalLM.from_pretrained(cli.fetched(model),
                                                  torch_dtype=cli.torch_dtype(dtype, device, "bfloat16"),
                                                  local_files_only=True)
    return loaded.to(device).eval(), tokenizer


def main(argv: list[str] | None = None) -> list[dict]:
    args = build_parser().parse_args(argv)
    block_from_model = args.block_size is None
    cli.check_flags(args, cli_schema.fields(FLAGS))
    cli.reject_unread_flags(DECODERS[args.generate_fn], FLAGS, args, args.generate_fn)
    problem = cli.read_prompt(args)
    families.require_model(args.model, "fast_dllm_v2", "--model")
    config = cli.model_config(args.model)
    cli.check_token_ids(config, args.mask_id, args.stopping_criteria_idx)
    if block_from_model:  # a hub id's bd_size is known once it loads: the released models' 32 until then
        args.block_size = int((config or {}).get("bd_size", DEFAULT_BLOCK_SIZE))
    hint = f" (block_size {args.block_size} is the model's bd_size; pass --block_size)" if block_from_model else ""
    cli.build_config(FLAGS, args, hint, "block_size")  # the first torch import: the config's own checks
    decode, _ = cli.build_config(DECODERS[args.generate_fn], args, hint, "block_size")
    args.device = cli.resolve_device(args.device)
    tokenizer = cli.load_tokenizer(args.model)
    ids, prompt_tokens = cli.encode_prompt(tokenizer, problem["prompt"], not args.no_chat, args.prompt_length)
    cli.fit_context(config, len(ids), args, cli_schema.fields(FLAGS), "max_new_tokens")
    model, tokenizer = load_model_and_tokenizer(args.model, args.device, args.dtype)
    if (late := cli.loaded_config(model, config)) is not None:  # a hub id: its config is known only now
        cli.check_token_ids(late, args.mask_id, args.stopping_criteria_idx)
        cli.fit_context(late, len(ids), args, cli_schema.fields(FLAGS), "max_new_tokens")
        if block_from_model:
            args.block_size = int(getattr(model.config, "bd_size", DEFAULT_BLOCK_SIZE))
    args.mask_id = families.require_mask_id(model, tokenizer, "fast_dllm_v2", args.mask_id)
    _, cfg = cli.build_config(DECODERS[args.generate_fn], args, hint, "block_size")
    return cli.decode_and_print(decode, cfg, model, tokenizer, problem, ids, prompt_tokens, args.device, args.seed,
                                cfg.return_decoding_order)


if __name__ == "__main__":
    main()
