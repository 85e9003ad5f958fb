"""Seeded generator for the synthetic reasoning suite and its shipped test split.

The suite exists to show *where* parallel (diffusion) decoding of several tokens
at once goes wrong and self-speculative decoding (S2D2) helps, using a model
small enough to train on two CPU cores. There are two failure modes, each with
two tasks:

Dependent tokens (a digit is only right if the digits before it are right):

* ``add``  -- prompt ``add 478+95``; target is a written column addition, units
  column first, every column written as ``digit_a+digit_b+carry_in=sum`` with a
  two-digit sum (``05`` not ``5``), so each step has the same width and every
  token is a short local lookup: ``8+5+0=13,7+9+1=17,4+0+1=05 #### 573``. The
  carry into a column is the tens digit of the previous step; the final answer
  is the last step's sum (its tens digit only when it is not 0) followed by the
  units digits of the earlier steps, right to left. Operands have 2 or 3 digits
  (number of digits picked uniformly, then the value).
* ``chain`` -- prompt ``chain 07 +5 -3 *2``: start value (1..19), then 2 or 3
  operations applied strictly left to right (no operator precedence; the spaces
  make the steps explicit). Operations are ``+k``/``-k`` with k in 1..9 and
  ``*2``/``*3``; every intermediate value stays in 0..19. Target writes each
  step: ``07+5=12,12-3=09,09*2=18 #### 18``. Values in prompt and scratchpad are
  zero-padded to two digits so every step has the same width and each digit
  sits at a fixed offset from the digits it is computed from; the final answer
  is the plain integer (``#### 9``, not ``#### 09``). Why 0..19 and not 0..99:
  each step is then one lookup in a table of about 370 entries, the same order
  as the 200 column sums of ``add``. In an AR probe (0.9M-parameter Qwen3, 345
  steps of 64 examples, all four tasks, greedy, on the test split) a 0..99
  chain stayed at 7-10% while ``add`` reached 98-99%, because a two-digit
  result in one go is a table of about 1,900 entries seen a handful of times
  each; the same probe on this design gave 73% after equally few steps.

Many valid answers (independent per-position sampling mixes modes, and a
token that depends on a free choice has a broad marginal before it is made):

* ``digitsum`` -- prompt ``sum3 14 in 2..8``: three digits, each in 2..8
  inclusive, whose sum is 14, answered as one 3-character string. The digits
  are drawn uniformly from all valid solutions. The target makes each free
  choice inside a range it has just written:
  ``14-16=00,14-04=10,2..8:2,14-2=12,4..8:5,12-5=7 #### 257``.
  It first subtracts the largest and the smallest sum the two later digits
  can make (``2*hi``, ``2*lo``) from the total, floored at ``00``; clipped to
  ``lo..hi`` these are the first digit's feasible range (``2..8``). Each free
  digit then follows its range, and each step writes the sum left; the range
  of the second digit is the sum left minus ``hi`` and minus ``lo``, clipped,
  and after the last free choice the sum left is the last digit. The free
  choices (``2``, ``5``) keep broad marginals, and the second range depends
  on the first choice, so parallel decoding still mixes modes, while every
  determined token is one small lookup. Earlier formats failed when sampled
  at temperature 1 (AR mode of the tiny model, greedy 99-100% throughout):
  ``#### 257`` alone reached only 41% in an early probe, because the third
  digit had to be computed in one token; ``2+5=07,14-07=7 #### 257`` about
  88%, because each digit's feasible range was never written and the model
  put a few percent of mass outside it; ranges without the two subtractions
  about 93%, because on held-out prompts the model copied ``lo..hi`` where
  the first range has to be clipped. With the subtractions it reached
  97-98% (GPU probes of the shipped recipe, two seeds). The sum is
  zero-padded to two digits (``sum3 09 in 0..8``), like the ``chain`` values.
* ``letters`` -- prompt ``inc 4 c..p``: four lowercase letters in strictly
  increasing alphabetical order, the first being ``c`` and none after ``p``,
  drawn uniformly from all valid solutions. As for ``digitsum``, each free
  letter follows the range it must come from: after the previous letter and
  early enough to leave room for the letters after it,
  ``d..n:f,g..o:k,l..p:p #### cfkp``. With the bare ``#### cfkp`` the model
  reached 100% greedy but about 88% sampled; its misses overshot ``p`` or
  left too few letters for the rest.

Why the many-valid tasks carry a range (``in 2..8``, ``..p``): with only
"three digits summing to t" (28 prompts) or "n letters starting with c"
(about 70 prompts) the 100 test prompts could not be held out of training. The
range turns them into a few hundred prompts each (``prompt_space_size``), and the
original tasks remain special cases (``in 0..9``, ``..z``). Only prompts with at
least ``MIN_SOLUTIONS`` valid answers are generated, so the answer distribution
is genuinely broad.

Every item is a dict ``{"id", "task", "prompt", "target", "answer", "meta"}``:
``target`` is the full training answer (scratchpad plus the final line
``#### <answer>``), ``answer`` the canonical final answer and ``meta`` what the
program checker in :mod:`synthetic.scorer` needs.

The shipped test split (``synthetic/data/test.jsonl``, 100 items per task with
distinct prompts) is ``generate(TEST_N_PER_TASK, TEST_SEED, id_prefix="test")``
and is written by ``python -m synthetic.tasks --write-test``. Training data from
:func:`iter_training_items` never uses one of its prompts.
"""

