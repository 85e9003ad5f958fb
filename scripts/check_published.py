"""Check that the published sweep records still reproduce with the current code.

For every record under the given results folders whose decoder draws no random numbers (no sampled
drafts; S2D2 only with greedy-exact acceptance), rerun its exact resolved configuration on the first
`--per_task` items of each task, in a temporary folder, and compare each completion with the one in the
published samples file. Records of sampling decoders depend on the whole run's random stream and are
listed as skipped. Prints one JSON record last; exits 1 when any completion differs.

    python scripts/check_published.py                       # results/sdar, results/fast_dllm_v2, 3 items a task
    python scripts/check_published.py results/sdar --per_task 10
    python scripts/check_published.py --per_task 100 --batch_size 16 --match threshold   # batch 16 == batch 1
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

from common.cli import ScriptParser  # bad input: one line, exit status 2
from s2d2_eval.records import RecordError, load_record, samples_path  # no torch

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_FOLDERS = ("results/sdar", "results/fast_dllm_v2")
RECORD_KEYS = {"decoding": ("kind", "generate", "params"), "config": ()}
"""What this script reads of a record (top-level key -> keys inside it)."""


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = ScriptParser(prog="check_published.py", description=__doc__.splitlines()[0])
    parser.add_argument("folders", nargs="*", default=list(DEFAULT_FOLDERS), help="published sweep folders")
    parser.add_argument("--per_task", type=int, default=3, help="items per task to re-decode")
    parser.add_argument("--batch_size", type=int, default=None,
                        help="re-decode at this batch size (default: the record's); greedy decoders must still agree")
    parser.add_argument("--match", default="", help="only records whose path contains this text")
    args = parser.parse_args(argv)
    if args.per_task < 1 or (args.batch_size is not None and args.batch_size < 1):
        parser.error("--per_task and --batch_size must be >= 1")
    for folder in args.folders:
        if not (REPO_ROOT / folder).is_dir() and not Path(folder).is_dir():
            parser.error(f"no such results folder: {folder}")
    args.records = published_records(args, parser)
    return args


def published_records(args: argparse.Namespace, parser: argparse.ArgumentParser) -> list[tuple[Path, str, dict]]:
    """(path, display name, record) of every record to check, in folder order. A folder must be a sweep
    results folder: run records only (`s2d2_eval.records` schema, with the fields read here and a samples
    file beside each), at least one; anything else is one line before any decoder is imported."""
    chosen = []
    for folder in args.folders:
        base = REPO_ROOT / folder if (REPO_ROOT / folder).is_dir() else Path(folder)
        paths = [path for path in records_in(base) if not path.name.startswith(".")]
        if not paths:
            parser.error(f"{folder} is not a sweep results folder: it holds no run records (*.json)")
        for path in paths:
            name = str(path.relative_to(REPO_ROOT) if path.is_relative_to(REPO_ROOT) else path)
            try:
                record = load_record(path)
            except RecordError as err:
                parser.error(f"{folder} is not a sweep results folder: {err}")
            missing = [key for key in RECORD_KEYS if not isinstance(record.get(key), dict)]
            missing = missing or [f"{key}.{sub}" for key, inner in RECORD_KEYS.items() for sub in inner
                                  if sub not in record[key]]
            if missing:
                parser.error(f"{name} is not a usable run record: it has no {', '.join(missing)}")
            if args.match not in name:
                continue
            if not samples_path(path).is_file():
                parser.error(f"{name} has no samples file {samples_path(path).name} beside it")
            chosen.append((path, name, record))
    if not chosen:
        parser.error(f"--match {args.match!r}: no record path under {', '.join(args.folders)} contains it")
    return chosen


def records_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*.json") if not p.name.endswith(".samples.json"))


def samples_of(record: Path) -> dict[tuple[str, int], str]:
    path = record.with_name(record.stem + ".samples.jsonl")
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return {(row["task"], row["doc_id"]): row["completion"] for row in rows}


def is_deterministic(record: dict) -> bool:
    """No random draw in the decoder: argmax drafts, and S2D2 only with greedy-exact acceptance."""
    from families import load

    decoding = record["decoding"]
    config = load(decoding["generate"]).config_class(**decoding["params"])
    stochastic_acceptance = getattr(config, "acceptance", "greedy_exact") != "greedy_exact"
    return not config.sampling().do_sample and not (decoding["kind"] == "s2d2" and stochastic_acceptance)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from s2d2_eval import set_offline_defaults

    set_offline_defaults()
    from omegaconf import OmegaConf

    from s2d2_eval.config import register_configs
    from s2d2_eval.runner import run

    register_configs()
    checked, skipped, differing = [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        for path, name, record in args.records:
            if not is_deterministic(record):
                skipped.append(name)
                continue
            cfg = OmegaConf.create(record["config"])
            cfg.task.limit, cfg.results_dir, cfg.sweep_name, cfg.overwrite = args.per_task, tmp, "check", True
            if args.batch_size is not None:
                cfg.batch_size = args.batch_size
            fresh = samples_of(run(cfg))
            published = samples_of(path)
            diff = [f"{task}#{doc}" for (task, doc), text in fresh.items() if published.get((task, doc)) != text]
            checked.append({"record": name, "items": len(fresh), "differing": diff})
            if diff:
                differing.append(name)
            print(f"{'DIFF' if diff else 'same'} {name} ({len(fresh)} items)", file=sys.stderr)
    summary = {"checked": len(checked), "items": sum(c["items"] for c in checked), "differing_records": differing,
               "skipped_sampling_records": skipped, "records": checked}
    print(json.dumps(summary))
    return 1 if differing else 0


if __name__ == "__main__":
    sys.exit(main())
