"""The validation split: what chooses between training runs, so that the test split never does.

Training runs of one recipe that differ only in their seed differ by a few points in sampled accuracy
on the many-valid tasks. Picking the run that scores best on the test split would be selection on the
test set, so `scripts/select_tiny.py` picks by this split instead, and the test split is measured
once, on the chosen model.

``synthetic/data/val.jsonl`` is ``generate(VAL_N_PER_TASK, VAL_SEED, exclude_prompts=<test prompts>,
id_prefix="val")``: distinct prompts per task, none of them a test prompt. Its prompts are NOT held
out of training. ``digitsum`` has only 360 distinct prompts and the test split already holds out 100
of them; holding out 200 more would leave a model 160 to learn from. So this split measures how well
a model samples on the training distribution, a ranking signal between runs of one recipe, and its
numbers are never reported as accuracy. This module is separate from :mod:`synthetic.tasks` so that
the tasks file (whose hash each shipped model records) does not change with it.

    python -m synthetic.validation     # (re)write synthetic/data/val.jsonl; identical bytes every time
"""

from __future__ import annotations

import argparse
from pathlib import Path

from synthetic.tasks import TASKS, Item, dump_jsonl, generate, test_prompts

VAL_SEED: int = 20261122
"""Seed of the validation split; changing it changes ``data/val.jsonl``."""

VAL_N_PER_TASK: int = 200
VAL_SPLIT_PATH: Path = Path(__file__).resolve().parent / "data" / "val.jsonl"


def val_split_items() -> list[Item]:
    """The validation split as generated from code (must equal the file on disk)."""
    return generate(VAL_N_PER_TASK, VAL_SEED, TASKS, exclude_prompts=test_prompts(), id_prefix="val")


def write_val_split(path: Path = VAL_SPLIT_PATH) -> Path:
    """Regenerate the validation split; running it twice gives identical bytes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(dump_jsonl(val_split_items()).encode("ascii"))
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m synthetic.validation", description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=VAL_SPLIT_PATH, help="where to write the split")
    args = parser.parse_args(argv)
    print(f"wrote {write_val_split(args.out)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