from __future__ import annotations

import argparse
import functools
import itertools
import json
import random
from collections.abc import Collection, Iterable, Iterator
from math import comb
from pathlib import Path
from typing import Any

Item = dict[str, Any]

TASKS: tuple[str, ...] = ("add", "chain", "digitsum", "letters")

TEST_SEED: int = 20240531
"""Seed of the shipped test split; changing it changes ``data/test.jsonl``."""

TEST_N_PER_TASK: int = 100
TEST_SPLIT_PATH: Path = Path(__file__).resolve().parent / "data" / "test.jsonl"

ANSWER_MARKER: str = "#### "
MIN_SOLUTIONS: int = 6
"""Fewest valid answers a many-valid prompt may have; keeps the targets broad."""

ADD_DIGITS: tuple[int, ...] = (2, 3)
CHAIN_STEPS: tuple[int, ...] = (2, 3)
CHAIN_START: range = range(1, 20)
CHAIN_MAX: int = 19
CHAIN_ADDENDS: range = range(1, 10)
CHAIN_MULTIPLIERS: tuple[int, ...] = (2, 3)
DIGITSUM_LENGTH: int = 3
LETTERS_LENGTHS: tuple[int, ...] = (3, 4, 5)
ALPHABET: str = "abcdefghijklmnopqrstuvwxyz"


def _item(task: str, prompt: str, scratchpad: str, answer: str, meta: dict[str, Any]) -> Item:
    """Assemble an item so that every task shares the ``<scratchpad> #### <answer>`` layout."""
    target = f"{scratchpad} {ANSWER_MARKER}{answer}" if scratchpad else f"{ANSWER_MARKER}{answer}"
    return {
        "id": f"{task}:{prompt}",
        "task": task,
        "prompt": prompt,
        "target": target,
        "answer": answer,
        "meta": meta,
    }


def add_scratchpad(a: int, b: int) -> str:
    """Column-addition steps for ``a + b``, units first, each ``x+y+carry=ss``.

    Sums are zero-padded to two digits so all steps have equal width, which
    keeps the position of the carry (tens digit of the previous step) fixed.
    """
    rev_a, rev_b = str(a)[::-1], str(b)[::-1]
    carry = 0
    steps: list[str] = []
    for column in range(max(len(rev_a), len(rev_b))):
        x = int(rev_a[column]) if column < len(rev_a) else 0
        y = int(rev_b[column]) if column < len(rev_b) else 0
        total = x + y + carry
        steps.append(f"{x}+{y}+{carry}={total:02d}")
        carry = total // 10
    return ",".join(steps)


