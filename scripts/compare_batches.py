"""Compare two sweep folders run at different batch sizes, completion by completion.

Pairs each record of BATCHED_DIR with the record of BASE_DIR that has the same model, task (and limit),
seed and decoding (name and parameters) and differs only in batch size; for each pair counts the items
whose completion differs and whether the NFE per item differs. Prints one JSON record last (and writes
it atomically with --out); exits 1 when a completion differs or a record has no partner.

    python scripts/compare_batches.py results/sdar results/sdar_batch16 --out results/sdar_batch16/comparison.jsonl
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from common.cli import ScriptParser


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = ScriptParser(description=__doc__.splitlines()[0])
    parser.add_argument("base_dir", type=Path, help="sweep folder of the reference runs (e.g. batch 1)")
    parser.add_argument("batched_dir", type=Path, help="sweep folder of the same runs at another batch size")
    parser.add_argument("--out", type=Path, default=None, help="also write the JSON record here (atomically)")
    args = parser.parse_args(argv)
    for folder in (args.base_dir, args.batched_dir):
        if not folder.is_dir():
            parser.error(f"no such folder: {folder}")
    return args


def identity(record: dict) -> str:
    """What a run measures apart from its batch size."""
    decoding = {k: record["decoding"][k] for k in ("name", "generate", "params")}
    task = {k: record["task"].get(k) for k in ("name", "limit", "num_fewshot", "apply_chat_template")}
    return json.dumps({"model": record["model"]["pretrained"], "task": task, "seed": record["seed"],
                       "decoding": decoding}, sort_keys=True)


def samples(record: dict) -> dict[tuple[str, int], dict]:
    from s2d2_eval.records import samples_path

    path = samples_path(Path(record["_path"]))
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return {(row["task"], row["doc_id"]): row for row in rows}


def compare(base: dict, batched: dict) -> dict:
    from s2d2_eval.records import display_path

    a, b = samples(base), samples(batched)
    differing = sorted(f"{task}#{doc}" for key, row in b.items() for task, doc in [key]
                       if key not in a or a[key]["completion"] != row["completion"])
    nfe_differs = sum(1 for key, row in b.items() if key in a and a[key]["stats"]["nfe"] != row["stats"]["nfe"])
    return {"decoding": batched["label"], "base": display_path(base["_path"]), "batched": display_path(batched["_path"]),
            "batch_sizes": [base["batch_size"], batched["batch_size"]], "items": len(b),
            "differing_completions": differing, "items_with_other_nfe": nfe_differs,
            "accuracy": [base["metrics"]["accuracy"], batched["metrics"]["accuracy"]],
            "tokens_per_second": [round(base["metrics"]["tokens_per_second"], 1),
                                  round(batched["metrics"]["tokens_per_second"], 1)]}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from s2d2_eval.records import RecordError, atomic_write_json, display_path, iter_records

    try:
        base = {identity(r): r for r in iter_records(args.base_dir)}
        batched = iter_records(args.batched_dir)
    except RecordError as err:
        sys.exit(f"error: {err}")
    pairs = [compare(base[identity(r)], r) for r in batched if identity(r) in base]
    unpaired = [display_path(r["_path"]) for r in batched if identity(r) not in base]
    summary = {"base_dir": display_path(args.base_dir), "batched_dir": display_path(args.batched_dir),
               "pairs": len(pairs), "items": sum(p["items"] for p in pairs),
               "differing_completions": sum(len(p["differing_completions"]) for p in pairs),
               "unpaired": unpaired, "comparisons": pairs}
    for pair in pairs:
        print(f"{pair['decoding']}: {len(pair['differing_completions'])} of {pair['items']} completions differ "
              f"(batch {pair['batch_sizes'][0]} vs {pair['batch_sizes'][1]})", file=sys.stderr)
    if args.out is not None:
        atomic_write_json(args.out, summary)
    print(json.dumps(summary))
    return 1 if summary["differing_completions"] or unpaired or not pairs else 0


if __name__ == "__main__":
    sys.exit(main())
