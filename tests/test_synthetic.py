"""Tests for the synthetic reasoning suite: generator, scorer, test split, tokenizer.

The suite is the only data the tiny S2D2 model ever sees, so mistakes here
(a wrong target, a scorer that accepts junk, a test prompt leaking into
training, a tokenizer that does not round-trip) would silently invalidate every
accuracy number downstream.
"""

from __future__ import annotations

import itertools
import json
import os
import random
import re
import string
from collections import Counter, defaultdict
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import pytest  # noqa: E402
from transformers import AutoTokenizer, PreTrainedTokenizerFast  # noqa: E402

from synthetic import scorer, tasks, validation  # noqa: E402
from synthetic import tokenizer as tok_mod  # noqa: E402

PROPERTY_ITEMS_PER_TASK = 3000


def _sample(task: str, n: int, seed: int) -> list[dict]:
    """Items drawn with ``make_item`` (prompts may repeat), as training would see them."""
    rng = random.Random(seed)
    return [tasks.make_item(task, rng) for _ in range(n)]


@pytest.fixture(scope="module")
def tokenizer() -> PreTrainedTokenizerFast:
    """One tokenizer for the module; building it is cheap but not free."""
    return tok_mod.build_tokenizer()


@pytest.fixture(scope="module")
def test_split() -> list[dict]:
    """The shipped test split as read from disk."""
    return tasks.load_test_split()


# Generator -------------------------------------------------------------------


def test_task_names_are_fixed() -> None:
    assert tasks.TASKS == ("add", "chain", "digitsum", "letters")


def test_generate_is_deterministic_and_seed_dependent() -> None:
    first = tasks.generate(25, seed=7)
    assert first == tasks.generate(25, seed=7)
    assert first != tasks.generate(25, seed=8)
    assert len(first) == 25 * len(tasks.TASKS)


def test_generate_task_subset_does_not_change_items() -> None:
    everything = tasks.generate(10, seed=3)
    only_chain = tasks.generate(10, seed=3, tasks=("chain",))
    assert only_chain == [item for item in everything if item["task"] == "chain"]


def test_generate_prompts_distinct_and_excluded() -> None:
    items = tasks.generate(50, seed=11)
    for task in tasks.TASKS:
        prompts = [item["prompt"] for item in items if item["task"] == task]
        assert len(prompts) == len(set(prompts)) == 50
    banned = {item["prompt"] for item in items}
    again = tasks.generate(50, seed=11, exclude_prompts=banned)
    assert banned.isdisjoint(item["prompt"] for item in again)


def test_generate_ids_and_item_schema() -> None:
    items = tasks.generate(5, seed=1, id_prefix="dev")
    assert [item["id"] for item in items[:2]] == ["dev-add-0000", "dev-add-0001"]
    assert tasks.generate(1, seed=1)[0]["id"] == "s1-add-0000"
    for item in items:
        assert list(item) == ["id", "task", "prompt", "target", "answer", "meta"]
        assert all(isinstance(item[key], str) for key in ("id", "task", "prompt", "target", "answer"))
        assert isinstance(item["meta"], dict)
        assert item["target"].endswith(tasks.ANSWER_MARKER + item["answer"])


@pytest.mark.parametrize("bad", [["add", "mul"], ["nope"], []])
def test_unknown_or_empty_tasks_raise(bad: list[str]) -> None:
    with pytest.raises(ValueError, match="add, chain, digitsum, letters"):
        tasks.generate(3, seed=0, tasks=bad)
    with pytest.raises(ValueError, match="add, chain, digitsum, letters"):
        tasks.iter_training_items(0, tasks=bad)


def test_make_item_unknown_task_raises() -> None:
    with pytest.raises(ValueError, match="valid tasks: add, chain, digitsum, letters"):
        tasks.make_item("mul", random.Random(0))


@pytest.mark.parametrize("n", [0, -1, 1.5, True, "3"])
def test_generate_rejects_non_positive_n(n: object) -> None:
    with pytest.raises(ValueError, match="positive integer"):
        tasks.generate(n, seed=0)  # type: ignore[arg-type]


