"""Choose between training runs of one recipe on the validation split, never on the test split.

Runs that differ only in their seed differ by a few points in sampled AR accuracy on the many-valid
tasks. This script applies one rule, fixed before any candidate is scored: decode every validation
item in AR mode, sampled at `--temperature`, once per `--eval_seeds` seed; pool each task's samples
over the seeds; the candidate whose WORST task scores highest wins (the bar that matters is per
task), ties broken by overall accuracy, then by the order given. It prints one JSON record last:
each candidate's pooled and per-seed accuracies and the choice. The test split is then measured once,
on the chosen model, with `scripts/eval_tiny.py` and the sweeps.

    python scripts/select_tiny.py /tmp/cand/seed0 /tmp/cand/seed1 /tmp/cand/seed2 --out /tmp/choice.json

A candidate is what `train_tiny.py --output_dir` wrote: a model folder, or for the D2F families (a base
plus a LoRA adapter) the folder holding `base/` and `lora/`:

    python scripts/select_tiny.py --family d2f_llada /tmp/cand/a /tmp/cand/b
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from common.cli import ScriptParser
from s2d2_eval.records import atomic_write_json
from synthetic.validation import VAL_SPLIT_PATH

SCRIPTS_DIR = Path(__file__).resolve().parent
if str(SCRIPTS_DIR) not in sys.path:  # run as a script it is there already; imported by path (tests), not
    sys.path.insert(0, str(SCRIPTS_DIR))
import eval_tiny  # noqa: E402

RULE = ("AR mode sampled on the validation split, each task pooled over the eval seeds; highest worst-task "
        "accuracy wins, then highest overall accuracy, then the earlier candidate")


def _seeds(text: str) -> list[int]:
    try:
        seeds = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not seeds or len(set(seeds)) != len(seeds):
        raise argparse.ArgumentTypeError(f"expected distinct seeds, got {text!r}")
    return seeds


def build_parser() -> argparse.ArgumentParser:
    parser = ScriptParser(prog="select_tiny.py", description=__doc__.splitlines()[0],
                          formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("candidates", nargs="+", type=Path, help="model directories written by train_tiny.py")
    parser.add_argument("--family", choices=sorted(eval_tiny.FAMILIES), default="sdar")
    parser.add_argument("--split", type=Path, default=VAL_SPLIT_PATH, help="JSONL items (default: the validation split)")
    parser.add_argument("--eval_seeds", type=_seeds, default=[0, 1], help="sampling seeds, comma-separated")
    parser.add_argument("--temperature", type=float, default=1.0, help="sampling temperature (> 0)")
    parser.add_argument("--limit", type=int, default=None, help="first N items per task (default: all)")
    parser.add_argument("--batch_size", type=int, default=25)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=None, help="also write the record here (atomically)")
    return parser


def validate(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    """Every check that needs no model, so bad input fails before any decoding (and before torch is
    imported): the flags, then each candidate's folders and family (from its config.json)."""
    resolved = [path.resolve() for path in args.candidates]
    if len(set(resolved)) != len(resolved):
        parser.error("a candidate is listed twice")
    if not args.split.is_file():
        parser.error(f"no split at {args.split}")
    if args.split.resolve() == eval_tiny.TEST_SPLIT_PATH.resolve():
        parser.error("choosing a model on the test split is selection on the test set; use the validation split")
    if not args.temperature > 0:
        parser.error(f"--temperature must be > 0 (the rule compares sampled accuracy), got {args.temperature}")
    eval_tiny.reject_non_positive(parser, args, ("limit", "batch_size", "threads"))
    for path in args.candidates:
        problem = candidate_error(args.family, path)
        if problem is not None:
            parser.error(f"candidate {path}: {problem}")
    if args.out is not None:
        if args.out.is_dir():
            parser.error(f"--out {args.out} is a directory; give a file path")
        try:
            args.out.parent.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            parser.error(f"--out directory {args.out.parent} cannot be created: {err}")


def candidate_dirs(family: str, candidate: Path) -> tuple[Path, Path | None]:
    """(model folder, adapter folder or None) of a candidate: a family with a LoRA adapter (D2F) is
    trained into CANDIDATE/base and CANDIDATE/lora; every other family's candidate is the model folder."""
    if eval_tiny.FAMILIES[family].adapter_loader is None:
        return candidate, None
    return candidate / "base", candidate / "lora"


