"""Accuracy and speed of a tiny model on the synthetic test split, for one named decoding setting.

Decodes every test item (or the first `--limit` of each task) with our decoders, batching the prompts
of a task (left padding), scores each completion with `synthetic.scorer`, and prints ONE JSON record
last (docs/METHOD.md §5): per task and overall accuracy with its standard error sqrt(a(1-a)/n), NFE per
sample (by kind), TPF = generated tokens / non-prefill forwards, and tokens/s. Tokens/s is batched
throughput (generated tokens / summed batch wall time), not batch-1 latency.

`--family` picks the model family and so the decoders and their flags (every field of the family's
S2D2 config is a flag; `--family fast_dllm_v2 --help` lists that family's):
* `sdar` (default, models/sdar-tiny): `SDAR/generate.py`, `SDAR/generate_ssd_policy.py`;
* `fast_dllm_v2` (models/fast-dllm-v2-tiny): `Fast-dLLM-v2/generate.py`, `generate_ssd_policy.py`;
* `llada2` (models/llada2-tiny): `LLaDA2/generate.py` (cached, token editing), `generate_ssd_policy.py`;
  sampling is `--temperature` alone (no `--do_sample`);
* `d2f_llada` (models/d2f-llada-tiny/base, adapter `--lora_dir` models/d2f-llada-tiny/lora) and
  `d2f_dream` (models/d2f-dream-tiny/base and lora/): `D2F/generate.py`, `D2F/generate_ssd_policy.py` on
  the base with its LoRA adapter merged; sampling is `--temperature` alone.

`--model_dir`'s config.json must name the chosen family's model_type (and a D2F `--lora_dir` must hold
adapter_config.json); every flag and that check run before torch is imported.

Modes:
* `ar`: AR mode, block length 1: one forward per token (the S2D2 verifier). For Fast-dLLM v2 every
  token is then a block's first token, which its decoder always takes as the argmax: AR mode is greedy;
* `baseline`: the family's block-diffusion decoder with the given flags (SDAR dynamic/static, Fast "fast");
* `s2d2`: self-speculative decoding.

    python scripts/eval_tiny.py --mode ar                                   # greedy AR mode
    python scripts/eval_tiny.py --mode ar --do_sample --temperature 1.0      # sampling at T=1
    python scripts/eval_tiny.py --mode baseline --block_length 8 --denoising_steps 8 --confidence_threshold 0.7
    python scripts/eval_tiny.py --mode s2d2 --block_length 8 --denoising_steps 8
    python scripts/eval_tiny.py --family fast_dllm_v2 --mode s2d2 --block_size 16 --small_block_size 4
    python scripts/eval_tiny.py --family d2f_llada --mode s2d2 --limit 5
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any, Callable

import families
from common.cli import ScriptParser, add_field_arguments, check_flag_values, dataclass_from_namespace
from families import FAMILIES, cli_schema
from families.cli import unread_flags
from families.cpu_memory import reuse_freed_memory
from synthetic.tasks import TASKS, TEST_SPLIT_PATH, load_jsonl

REPO_ROOT = Path(__file__).resolve().parent.parent
MODES = ("ar", "baseline", "s2d2")
EVAL_GEN_LENGTH = 64
"""Generation budget: the longest synthetic answer is 56 tokens with its EOS; 128 (the decoders'
default) only wastes forwards on a row that never stops."""


def chosen_family(argv: list[str] | None) -> str:
    """`--family` alone, read before the full parser (whose flags depend on it) is built."""
    pre = ScriptParser(prog="eval_tiny.py", add_help=False)
    pre.add_argument("--family", choices=sorted(FAMILIES), default="sdar")
    return pre.parse_known_args(argv)[0].family


def build_parser(family: str = "sdar") -> ScriptParser:
    """The parser of `family`'s flags, built from the stored field specs of its S2D2 config
    (`families.cli_schema`): no decoder (and no torch) is imported."""
    spec = FAMILIES[family]
    parser = ScriptParser(prog="eval_tiny.py", description=__doc__.splitlines()[0],
                          formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    run = parser.add_argument_group("run")
    run.add_argument("--family", choices=sorted(FAMILIES), default="sdar", help="model family (decoders and flags)")
    run.add_argument("--model_dir", type=Path, default=spec.tiny_model_dir)
    if spec.adapter_loader is not None:  # a base + LoRA family (D2F): the adapter goes on the base
        run.add_argument("--lora_dir", type=Path, default=spec.tiny_adapter_dir, help="LoRA adapter folder")
    run.add_argument("--mode", choices=MODES, default="ar",
                     help="ar: block length 1; baseline: the family's block-diffusion decoder; s2d2: S2D2")
    run.add_argument("--split", type=Path, default=TEST_SPLIT_PATH, help="JSONL items (default: the shipped test split)")
    run.add_argument("--tasks", default=",".join(TASKS), help="comma-separated tasks to evaluate")
    run.add_argument("--limit", type=int, default=None, help="first N items per task (default: all)")
    run.add_argument("--batch_size", type=int, default=16, help="prompts decoded together (left padded)")
    run.add_argument("--seed", type=int, default=0, help="seeds torch and the sampling generator")
    run.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    run.add_argument("--predictions", type=Path, default=None, help="also write per-item completions (JSONL)")
    config_name = cli_schema.stored()[spec.s2d2]["config"].partition(":")[2]  # the group title: its class name
    add_field_arguments(parser, cli_schema.fields(spec.s2d2), config_name)
    parser.set_defaults(**{spec.budget_field: EVAL_GEN_LENGTH})
    return parser


def check_decode_flags(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    """The checks of the flags made from the stored field specs, before any import of the decoders (and
    torch): the fields' bounds, the flags `--mode` would ignore, and AR mode's fixed fields. The configs'
    own `__post_init__` checks run later, in `decode_setting`."""
    spec = FAMILIES[args.family]
    fields = cli_schema.fields(spec.s2d2)
    try:
        check_flag_values(fields, args)
    except ValueError as err:
        parser.error(str(err))
    if args.mode == "s2d2":
        return
    ignored = unread_flags(spec.baseline, spec.s2d2, args)
    if ignored:
        parser.error(f"--{', --'.join(ignored)} only apply to --mode s2d2")
    if args.mode == "ar":
        defaults = {f["name"]: f["default"] for f in fields}
        given = tuple(getattr(args, name) for name in spec.ar_mode)
        if given not in (tuple(spec.ar_mode.values()), tuple(defaults[name] for name in spec.ar_mode)):
            fixed = ", ".join(f"{name}={value}" for name, value in spec.ar_mode.items())
            parser.error(f"--mode ar fixes {fixed}; got {given}")


def model_dir_error(family: str, model_dir: Path, lora_dir: Path | None = None) -> str | None:
    """Why `model_dir` (with the adapter folder `lora_dir`, for a D2F family) cannot be decoded as
    `family`, in one line, or None when it can. Reads config.json only: no torch, no weights."""
    spec = FAMILIES[family]
    config = Path(model_dir) / "config.json"
    if not config.is_file():
        return f"no model at {model_dir} (config.json missing); train one with `{spec.train_command}`"
    try:
        found = families.check_model(model_dir)
    except families.ModelDirError as err:
        return str(err)
    if found is not spec:  # a family has one model_type: the one config.json names
        return (f"{model_dir} is a {found.title} model (model_type {found.model_types[0]!r}), not {spec.title}; "
                f"use --family {found.name}")
    if lora_dir is not None and not (Path(lora_dir) / "adapter_config.json").is_file():
        return f"no adapter at {lora_dir} (adapter_config.json missing)"
    return None


def decode_setting(args: argparse.Namespace, parser: argparse.ArgumentParser) -> tuple[Any, Callable]:
    """The decode config and generate function of `--mode` (imports the decoders). The flags the mode
    would ignore, and AR mode's fixed fields, are checked first (`check_decode_flags`, no torch)."""
    check_decode_flags(args, parser)
    spec = FAMILIES[args.family]
    s2d2 = spec.decoder("s2d2")
    full = dataclass_from_namespace(s2d2.config_class, args)
    if args.mode == "s2d2":
        return full, s2d2
    baseline = spec.decoder("baseline")
    base_class = baseline.config_class
    base = base_class(**{f.name: getattr(full, f.name) for f in dataclasses.fields(base_class)})
    if args.mode == "ar":
        base = dataclasses.replace(base, **spec.ar_mode)
    return base, baseline