def test_generate_refuses_more_prompts_than_exist() -> None:
    size = tasks.prompt_space_size("digitsum")
    assert len(tasks.generate(size, seed=0, tasks=("digitsum",))) == size
    with pytest.raises(ValueError, match="distinct prompts"):
        tasks.generate(size + 1, seed=0, tasks=("digitsum",))


def test_prompt_space_sizes_match_enumeration() -> None:
    assert tasks.prompt_space_size("add") == 990 * 990
    assert tasks.prompt_space_size("digitsum") == len(set(tasks.digitsum_params())) == 360
    assert tasks.prompt_space_size("letters") == len(set(tasks.letters_params())) == 694
    moves = [lambda v, k=k: v + k for k in range(1, 10)] + [lambda v, k=k: v - k for k in range(1, 10)]
    moves += [lambda v: 2 * v, lambda v: 3 * v]
    brute = 0
    for start in range(1, 20):
        frontier = [start]
        for steps in (1, 2, 3):
            frontier = [new for v in frontier for move in moves if 0 <= (new := move(v)) <= 19]
            brute += len(frontier) if steps >= 2 else 0
    assert tasks.prompt_space_size("chain") == brute == 65087


def test_length_budget() -> None:
    """Prompts and targets stay short, which is what makes the tasks learnable in minutes."""
    for task in tasks.TASKS:
        for item in _sample(task, 2000, seed=5):
            assert len(item["prompt"]) <= 24, item
            assert len(item["target"]) <= 56, item


def test_generation_budget_fits_every_answer() -> None:
    """The lm-eval task's max_gen_toks leaves room for the longest target and its stop token."""
    template = Path(__file__).resolve().parent.parent / "s2d2_eval" / "tasks" / "synthetic" / "_synthetic_template_yaml"
    budget = int(re.search(r"max_gen_toks: (\d+)", template.read_text()).group(1))
    longest = max(len(item["target"]) for task in tasks.TASKS for item in _sample(task, 500, seed=6))
    assert longest + 1 <= budget


# Targets are correct ---------------------------------------------------------


@pytest.mark.parametrize("task", tasks.TASKS)
def test_every_generated_target_passes_scorer(task: str) -> None:
    for item in _sample(task, PROPERTY_ITEMS_PER_TASK, seed=tasks.TASKS.index(task)):
        assert scorer.score(item, item["target"]), item
        assert scorer.score(item, "  " + item["target"] + "\n"), item
        assert scorer.extract_answer(item["target"]) == item["answer"]


def test_add_targets_recompute() -> None:
    step_re = re.compile(r"(\d)\+(\d)\+([01])=(\d\d)")
    for item in _sample("add", PROPERTY_ITEMS_PER_TASK, seed=21):
        a, b = map(int, re.fullmatch(r"add (\d+)\+(\d+)", item["prompt"]).groups())
        assert 10 <= a <= 999 and 10 <= b <= 999
        assert (item["meta"]["a"], item["meta"]["b"]) == (a, b)
        assert item["answer"] == str(a + b)
        scratch, final = item["target"].split(" #### ")
        assert final == item["answer"]
        steps = [step_re.fullmatch(step).groups() for step in scratch.split(",")]
        width = max(len(str(a)), len(str(b)))
        assert len(steps) == width
        carry = 0
        ra, rb = str(a)[::-1].ljust(width, "0"), str(b)[::-1].ljust(width, "0")
        for column, (x, y, c, total) in enumerate(steps):
            assert (x, y) == (ra[column], rb[column])
            assert int(c) == carry
            assert int(total) == int(x) + int(y) + int(c)
            carry = int(total) // 10
        read_back = str(int(steps[-1][3])) + "".join(step[3][1] for step in reversed(steps[:-1]))
        assert read_back == item["answer"]


def test_add_known_example() -> None:
    item = tasks.make_add_item(478, 95)
    assert item["prompt"] == "add 478+95"
    assert item["target"] == "8+5+0=13,7+9+1=17,4+0+1=05 #### 573"


