"""What the single-run command lines of every family share: the run flags, the checks made before
anything heavy is imported (flags, prompt, model folder, token ids against config.json), the prompt
encoding (chat template, left truncation, context length), a progress display, and the printed result.

Nothing here imports torch or transformers at module level: a command line parses and validates its
flags from the stored field specs (`families.cli_schema`) first, so `--help` and every argument error
cost milliseconds; torch is imported once the arguments are known to be good.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from common.cli import check_flag_values
from families import REPO_ROOT, ModelDirError, cli_schema, local_dir
from families.cpu_memory import reuse_freed_memory

SAMPLE_SPLIT = REPO_ROOT / "synthetic" / "data" / "test.jsonl"
DTYPE_NAMES = ("float32", "float16", "bfloat16")
CONTEXT_KEYS = ("max_position_embeddings", "max_sequence_length")
"""config.json keys of the longest sequence a model takes (LLaDA's OLMo-style config calls it the latter)."""
DEVICE_PATTERN = re.compile(r"auto|cpu|mps|cuda(:\d+)?")

PROMPT_HELP = (
    "user prompt (default: a sample problem of the synthetic suite). The shipped tiny models know only "
    "the synthetic suite's prompt formats and print nonsense for anything else; one per task: "
    "'add 41+79' (column addition), 'chain 15 -3 +2' (left-to-right arithmetic), "
    "'sum3 15 in 4..9' (three digits in 4..9 summing to 15), 'inc 4 n..t' (four increasing letters from n, "
    "none after t)"
)


def sample_problem() -> dict[str, Any]:
    """The first item of the shipped synthetic test split, or a literal fallback."""
    if SAMPLE_SPLIT.exists():
        with SAMPLE_SPLIT.open() as handle:
            return json.loads(handle.readline())
    return {"prompt": "add 478+95"}


def fail(message: str) -> SystemExit:
    """The one-line exit of every command line (`raise fail(...)`)."""
    return SystemExit(f"error: {message}")


def add_run_arguments(parser: argparse.ArgumentParser, dtype_auto: str) -> argparse._ArgumentGroup:
    """The flags every single-run command line shares (the caller adds its model flags to the group)."""
    run = parser.add_argument_group("run")
    source = run.add_mutually_exclusive_group()
    source.add_argument("-p", "--prompt", default=None, help=PROMPT_HELP)
    source.add_argument("--prompt_file", type=Path, default=None, help="read the prompt from a file ('-': stdin)")
    run.add_argument("--no_chat", action="store_true", help="feed the prompt raw, without the chat template")
    run.add_argument("--prompt_length", type=int, default=None,
                     help="keep only the last N prompt tokens (left truncation keeps the chat template's "
                          "generation prompt); default: the whole prompt")
    run.add_argument("--seed", type=int, default=42, help="seeds the generator of drafts and acceptance")
    run.add_argument("--device", default="auto", help="auto (CUDA when available, else CPU), cpu, cuda, cuda:N")
    run.add_argument("--dtype", choices=["auto", *DTYPE_NAMES], default="auto",
                     help=f"auto: {dtype_auto} on CUDA, float32 on CPU")
    return run


def read_prompt(args: argparse.Namespace) -> dict[str, Any]:
    """The problem to decode: `--prompt`, `--prompt_file`, or the sample problem; an empty one exits."""
    if args.prompt is not None:
        problem, source = {"prompt": args.prompt}, "--prompt"
    elif args.prompt_file is not None:
        if str(args.prompt_file) == "-":
            problem, source = {"prompt": sys.stdin.read()}, "--prompt_file -"
        elif not args.prompt_file.is_file():
            raise fail(f"--prompt_file {args.prompt_file} is not a file")
        else:
            problem, source = {"prompt": args.prompt_file.read_text()}, f"--prompt_file {args.prompt_file}"
    else:
        return sample_problem()
    if not problem["prompt"].strip():
        raise fail(f"{source}: the prompt is empty")
    return problem


def check_flags(args: argparse.Namespace, specs: list[dict[str, Any]]) -> None:
    """Checks of the parsed flags that need nothing imported: the config fields' bounds (the same
    declarations `__post_init__` checks), the prompt length and the device name."""
    try:
        check_flag_values(specs, args)
    except ValueError as err:
        raise fail(str(err)) from None
    if args.prompt_length is not None and args.prompt_length < 1:
        raise fail(f"--prompt_length must be a positive number of tokens, got {args.prompt_length}")
    if not DEVICE_PATTERN.fullmatch(args.device):
        raise fail(f"--device {args.device!r} is not one of auto, cpu, mps, cuda, cuda:N")


def unread_flags(decoder: str, all_flags: str, args: argparse.Namespace) -> list[str]:
    """The flags of a command line's decoders (`all_flags`: the decoder whose config holds them all) set
    away from their defaults but not read by `decoder` (stored specs only: no decoder is imported)."""
    used = {spec["name"] for spec in cli_schema.fields(decoder)}

    def plain(value: Any) -> Any:  # several values: a tuple, as the config holds them
        return tuple(value) if isinstance(value, list) else value

    return [spec["name"] for spec in cli_schema.fields(all_flags)
            if spec["name"] not in used and plain(getattr(args, spec["name"])) != plain(spec["default"])]


def reject_unread_flags(decoder: str, all_flags: str, args: argparse.Namespace, choice: str) -> None:
    """A flag not read by the chosen `decoder` (`unread_flags`) exits with one line, instead of being
    ignored silently (say an S2D2 routing flag with the baseline)."""
    unread = unread_flags(decoder, all_flags, args)
    if unread:
        raise fail(f"--generate_fn {choice} does not read --{', --'.join(unread)}")


def model_config(path: str) -> dict[str, Any] | None:
    """A local model folder's config.json (already checked by `families.require_model`); None for a hub id."""
    file = Path(path).expanduser() / "config.json"
    return json.loads(file.read_text()) if file.is_file() else None


def check_token_ids(config: dict[str, Any] | None, mask_id: int | None, stop_ids: Any,
                    stop_flag: str = "--stopping_criteria_idx") -> None:
    """Given token ids must index the model's vocabulary (config.json's vocab_size)."""
    vocab = (config or {}).get("vocab_size")
    if vocab is None:
        return
    if mask_id is not None and not 0 <= mask_id < vocab:
        raise fail(f"--mask_id {mask_id} is outside the vocabulary (vocab_size {vocab})")
    bad = [i for i in stop_ids or () if not 0 <= i < vocab]
    if bad:
        raise fail(f"{stop_flag} {' '.join(map(str, bad))} outside the vocabulary (vocab_size {vocab})")


def loaded_config(model: Any, config: dict[str, Any] | None) -> dict[str, Any] | None:
    """The loaded model's config where config.json could not be read before loading (a hub id), else None:
    the checks that need it run then, after the weights."""
    return model.config.to_dict() if config is None else None


def resolve_device(name: str) -> str:
    """`auto` -> cuda when available, else cpu; a CUDA device without CUDA exits (imports torch). On the
    CPU, glibc keeps freed memory for the decoder's next tensors (`families.cpu_memory`)."""
    import torch

    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise fail(f"--device {name}: CUDA is not available here (torch {torch.__version__}); use --device cpu")
        index = int(name.partition(":")[2] or 0)
        if index >= torch.cuda.device_count():
            raise fail(f"--device {name}: only {torch.cuda.device_count()} CUDA device(s) here")
    if name == "mps" and not torch.backends.mps.is_available():
        raise fail("--device mps: MPS is not available here; use --device cpu")
    if name == "cpu":
        reuse_freed_memory()
    return name


def torch_dtype(name: str, device: str, cuda_default: str) -> Any:
    """The torch dtype of `--dtype` (auto: `cuda_default` on CUDA, float32 elsewhere)."""
    import torch

    return getattr(torch, cuda_default if device.startswith("cuda") else "float32") if name == "auto" \
        else getattr(torch, name)


def build_config(decoder: str, args: argparse.Namespace, hint: str = "", hint_for: str = "") -> tuple[Any, Any]:
    """(generate function, its config built from the flags); a config error exits with one line, which
    ends with `hint` when the error names the field `hint_for` (any error when that is empty)."""
    from common.cli import dataclass_from_namespace
    from families import load

    decode = load(decoder)
    try:
        return decode, dataclass_from_namespace(decode.config_class, args)
    except (TypeError, ValueError) as err:
        raise fail(f"{err}{hint if hint_for in str(err) else ''}") from None


def fetched(path: str) -> str:
    """`families.local_dir` for command lines: a hub id that cannot be fetched exits with one line."""
    try:
        return local_dir(path)
    except ModelDirError as err:
        raise fail(str(err)) from None


def load_tokenizer(path: str) -> Any:
    """The tokenizer of a local folder (no network) or a hub id."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(fetched(path), local_files_only=True)


def encode_prompt(tokenizer: Any, prompt: str, chat: bool, prompt_length: int | None,
                  **template_kwargs: Any) -> tuple[list[int], int]:
    """(the ids the model sees, the prompt's full token count). The chat template, when the tokenizer has
    one and `chat`, wraps the prompt; `prompt_length` keeps the LAST tokens, so the template's generation
    prompt (e.g. `<|im_start|>assistant`) survives, as the lm-eval adapter truncates."""
    text = prompt
    if chat and tokenizer.chat_template:
        text = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                             tokenize=False, **template_kwargs)
    ids = tokenizer(text, add_special_tokens=False).input_ids
    kept = ids[-prompt_length:] if prompt_length is not None else ids
    return kept, len(ids)


def fit_context(config: dict[str, Any] | None, prompt_tokens: int, args: argparse.Namespace,
                specs: list[dict[str, Any]], budget_field: str) -> None:
    """The prompt plus the generation budget must fit the model's positions (config.json's
    max_position_embeddings or max_sequence_length): past them the model decodes garbage silently. A
    budget left at its default is lowered to fit (a note on stderr), as the lm-eval adapter does; one
    given on the command line that does not fit exits with one line."""
    limit = next((config[key] for key in CONTEXT_KEYS if (config or {}).get(key)), None)
    field = "max_gen_toks" if args.max_gen_toks is not None else budget_field
    budget = getattr(args, field)
    if limit is None or prompt_tokens + budget <= limit:
        return
    default = next(spec["default"] for spec in specs if spec["name"] == field)
    if budget == default and prompt_tokens < limit:
        setattr(args, field, limit - prompt_tokens)
        print(f"note: --{field} lowered from its default {budget} to {limit - prompt_tokens} so that the prompt "
              f"({prompt_tokens} tokens) and the generation fit the model's {limit} positions", file=sys.stderr)
        return
    raise fail(f"the prompt ({prompt_tokens} tokens) plus --{field} {budget} is {prompt_tokens + budget} tokens, "
               f"past the model's {limit} positions; shorten with --prompt_length or lower --{field}")


@contextlib.contextmanager
def decoding_progress(model: Any, enabled: bool | None = None) -> Iterator[None]:
    """A tqdm counter of the model's forwards on stderr while decoding, when stderr is a terminal (a
    forward hook: the decoders need no change, and piped or captured output stays clean)."""
    if enabled is None:
        enabled = sys.stderr.isatty()
    if not enabled:
        yield
        return
    from tqdm import tqdm

    bar = tqdm(desc="decoding", unit=" forwards", file=sys.stderr, leave=False)

    def count(*_: Any) -> None:  # a forward hook that returned a value would replace the forward's output
        bar.update(1)

    handle = model.register_forward_hook(count)
    try:
        yield
    finally:
        handle.remove()
        bar.close()


def print_result(problem: dict[str, Any], completion: str, stats: dict[str, Any], decoding_order: bool,
                 model_input: str | None = None) -> None:
    """The prompt, what the model saw when the prompt was truncated, the completion, whether it is correct
    (a synthetic-suite problem), the decoding stats, the accepted lengths of the verifications (when any
    ran) and, on request, the decoding order."""
    print(f"prompt: {problem['prompt']}")
    if model_input is not None:
        print(f"decoded input (left-truncated): {model_input}")
    print(f"completion: {completion}")
    if "task" in problem:
        from synthetic.scorer import score

        print(f"correct: {score(problem, completion)}")
    print("stats: " + json.dumps({k: v for k, v in stats.items() if k not in ("accepted_lengths", "decoding_order")}))
    if stats.get("accepted_lengths"):
        print(f"accepted lengths: {stats['accepted_lengths']}")
    if decoding_order:
        print(f"decoding order: {stats['decoding_order']}")


def decode_and_print(decode: Any, cfg: Any, model: Any, tokenizer: Any, problem: dict[str, Any], ids: list[int],
                     prompt_tokens: int, device: str, seed: int, decoding_order: bool) -> list[dict[str, Any]]:
    """Decode the encoded prompt `ids` with `decode(model, ids, **cfg)` (stats on, a seeded generator,
    progress on a terminal) and print the result; a decoder's ValueError exits with one line."""
    import torch

    input_ids = torch.tensor([ids], dtype=torch.long, device=device)  # [1, P]
    generator = torch.Generator(device=device).manual_seed(seed)
    try:
        with decoding_progress(model):
            out, stats = decode(model, input_ids, generator=generator,
                                **{**vars(cfg), "return_forward_stats": True})
    except ValueError as err:
        raise fail(str(err)) from None
    completion = tokenizer.decode(out[0, input_ids.shape[1]:], skip_special_tokens=True)
    truncated = None
    if len(ids) < prompt_tokens:
        truncated = f"(last {len(ids)} of {prompt_tokens} tokens) {tokenizer.decode(ids)!r}"
    print_result(problem, completion, stats[0], decoding_order, truncated)
    return stats