def load_items(path: Path, tasks: list[str], limit: int | None) -> dict[str, list[dict]]:
    """Items grouped by task, in file order, the first `limit` of each."""
    grouped: dict[str, list[dict]] = defaultdict(list)
    for item in load_jsonl(path):
        if item["task"] in tasks and (limit is None or len(grouped[item["task"]]) < limit):
            grouped[item["task"]].append(item)
    return {task: grouped[task] for task in tasks if grouped[task]}


def summarize(rows: list[dict], batch_walls: list[float]) -> dict[str, Any]:
    """Accuracy with standard error and speed figures over scored rows (one dict per item)."""
    n = len(rows)
    correct = sum(r["correct"] for r in rows)
    acc = correct / n
    generated = sum(r["stats"]["generated_tokens"] for r in rows)
    by_kind: dict[str, float] = defaultdict(float)
    for r in rows:
        for kind, count in r["stats"]["nfe_by_kind"].items():
            by_kind[kind] += count / n
    decode_nfe = sum(r["stats"]["nfe"] - r["stats"]["nfe_by_kind"]["prefill"] for r in rows)
    wall = sum(batch_walls)
    out = {
        "n": n,
        "correct": correct,
        "accuracy": round(acc, 4),
        "stderr": round(math.sqrt(acc * (1 - acc) / n), 4),
        "nfe": round(sum(r["stats"]["nfe"] for r in rows) / n, 3),
        "nfe_by_kind": {k: round(v, 3) for k, v in by_kind.items()},
        "generated_tokens": round(generated / n, 3),
        "tpf": round(generated / decode_nfe, 4) if decode_nfe else 0.0,
        "tokens_per_second": round(generated / wall, 1) if wall > 0 else 0.0,
        "wall_time_s": round(wall, 3),
    }
    verifications = sum(r["stats"]["verifications"] for r in rows)
    if verifications:
        accepted = [n_acc for r in rows for n_acc in r["stats"]["accepted_lengths"]]
        out["verifications_per_sample"] = round(verifications / n, 3)
        out["verify_fraction"] = round(verifications / max(1, sum(r["stats"]["routing_decisions"] for r in rows)), 4)
        out["mean_accepted"] = round(sum(accepted) / len(accepted), 4)
    return out