def test_chain_targets_recompute() -> None:
    for item in _sample("chain", PROPERTY_ITEMS_PER_TASK, seed=22):
        words = item["prompt"].split()
        assert words[0] == "chain" and 2 <= len(words) - 2 <= 3
        assert re.fullmatch(r"\d\d", words[1])
        value = int(words[1])
        expected_steps = []
        for op in words[2:]:
            assert re.fullmatch(r"[+-][1-9]|\*[23]", op)
            new = {"+": value + int(op[1]), "-": value - int(op[1]), "*": value * int(op[1])}[op[0]]
            assert 0 <= new <= 19
            expected_steps.append(f"{value:02d}{op}={new:02d}")
            value = new
        assert item["target"] == ",".join(expected_steps) + f" #### {value}"
        assert item["answer"] == str(value)
        assert item["meta"] == {"start": int(words[1]), "ops": words[2:]}


def test_padded_known_examples() -> None:
    chain = tasks.make_chain_item(7, ["+5", "-3", "*2"])
    assert (chain["prompt"], chain["target"]) == ("chain 07 +5 -3 *2", "07+5=12,12-3=09,09*2=18 #### 18")
    small = tasks.make_chain_item(4, ["*2", "-1"])
    assert small["target"] == "04*2=08,08-1=07 #### 7" and small["answer"] == "7"
    digits = tasks.make_digitsum_item(9, 0, 8, "225")
    assert (digits["prompt"], digits["target"]) == ("sum3 09 in 0..8",
                                                     "09-16=00,09-00=09,0..8:2,09-2=07,0..7:2,07-2=5 #### 225")
    digits = tasks.make_digitsum_item(14, 2, 8, "257")
    assert (digits["prompt"], digits["target"]) == ("sum3 14 in 2..8",
                                                     "14-16=00,14-04=10,2..8:2,14-2=12,4..8:5,12-5=7 #### 257")
    digits = tasks.make_digitsum_item(20, 6, 9, "866")  # both ends of the first range clipped
    assert digits["target"] == "20-18=02,20-12=08,6..8:8,20-8=12,6..6:6,12-6=6 #### 866"
    letters = tasks.make_letters_item(4, "c", "p", "cfkp")
    assert (letters["prompt"], letters["target"]) == ("inc 4 c..p", "d..n:f,g..o:k,l..p:p #### cfkp")
    assert tasks.make_letters_item(3, "i", "v", "ikv")["target"] == "j..u:k,l..v:v #### ikv"


def _feasible(prefix_ok, candidates) -> str:
    """``lo..hi`` of the candidates that keep a completion possible (they must be contiguous)."""
    kept = [c for c in candidates if prefix_ok(c)]
    assert kept == list(candidates)[candidates.index(kept[0]):candidates.index(kept[-1]) + 1]
    return f"{kept[0]}..{kept[-1]}"


def test_digitsum_targets_recompute() -> None:
    """Every range, difference and digit of the scratchpad, against a brute force over all triples."""
    pattern = re.compile(r"(\d\d)-(\d\d)=(\d\d),(\d\d)-(\d\d)=(\d\d),(\d\.\.\d):(\d),(\d\d)-(\d)=(\d\d),"
                         r"(\d\.\.\d):(\d),(\d\d)-(\d)=(\d) #### (\d{3})")
    for item in _sample("digitsum", PROPERTY_ITEMS_PER_TASK, seed=25):
        t, lo, hi = map(int, re.fullmatch(r"sum3 (\d\d) in (\d)\.\.(\d)", item["prompt"]).groups())
        assert item["meta"] == {"t": t, "lo": lo, "hi": hi}
        (t1, most, above, t2, least, below, range1, d1, t3, d1_again, left, range2, d2, left_again,
         d2_again, d3, answer) = pattern.fullmatch(item["target"]).groups()
        assert int(t1) == int(t2) == int(t3) == t
        assert (int(most), int(least)) == (2 * hi, 2 * lo)
        assert (int(above), int(below)) == (max(0, t - 2 * hi), t - 2 * lo)
        digits = range(lo, hi + 1)
        triples = [c for c in itertools.product(digits, repeat=3) if sum(c) == t]
        assert range1 == _feasible(lambda a: any(c[0] == a for c in triples), digits)
        assert range2 == _feasible(lambda b: any(c[:2] == (int(d1), b) for c in triples), digits)
        assert d1 == d1_again and d2 == d2_again and int(left) == int(left_again) == t - int(d1)
        assert int(d3) == int(left) - int(d2)
        assert answer == d1 + d2 + d3 == item["answer"] and tuple(map(int, answer)) in triples


