"""Pure answer checking for the synthetic suite (no file I/O, no model).

Kept free of state and imports from the rest of the repo so an lm-eval task
(``process_results``) can call :func:`score` directly.

Rules, in order:

1. :func:`extract_answer` takes the text after the LAST ``####`` marker, up to
   the end of that line, and strips surrounding whitespace. Text from the first
   ``<|`` on is dropped too, because a decoder that does not skip special tokens
   leaves ``<|im_end|>``/``<|endoftext|>`` right after the answer. No marker
   means no answer (``None``); a scratchpad alone never scores.
2. ``add`` / ``chain``: the answer must be the canonical decimal integer,
   exactly: digits only, no sign, no leading zeros (``0`` itself is fine), no
   inner spaces. ``item["answer"]`` is that canonical form.
3. ``digitsum``: exactly ``len`` digits (3), each in ``meta["lo"]..meta["hi"]``,
   summing to ``meta["t"]``; no separators.
4. ``letters``: exactly ``meta["n"]`` lowercase letters, strictly increasing,
   first ``meta["c"]``, none after ``meta["hi"]``; no separators.

Any valid answer is accepted for the last two; only the final line is checked.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

MARKER: str = "####"
_CANONICAL_INT = re.compile(r"(0|[1-9][0-9]*)")
_SPECIAL_START = "<|"


def extract_answer(text: str) -> str | None:
    """Final answer after the last ``####`` (see module docstring), or None without a marker."""
    position = text.rfind(MARKER)
    if position < 0:
        return None
    rest = text[position + len(MARKER) :]
    rest = rest.split("\n", 1)[0]
    rest = rest.split(_SPECIAL_START, 1)[0]
    return rest.strip()


def check_integer(answer: str, expected: str) -> bool:
    """Exact match with a canonical decimal integer (no sign, no leading zeros)."""
    return _CANONICAL_INT.fullmatch(answer) is not None and answer == expected


def check_digitsum(answer: str, meta: Mapping[str, Any], length: int = 3) -> bool:
    """``length`` digits in ``meta['lo']..meta['hi']`` that sum to ``meta['t']``."""
    if len(answer) != length or not all(ch in "0123456789" for ch in answer):
        return False
    digits = [int(ch) for ch in answer]
    return sum(digits) == meta["t"] and all(meta["lo"] <= d <= meta["hi"] for d in digits)


def check_letters(answer: str, meta: Mapping[str, Any]) -> bool:
    """``meta['n']`` strictly increasing letters from ``meta['c']`` up to ``meta['hi']``."""
    if len(answer) != meta["n"] or not all("a" <= ch <= "z" for ch in answer):
        return False
    increasing = all(a < b for a, b in zip(answer, answer[1:]))
    return increasing and answer[0] == meta["c"] and answer[-1] <= meta["hi"]


def score_answer(item: Mapping[str, Any], answer: str | None) -> bool:
    """Score an already extracted answer against ``item``."""
    if answer is None:
        return False
    task = item["task"]
    if task in ("add", "chain"):
        return check_integer(answer, str(item["answer"]))
    if task == "digitsum":
        return check_digitsum(answer, item["meta"])
    if task == "letters":
        return check_letters(answer, item["meta"])
    raise ValueError(f"unknown task {task!r}; valid tasks: add, chain, digitsum, letters")


def score(item: Mapping[str, Any], completion: str) -> bool:
    """True when the final answer in ``completion`` is correct for ``item``."""
    return score_answer(item, extract_answer(completion))