def make_add_item(a: int, b: int) -> Item:
    """Item for ``a + b``; exposed so tests and tools can build specific cases."""
    if a < 0 or b < 0:
        raise ValueError("add operands must be non-negative")
    return _item("add", f"add {a}+{b}", add_scratchpad(a, b), str(a + b), {"a": a, "b": b})


def _random_number(rng: random.Random, digits: int) -> int:
    """Uniform integer with exactly ``digits`` digits (no leading zero)."""
    return rng.randrange(10 ** (digits - 1), 10**digits)


def _make_add(rng: random.Random) -> Item:
    """Sample digit counts first so 2- and 3-digit operands are equally common."""
    a = _random_number(rng, rng.choice(ADD_DIGITS))
    b = _random_number(rng, rng.choice(ADD_DIGITS))
    return make_add_item(a, b)


def apply_chain_op(value: int, op: str) -> int:
    """Apply one chain operation such as ``+5``, ``-3`` or ``*2`` to ``value``."""
    kind, operand = op[0], int(op[1:])
    if kind == "+":
        return value + operand
    if kind == "-":
        return value - operand
    if kind == "*":
        return value * operand
    raise ValueError(f"unknown chain operation {op!r}")


def chain_options(value: int) -> dict[str, list[str]]:
    """Operations allowed after ``value``, grouped by kind, keeping results in 0..CHAIN_MAX."""
    options: dict[str, list[str]] = {
        "+": [f"+{k}" for k in CHAIN_ADDENDS if value + k <= CHAIN_MAX],
        "-": [f"-{k}" for k in CHAIN_ADDENDS if value - k >= 0],
        "*": [f"*{m}" for m in CHAIN_MULTIPLIERS if value * m <= CHAIN_MAX],
    }
    return {kind: ops for kind, ops in options.items() if ops}


def make_chain_item(start: int, ops: Iterable[str]) -> Item:
    """Item for a start value and operations; rejects chains leaving 0..CHAIN_MAX."""
    ops = list(ops)
    value = start
    steps: list[str] = []
    for op in ops:
        result = apply_chain_op(value, op)
        if not 0 <= result <= CHAIN_MAX:
            raise ValueError(f"chain value {result} outside 0..{CHAIN_MAX}")
        steps.append(f"{value:02d}{op}={result:02d}")
        value = result
    prompt = "chain " + " ".join([f"{start:02d}", *ops])
    return _item("chain", prompt, ",".join(steps), str(value), {"start": start, "ops": ops})


def _make_chain(rng: random.Random) -> Item:
    """Pick the operation kind uniformly first, so ``*`` is not drowned by 9 addends."""
    start = rng.choice(CHAIN_START)
    value = start
    ops: list[str] = []
    for _ in range(rng.choice(CHAIN_STEPS)):
        options = chain_options(value)
        op = rng.choice(options[rng.choice(sorted(options))])
        ops.append(op)
        value = apply_chain_op(value, op)
    return make_chain_item(start, ops)


@functools.cache
def digitsum_solutions(t: int, lo: int, hi: int) -> tuple[str, ...]:
    """All ``DIGITSUM_LENGTH``-digit strings with digits in lo..hi summing to t, sorted.

    Cached (and a tuple, so callers cannot mutate the cache) because sampling
    asks for the same few hundred prompts over and over.
    """
    digits = range(lo, hi + 1)
    return tuple(
        "".join(map(str, combo))
        for combo in itertools.product(digits, repeat=DIGITSUM_LENGTH)
        if sum(combo) == t
    )