def test_letters_targets_recompute() -> None:
    """Each written range holds exactly the letters that still allow a valid answer."""
    for item in _sample("letters", PROPERTY_ITEMS_PER_TASK, seed=26):
        n, first, hi = item["meta"]["n"], item["meta"]["c"], item["meta"]["hi"]
        scratch, answer = item["target"].split(" #### ")
        assert answer == item["answer"] and answer[0] == first and len(answer) == n
        valid = [first + "".join(rest) for rest in itertools.combinations(string.ascii_lowercase, n - 1)
                 if first < rest[0] and rest[-1] <= hi]
        steps = scratch.split(",")
        assert len(steps) == n - 1
        for index, step in enumerate(steps, start=1):
            written, chosen = step.split(":")
            assert chosen == answer[index]
            prefix = answer[:index]
            assert written == _feasible(lambda x: any(v.startswith(prefix + x) for v in valid),
                                        string.ascii_lowercase)
        assert answer in valid


def test_chain_rejects_out_of_range() -> None:
    with pytest.raises(ValueError):
        tasks.make_chain_item(10, ["*2"])
    with pytest.raises(ValueError):
        tasks.make_chain_item(3, ["-5"])


def test_chain_uses_all_operation_kinds() -> None:
    kinds = Counter(op[0] for item in _sample("chain", 1000, seed=4) for op in item["meta"]["ops"])
    assert set(kinds) == {"+", "-", "*"} and min(kinds.values()) > 300


def _solutions(item: dict) -> tuple[str, ...]:
    """All valid answers for a many-valid item, from the generator's own enumeration."""
    meta = item["meta"]
    if item["task"] == "digitsum":
        return tasks.digitsum_solutions(meta["t"], meta["lo"], meta["hi"])
    return tasks.letters_solutions(meta["n"], meta["c"], meta["hi"])


@pytest.mark.parametrize("task", ["digitsum", "letters"])
def test_many_valid_targets_are_broad(task: str) -> None:
    """Repeated prompts get different answers: the model must see the whole distribution."""
    answers: dict[str, list[str]] = defaultdict(list)
    for item in _sample(task, PROPERTY_ITEMS_PER_TASK, seed=23):
        answers[item["prompt"]].append(item["answer"])
    repeated = [found for found in answers.values() if len(found) >= 3]
    assert len(repeated) > 50
    assert sum(len(set(found)) > 1 for found in repeated) / len(repeated) > 0.9


@pytest.mark.parametrize("task", ["digitsum", "letters"])
def test_many_valid_answer_is_uniform_over_solutions(task: str) -> None:
    """The answer's rank among all solutions is uniform, i.e. no solution is favoured.

    A uniform jitter inside each rank makes the position exactly uniform on
    [0, 1) under the hypothesis, whatever the number of solutions per prompt.
    """
    jitter = random.Random(0)
    deciles: Counter[int] = Counter()
    for item in _sample(task, PROPERTY_ITEMS_PER_TASK, seed=24):
        solutions = _solutions(item)
        position = (solutions.index(item["answer"]) + jitter.random()) / len(solutions)
        deciles[int(10 * position)] += 1
    expected = PROPERTY_ITEMS_PER_TASK / 10
    assert all(abs(deciles[d] - expected) < 0.25 * expected for d in range(10)), deciles


def test_every_many_valid_prompt_has_enough_solutions() -> None:
    for t, lo, hi in tasks.digitsum_params():
        assert len(tasks.digitsum_solutions(t, lo, hi)) >= tasks.MIN_SOLUTIONS
    for n, c, hi in tasks.letters_params():
        assert len(tasks.letters_solutions(n, c, hi)) >= tasks.MIN_SOLUTIONS


def test_many_valid_makers_reject_invalid_answer() -> None:
    with pytest.raises(ValueError):
        tasks.make_digitsum_item(14, 0, 9, "555")
    with pytest.raises(ValueError):
        tasks.make_letters_item(3, "c", "p", "cbd")


# Scorer ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("no marker here", None),
        ("#### 12", "12"),
        ("1+1=2 #### 2", "2"),
        ("####   42   ", "42"),
        ("#### 1 #### 2", "2"),
        ("#### 7\nmore text", "7"),
        ("step\n#### 7\n", "7"),
        ("#### 573<|im_end|><|endoftext|>", "573"),
        ("####", ""),
        ("#### \n573", ""),
        ("####573", "573"),
    ],
)
def test_extract_answer(text: str, expected: str | None) -> None:
    assert scorer.extract_answer(text) == expected


