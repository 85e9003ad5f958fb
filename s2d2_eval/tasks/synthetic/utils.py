"""lm-eval glue for the synthetic suite: local data, scoring with `synthetic.scorer.score`, and the
per-sample decoding metrics carried by `s2d2_eval.stats.Completion`.

Loaded by lm-eval through `!function utils.NAME` from the YAMLs next to this file. The data path
comes from `synthetic.tasks.TEST_SPLIT_PATH` (built from that module's `__file__`), so the tasks
work from any working directory and offline.
"""

from __future__ import annotations

from typing import Any

import datasets

from s2d2_eval.stats import pooled_tokens_per_second, pooled_tpf, sample_metrics
from synthetic.scorer import score
from synthetic.tasks import load_test_split

__all__ = ["load_add", "load_chain", "load_digitsum", "load_letters", "process_results",
           "pooled_tpf", "pooled_tokens_per_second"]


def _split(task: str) -> datasets.DatasetDict:
    """One task's items of the shipped test split as lm-eval's `test` split (file order kept)."""
    items = [item for item in load_test_split() if item["task"] == task]
    return datasets.DatasetDict({"test": datasets.Dataset.from_list(items)})


def load_add(**_: Any) -> datasets.DatasetDict:
    """`custom_dataset` hook; lm-eval passes model_args/metadata as keywords, which are not needed."""
    return _split("add")


def load_chain(**_: Any) -> datasets.DatasetDict:
    return _split("chain")


def load_digitsum(**_: Any) -> datasets.DatasetDict:
    return _split("digitsum")


def load_letters(**_: Any) -> datasets.DatasetDict:
    return _split("letters")


def process_results(doc: dict[str, Any], results: list[str]) -> dict[str, Any]:
    """exact_match from the suite's own scorer, plus the decoding metrics when the model gave them."""
    completion = results[0]
    return {"exact_match": float(score(doc, completion)),
            **sample_metrics(getattr(completion, "decode_stats", None))}