@functools.cache
def digitsum_params() -> tuple[tuple[int, int, int], ...]:
    """Every ``(t, lo, hi)`` prompt with at least ``MIN_SOLUTIONS`` answers."""
    return tuple(
        (t, lo, hi)
        for lo in range(10)
        for hi in range(lo, 10)
        for t in range(DIGITSUM_LENGTH * lo, DIGITSUM_LENGTH * hi + 1)
        if len(digitsum_solutions(t, lo, hi)) >= MIN_SOLUTIONS
    )


def digitsum_scratchpad(t: int, lo: int, hi: int, answer: str) -> str:
    """``tt-HH=aa,tt-LL=bb,lo1..hi1:d1,tt-d1=rr,lo2..hi2:d2,rr-d2=d3``: free digits after their ranges.

    ``HH``/``LL`` are the largest/smallest sums the digits after the first can
    make, and ``aa``/``bb`` the total minus them (floored at 0): the first
    digit's bounds before clipping to ``lo..hi``. A digit is feasible when the
    digits after it, each in ``lo..hi``, can still make up the rest of the sum.
    Sums are zero-padded to two digits except the sum left after the last free
    choice, which is the last digit itself.
    """
    after_first = len(answer) - 1
    steps = [f"{t:02d}-{after_first * hi:02d}={max(0, t - after_first * hi):02d}",
             f"{t:02d}-{after_first * lo:02d}={t - after_first * lo:02d}"]
    left = t
    for index, digit in enumerate(int(d) for d in answer[:-1]):
        after = len(answer) - index - 1
        low, high = max(lo, left - after * hi), min(hi, left - after * lo)
        rest = left - digit
        rest_text = str(rest) if after == 1 else f"{rest:02d}"
        steps.append(f"{low}..{high}:{digit},{left:02d}-{digit}={rest_text}")
        left = rest
    return ",".join(steps)


def make_digitsum_item(t: int, lo: int, hi: int, answer: str) -> Item:
    """Item whose training target is the given valid ``answer``."""
    if answer not in digitsum_solutions(t, lo, hi):
        raise ValueError(f"{answer!r} is not a solution of sum {t} in {lo}..{hi}")
    prompt = f"sum{DIGITSUM_LENGTH} {t:02d} in {lo}..{hi}"
    return _item("digitsum", prompt, digitsum_scratchpad(t, lo, hi, answer), answer, {"t": t, "lo": lo, "hi": hi})


def _make_digitsum(rng: random.Random) -> Item:
    """Uniform prompt, then a uniform solution, so the model learns the full distribution."""
    t, lo, hi = rng.choice(digitsum_params())
    return make_digitsum_item(t, lo, hi, rng.choice(digitsum_solutions(t, lo, hi)))


@functools.cache
def letters_solutions(n: int, c: str, hi: str) -> tuple[str, ...]:
    """All strictly increasing ``n``-letter strings starting with ``c`` and not after ``hi``.

    Cached for the same reason as :func:`digitsum_solutions` (up to 12,650 per prompt).
    """
    rest = ALPHABET[ALPHABET.index(c) + 1 : ALPHABET.index(hi) + 1]
    return tuple(c + "".join(combo) for combo in itertools.combinations(rest, n - 1))


@functools.cache
def letters_params() -> tuple[tuple[int, str, str], ...]:
    """Every ``(n, c, hi)`` prompt with at least ``MIN_SOLUTIONS`` answers."""
    return tuple(
        (n, c, hi)
        for n in LETTERS_LENGTHS
        for i, c in enumerate(ALPHABET)
        for j, hi in enumerate(ALPHABET)
        if j > i and comb(j - i, n - 1) >= MIN_SOLUTIONS
    )


def letters_scratchpad(hi: str, answer: str) -> str:
    """``lo..hi:x`` for every letter after the first: after the previous one, leaving room for the rest."""
    last = ALPHABET.index(hi)
    steps = []
    for index in range(1, len(answer)):
        low = ALPHABET[ALPHABET.index(answer[index - 1]) + 1]
        high = ALPHABET[last - (len(answer) - 1 - index)]
        steps.append(f"{low}..{high}:{answer[index]}")
    return ",".join(steps)


