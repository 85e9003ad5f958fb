"""What the single-run command lines of every family print after decoding one prompt."""

from __future__ import annotations

import json
from typing import Any

from families import REPO_ROOT

SAMPLE_SPLIT = REPO_ROOT / "synthetic" / "data" / "test.jsonl"


def sample_problem() -> dict[str, Any]:
    """The first item of the shipped synthetic test split, or a literal fallback."""
    if SAMPLE_SPLIT.exists():
        with SAMPLE_SPLIT.open() as handle:
            return json.loads(handle.readline())
    return {"prompt": "add 478+95"}


def print_result(problem: dict[str, Any], completion: str, stats: dict[str, Any], decoding_order: bool) -> None:
    """The prompt, the completion, whether it is correct (a synthetic-suite problem), the decoding stats,
    the accepted lengths of the verifications (when any ran) and, on request, the decoding order."""
    print(f"prompt: {problem['prompt']}")
    print(f"completion: {completion}")
    if "task" in problem:
        from synthetic.scorer import score

        print(f"correct: {score(problem, completion)}")
    print("stats: " + json.dumps({k: v for k, v in stats.items() if k not in ("accepted_lengths", "decoding_order")}))
    if stats.get("accepted_lengths"):
        print(f"accepted lengths: {stats['accepted_lengths']}")
    if decoding_order:
        print(f"decoding order: {stats['decoding_order']}")
