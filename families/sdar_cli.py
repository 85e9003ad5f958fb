"""Command line shared by `SDAR/generate.py` and `SDAR/generate_ssd_policy.py`. It lives outside the SDAR
package because importing that package registers the model with transformers (seconds of imports).

The flags come from the stored field specs of the decode configs (`families.cli_schema`), and every
check that needs no model runs before torch is imported: `--help` and argument errors cost
milliseconds. The model folder's config.json is checked next (family, token ids, context length),
then the tokenizer and, last, the weights are loaded.
"""

from __future__ import annotations

import argparse

import families
from common.cli import OneLineErrorParser, add_field_arguments
from families import cli, cli_schema

DEFAULT_MODEL_DIR = families.FAMILIES["sdar"].tiny_model_dir


def build_parser(decoder: str, description: str | None, aliases: dict[str, list[str]] | None,
                 negations: dict[str, str] | None) -> argparse.ArgumentParser:
    parser = OneLineErrorParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    run = cli.add_run_arguments(parser, dtype_auto="float16")
    run.add_argument("--model_dir", default=str(DEFAULT_MODEL_DIR),
                     help="HF model directory or hub id (default: the shipped tiny SDAR model)")
    run.add_argument("--trust_remote_code", action="store_true",
                     help="accepted for compatibility; never needed: our classes are registered for model_type sdar")
    add_field_arguments(parser, cli_schema.fields(decoder), "decoding", aliases)
    for dest, flag in (negations or {}).items():
        parser.add_argument(flag, dest=dest, action="store_false", help=f"same as --no-{dest}")
    return parser


def load_model_and_tokenizer(model_dir: str, device: str, dtype: str):
    """Load with our registered SDAR classes (no trust_remote_code); a local directory never touches the
    network."""
    import SDAR  # noqa: F401  (registers model_type "sdar" with the Auto classes)
    from transformers import AutoModelForCausalLM

    tokenizer = cli.load_tokenizer(model_dir)
    model = AutoModelForCausalLM.from_pretrained(cli.fetched(model_dir),
                                                 torch_dtype=cli.torch_dtype(dtype, device, "float16"),
                                                 local_files_only=True)
    return model.to(device).eval(), tokenizer


def main(decoder: str, description: str | None = None, aliases: dict[str, list[str]] | None = None,
         negations: dict[str, str] | None = None, argv: list[str] | None = None) -> list[dict]:
    """Decode one prompt with `decoder` ("module:function" of `families.cli_schema.DECODERS`)."""
    args = build_parser(decoder, description, aliases, negations).parse_args(argv)
    cli.check_flags(args, cli_schema.fields(decoder))
    problem = cli.read_prompt(args)
    families.require_model(args.model_dir, "sdar", "--model_dir")
    config = cli.model_config(args.model_dir)
    cli.check_token_ids(config, args.mask_id, args.stopping_criteria_idx)
    decode, _ = cli.build_config(decoder, args)  # the first torch import: the config's own checks
    args.device = cli.resolve_device(args.device)
    tokenizer = cli.load_tokenizer(args.model_dir)
    ids, prompt_tokens = cli.encode_prompt(tokenizer, problem["prompt"], not args.no_chat, args.prompt_length,
                                           enable_thinking=False)
    cli.fit_context(config, len(ids), args, cli_schema.fields(decoder), "gen_length")
    model, tokenizer = load_model_and_tokenizer(args.model_dir, args.device, args.dtype)
    if (late := cli.loaded_config(model, config)) is not None:  # a hub id: its config is known only now
        cli.check_token_ids(late, args.mask_id, args.stopping_criteria_idx)
        cli.fit_context(late, len(ids), args, cli_schema.fields(decoder), "gen_length")
    args.mask_id = families.require_mask_id(model, tokenizer, "sdar", args.mask_id)
    _, cfg = cli.build_config(decoder, args)
    return cli.decode_and_print(decode, cfg, model, tokenizer, problem, ids, prompt_tokens, args.device, args.seed,
                                cfg.record_decoding_order)