def make_letters_item(n: int, c: str, hi: str, answer: str) -> Item:
    """Item whose training target is the given valid ``answer``."""
    if answer not in letters_solutions(n, c, hi):
        raise ValueError(f"{answer!r} is not a solution of inc {n} {c}..{hi}")
    return _item("letters", f"inc {n} {c}..{hi}", letters_scratchpad(hi, answer), answer, {"n": n, "c": c, "hi": hi})


def _make_letters(rng: random.Random) -> Item:
    """Uniform prompt, then a uniform solution, so the model learns the full distribution."""
    n, c, hi = rng.choice(letters_params())
    return make_letters_item(n, c, hi, rng.choice(letters_solutions(n, c, hi)))


_MAKERS = {
    "add": _make_add,
    "chain": _make_chain,
    "digitsum": _make_digitsum,
    "letters": _make_letters,
}


def _check_task(task: str) -> None:
    """Fail with the list of valid names, since a typo would otherwise be a KeyError."""
    if task not in _MAKERS:
        raise ValueError(f"unknown task {task!r}; valid tasks: {', '.join(TASKS)}")


def _check_tasks(tasks: Iterable[str]) -> tuple[str, ...]:
    """Validate a task selection and freeze it into a tuple."""
    if isinstance(tasks, str):
        tasks = (tasks,)
    selected = tuple(tasks)
    if not selected:
        raise ValueError(f"no tasks selected; valid tasks: {', '.join(TASKS)}")
    for task in selected:
        _check_task(task)
    return selected


def make_item(task: str, rng: random.Random) -> Item:
    """Draw one item of ``task`` from ``rng`` (prompts may repeat between calls)."""
    _check_task(task)
    return _MAKERS[task](rng)


@functools.cache
def _chain_count(value: int, steps: int) -> int:
    """Number of operation sequences of length ``steps`` that stay in range from ``value``."""
    if steps == 0:
        return 1
    return sum(
        _chain_count(apply_chain_op(value, op), steps - 1)
        for ops in chain_options(value).values()
        for op in ops
    )


def prompt_space_size(task: str) -> int:
    """How many distinct prompts ``task`` can produce (bounds ``generate`` and overfitting)."""
    _check_task(task)
    if task == "add":
        operands = sum(9 * 10 ** (d - 1) for d in ADD_DIGITS)
        return operands * operands
    if task == "chain":
        return sum(_chain_count(start, steps) for start in CHAIN_START for steps in CHAIN_STEPS)
    if task == "digitsum":
        return len(digitsum_params())
    return len(letters_params())


_PROMPT_HEADS = {"add": "add", "chain": "chain", f"sum{DIGITSUM_LENGTH}": "digitsum", "inc": "letters"}


def _prompt_task(prompt: str) -> str | None:
    """Task a prompt belongs to, read from its first word (None for foreign prompts)."""
    return _PROMPT_HEADS.get(prompt.split(" ", 1)[0])