@pytest.mark.parametrize(
    ("completion", "ok"),
    [
        ("8+5+0=13,7+9+1=17,4+0+1=05 #### 573", True),
        ("#### 573", True),
        ("####573", True),
        (" #### 573 \n", True),
        ("wrong scratchpad #### 573", True),
        ("#### 573 is the answer", False),
        ("#### 0573", False),
        ("#### +573", False),
        ("#### 573.0", False),
        ("#### 5 73", False),
        ("#### 574", False),
        ("573", False),
        ("#### 573 #### 574", False),
        ("", False),
    ],
)
def test_score_integer_tasks(completion: str, ok: bool) -> None:
    assert scorer.score(tasks.make_add_item(478, 95), completion) is ok


def test_score_chain_zero_answer() -> None:
    item = tasks.make_chain_item(5, ["-5", "*3"])
    assert item["answer"] == "0"
    assert scorer.score(item, "#### 0")
    assert not scorer.score(item, "#### 00")


@pytest.mark.parametrize(("t", "lo", "hi"), [(14, 0, 9), (5, 0, 9), (20, 6, 9), (14, 2, 8)])
def test_digitsum_scorer_matches_brute_force(t: int, lo: int, hi: int) -> None:
    item = tasks.make_digitsum_item(t, lo, hi, tasks.digitsum_solutions(t, lo, hi)[0])
    accepted = {f"{k:03d}" for k in range(1000) if scorer.score(item, f"#### {k:03d}")}
    expected = {
        f"{k:03d}"
        for k in range(1000)
        if sum(map(int, f"{k:03d}")) == t and all(lo <= int(d) <= hi for d in f"{k:03d}")
    }
    assert accepted == expected == set(tasks.digitsum_solutions(t, lo, hi))


@pytest.mark.parametrize(
    "answer", ["5090", "59", "5a9", "5 0 9", "5,0,9", "509 ok", "509.", "-59", "", "4 10", "५०९"]
)
def test_digitsum_scorer_rejects_malformed(answer: str) -> None:
    item = tasks.make_digitsum_item(14, 0, 9, "509")
    assert not scorer.score(item, f"#### {answer}")
    assert not scorer.score(item, "509")


@pytest.mark.parametrize(("n", "c", "hi"), [(3, "c", "z"), (4, "c", "p"), (3, "a", "f")])
def test_letters_scorer_matches_brute_force(n: int, c: str, hi: str) -> None:
    item = tasks.make_letters_item(n, c, hi, tasks.letters_solutions(n, c, hi)[0])
    accepted = set()
    for tail in itertools.product(string.ascii_lowercase, repeat=n - 1):
        answer = c + "".join(tail)
        if scorer.score(item, f"#### {answer}"):
            accepted.add(answer)
    expected = {
        c + "".join(tail)
        for tail in itertools.combinations(string.ascii_lowercase, n - 1)
        if tail[0] > c and tail[-1] <= hi
    }
    assert accepted == expected == set(tasks.letters_solutions(n, c, hi))


@pytest.mark.parametrize(
    "answer",
    ["cdf", "cdfgh", "cfeg", "ceeg", "dfgh", "bcdf", "cdfq", "cdfz", "CDFG", "c d f g", "cdfg!", "cdfg ok", "c1fg", ""],
)
def test_letters_scorer_rejects_invalid(answer: str) -> None:
    item = tasks.make_letters_item(4, "c", "p", "cdfg")
    assert scorer.score(item, "#### cdfg")
    assert not scorer.score(item, f"#### {answer}")
    assert not scorer.score(item, "cdfg")


def test_scorer_ignores_scratchpad_and_unknown_task_raises() -> None:
    item = tasks.make_chain_item(7, ["+5", "-3", "*2"])
    assert scorer.score(item, "07+5=99,garbage #### 18")
    with pytest.raises(ValueError, match="unknown task"):
        scorer.score({**item, "task": "mul"}, "#### 18")


# Shipped test split ----------------------------------------------------------


