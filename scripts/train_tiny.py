"""Train the repository's own tiny block-diffusion models on the synthetic suite, offline, on CPU.

No model can be downloaded here, so every entry point (decoders, benchmarks, tests) runs on a model
this script produces: by default an `SDARForCausalLM` (Qwen3 maths, position-aligned logits) trained
with the SDAR / BD3-LM block-diffusion objective (below); with `--family
fast_dllm_v2` a `Fast_dLLM_QwenForCausalLM` (Qwen2.5 maths, shift-aligned logits) trained with
Fast-dLLM v2's objective: the same block mask, token shift, complementary masked copies, and
block starts scored from the block-causal clean copy (see `make_shifted_row`); with `--family llada2`
an `LLaDA2MoeModelLM` (a MoE: group-limited top-k, a shared expert, `expert_bias` balancing) trained
with SDAR's objective (M2T) plus LLaDA2.1's token-editing objective (T2T), `synthetic/train_llada2.py`.

Objective. A training row is the doubled sequence [x_t ‖ x_0] with ONE bool mask (True = may attend):

* noised -> noised: same block only (block-diagonal), so a masked token is denoised from its block;
* noised -> clean:  strictly earlier blocks (offset block-causal), the context a decoder has cached;
* clean  -> clean:  block-causal, exactly the K/V a decoder commits block by block;
* clean  -> noised: never.

Both halves carry position ids 0..N-1 and blocks are aligned to position 0 of the sequence (prompt
included), as at inference. Only answer tokens (after the templated prompt) are ever masked: each
block draws t ~ U(0, 1] and masks each of its answer tokens with probability t (at least one). The
loss is the position-aligned cross entropy at the masked positions. With block size 1 every answer
token is masked and sees only the clean tokens before it: that is the AR conditional q(x_i | x_<i)
the S2D2 verifier reads, so block size 1 is always part of the mix.

Recipe. SDAR models are AR models adapted to block diffusion, and so is this one: a causal-LM phase
(block size 1 only) first, then an adaptation phase over a block-size mix that keeps block size 1.
A row's answer is followed by EOS and then padded with the pad token up to its block boundary, and
those pad positions are targets too, so a decoder fills a block's tail after EOS with pad tokens.

Choices beyond the plain recipe, all for speed on two CPU cores. The four row-layout ones change no
scored logit (the tests compare them with the full doubled sequence); autocast changes rounding only:

* the block size is drawn per EXAMPLE rather than per batch (the mask is per row anyway), which gives
  every step a mix of block sizes at no extra cost;
* the noised half of a row starts at the block holding the first answer token: noised tokens only
  attend inside their own block, so earlier noised blocks (prompt only, never masked) influence no
  loss term and are left out;
* short examples are packed side by side into one line (the mask keeps them apart), which removes
  most of the padding a mix of long (add, chain) and short (digitsum, letters) examples needs;
* with `--answers_per_prompt k`, a many-valid prompt (digitsum, letters) gets k answers drawn
  uniformly from its valid ones, all under ONE copy of the clean prompt-only blocks (a tree-shaped
  row): those tokens attend only to each other, so they are the same in every answer's sequence;
* the forward runs under bfloat16 autocast (weights, optimiser and loss stay float32).

    python scripts/train_tiny.py                          # an SDAR model in models/sdar-tiny
    python scripts/train_tiny.py --family fast_dllm_v2    # a Fast-dLLM v2 model in models/fast-dllm-v2-tiny
    python scripts/train_tiny.py --family llada2          # a LLaDA2 MoE model in models/llada2-tiny
    python scripts/train_tiny.py --family d2f_llada       # base/ + lora/ in models/d2f-llada-tiny (synthetic/train_d2f.py)
    python scripts/train_tiny.py --steps 20 --output_dir /tmp/x --hidden_size 32 --num_layers 1
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import re
import shlex
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, NoReturn, Sequence

from common.cli import ScriptParser
from families import FAMILIES as REGISTRY
from families.cpu_memory import reuse_freed_memory
from synthetic import train_d2f, train_llada2
from synthetic.checkpoint import FAMILIES
from synthetic.tasks import TASKS

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedTokenizerFast

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUTPUT_DIRS = {name: family.tiny_model_dir for name, family in REGISTRY.items()}
IGNORE_INDEX = -100
PROG = "train_tiny.py"


def fail(message: str) -> NoReturn:
    """Exit with status 2 and a single `train_tiny.py: error: ...` line on stderr."""
    sys.stderr.write(f"{PROG}: error: {message}\n")
    sys.exit(2)


def _int_list(text: str) -> list[int]:
    """Parse `1,2,4,8` (argparse `type`); a non-integer entry is reported by argparse."""
    return [int(part) for part in text.split(",") if part.strip()]


def _str_list(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def build_parser() -> ScriptParser:
    parser = ScriptParser(prog=PROG, description=__doc__.splitlines()[0],
                          formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--family", choices=FAMILIES, default="sdar",
                        help="sdar: SDARForCausalLM, position-aligned objective; fast_dllm_v2: "
                             "Fast_dLLM_QwenForCausalLM, shift-aligned objective with complementary masks; llada2: "
                             "LLaDA2MoeModelLM, position-aligned objective plus token editing (T2T)")
    data = parser.add_argument_group("data")
    data.add_argument("--tasks", type=_str_list, default=list(TASKS), help="comma-separated synthetic tasks")
    data.add_argument("--task_weights", type=_int_list, default=None,
                      help="comma-separated integer weights, one per task (items per round-robin cycle)")
    model = parser.add_argument_group("model (SDARConfig / Fast_dLLM_QwenConfig)")
    model.add_argument("--hidden_size", type=int, default=192)
    model.add_argument("--num_layers", type=int, default=4)
    model.add_argument("--num_heads", type=int, default=4)
    model.add_argument("--num_kv_heads", type=int, default=2)
    model.add_argument("--head_dim", type=int, default=48)
    model.add_argument("--intermediate_size", type=int, default=576)
    model.add_argument("--rope_theta", type=float, default=10000.0)
    optim = parser.add_argument_group("optimisation")
    optim.add_argument("--steps", type=int, default=2000, help="total optimiser steps (both phases)")
    optim.add_argument("--ar_fraction", type=float, default=0.5,
                       help="share of the steps in the causal-LM phase (block size 1 only); for the D2F "
                            "families, the base stage's AR warm start before its masked-diffusion phase")
    optim.add_argument("--block_sizes", type=_int_list, default=[1, 2, 4, 8],
                       help="adaptation-phase block sizes, drawn uniformly per row (repeat one to weight it)")
    optim.add_argument("--batch_size", type=int, default=32, help="answers per step")
    optim.add_argument("--answers_per_prompt", type=int, default=1,
                       help="answers drawn per digitsum/letters prompt, sharing its computation; a prompt's "
                            "share of the examples is its --task_weights weight times this")
    optim.add_argument("--causal_clean_fraction", type=float, default=0.0,
                       help="fast_dllm_v2: share of block-diffusion rows whose clean copy is causal (the cache_ver "
                            "cache) instead of block-causal")
    optim.add_argument("--lr", type=float, default=2e-3, help="peak AdamW learning rate")
    optim.add_argument("--min_lr_ratio", type=float, default=0.02, help="cosine floor as a fraction of --lr")
    optim.add_argument("--warmup_steps", type=int, default=100)
    optim.add_argument("--weight_decay", type=float, default=0.05)
    optim.add_argument("--grad_clip", type=float, default=1.0)
    run = parser.add_argument_group("run")
    run.add_argument("--output_dir", type=Path, default=None,
                     help="default: the --family's shipped model folder (models/sdar-tiny, models/fast-dllm-v2-tiny, "
                          "models/llada2-tiny, models/d2f-llada-tiny, models/d2f-dream-tiny)")
    run.add_argument("--seed", type=int, default=0)
    run.add_argument("--threads", type=int, default=1,
                     help="torch CPU threads. 1 by default: on two cores shared with other work, 2 threads "
                          "measured 7.3 s/step against 0.28 s/step for 1 (each parallel region waits for "
                          "the thread that lost its core); use 2 only on an otherwise idle machine")
    run.add_argument("--device", default="cpu",
                     help="torch device to train on (cpu, cuda, cuda:1, ...); the shipped models were trained "
                          "on cpu, and another device gives different rounding, so not the same weights")
    run.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=True,
                     help="bfloat16 autocast for the forward (weights, optimiser and loss stay float32); "
                          "matmuls run about 3x faster on CPUs with AVX512-BF16")
    run.add_argument("--max_minutes", type=float, default=30.0,
                     help="wall-clock cap; training stops early (and still saves) when it is reached")
    run.add_argument("--pack", action=argparse.BooleanOptionalAction, default=True,
                     help="pack short examples side by side in one line (no cross-attention between them)")
    run.add_argument("--log_every", type=int, default=50, help="steps between log lines")
    train_d2f.add_arguments(parser)
    train_llada2.add_arguments(parser)
    return parser


def validate(args: argparse.Namespace) -> None:
    """Reject every bad value before anything heavy (torch, the model) is loaded or trained."""
    unknown = [task for task in args.tasks if task not in TASKS]
    if unknown or not args.tasks:
        fail(f"unknown or empty --tasks {','.join(unknown) or '(none)'}; valid tasks: {', '.join(TASKS)}")
    if len(set(args.tasks)) != len(args.tasks):
        fail("--tasks lists a task twice; use --task_weights to weight tasks")
    if args.task_weights is not None:
        if len(args.task_weights) != len(args.tasks):
            fail(f"--task_weights needs one weight per task ({len(args.tasks)}), got {len(args.task_weights)}")
        if any(w <= 0 for w in args.task_weights):
            fail(f"--task_weights must be positive integers, got {args.task_weights}")
    for name in ("hidden_size", "num_layers", "num_heads", "num_kv_heads", "head_dim", "intermediate_size",
                 "steps", "batch_size", "answers_per_prompt", "threads", "log_every"):
        if getattr(args, name) <= 0:
            fail(f"--{name} must be a positive integer, got {getattr(args, name)}")
    for name in ("lr", "rope_theta", "max_minutes", "grad_clip"):
        value = getattr(args, name)
        if not (math.isfinite(value) and value > 0):
            fail(f"--{name} must be a positive number, got {value}")
    if args.warmup_steps < 0 or args.warmup_steps >= args.steps:
        fail(f"--warmup_steps must be in [0, --steps), got {args.warmup_steps} with --steps {args.steps}")
    if not 0.0 <= args.ar_fraction <= 1.0:
        fail(f"--ar_fraction must be in [0, 1], got {args.ar_fraction}")
    if not 0.0 <= args.min_lr_ratio <= 1.0:
        fail(f"--min_lr_ratio must be in [0, 1], got {args.min_lr_ratio}")
    if not (math.isfinite(args.weight_decay) and args.weight_decay >= 0):
        fail(f"--weight_decay must be >= 0, got {args.weight_decay}")
    if not args.block_sizes or any(size <= 0 for size in args.block_sizes):
        fail(f"--block_sizes must be positive integers, got {args.block_sizes}")
    if args.num_heads % args.num_kv_heads:
        fail(f"--num_heads ({args.num_heads}) must be divisible by --num_kv_heads ({args.num_kv_heads})")
    if args.head_dim % 2:
        fail(f"--head_dim must be even (rotate-half RoPE), got {args.head_dim}")
    if not 0.0 <= args.causal_clean_fraction <= 1.0:
        fail(f"--causal_clean_fraction must be in [0, 1], got {args.causal_clean_fraction}")
    llada2_error = train_llada2.validate(args, build_parser().parse_args([]))
    if llada2_error:
        fail(llada2_error)
    if args.family != "fast_dllm_v2" and args.causal_clean_fraction:
        fail("--causal_clean_fraction only applies to --family fast_dllm_v2")
    if not re.fullmatch(r"cpu|cuda(:\d+)?", args.device):
        fail(f"--device must be cpu, cuda or cuda:N, got {args.device!r}")
    if args.device != "cpu":
        import torch  # only here: a CPU run keeps validation free of the torch import

        if not torch.cuda.is_available():
            fail(f"--device {args.device}: torch {torch.__version__} sees no CUDA device")
    if args.family == "fast_dllm_v2" and args.answers_per_prompt != 1:
        fail("--answers_per_prompt only applies to --family sdar (fast_dllm_v2 rows already hold two "
             "complementary masked copies under one clean copy)")
    train_d2f.validate(args, build_parser(), fail)
    if args.output_dir is None:
        args.output_dir = DEFAULT_OUTPUT_DIRS[args.family]
    check_writable(args.output_dir)


def check_writable(out_dir: Path) -> None:
    """Create `out_dir` and write a probe file into it: the only check that also holds for root,
    for whom permission bits (os.access) say nothing."""
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=out_dir, prefix=".write-probe-"):
            pass
    except OSError as err:
        fail(f"--output_dir {out_dir} is not a writable directory ({err.strerror or err})")


@dataclass(frozen=True)
class TrainRow:
    """The doubled sequence of one prompt and one or more answers to it, before batching.

    All lists have one entry per token. `branch` is -1 for the clean tokens of prompt-only blocks,
    which every answer of the prompt shares, and the answer's index for every other token.
    """

    input_ids: list[int]
    position_ids: list[int]
    noised: list[bool]
    labels: list[int]
    branch: list[int]
    block_size: int
    verifier: list[bool] | None = None  # tokens of a verifier copy (make_shifted_row); None: none
    attention_block: list[int] | None = None  # per-token block size of the mask; None: block_size


def make_row(ids: Sequence[int], prompt_len: int, block_size: int, rng: random.Random,
             mask_id: int, pad_id: int) -> TrainRow:
    """Doubled row [x_t (from the first answer block) ‖ x_0] for one encoded example.

    ids: templated prompt, target and EOS; prompt_len: how many of them are prompt. x_0 is `ids`
    padded with `pad_id` to a multiple of `block_size` (the padding is part of the answer: targets).
    """
    length = math.ceil(len(ids) / block_size) * block_size
    clean = list(ids) + [pad_id] * (length - len(ids))
    start = (prompt_len // block_size) * block_size
    noised_ids: list[int] = []
    labels: list[int] = []
    for block_start in range(start, length, block_size):
        answer = [p for p in range(block_start, block_start + block_size) if p >= prompt_len]
        ratio = 1.0 - rng.random()  # t ~ U(0, 1]
        masked = {p for p in answer if rng.random() < ratio} or {rng.choice(answer)}
        for p in range(block_start, block_start + block_size):
            noised_ids.append(mask_id if p in masked else clean[p])
            labels.append(clean[p] if p in masked else IGNORE_INDEX)
    n_noised = length - start
    return TrainRow(
        input_ids=noised_ids + clean,
        position_ids=list(range(start, length)) + list(range(length)),
        noised=[True] * n_noised + [False] * length,
        labels=labels + [IGNORE_INDEX] * length,
        branch=[0] * n_noised + [-1 if p < start else 0 for p in range(length)],
        block_size=block_size,
    )


def make_shifted_row(ids: Sequence[int], prompt_len: int, block_size: int, rng: random.Random,
                     mask_id: int, pad_id: int, causal_clean: bool = False) -> TrainRow:
    """Fast-dLLM v2's row for one encoded example: two complementary masked copies, a verifier copy,
    then x_0.

    The model is shift-aligned (the logit of row t predicts token t + 1), and a decoder never masks a
    block's first position: it comes from the last row of the forward that committed the previous
    block (or from the prefill). So, for a block starting at s:
    * a block-start answer token is scored on the CLEAN copy, from the row of s - 1, whose context is
      the clean blocks before s (block-causal): exactly the commit forward's last row;
    * every other answer token is maskable. Each block draws t ~ U(0, 1] and masks each maskable token
      with probability t in copy 0 and the remaining ones in copy 1 (Fast-dLLM v2's complementary
      masks), so every token is scored exactly once. A masked token at p is scored from row p - 1 of
      its copy's block, which sees that block (bidirectionally) and the clean blocks before it: the
      draft forward. Blocks a copy masks nothing in are left out of it.
    * beyond Fast-dLLM v2: every maskable token is scored once more, on a VERIFIER copy of its block
      (clean tokens, causal inside the block, the clean blocks before it as context): exactly the S2D2
      verifier's forward (block-causal prefix cache, then the block causally), whose shifted logits
      are q. Fast-dLLM v2 adapts an AR model and relies on it for q; a model trained from scratch
      has to see this attention pattern to make q agree with its AR mode.
    With `causal_clean` the clean copy is causal instead of block-causal: the K/V a decoder caches with
    `cache_ver` (prefill and commits under a causal mask), so drafts and the verifier are trained on
    that cache as well; the verifier copy then reads exactly AR mode's conditionals.
    Labels sit on the TARGET token (the model's shifted loss reads them from the previous row); the
    first token of each copy is a block start, never labelled, so rows can be concatenated. With block
    size 1 nothing is maskable and the row is the plain causal-LM example (AR mode).
    """
    length = math.ceil(len(ids) / block_size) * block_size
    clean = list(ids) + [pad_id] * (length - len(ids))
    copies: list[list[int]] = [[], [], []]  # positions of the blocks each copy holds (2: verifier)
    masked: list[set[int]] = [set(), set(), set()]
    for block_start in range((prompt_len // block_size) * block_size, length, block_size):
        maskable = [p for p in range(max(block_start + 1, prompt_len), block_start + block_size)]
        ratio = 1.0 - rng.random()  # t ~ U(0, 1]
        first = {p for p in maskable if rng.random() < ratio}
        for copy, chosen in enumerate((first, set(maskable) - first, set(maskable))):
            if chosen:
                copies[copy].extend(range(block_start, block_start + block_size))
                masked[copy] |= chosen
    input_ids: list[int] = []
    labels: list[int] = []
    branch: list[int] = []
    for copy, positions in enumerate(copies):
        input_ids += [mask_id if p in masked[copy] and copy < 2 else clean[p] for p in positions]
        labels += [clean[p] if p in masked[copy] else IGNORE_INDEX for p in positions]
        branch += [copy] * len(positions)
    n_noised, n_verifier = len(copies[0]) + len(copies[1]), len(copies[2])
    return TrainRow(
        input_ids=input_ids + clean,
        position_ids=copies[0] + copies[1] + copies[2] + list(range(length)),
        noised=[True] * n_noised + [False] * (n_verifier + length),
        labels=labels + [clean[p] if p >= prompt_len and p % block_size == 0 else IGNORE_INDEX
                         for p in range(length)],
        branch=branch + [-1] * length,
        block_size=block_size,
        verifier=[False] * n_noised + [True] * n_verifier + [False] * length,
        attention_block=[block_size] * (n_noised + n_verifier) + [1 if causal_clean else block_size] * length,
    )


def share_prompt(rows: Sequence[TrainRow]) -> TrainRow:
    """Several answers to ONE prompt (rows from `make_row`, same block size) as one tree-shaped row:
    the clean prompt-only blocks once, then each answer's own tokens as branch 0, 1, ...

    The shared tokens only attend to each other, so they are identical in every answer's doubled
    sequence; computing them once makes a many-valid example (a 30-token prompt, a 10-token answer)
    about a third cheaper per extra answer.
    """
    shared = [i for i, b in enumerate(rows[0].branch) if b < 0]

    def part(row: TrainRow, name: str, keep_shared: bool) -> list:
        values = getattr(row, name)
        return [values[i] for i, b in enumerate(row.branch) if (b < 0) == keep_shared]

    if any(part(r, "input_ids", True) != part(rows[0], "input_ids", True) or r.block_size != rows[0].block_size
           for r in rows):
        raise ValueError("share_prompt needs rows of one prompt with one block size")
    fields = {name: [getattr(rows[0], name)[i] for i in shared]
              for name in ("input_ids", "position_ids", "noised", "labels")}
    branch = [-1] * len(shared)
    for index, row in enumerate(rows):
        for name in fields:
            fields[name] += part(row, name, False)
        branch += [index] * (len(row.branch) - len(shared))
    return TrainRow(**fields, branch=branch, block_size=rows[0].block_size)


def block_diffusion_mask(position_ids: "torch.Tensor", noised: "torch.Tensor", segment: "torch.Tensor",
                         branch: "torch.Tensor", block_size: "torch.Tensor",
                         verifier: "torch.Tensor | None" = None) -> "torch.Tensor":
    """The SDAR / BD3-LM training mask of doubled rows, from per-token positions and halves.

    position_ids [B, T] long, noised [B, T] bool (token of x_t), segment [B, T] long (which packed
    prompt a token belongs to; -1 = batch padding), branch [B, T] long (which answer of that prompt;
    -1 = shared by all of them), block_size [B, T] long, verifier [B, T] bool or None (tokens of a
    verifier copy: the clean blocks before theirs, then their own block causally) -> bool [B, T, T],
    True = may attend. Written over positions rather than indices, so a row may
    hold any subset of an example's x_t tokens, several examples side by side, and several answers
    sharing one prompt. Each token also keeps itself, so a padding row is never all-False (SDPA
    would return NaN for it).
    """
    import torch

    verifier = torch.zeros_like(noised) if verifier is None else verifier
    # Each token's block under its OWN block size: [start, end). With one block size per example this
    # is the usual block index comparison; a causal clean copy (block size 1 there) mixes sizes.
    start = position_ids - torch.remainder(position_ids, block_size)  # [B, T]
    q_start, q_end, q_pos = start[:, :, None], (start + block_size)[:, :, None], position_ids[:, :, None]
    kv_pos = position_ids[:, None, :]  # [B, 1, T]
    in_q_block = (kv_pos >= q_start) & (kv_pos < q_end)
    q_noised, kv_noised = noised[:, :, None], noised[:, None, :]
    q_verifier, kv_verifier = verifier[:, :, None], verifier[:, None, :]
    q_clean, kv_clean = ~q_noised & ~q_verifier, ~kv_noised & ~kv_verifier
    noised_to_noised = q_noised & kv_noised & in_q_block
    noised_to_clean = q_noised & kv_clean & (kv_pos < q_start)
    clean_to_clean = q_clean & kv_clean & (kv_pos < q_end)
    verifier_to_clean = q_verifier & kv_clean & (kv_pos < q_start)
    verifier_to_verifier = q_verifier & kv_verifier & in_q_block & (kv_pos <= q_pos)
    same_example = (segment[:, :, None] == segment[:, None, :]) & (segment >= 0)[:, None, :]
    same_answer = (branch[:, None, :] < 0) | (branch[:, :, None] == branch[:, None, :])
    allowed = noised_to_noised | noised_to_clean | clean_to_clean | verifier_to_clean | verifier_to_verifier
    mask = allowed & same_example & same_answer
    eye = torch.eye(position_ids.shape[1], dtype=torch.bool, device=position_ids.device)
    return mask | eye


def doubled_sequence_mask(length: int, block_size: int) -> "torch.Tensor":
    """The mask of one full doubled sequence [x_t ‖ x_0] of N = `length` tokens, [2N, 2N].

    N=4, block 2 (rows and columns: x_t 0..3, then x_0 0..3):
        1 1 0 0 | 0 0 0 0
        1 1 0 0 | 0 0 0 0
        0 0 1 1 | 1 1 0 0
        0 0 1 1 | 1 1 0 0
        0 0 0 0 | 1 1 0 0
        0 0 0 0 | 1 1 0 0
        0 0 0 0 | 1 1 1 1
        0 0 0 0 | 1 1 1 1
    """
    import torch

    positions = torch.arange(length).repeat(2)[None]  # [1, 2N]
    noised = (torch.arange(2 * length) < length)[None]  # [1, 2N]
    zeros = torch.zeros_like(positions)
    return block_diffusion_mask(positions, noised, zeros, zeros, torch.full_like(positions, block_size))[0]


def other_answers(item: dict[str, Any], count: int, rng: random.Random) -> list[dict[str, Any]]:
    """`count` more items with the prompt of a many-valid `item`, answers drawn uniformly from all
    valid ones as the generator draws them; none for tasks with a single answer."""
    from synthetic import tasks

    meta = item["meta"]
    if count <= 0 or item["task"] not in ("digitsum", "letters"):
        return []
    if item["task"] == "digitsum":
        solutions = tasks.digitsum_solutions(meta["t"], meta["lo"], meta["hi"])
        return [tasks.make_digitsum_item(meta["t"], meta["lo"], meta["hi"], rng.choice(solutions)) for _ in range(count)]
    solutions = tasks.letters_solutions(meta["n"], meta["c"], meta["hi"])
    return [tasks.make_letters_item(meta["n"], meta["c"], meta["hi"], rng.choice(solutions)) for _ in range(count)]


def pack(rows: Sequence[TrainRow]) -> list[list[TrainRow]]:
    """First-fit-decreasing packing into as few lines as possible, none longer than the longest row.

    Short examples (digitsum, letters) are about half as long as add/chain ones, so a padded batch
    spends a quarter of its FLOPs on padding; packing recovers most of it. Deterministic: the sort is
    stable and the first fitting line wins.
    """
    capacity = max(len(row.input_ids) for row in rows)
    lines: list[list[TrainRow]] = []
    free: list[int] = []
    for row in sorted(rows, key=lambda r: -len(r.input_ids)):
        size = len(row.input_ids)
        fit = next((i for i, space in enumerate(free) if size <= space), None)
        if fit is None:
            lines.append([row])
            free.append(capacity - size)
        else:
            lines[fit].append(row)
            free[fit] -= size
    return lines


def collate(rows: Sequence[TrainRow], pad_id: int, packed: bool = True) -> dict[str, "torch.Tensor"]:
    """Batch tensors and mask: rows packed into lines (or one row per line), right-padded to the
    longest line of this batch (not a global maximum)."""
    import torch

    lines = pack(rows) if packed else [[row] for row in rows]
    width = max(sum(len(r.input_ids) for r in line) for line in lines)

    def field(line: list[TrainRow], name: str, fill: Any, missing: Callable[[TrainRow], Any] | None = None) -> list:
        """The line's values of per-token field `name`, padded with `fill`; a row whose optional
        field is None contributes `missing(row)` for each of its tokens."""
        values = [v for r in line for v in (getattr(r, name) or [missing(r)] * len(r.input_ids))]
        return values + [fill] * (width - len(values))

    def per_token(line: list[TrainRow], value: Any, fill: Any) -> list:
        values = [value(i, r) for i, r in enumerate(line) for _ in r.input_ids]
        return values + [fill] * (width - len(values))

    position_ids = torch.tensor([field(line, "position_ids", 0) for line in lines])  # [B, T]
    noised = torch.tensor([field(line, "noised", False) for line in lines])  # [B, T]
    verifier = torch.tensor([field(line, "verifier", False, lambda r: False) for line in lines])  # [B, T]
    segment = torch.tensor([per_token(line, lambda i, r: i, -1) for line in lines])  # [B, T]
    branch = torch.tensor([field(line, "branch", -1) for line in lines])  # [B, T]
    block_size = torch.tensor([per_token(line, lambda i, r: r.block_size, 1) for line in lines])  # [B, T]
    attention_block = torch.tensor([field(line, "attention_block", 1, lambda r: r.block_size)
                                    for line in lines])  # [B, T]
    return {
        "input_ids": torch.tensor([field(line, "input_ids", pad_id) for line in lines]),  # [B, T]
        "position_ids": position_ids,
        "labels": torch.tensor([field(line, "labels", IGNORE_INDEX) for line in lines]),  # [B, T]
        "attention_mask": block_diffusion_mask(position_ids, noised, segment, branch, attention_block, verifier),  # [B, T, T]
        "block_size": block_size,  # [B, T]; not a model input, for the per-block-size loss log
    }


def weighted_tasks(tasks: Sequence[str], weights: Sequence[int] | None) -> tuple[str, ...]:
    """Round-robin order with task i repeated weights[i] times per cycle, interleaved so a cycle
    never runs one task back to back more than it must."""
    weights = list(weights) if weights is not None else [1] * len(tasks)
    order: list[str] = []
    for turn in range(max(weights)):
        order.extend(task for task, weight in zip(tasks, weights) if weight > turn)
    return tuple(order)


def block_one_loss(logits: "torch.Tensor", labels: "torch.Tensor", block_size: "torch.Tensor",
                   shifted: bool = False) -> float | None:
    """Mean cross entropy over the scored tokens of block-size-1 examples, or None without any.

    Logged separately because block size 1 is AR mode, the verifier whose accuracy is the bar, and
    its loss is hidden inside the (higher) block-diffusion loss of the mixed phase. `shifted`: the
    label at t is scored from the logit at t - 1 (Fast-dLLM v2).
    """
    import torch.nn.functional as F

    if shifted:
        logits, labels, block_size = logits[:, :-1], labels[:, 1:], block_size[:, 1:]
    scored = (labels != IGNORE_INDEX) & (block_size == 1)  # [B, T]
    if not bool(scored.any()):
        return None
    return float(F.cross_entropy(logits[scored].float(), labels[scored]))


def lr_factor(step: int, progress: float, warmup: int, floor: float) -> float:
    """Linear warmup over the first `warmup` steps, then cosine decay from 1 to `floor` as the
    training progress (see `training_progress`) goes from the end of warmup to 1."""
    if step < warmup:
        return (step + 1) / warmup
    return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * min(1.0, max(0.0, progress))))


TIME_GRACE = 0.05
"""Share of the post-warmup time budget the schedule may run behind its step count before the clock
takes over (per-step jitter on a busy machine must not change the LR of a run that ends in time)."""


def training_progress(step: int, steps: int, warmup: int, elapsed_s: float, budget_s: float) -> float:
    """How far training is after warmup, in [0, 1]: the step fraction, or the wall-clock fraction of the
    remaining --max_minutes budget when that is further along (with `TIME_GRACE` slack).

    `elapsed_s` and `budget_s` count from the end of warmup. The phase switch and the LR decay follow
    this, so a run the time cap cuts short (a slower or busier machine) still has its causal-LM /
    adaptation split and ends at the LR floor instead of stopping mid-phase at a high LR. A run that
    keeps pace with its budget follows its step count only, so it is deterministic from its seed.
    """
    by_steps = (step - warmup) / max(1, steps - 1 - warmup)
    by_time = (elapsed_s / budget_s - TIME_GRACE) / (1.0 - TIME_GRACE)
    return min(1.0, max(0.0, by_steps, by_time))


def in_ar_phase(step: int, progress: float, warmup: int, ar_fraction: float) -> bool:
    """Whether a step belongs to the causal-LM (AR) phase that opens a schedule: the warmup steps and those
    before `ar_fraction` of `training_progress` (the SDAR / Fast-dLLM v2 / LLaDA2 recipes' AR phase, the D2F
    base's AR warm start)."""
    return step < warmup or progress < ar_fraction


def source_fingerprint() -> dict[str, str]:
    """sha256 of the generator and the test split this run trained against: the synthetic suite is
    still evolving, and a model is only comparable with the split it was trained for."""
    import hashlib

    import synthetic.tasks as tasks_module

    files = {"synthetic/tasks.py": Path(tasks_module.__file__), "synthetic/data/test.jsonl": tasks_module.TEST_SPLIT_PATH}
    return {name: hashlib.sha256(path.read_bytes()).hexdigest() for name, path in files.items()}


def build_model(args: argparse.Namespace, tokenizer: "PreTrainedTokenizerFast"):
    """A freshly initialised model of `--family` with the size flags (seeded by the caller)."""
    from synthetic.checkpoint import tiny_model

    sizes = dict(hidden_size=args.hidden_size, intermediate_size=args.intermediate_size,
                 num_hidden_layers=args.num_layers, num_attention_heads=args.num_heads,
                 num_key_value_heads=args.num_kv_heads, head_dim=args.head_dim, rope_theta=args.rope_theta)
    if args.family == "fast_dllm_v2":
        sizes.update(bd_size=max(args.block_sizes), conplemenrary_mask=True)
    if args.family == "llada2":
        sizes.update(train_llada2.config_kwargs(args))
    return tiny_model(args.family, tokenizer, **sizes)


def save(model: Any, out_dir: Path, record: dict[str, Any]) -> None:
    """HF directory (`synthetic.checkpoint.save_checkpoint`) plus the training record."""
    from synthetic.checkpoint import save_checkpoint

    save_checkpoint(model, out_dir)
    (out_dir / "training_args.json").write_text(json.dumps(record, indent=2) + "\n")


def train(args: argparse.Namespace) -> dict[str, Any]:
    """Run both phases and save; returns the training record (also written as training_args.json)."""
    import torch
    import transformers
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from tqdm import tqdm

    from synthetic.tasks import iter_training_items
    from synthetic.tokenizer import build_tokenizer, encode_example

    device = torch.device(args.device)
    torch.set_num_threads(args.threads)
    if device.type == "cpu":
        reuse_freed_memory()
    torch.manual_seed(args.seed)
    rng = random.Random(args.seed)
    tokenizer = build_tokenizer()
    mask_id, pad_id = tokenizer.mask_token_id, tokenizer.pad_token_id
    model = build_model(args, tokenizer).to(device).train()
    shifted = REGISTRY[args.family].shift_aligned
    # LLaDA2: dense training MoE, expert-bias balancing and the T2T rows (synthetic/train_llada2.py).
    recipe = train_llada2.Recipe(args, tokenizer, rng) if args.family == "llada2" else None
    if recipe is not None:
        recipe.prepare(model)

    def row_maker(ids: list[int], prompt_len: int, block: int) -> TrainRow:
        if recipe is not None:
            return recipe.row(make_row(ids, prompt_len, block, rng, mask_id, pad_id), prompt_len)
        if not shifted:
            return make_row(ids, prompt_len, block, rng, mask_id, pad_id)
        causal = block > 1 and args.causal_clean_fraction > 0 and rng.random() < args.causal_clean_fraction
        return make_shifted_row(ids, prompt_len, block, rng, mask_id, pad_id, causal_clean=causal)
    n_params = sum(p.numel() for p in model.parameters())
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": args.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=args.lr, betas=(0.9, 0.98), eps=1e-8,
    )
    stream = iter_training_items(args.seed, weighted_tasks(args.tasks, args.task_weights))
    budget_s = 60.0 * args.max_minutes
    print(f"{PROG}: {n_params:,} parameters; {args.steps} steps or {args.max_minutes:g} minutes, the causal-LM "
          f"phase up to {args.ar_fraction:.0%} of them, then block-diffusion steps over block sizes "
          f"{args.block_sizes}", file=sys.stderr)

    data_fingerprint = source_fingerprint()
    start = time.perf_counter()
    losses: list[float] = []
    log: list[dict[str, Any]] = []
    ema = ar_ema = None
    stopped_early = False
    ar_steps_done = time_bound_steps = 0
    warm_end = 0.0  # seconds elapsed when warmup ended
    bar = tqdm(range(args.steps), desc="train", dynamic_ncols=True, mininterval=2.0)
    for step in bar:
        elapsed = time.perf_counter() - start
        if elapsed > budget_s:
            stopped_early = True
            break
        if step <= args.warmup_steps:
            warm_end = elapsed
        after_warmup = (elapsed - warm_end, budget_s - warm_end)
        progress = training_progress(step, args.steps, args.warmup_steps, *after_warmup)
        time_bound_steps += progress > training_progress(step, args.steps, args.warmup_steps, 0.0, after_warmup[1])
        ar_phase = in_ar_phase(step, progress, args.warmup_steps, args.ar_fraction)
        ar_steps_done += ar_phase
        lr = args.lr * lr_factor(step, progress, args.warmup_steps, args.min_lr_ratio)
        for group in optimizer.param_groups:
            group["lr"] = lr
        rows: list[TrainRow] = []
        n_answers = 0
        while n_answers < args.batch_size:
            item = next(stream)
            group = [item, *other_answers(item, args.answers_per_prompt - 1, rng)]
            block = 1 if ar_phase else rng.choice(args.block_sizes)
            answers = [row_maker(*encode_example(tokenizer, it), block) for it in group]
            rows.append(share_prompt(answers) if len(answers) > 1 else answers[0])
            n_answers += len(answers)
        batch = {name: value.to(device) for name, value in collate(rows, pad_id, packed=args.pack).items()}
        block_size = batch.pop("block_size")
        # The math SDPA kernel: for these short rows CPU flash attention's backward costs more than
        # all the matmuls together (measured 0.34 vs 0.27 s/step).
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.bf16), sdpa_kernel(SDPBackend.MATH):
            out = model(**batch)
        loss = out.loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), args.grad_clip)
        optimizer.step()
        if recipe is not None:
            recipe.after_step()
        value = float(loss.detach())
        losses.append(value)
        ema = value if ema is None else 0.98 * ema + 0.02 * value
        ar_value = block_one_loss(out.logits.detach(), batch["labels"], block_size, shifted)
        if ar_value is not None:
            ar_ema = ar_value if ar_ema is None else 0.98 * ar_ema + 0.02 * ar_value
        bar.set_postfix(loss=f"{ema:.4f}", lr=f"{lr:.2e}", refresh=False)
        if (step + 1) % args.log_every == 0 or step + 1 == args.steps:
            entry = {"step": step + 1, "loss_ema": round(ema, 5),
                     "ar_loss_ema": None if ar_ema is None else round(ar_ema, 5),
                     "lr": lr, "elapsed_s": round(time.perf_counter() - start, 1)}
            log.append(entry)
            bar.write(json.dumps(entry), file=sys.stderr)
    bar.close()
    wall = time.perf_counter() - start
    tail = losses[-50:]
    record = {
        "command": args.command,
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k != "command"},
        "seed": args.seed,
        "parameters": n_params,
        "steps_done": len(losses),
        "stopped_early_by_max_minutes": stopped_early,
        "causal_lm_steps": ar_steps_done,
        "time_bound_steps": time_bound_steps,
        "time_bound_note": "steps whose LR and phase followed the wall-clock fraction of --max_minutes "
                           "(when 0, the run is deterministic from its seed)",
        "wall_time_s": round(wall, 3),  # ms precision: a few-step test run takes well under 0.05 s
        "final_loss": round(sum(tail) / len(tail), 5) if tail else None,
        "final_loss_note": "mean training loss of the last 50 steps (masked-token cross entropy, nats)",
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__,
                     "python": sys.version.split()[0]},
        "threads": args.threads,
        "load_average_at_end": os.getloadavg(),
        "data_sources_sha256": data_fingerprint,
        "log": log,
        **(recipe.summary() if recipe is not None else {}),
    }
    save(model, args.output_dir, record)
    return record


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.family in train_d2f.FAMILIES:  # two stages (base, LoRA adapter): synthetic/train_d2f.py
        parser.set_defaults(**train_d2f.family_defaults(args.family))
        args = parser.parse_args(argv)
    # The exact command, also when called in-process with an explicit argv (tests, notebooks).
    args.command = shlex.join(["python", "scripts/train_tiny.py", *(sys.argv[1:] if argv is None else argv)])
    validate(args)
    record = train_d2f.train(args, sys.modules[__name__]) if args.family in train_d2f.FAMILIES else train(args)
    print(json.dumps({k: v for k, v in record.items() if k != "log"}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