def generate(
    n_per_task: int,
    seed: int,
    tasks: Iterable[str] = TASKS,
    *,
    exclude_prompts: Collection[str] = (),
    id_prefix: str | None = None,
) -> list[Item]:
    """``n_per_task`` items per task with distinct prompts, fully determined by ``seed``.

    Each task draws from its own ``random.Random(f"{seed}:{task}")`` so that
    selecting a subset of tasks does not change the items of the others.
    Prompts are distinct within a task (an evaluation split with repeated
    prompts would weight some questions twice) and never in ``exclude_prompts``.
    Ids are ``f"{id_prefix}-{task}-{index:04d}"`` (prefix defaults to ``s<seed>``).
    """
    selected = _check_tasks(tasks)
    if isinstance(n_per_task, bool) or not isinstance(n_per_task, int) or n_per_task <= 0:
        raise ValueError(f"n_per_task must be a positive integer, got {n_per_task!r}")
    prefix = f"s{seed}" if id_prefix is None else id_prefix
    excluded = frozenset(exclude_prompts)
    items: list[Item] = []
    for task in selected:
        available = prompt_space_size(task) - sum(1 for p in excluded if _prompt_task(p) == task)
        if n_per_task > available:
            raise ValueError(f"task {task!r} has only {available} distinct prompts, asked for {n_per_task}")
        rng = random.Random(f"{seed}:{task}")
        seen: set[str] = set()
        while len(seen) < n_per_task:
            item = make_item(task, rng)
            if item["prompt"] in seen or item["prompt"] in excluded:
                continue
            seen.add(item["prompt"])
            item["id"] = f"{prefix}-{task}-{len(seen) - 1:04d}"
            items.append(item)
    return items


def test_split_items() -> list[Item]:
    """The shipped test split as generated from code (must equal the file on disk)."""
    return generate(TEST_N_PER_TASK, TEST_SEED, TASKS, id_prefix="test")


def dump_jsonl(items: Iterable[Item]) -> str:
    """Canonical JSONL text (fixed key order, ASCII, ``\\n`` endings) for byte-stable files."""
    return "".join(json.dumps(item, ensure_ascii=True) + "\n" for item in items)


def write_test_split(path: Path = TEST_SPLIT_PATH) -> Path:
    """Regenerate the shipped test split; running it twice gives identical bytes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(dump_jsonl(test_split_items()).encode("ascii"))
    return path


def load_jsonl(path: Path) -> list[Item]:
    """Read items written by :func:`dump_jsonl`."""
    with path.open(encoding="ascii") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def load_test_split(path: Path = TEST_SPLIT_PATH) -> list[Item]:
    """The shipped test split, read from disk because the file is the evaluation contract."""
    return load_jsonl(path)


@functools.cache
def test_prompts() -> frozenset[str]:
    """Prompts of the shipped test split, which training must never produce."""
    return frozenset(item["prompt"] for item in load_test_split())


def iter_training_items(seed: int, tasks: Iterable[str] = TASKS) -> Iterator[Item]:
    """Endless training stream, tasks in round-robin order, test prompts skipped.

    Validation happens at call time (not on the first ``next``) so a bad task
    name fails where it was written. Many-valid prompts recur with fresh
    uniformly drawn answers, which is how the model learns the distribution.
    """
    selected = _check_tasks(tasks)
    return _training_stream(seed, selected, test_prompts())


def _training_stream(seed: int, tasks: tuple[str, ...], excluded: frozenset[str]) -> Iterator[Item]:
    """Generator body of :func:`iter_training_items`."""
    rng = random.Random(f"train:{seed}")
    for index in itertools.count():
        task = tasks[index % len(tasks)]
        item = make_item(task, rng)
        while item["prompt"] in excluded:
            item = make_item(task, rng)
        item["id"] = f"train{seed}-{index:08d}"
        yield item


def main(argv: list[str] | None = None) -> int:
    """Command line: write the test split or print prompt-space statistics."""
    parser = argparse.ArgumentParser(prog="python -m synthetic.tasks", description=__doc__.splitlines()[0])
    parser.add_argument("--write-test", action="store_true", help="regenerate synthetic/data/test.jsonl")
    parser.add_argument("--out", type=Path, default=TEST_SPLIT_PATH, help="where --write-test writes")
    parser.add_argument("--stats", action="store_true", help="print distinct prompts per task")
    args = parser.parse_args(argv)
    if not (args.write_test or args.stats):
        parser.error("nothing to do: pass --write-test and/or --stats")
    if args.write_test:
        print(f"wrote {write_test_split(args.out)}")
    if args.stats:
        for task in TASKS:
            print(f"{task}\t{prompt_space_size(task)} distinct prompts")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