def test_test_split_file_is_reproducible() -> None:
    expected = tasks.dump_jsonl(tasks.test_split_items()).encode("ascii")
    assert tasks.TEST_SPLIT_PATH.read_bytes() == expected


def test_write_test_cli_gives_identical_bytes(tmp_path: Path) -> None:
    out = tmp_path / "test.jsonl"
    assert tasks.main(["--write-test", "--out", str(out)]) == 0
    assert out.read_bytes() == tasks.TEST_SPLIT_PATH.read_bytes()


def test_validation_split_file_is_reproducible_and_never_shares_a_test_prompt(tmp_path: Path) -> None:
    expected = tasks.dump_jsonl(validation.val_split_items()).encode("ascii")
    assert validation.VAL_SPLIT_PATH.read_bytes() == expected
    out = tmp_path / "val.jsonl"
    assert validation.main(["--out", str(out)]) == 0
    assert out.read_bytes() == expected
    items = tasks.load_jsonl(validation.VAL_SPLIT_PATH)
    n = validation.VAL_N_PER_TASK
    assert Counter(item["task"] for item in items) == {task: n for task in tasks.TASKS}
    assert len({item["prompt"] for item in items}) == len(items) == 4 * n
    assert all(item["id"].startswith("val-") for item in items)
    assert not {item["prompt"] for item in items} & tasks.test_prompts()
    for item in items:  # every item is a valid one: its own target scores
        assert scorer.score(item, item["target"])


def test_test_split_contents(test_split: list[dict]) -> None:
    assert len(test_split) == 400
    assert Counter(item["task"] for item in test_split) == {task: 100 for task in tasks.TASKS}
    assert len({item["id"] for item in test_split}) == 400
    assert len({item["prompt"] for item in test_split}) == 400
    assert test_split == json.loads(json.dumps(tasks.test_split_items()))
    for item in test_split:
        assert item["id"].startswith(f"test-{item['task']}-")
        assert scorer.score(item, item["target"])


def test_training_never_yields_test_prompts(test_split: list[dict]) -> None:
    banned = {item["prompt"] for item in test_split}
    assert tasks.test_prompts() == banned
    stream = tasks.iter_training_items(seed=0)
    seen = Counter()
    for item in itertools.islice(stream, 20000):
        assert item["prompt"] not in banned
        seen[item["task"]] += 1
    assert seen == {task: 5000 for task in tasks.TASKS}


def test_training_stream_is_deterministic_round_robin() -> None:
    first = list(itertools.islice(tasks.iter_training_items(seed=5), 40))
    again = list(itertools.islice(tasks.iter_training_items(seed=5), 40))
    other = list(itertools.islice(tasks.iter_training_items(seed=6), 40))
    assert first == again and first != other
    assert [item["task"] for item in first[:8]] == list(tasks.TASKS) * 2
    only = list(itertools.islice(tasks.iter_training_items(seed=5, tasks=["letters"]), 10))
    assert {item["task"] for item in only} == {"letters"}


# Tokenizer -------------------------------------------------------------------


def test_special_token_ids(tokenizer: PreTrainedTokenizerFast) -> None:
    assert len(tokenizer) < 100
    assert tokenizer.convert_tokens_to_ids(list(tok_mod.SPECIAL_TOKENS)) == [0, 1, 2, 3, 4]
    assert (tokenizer.pad_token, tokenizer.pad_token_id) == ("<|endoftext|>", 0)
    assert (tokenizer.eos_token, tokenizer.eos_token_id) == ("<|im_end|>", 2)
    assert (tokenizer.mask_token, tokenizer.mask_token_id) == ("<|MASK|>", 3)
    assert (tokenizer.unk_token, tokenizer.unk_token_id) == ("<|unk|>", 4)
    assert tokenizer.bos_token is None


def test_vocabulary_is_sorted_characters(tokenizer: PreTrainedTokenizerFast) -> None:
    vocab = tokenizer.get_vocab()
    chars = sorted((token for token in vocab if token not in tok_mod.SPECIAL_TOKENS), key=vocab.__getitem__)
    assert chars == sorted(chars) == list(tok_mod.CHARACTERS)
    assert sorted(vocab.values()) == list(range(len(vocab)))
    assert set(string.digits + string.ascii_lowercase + " \n#+-*=,.") <= set(chars)