def git_sha() -> str | None:
    """Commit of the working tree, or None outside git / before the first commit."""
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def evaluate(args: argparse.Namespace, cfg: Any, generate: Callable) -> dict[str, Any]:
    """Decode, score and summarise; returns the JSON record."""
    import torch
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    families.register_model_types()
    from synthetic.scorer import score
    from synthetic.tokenizer import format_prompt

    torch.set_num_threads(args.threads)
    reuse_freed_memory()  # decodes on the CPU
    torch.manual_seed(args.seed)
    generator = torch.Generator().manual_seed(args.seed)
    tokenizer = AutoTokenizer.from_pretrained(args.model_dir, local_files_only=True)
    tokenizer.padding_side = "left"
    spec = FAMILIES[args.family]
    if spec.adapter_loader is not None:
        model = families.load(spec.adapter_loader)(args.model_dir, args.lora_dir, merge=True, dtype=torch.float32,
                                                   device="cpu")
    else:
        model = AutoModelForCausalLM.from_pretrained(args.model_dir, local_files_only=True,
                                                     torch_dtype=torch.float32).eval()
    cfg = cfg.resolved(model)
    kwargs = {**dataclasses.asdict(cfg), "return_forward_stats": True}
    grouped = load_items(args.split, [t for t in args.tasks.split(",") if t], args.limit)
    per_task: dict[str, dict[str, Any]] = {}
    all_rows: list[dict] = []
    all_walls: list[float] = []
    predictions: list[dict] = []
    start = time.perf_counter()
    for task, items in grouped.items():
        texts = [format_prompt(tokenizer, item["prompt"]) for item in items]
        # Sorting by prompt length keeps left padding (and the block misalignment it causes) small.
        order = sorted(range(len(items)), key=lambda i: len(tokenizer.encode(texts[i], add_special_tokens=False)))
        rows, walls = [], []
        for first in range(0, len(order), args.batch_size):
            chunk = order[first : first + args.batch_size]
            enc = tokenizer([texts[i] for i in chunk], return_tensors="pt", padding=True, add_special_tokens=False)
            ids, stats = generate(model, enc.input_ids, enc.attention_mask, generator=generator, **kwargs)
            walls.append(stats[0]["wall_time"])
            prompt_len = enc.input_ids.shape[1]
            for row, i in enumerate(chunk):
                completion = tokenizer.decode(ids[row, prompt_len:], skip_special_tokens=True)
                correct = score(items[i], completion)
                rows.append({"correct": correct, "stats": stats[row]})
                predictions.append({"id": items[i]["id"], "task": task, "prompt": items[i]["prompt"],
                                    "completion": completion, "correct": correct,
                                    "generated_tokens": stats[row]["generated_tokens"], "nfe": stats[row]["nfe"]})
        per_task[task] = summarize(rows, walls)
        all_rows += rows
        all_walls += walls
        print(f"{task}: accuracy {per_task[task]['accuracy']:.3f} +- {per_task[task]['stderr']:.3f} "
              f"(n={len(rows)}), TPF {per_task[task]['tpf']:.2f}", file=sys.stderr)
    if args.predictions is not None:
        args.predictions.write_text("".join(json.dumps(p) + "\n" for p in predictions))
    return {
        "record": "eval_tiny",
        "family": args.family,
        "mode": args.mode,
        "decode": {k: v for k, v in dataclasses.asdict(cfg).items() if k != "return_forward_stats"},
        "model_dir": str(args.model_dir),
        "model_parameters": sum(p.numel() for p in model.parameters()),
        "split": str(args.split),
        "limit": args.limit,
        "batch_size": args.batch_size,
        "seed": args.seed,
        "per_task": per_task,
        "overall": summarize(all_rows, all_walls),
        "eval_wall_time_s": round(time.perf_counter() - start, 1),
        "device": "cpu",
        "threads": args.threads,
        "git_sha": git_sha(),
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__,
                     "python": sys.version.split()[0]},
    }


def reject_non_positive(parser: argparse.ArgumentParser, args: argparse.Namespace, names: tuple[str, ...]) -> None:
    """`parser.error` for the first of these integer flags that is set and not positive."""
    for name in names:
        value = getattr(args, name)
        if value is not None and value <= 0:
            parser.error(f"--{name} must be a positive integer, got {value}")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser(chosen_family(argv))
    args = parser.parse_args(argv)
    unknown = [t for t in args.tasks.split(",") if t and t not in TASKS]
    if unknown:
        parser.error(f"unknown task(s) {unknown}; valid: {', '.join(TASKS)}")
    reject_non_positive(parser, args, ("limit", "batch_size", "threads"))
    check_decode_flags(args, parser)
    if not args.split.is_file():
        parser.error(f"--split: no such file {args.split}")
    problem = model_dir_error(args.family, args.model_dir, getattr(args, "lora_dir", None))
    if problem is not None:
        parser.error(problem)
    try:  # the first torch import: the decoders' configs check themselves
        cfg, generate = decode_setting(args, parser)
    except (TypeError, ValueError) as err:
        parser.error(str(err))
    print(json.dumps(evaluate(args, cfg, generate)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
