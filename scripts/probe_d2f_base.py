"""Does a D2F masked-diffusion base read its answer? Cross entropy of masked answer tokens at a low and a
high mask ratio, by kind of token, on the validation split.

A masked-diffusion LM that has learned the tasks predicts a masked token from the answer tokens around
it: with 5% of the answer masked, a content token (a digit or letter of the scratchpad) is nearly
determined by its neighbours, so its cross entropy falls far below what it is with 95% masked. A base
that has learned only the answer's layout (where the `=`, `,` and `####` go, how long each task's
answer is) predicts content tokens from their position alone, and its content cross entropy is the same
at both ratios. This is the check to run on a D2F base before spending CPU time on its adapter: the
adapter's AR mode and its distillation teacher are only as good as the base's reading of its context.

For each task, the first `--limit` validation items are padded as in training (trailing pad tokens
belong to the answer); each answer token is masked with probability r, in `--draws` independent draws
from one generator per ratio (`--seed`), and a full-attention forward per draw scores the masked tokens
(shift-aligned families read the logit one position to the left). One JSON record: per task, ratio and
kind (`content`: alphanumeric, `layout`: the other answer tokens, `padding`) the mean cross entropy in
nats and the token count, and per task `content_gain` = content CE at the highest ratio minus at the lowest.

    python scripts/probe_d2f_base.py models/d2f-llada-tiny/base
    python scripts/probe_d2f_base.py /tmp/run/d2f-dream-tiny/base --ratios 0.05,0.5,0.95
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from common.cli import ScriptParser
import families
from families.cpu_memory import reuse_freed_memory
from synthetic.tasks import TASKS
from synthetic.validation import VAL_SPLIT_PATH

D2F_FAMILIES = ("d2f_llada", "d2f_dream")
KINDS = ("content", "layout", "padding")


def _ratios(text: str) -> list[float]:
    try:
        values = sorted({float(part) for part in text.split(",") if part.strip()})
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None
    if len(values) < 2 or not all(0.0 < value <= 1.0 for value in values):
        raise argparse.ArgumentTypeError(f"expected two or more distinct mask ratios in (0, 1], got {text!r}")
    return values


def _tasks(text: str) -> list[str]:
    tasks = [task for task in text.split(",") if task]
    unknown = [task for task in tasks if task not in TASKS]
    if not tasks or unknown:
        raise argparse.ArgumentTypeError(f"unknown {unknown or 'none given'}; valid: {', '.join(TASKS)}")
    return tasks


def build_parser() -> argparse.ArgumentParser:
    parser = ScriptParser(description=__doc__.splitlines()[0],
                          formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("base_model_dir", type=Path, help="a D2F base folder (model_type llada or Dream)")
    parser.add_argument("--ratios", type=_ratios, default=[0.05, 0.95], help="mask ratios, comma-separated")
    parser.add_argument("--limit", type=int, default=48, help="validation items per task")
    parser.add_argument("--tasks", type=_tasks, default=list(TASKS), help="comma-separated tasks")
    parser.add_argument("--draws", type=int, default=8,
                        help="mask draws per ratio (at a low ratio one draw masks few tokens)")
    parser.add_argument("--seed", type=int, default=1, help="seed of the masks")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    return parser


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Every check that needs no torch and no weights."""
    parser = build_parser()
    args = parser.parse_args(argv)
    for name in ("limit", "draws"):
        if getattr(args, name) <= 0:
            parser.error(f"--{name} must be a positive integer, got {getattr(args, name)}")
    args.family = families.require_model(args.base_model_dir, D2F_FAMILIES, "base_model_dir").name
    return args


def token_kinds(ids: Any, tokenizer: Any) -> Any:
    """[B, T] ids -> [B, T] kind index into KINDS."""
    import torch

    content = torch.tensor([tokenizer.decode([index]).isalnum() for index in range(len(tokenizer))])
    kind = torch.where(content[ids], 0, 1)
    return torch.where(ids == tokenizer.pad_token_id, 2, kind)


def probe(model: Any, tokenizer: Any, items: list[dict], ratios: list[float], shifted: bool,
          seed: int, draws: int) -> dict[str, dict[str, float | int]]:
    """Mean CE and count per ratio and kind over `items` (one batch), each ratio over `draws` mask draws."""
    import torch

    from synthetic.tokenizer import encode_example
    from synthetic.train_d2f import aligned_log_probs, pad_examples

    ids, prompt_len = pad_examples([encode_example(tokenizer, item) for item in items], tokenizer.pad_token_id)
    answer = torch.arange(ids.shape[1])[None, :] >= prompt_len[:, None]  # [B, T]
    kinds = token_kinds(ids, tokenizer)  # [B, T]
    out: dict[str, dict[str, float | int]] = {}
    for ratio in ratios:
        generator = torch.Generator().manual_seed(seed)
        sums, counts = torch.zeros(len(KINDS), dtype=torch.float64), torch.zeros(len(KINDS), dtype=torch.long)
        for _ in range(draws):
            masked = answer & (torch.rand(ids.shape, generator=generator) < ratio)  # [B, T]
            with torch.no_grad():
                logits = model(input_ids=torch.where(masked, tokenizer.mask_token_id, ids)).logits
            ce = -aligned_log_probs(logits, shifted).gather(-1, ids[..., None])[..., 0]  # [B, T]
            kind = torch.where(masked, kinds, len(KINDS))  # [B, T]; unmasked -> an extra bin, dropped
            sums += torch.zeros(len(KINDS) + 1, dtype=torch.float64).index_add_(
                0, kind.flatten(), ce.flatten().double())[:-1]
            counts += torch.bincount(kind.flatten(), minlength=len(KINDS) + 1)[:-1]
        out[f"{ratio:g}"] = {kind: {"ce": round(float(sums[i] / counts[i]), 4) if counts[i] else None,
                                    "tokens": int(counts[i])} for i, kind in enumerate(KINDS)}
    return out


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    import D2F  # noqa: F401  (registers llada / Dream with the Auto classes)
    from synthetic.tasks import load_jsonl

    torch.set_num_threads(args.threads)
    reuse_freed_memory()  # decodes on the CPU
    spec = families.FAMILIES[args.family]
    tokenizer = AutoTokenizer.from_pretrained(str(args.base_model_dir), local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(str(args.base_model_dir), torch_dtype=torch.float32).eval()
    items = load_jsonl(VAL_SPLIT_PATH)
    record: dict[str, Any] = {"base_model_dir": str(args.base_model_dir), "family": args.family,
                              "split": str(VAL_SPLIT_PATH), "limit": args.limit, "draws": args.draws,
                              "seed": args.seed, "tasks": {}}
    low, high = f"{args.ratios[0]:g}", f"{args.ratios[-1]:g}"
    for task in args.tasks:
        chosen = [item for item in items if item["task"] == task][: args.limit]
        result = probe(model, tokenizer, chosen, args.ratios, spec.shift_aligned, args.seed, args.draws)
        gain = None
        if result[low]["content"]["ce"] is not None and result[high]["content"]["ce"] is not None:
            gain = round(result[high]["content"]["ce"] - result[low]["content"]["ce"], 4)
        record["tasks"][task] = {"by_ratio": result, "content_gain": gain}
        print(f"{task}: content CE {result[low]['content']['ce']} at r={low}, {result[high]['content']['ce']} at "
              f"r={high} (gain {gain})", file=sys.stderr)
    print(json.dumps(record))
    return 0


if __name__ == "__main__":
    sys.exit(main())