def test_round_trip_on_all_targets(tokenizer: PreTrainedTokenizerFast, test_split: list[dict]) -> None:
    items = test_split + list(itertools.islice(tasks.iter_training_items(seed=1), 2000))
    for item in items:
        for text in (item["prompt"], item["target"], tok_mod.training_text(item)):
            ids = tokenizer.encode(text, add_special_tokens=False)
            assert tokenizer.decode(ids) == text
            assert tok_mod.UNK_TOKEN not in tokenizer.convert_ids_to_tokens(ids)
        ids = tokenizer.encode(item["target"], add_special_tokens=False)
        assert len(ids) == len(item["target"])


def test_every_character_is_one_token(tokenizer: PreTrainedTokenizerFast) -> None:
    text = tok_mod.CHARACTERS + "\n\n  ##" + tok_mod.CHARACTERS[::-1]
    ids = tokenizer.encode(text, add_special_tokens=False)
    assert len(ids) == len(text)
    assert tokenizer.decode(ids) == text
    assert tokenizer.encode("A", add_special_tokens=False) == [tokenizer.unk_token_id]


def test_chat_template_output(tokenizer: PreTrainedTokenizerFast) -> None:
    prompt = tok_mod.format_prompt(tokenizer, "add 478+95")
    assert prompt == "<|im_start|>user\nadd 478+95<|im_end|>\n<|im_start|>assistant\n"
    assert prompt == tok_mod.render_prompt("add 478+95")
    conversation = [
        {"role": "user", "content": "inc 3 a..f"},
        {"role": "assistant", "content": "#### abc"},
    ]
    rendered = tokenizer.apply_chat_template(conversation, tokenize=False)
    assert rendered == "<|im_start|>user\ninc 3 a..f<|im_end|>\n<|im_start|>assistant\n#### abc<|im_end|>\n"
    ids = tokenizer.apply_chat_template(conversation[:1], add_generation_prompt=True)
    assert ids[0] == tokenizer.convert_tokens_to_ids("<|im_start|>")
    assert tokenizer.decode(ids) == tok_mod.render_prompt("inc 3 a..f")


def test_encode_example(tokenizer: PreTrainedTokenizerFast, test_split: list[dict]) -> None:
    for item in test_split:
        ids, prompt_len = tok_mod.encode_example(tokenizer, item)
        assert ids == tokenizer.encode(tok_mod.training_text(item), add_special_tokens=False)
        assert prompt_len == len(tokenizer.encode(tok_mod.render_prompt(item["prompt"]), add_special_tokens=False))
        assert ids[-1] == tokenizer.eos_token_id
        assert tokenizer.decode(ids[prompt_len:]) == item["target"] + "<|im_end|>"
        assert tokenizer.decode(ids[prompt_len:], skip_special_tokens=True) == item["target"]
        assert prompt_len == len(item["prompt"]) + 19


def test_save_and_reload_offline(tmp_path: Path, tokenizer: PreTrainedTokenizerFast) -> None:
    out = tok_mod.save_tokenizer(tmp_path / "tok")
    config = json.loads((out / "tokenizer_config.json").read_text())
    assert config["chat_template"] == tok_mod.CHAT_TEMPLATE
    loaded = AutoTokenizer.from_pretrained(str(out), local_files_only=True)
    assert isinstance(loaded, PreTrainedTokenizerFast)
    assert loaded.get_vocab() == tokenizer.get_vocab()
    assert loaded.chat_template == tokenizer.chat_template
    assert loaded.all_special_tokens == tokenizer.all_special_tokens
    assert loaded.all_special_ids == tokenizer.all_special_ids
    for name in ("eos_token", "pad_token", "mask_token", "unk_token", "bos_token"):
        assert getattr(loaded, name) == getattr(tokenizer, name)
    assert loaded.mask_token_id == 3 and loaded.eos_token_id == 2 and loaded.pad_token_id == 0
    text = tok_mod.training_text(tasks.make_add_item(478, 95))
    assert loaded.encode(text) == tokenizer.encode(text)
    assert loaded.decode(loaded.encode(text)) == text
    assert tok_mod.format_prompt(loaded, "sum3 14 in 2..8") == tok_mod.render_prompt("sum3 14 in 2..8")