def candidate_error(family: str, candidate: Path) -> str | None:
    """Why `candidate` cannot be scored as `family` (folders, adapter, family from config.json), in one
    line, or None when it can."""
    model_dir, lora_dir = candidate_dirs(family, candidate)
    if lora_dir is not None and not model_dir.is_dir() and (candidate / "config.json").is_file():
        # a model folder where a D2F pair is expected: name its family, or say what a pair is
        return eval_tiny.model_dir_error(family, candidate) or (
            f"a {eval_tiny.FAMILIES[family].title} candidate is the folder holding base/ and lora/, "
            f"not the base model folder itself")
    return eval_tiny.model_dir_error(family, model_dir, lora_dir)


def pooled(runs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per task: correct answers and samples summed over the runs (one eval_tiny record per seed)."""
    out: dict[str, dict[str, Any]] = {}
    for run in runs:
        for task, stats in run["per_task"].items():
            entry = out.setdefault(task, {"correct": 0, "n": 0})
            entry["correct"] += stats["correct"]
            entry["n"] += stats["n"]
    for entry in out.values():
        entry["accuracy"] = round(entry["correct"] / entry["n"], 4)
    return out


def ranking_key(summary: dict[str, Any]) -> tuple[float, float]:
    """Larger is better: (worst task, overall)."""
    return summary["worst_task_accuracy"], summary["overall_accuracy"]


def choose(summaries: list[dict[str, Any]]) -> int:
    """Index of the winner under RULE (the earliest among equals)."""
    best = 0
    for index, summary in enumerate(summaries):
        if ranking_key(summary) > ranking_key(summaries[best]):
            best = index
    return best


def summarize(model_dir: Path, runs: list[dict[str, Any]]) -> dict[str, Any]:
    tasks = pooled(runs)
    correct = sum(t["correct"] for t in tasks.values())
    n = sum(t["n"] for t in tasks.values())
    worst = min(tasks, key=lambda task: (tasks[task]["accuracy"], task))
    return {
        "model_dir": str(model_dir),
        "per_task": tasks,
        "worst_task": worst,
        "worst_task_accuracy": tasks[worst]["accuracy"],
        "overall_accuracy": round(correct / n, 4),
        "per_seed": {str(run["seed"]): {task: s["accuracy"] for task, s in run["per_task"].items()} for run in runs},
    }


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    validate(args, parser)
    from tqdm import tqdm

    eval_parser = eval_tiny.build_parser(args.family)
    # SDAR samples only with --do_sample (its parser alone has the flag, so the default is not None); the
    # other families' AR modes sample whenever T > 0 (Fast-dLLM v2's is always greedy).
    sampling = ["--do_sample"] if eval_parser.get_default("do_sample") is not None else []
    summaries = []
    bar = tqdm(total=len(args.candidates) * len(args.eval_seeds), desc="select", dynamic_ncols=True)
    for model_dir in args.candidates:
        runs = []
        for seed in args.eval_seeds:
            base_dir, lora_dir = candidate_dirs(args.family, model_dir)
            eval_argv = ["--family", args.family, "--model_dir", str(base_dir), "--mode", "ar", "--split",
                         str(args.split), *sampling, "--temperature", str(args.temperature), "--seed", str(seed),
                         "--batch_size", str(args.batch_size), "--threads", str(args.threads)]
            if lora_dir is not None:
                eval_argv += ["--lora_dir", str(lora_dir)]
            if args.limit is not None:
                eval_argv += ["--limit", str(args.limit)]
            eval_args = eval_parser.parse_args(eval_argv)
            cfg, generate = eval_tiny.decode_setting(eval_args, eval_parser)
            runs.append(eval_tiny.evaluate(eval_args, cfg, generate))
            bar.update(1)
        summaries.append(summarize(model_dir, runs))
    bar.close()
    winner = choose(summaries)
    record = {
        "record": "select_tiny",
        "rule": RULE,
        "family": args.family,
        "split": str(args.split),
        "eval_seeds": args.eval_seeds,
        "temperature": args.temperature,
        "limit": args.limit,
        "candidates": summaries,
        "chosen": summaries[winner]["model_dir"],
        "git_sha": eval_tiny.git_sha(),
    }
    if args.out is not None:
        atomic_write_json(args.out, record)
    print(json.dumps(record))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
