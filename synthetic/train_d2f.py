"""The tiny D2F models' training recipe: `python scripts/train_tiny.py --family d2f_llada` (or `d2f_dream`).

Two stages, as the released D2F artefacts are made (MODEL-FAMILIES.md §4.1, §8.2, §8.3):

1. BASE: a bidirectional masked-diffusion LM of the family's architecture (LLaDA: `LLaDAModelLM`,
   position-aligned logits; Dream: `DreamModel`, shifted logits, the logit at t - 1 predicts token t),
   trained as LLaDA's SFT: each row draws t ~ U[eps, 1] (stratified: one draw in each of the batch's
   equal slices of the range, shuffled over its rows) and masks each answer token with probability t,
   the prompt is never masked, every row is padded to the batch's longest with the pad token and that
   trailing padding is part of the answer (masked and trained like any answer token), and the loss is
   the masked tokens' cross entropy weighted by 1/t, per row divided by its answer length. Saved as a
   base model folder (`base/`).
   It starts from an AR warm start: the first `--ar_fraction` of its schedule trains the full network on
   the AR rows described under stage 2 (block size 1), as the released diffusion models build on AR
   backbones (Dream on Qwen2.5-7B, LLaDA2 on Ling-2.0: MODEL-FAMILIES.md §0). Without it the tiny base
   does not learn to compute its answer within the budget: a bidirectional masked-diffusion row gives
   about t * L well-conditioned targets per forward where an AR row gives L, and on every from-scratch
   base the answer's content tokens were as well predicted with 95% of the answer masked as with 5%
   (`scripts/probe_d2f_base.py`): layout learned, reading not. After the warm start, `--ar_mix` of every
   batch's rows stay AR rows, so the masked-diffusion phase does not unlearn the AR mode: without them the
   AR mode of the D2F-LLaDA base shipped before fell to 60-69% per task at T = 1, and its rank-32
   attention adapter brought it back only to 79-96%.
2. ADAPTER: a D2F LoRA trained with `peft` on top of the frozen base (targets q/k/v/`attn_out` for LLaDA,
   q/k/v/`o_proj` for Dream, `D2F.lora.RELEASED_TARGET_MODULES`). Each row draws a block size from
   `--lora_block_sizes`:
   * block size > 1, the D2F row: blocks of that size counted from the END OF THE PROMPT (the prompt is
     one bidirectional block 0), the student attends block-causally (a block sees the prompt, every
     earlier block and itself), and the noise is per block and monotonic: a random number of leading
     blocks is clean (settled, as in the decoder's cache), the remaining blocks draw mask ratios that are
     sorted uniforms on [`--min_mask_ratio`, 1], so later blocks are never less masked than earlier
     ones (the pipelined decoder's blocks in flight). The target of a masked token is the TEACHER, the
     same network with the adapter disabled (`disable_adapter()`: the base exactly) under full attention
     over the same noised row: KL(teacher || student) plus `--data_weight` times the cross entropy to
     the true token, weighted by 1/ratio of the token's block, per row divided by its answer length.
   * block size 1, the AR row: the S2D2 verifier's AR mode (and `d2f` with block size 1). Its context is
     the clean prefix stored token-causally, so the row is laid out for exactly that forward: LLaDA
     (position-aligned) gets the doubled row [prompt, answer ‖ one mask per answer token], the mask at
     position p attending the prompt, the clean answer tokens before p and itself (the 2L verifier's
     mask rows); Dream (shifted) needs no masks at all, because its draft for p is the logit of the
     clean token at p - 1 under the causal mask. The target is the true token (cross entropy, weight
     1): a full-attention teacher of the AR conditional at p would be one forward per position (its
     prefix sees different masks for every p), which costs an AR row's whole answer length in
     teacher forwards, so AR rows are the data term only.
   Saved as a PEFT adapter folder (`lora/`: adapter_config.json + adapter_model.safetensors, the released
   key names `base_model.model.<module>.lora_{A,B}.weight`).

The output folder holds `base/`, `lora/`, `training_args.json` (both stages' records, the exact command)
and `README.md` (the model card, `write_model_card`; `python -m synthetic.train_d2f OUT_DIR` rewrites it
from the record). Determinism, the wall-clock cap, the LR schedule (`training_progress`, `lr_factor`),
the task order and the data fingerprint are train_tiny.py's, passed in as its module; `--max_minutes`
covers both stages together.

Choices for speed on two CPU cores: rows are not packed (every row of a batch has the same length, the
longest prompt + answer, so D2F and base rows need no batch padding at all), and the forward runs under
bfloat16 autocast (weights, optimiser state and losses stay float32).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import random
import shutil
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, NoReturn, Protocol, Sequence

from families import FAMILIES as REGISTRY
from families.cpu_memory import reuse_freed_memory
from families import load

if TYPE_CHECKING:
    import torch

FAMILIES = ("d2f_llada", "d2f_dream")
"""The registry families this module trains."""

MODEL_TYPES = {"d2f_llada": "llada", "d2f_dream": "Dream"}
MASK_RATIO_EPS = 1e-3
"""Smallest base-stage mask ratio (LLaDA's eps): t ~ U[eps, 1] keeps the 1/t weight finite."""

LORA_STEP_COST = 1.0
"""How `--max_minutes` is split between the stages: the base stage may use steps / (steps + LORA_STEP_COST *
lora_steps) of it, the adapter stage whatever the base stage left. Measured, an adapter step costs 1.22 base
steps on average (D2F-LLaDA at the default sizes, two threads: 0.272 / 0.222 s), but the base's AR warm-start
steps come first and cost more than its masked-diffusion steps (LLaDA's doubled rows: 0.26 against 0.17 s),
so the base's clock runs ahead of its step count until the masked-diffusion phase; 1.0 leaves it the
headroom that keeps a default run on its step schedule (deterministic), and the adapter still fits."""

# Flags of scripts/train_tiny.py that configure the SDAR / Fast-dLLM v2 recipes only; a D2F run refuses a
# non-default value rather than ignoring it.
OTHER_RECIPES_FLAGS = ("block_sizes", "answers_per_prompt", "causal_clean_fraction", "pack")
# Flags of the D2F recipe only (its argument group); any other family refuses a non-default value.
D2F_FLAGS = ("ar_mix", "ar_distill", "ar_weight", "lora_steps", "lora_warmup_steps", "lora_lr", "lora_rank",
             "lora_alpha", "lora_dropout", "lora_block_sizes", "data_weight", "min_mask_ratio", "choice_weight",
             "base_from", "ar_distill_temperature")
# Flags that only shape the base stage; with --base_from the base is that folder's, so a run refuses them.
BASE_STAGE_FLAGS = ("steps", "lr", "warmup_steps", "weight_decay", "ar_fraction", "ar_mix", "hidden_size",
                    "num_layers", "num_heads", "num_kv_heads", "head_dim", "intermediate_size", "rope_theta")


class TrainTinyHelpers(Protocol):
    """What this module uses of scripts/train_tiny.py (passed in as that module, so both recipes share one
    schedule, one task order and one record format without a script being imported from a package)."""

    PROG: str

    def lr_factor(self, step: int, progress: float, warmup: int, floor: float) -> float: ...

    def training_progress(self, step: int, steps: int, warmup: int, elapsed_s: float, budget_s: float) -> float: ...

    def in_ar_phase(self, step: int, progress: float, warmup: int, ar_fraction: float) -> bool: ...

    def weighted_tasks(self, tasks: Sequence[str], weights: Sequence[int] | None) -> tuple[str, ...]: ...

    def source_fingerprint(self) -> dict[str, str]: ...


def _int_list(text: str) -> list[int]:
    return [int(part) for part in text.split(",") if part.strip()]


def family_defaults(family: str) -> dict[str, Any]:
    """Defaults of the shared train_tiny.py flags for a D2F family (argparse `set_defaults`; explicit flags
    win). `--steps`, `--warmup_steps` and `--lr` are the BASE stage's.

    The shipped pairs' recipe (`models/d2f-*-tiny/README.md`); D2F-LLaDA's adapter was then retrained on its
    base with `--base_from`, `--task_weights 3,2,4,6 --ar_distill --ar_distill_temperature 0.5` (its card). A
    128-wide base (4 layers, 4 query / 2 KV
    heads of 32, feed-forward 384: 0.8M parameters): on masked-diffusion rows alone it learned to read its
    answer where a 192-wide one did not within the budget (`scripts/probe_d2f_base.py`), and with the AR
    warm start (`--ar_fraction 0.6`) the D2F-LLaDA pair's AR mode went from 0 / 22 / 26 / 72% of add /
    chain / digitsum / letters (greedy, 50 test items each, no warm start) to 100% on all four. With the
    warm start a 192-wide D2F-Dream base no longer fails, but it is slower and sampled worse in the same
    time (5,600 + 1,000 steps: add 90% at T = 1 on the validation split). Half of every later batch stays
    AR rows (`--ar_mix 0.5`); without them the base's AR mode fell back to 60-69% at T = 1. The adapter
    moves the attention the AR mode reads: trained on the true tokens at the D2F rows' weight for 1,000
    steps it cost the D2F-Dream base 3.5 / 3 points of add / digitsum at T = 1, and a 600-step one with
    `--ar_distill` 6 points of digitsum on a D2F-LLaDA base. Weighting its AR rows 5 to 1
    (`--ar_weight 5`, true tokens) makes the adapter stage add AR training instead. Sampled misses were
    mostly a free choice outside its written range and, in digitsum, the clipped range bounds:
    `--choice_weight 2` and digitsum's weight 3 -> 4 took D2F-Dream's validation worst task from 97.0
    (letters) to 98.0, and D2F-LLaDA's from 94.25 to 95.5 (digitsum 94.25 -> 98.25, letters 94.25 -> 97).
    Two threads, nothing else running, the math SDPA kernel in training: D2F-Dream 11,500 base steps
    (6,932 AR) + 1,000 adapter steps in 1,347 + 166 s = 25.2 min; D2F-LLaDA, whose AR rows need a doubled
    copy, 6,000 (3,632 AR) + 1,000 in 1,169 + 250 s = 23.6 min (its AR steps ran at 0.21-0.25 s in
    different runs on the same machine: 6,000 keeps the AR phase on its step schedule at 0.26 s). On a
    slower or loaded machine the cap binds: then the last steps follow the wall clock (`time_bound_steps`
    > 0 in the record, not deterministic); `--max_minutes 45` keeps a slower machine on the step schedule."""
    if family not in FAMILIES:
        raise ValueError(f"family={family!r}; D2F families: {', '.join(FAMILIES)}")
    # D2F-Dream's AR rows need no doubled copy, so its steps are cheaper and it takes more of them.
    steps = 6000 if family == "d2f_llada" else 11500
    return {"steps": steps, "lora_steps": 1000, "ar_fraction": 0.6, "task_weights": [2, 2, 4, 6],
            "ar_weight": 5.0, "choice_weight": 2.0, "warmup_steps": 80, "lr": 3e-3, "hidden_size": 128,
            "head_dim": 32, "intermediate_size": 384, "threads": 2,
            "output_dir": REGISTRY[family].tiny_model_dir.parent}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The D2F stage-2 (adapter) flags, as one argument group of train_tiny.py's parser."""
    base = family_defaults(FAMILIES[0])
    group = parser.add_argument_group(
        "D2F (--family d2f_llada / d2f_dream): stage 2, the LoRA adapter; --steps, --lr, --warmup_steps are stage "
        f"1's (the base), with the D2F-LLaDA defaults {base['steps']} / {base['lr']:g} / {base['warmup_steps']} "
        f"(D2F-Dream: {family_defaults(FAMILIES[1])['steps']} steps), and --output_dir defaults to the folder "
        "holding the registry's base/ and lora/")
    group.add_argument("--ar_mix", type=float, default=0.5,
                       help="stage 1: share of each masked-diffusion batch's rows that stay AR rows (block size "
                            "1) after the AR warm start, so the base keeps the AR mode it learned there")
    group.add_argument("--lora_steps", type=int, default=base["lora_steps"],
                       help="optimiser steps of the adapter stage (default: D2F-LLaDA's; D2F-Dream: "
                            f"{family_defaults(FAMILIES[1])['lora_steps']})")
    group.add_argument("--lora_warmup_steps", type=int, default=50)
    group.add_argument("--lora_lr", type=float, default=2e-3, help="peak AdamW learning rate of the adapter")
    group.add_argument("--lora_rank", type=int, default=32, help="LoRA r (32, as the released adapters)")
    group.add_argument("--lora_alpha", type=int, default=None,
                       help="LoRA alpha; default: the rank (scale 1, as the released adapters' 32/32)")
    group.add_argument("--lora_dropout", type=float, default=0.0, help="LoRA dropout (the released: 0.1)")
    group.add_argument("--lora_block_sizes", type=_int_list, default=[1, 1, 1, 4, 8],
                       help="block sizes drawn per row in the adapter stage; 1 = the AR row (the S2D2 "
                            "verifier's AR mode), >1 = a D2F row (block-causal, distilled)")
    group.add_argument("--data_weight", type=float, default=0.1,
                       help="weight of the true-token cross entropy beside the KL to the teacher in D2F rows "
                            "(and in AR rows with --ar_distill)")
    group.add_argument("--ar_distill", action=argparse.BooleanOptionalAction, default=False,
                       help="stage 2: the AR rows' target is the base's own AR mode (KL to the adapter-disabled "
                            "model on the same rows and mask, plus --data_weight times the cross entropy) "
                            "instead of the true tokens alone, so the adapter keeps the AR mode the base "
                            "learned")
    group.add_argument("--ar_distill_temperature", type=float, default=1.0,
                       help="with --ar_distill: the AR rows' target is the base's AR mode at this temperature "
                            "(softmax of its logits / T; below 1 a sharper target, whose argmax, the base's greedy "
                            "AR mode, is unchanged)")
    group.add_argument("--ar_weight", type=float, default=1.0,
                       help="stage 2: weight of an AR row's loss against a D2F row's (the D2F rows' distillation "
                            "moves the attention the AR mode also reads; a larger weight holds the AR mode). "
                            "Both D2F families default to 5 (family_defaults)")
    group.add_argument("--choice_weight", type=float, default=0.0,
                       help="both stages: AR rows add this times -log(the mass of the written range) at every free "
                            "choice (`lo..hi:c` in digitsum and letters), the mass a sampled decode can put outside "
                            "the range. Both D2F families default to 2 (family_defaults)")
    group.add_argument("--min_mask_ratio", type=float, default=0.1,
                       help="smallest mask ratio of a noised block in D2F rows (bounds the 1/ratio weight)")
    group.add_argument("--base_from", type=Path, default=None,
                       help="train only the adapter, on the base of a folder an earlier D2F run wrote (its base/ "
                            "and training_args.json): the base is copied to --output_dir/base, its record is "
                            "carried into the new one, and its wall time counts against --max_minutes. The "
                            "adapter's data stream starts from --seed (a full run continues the base's)")


def validate(args: argparse.Namespace, defaults: argparse.ArgumentParser, fail: Callable[[str], NoReturn]) -> None:
    """Reject bad D2F values, and flags of the other recipes, before anything heavy is imported; for any
    other family, reject the adapter flags. `defaults` is a freshly built train_tiny.py parser."""
    if args.family not in FAMILIES:
        changed = [name for name in D2F_FLAGS if getattr(args, name) != defaults.get_default(name)]
        if changed:
            fail(f"--{changed[0]} only applies to --family {' / '.join(FAMILIES)}")
        return
    for name in OTHER_RECIPES_FLAGS:
        if getattr(args, name) != defaults.get_default(name):
            fail(f"--{name} does not apply to --family {args.family} (its adapter stage draws "
                 f"--lora_block_sizes; its base is bidirectional)")
    if not 0.0 <= args.ar_mix < 1.0:
        fail(f"--ar_mix must be in [0, 1), got {args.ar_mix}")
    for name in ("lora_steps", "lora_rank"):
        if getattr(args, name) <= 0:
            fail(f"--{name} must be a positive integer, got {getattr(args, name)}")
    if args.lora_alpha is not None and args.lora_alpha <= 0:
        fail(f"--lora_alpha must be a positive integer, got {args.lora_alpha}")
    if not (math.isfinite(args.lora_lr) and args.lora_lr > 0):
        fail(f"--lora_lr must be a positive number, got {args.lora_lr}")
    if args.lora_warmup_steps < 0 or args.lora_warmup_steps >= args.lora_steps:
        fail(f"--lora_warmup_steps must be in [0, --lora_steps), got {args.lora_warmup_steps} with "
             f"--lora_steps {args.lora_steps}")
    if not 0.0 <= args.lora_dropout < 1.0:
        fail(f"--lora_dropout must be in [0, 1), got {args.lora_dropout}")
    if not args.lora_block_sizes or any(size <= 0 for size in args.lora_block_sizes):
        fail(f"--lora_block_sizes must be positive integers, got {args.lora_block_sizes}")
    if not (math.isfinite(args.data_weight) and args.data_weight >= 0):
        fail(f"--data_weight must be >= 0, got {args.data_weight}")
    if not (math.isfinite(args.ar_weight) and args.ar_weight > 0):
        fail(f"--ar_weight must be a positive number, got {args.ar_weight}")
    if not (math.isfinite(args.choice_weight) and args.choice_weight >= 0):
        fail(f"--choice_weight must be >= 0, got {args.choice_weight}")
    if not (math.isfinite(args.ar_distill_temperature) and args.ar_distill_temperature > 0):
        fail(f"--ar_distill_temperature must be a positive number, got {args.ar_distill_temperature}")
    if args.ar_distill_temperature != 1.0 and not args.ar_distill:
        fail("--ar_distill_temperature sets the target of --ar_distill; add --ar_distill")
    if not 0.0 < args.min_mask_ratio <= 1.0:
        fail(f"--min_mask_ratio must be in (0, 1], got {args.min_mask_ratio}")
    if args.head_dim * args.num_heads != args.hidden_size:
        fail(f"--family {args.family}: the head dimension is --hidden_size / --num_heads "
             f"({args.hidden_size} / {args.num_heads}), so --head_dim must be {args.hidden_size // args.num_heads} "
             f"(got {args.head_dim})")
    if args.base_from is not None:
        validate_base_from(args, defaults, fail)


def base_source(folder: Path) -> dict[str, Any] | None:
    """The training record of a pair folder written by a D2F run (None when it has no base/ or no record)."""
    record_path = Path(folder) / "training_args.json"
    if not (record_path.is_file() and (Path(folder) / "base" / "config.json").is_file()):
        return None
    return json.loads(record_path.read_text())


def base_origin(source: dict[str, Any]) -> dict[str, Any]:
    """The command and arguments that trained a record's base: its own, or, for a --base_from run, those it
    carried over."""
    origin = source.get("base_from", source)
    return {"command": origin["command"], "args": origin["args"]}


def validate_base_from(args: argparse.Namespace, defaults: argparse.ArgumentParser,
                       fail: Callable[[str], NoReturn]) -> None:
    """--base_from: a D2F pair folder of this family whose base left time for the adapter, and no base-stage
    flag that would be ignored."""
    family_values = family_defaults(args.family)
    for name in BASE_STAGE_FLAGS:
        if getattr(args, name) != family_values.get(name, defaults.get_default(name)):
            fail(f"--{name} shapes the base stage; with --base_from the base is {args.base_from}'s")
    source = base_source(args.base_from)
    if source is None:
        fail(f"--base_from {args.base_from}: not a folder written by train_tiny.py --family d2f_* (it needs "
             "base/config.json and training_args.json)")
    if source.get("family") != args.family:
        fail(f"--base_from {args.base_from} holds a {source.get('family')} pair, not {args.family}")
    base_wall = source["base"]["wall_time_s"]
    if base_wall >= 60.0 * args.max_minutes:
        fail(f"--base_from {args.base_from}: its base took {base_wall / 60:.1f} min, all of --max_minutes "
             f"{args.max_minutes:g}")


def config_sizes(args: argparse.Namespace) -> dict[str, Any]:
    """The size flags under the family's config keys (`synthetic.checkpoint.tiny_model`)."""
    if args.family == "d2f_llada":
        return dict(d_model=args.hidden_size, n_heads=args.num_heads, n_kv_heads=args.num_kv_heads,
                    n_layers=args.num_layers, mlp_hidden_size=args.intermediate_size, rope_theta=args.rope_theta)
    return dict(hidden_size=args.hidden_size, num_attention_heads=args.num_heads,
                num_key_value_heads=args.num_kv_heads, num_hidden_layers=args.num_layers,
                intermediate_size=args.intermediate_size, rope_theta=args.rope_theta)


# ---------------------------------------------------------------------------------------------------------
# Rows. Every batch is a list of encoded examples (ids = templated prompt + target + EOS, prompt_len),
# padded with the pad token to one length T: the trailing padding belongs to the answer.


def pad_examples(examples: Sequence[tuple[list[int], int]], pad_id: int) -> tuple["torch.Tensor", "torch.Tensor"]:
    """-> ids [B, T] (each example followed by pad tokens up to the longest), prompt_len [B]."""
    import torch

    width = max(len(ids) for ids, _ in examples)
    ids = torch.tensor([list(ids) + [pad_id] * (width - len(ids)) for ids, _ in examples])  # [B, T]
    return ids, torch.tensor([prompt_len for _, prompt_len in examples])


def base_rows(ids: "torch.Tensor", prompt_len: "torch.Tensor", mask_id: int,
              generator: "torch.Generator") -> dict[str, "torch.Tensor"]:
    """The masked-diffusion rows of stage 1 from ids [B, T] and prompt_len [B].

    Returns input_ids [B, T] (answer tokens masked with the row's ratio t), targets [B, T], scored [B, T]
    bool (the masked tokens), weight [B, T] (1/t), answer_len [B]; full attention, so no mask.
    """
    import torch

    batch, width = ids.shape
    answer = torch.arange(width)[None, :] >= prompt_len[:, None]  # [B, T]
    # Stratified ratios: one uniform draw in each of B equal slices of [0, 1), shuffled over the rows. Each
    # row's t is still U[eps, 1], so the objective's expectation is LLaDA's; the batch always spans the
    # whole range, which cuts the variance the 1/t weight gives a small batch (at 500 steps the base's
    # left-to-right CE was 0.69 nats against 0.86 with independent draws).
    slices = (torch.arange(batch) + torch.rand(batch, generator=generator)) / batch  # [B]
    ratio = MASK_RATIO_EPS + (1.0 - MASK_RATIO_EPS) * slices[torch.randperm(batch, generator=generator)]  # [B]
    scored = answer & (torch.rand(batch, width, generator=generator) < ratio[:, None])  # [B, T]
    return {"input_ids": torch.where(scored, mask_id, ids), "targets": ids, "scored": scored,
            "weight": (1.0 / ratio)[:, None].expand(batch, width), "answer_len": answer.sum(1)}


def mixed_ar_rows(batch_size: int, ar_mix: float) -> int:
    """How many of a masked-diffusion-phase batch's rows are AR rows (the first ones): --ar_mix of them,
    rounded, and never all of them. 32 rows at 0.5: 16."""
    return min(batch_size - 1, round(ar_mix * batch_size))


def prompt_blocks(prompt_len: "torch.Tensor", width: int, block_size: "torch.Tensor") -> "torch.Tensor":
    """Block index of every position [B, T] when the prompt is block 0 and blocks of block_size [B]
    follow it (D2F's prompt-relative layout; `common.masks.prefix_block_causal`). P=3, L=2, T=8:
    0 0 0 1 1 2 2 3."""
    import torch

    pos = torch.arange(width)[None, :]  # [1, T]
    after = torch.div(pos - prompt_len[:, None], block_size[:, None], rounding_mode="floor") + 1  # [B, T]
    return torch.where(pos < prompt_len[:, None], torch.zeros_like(after), after)


def block_mask(block: "torch.Tensor", noised: "torch.Tensor | None" = None) -> "torch.Tensor":
    """The student's attention from per-token block indices block [B, T] (-1 = batch padding) -> bool
    [B, T, T], True = may attend.

    Without `noised`: block-causal (a token sees every key of its own block and of earlier blocks). With
    noised [B, T] bool (the mask copies of a doubled row): a clean token sees clean keys of its own and
    earlier blocks, a noised token the clean keys of strictly earlier blocks and the noised keys of its own
    block. Each token keeps itself, so a padding row is never all-False (SDPA would give NaN).
    Blocks [0, 0, 1, 2], no noised tokens:     doubled, blocks [0, 1, 2 | 1, 2], noised | :
        1 1 0 0                                      1 0 0 | 0 0
        1 1 0 0                                      1 1 0 | 0 0
        1 1 1 0                                      1 1 1 | 0 0
        1 1 1 1                                      1 0 0 | 1 0
                                                     1 1 0 | 0 1
    """
    import torch

    q_block, kv_block = block[:, :, None], block[:, None, :]  # [B, T, 1], [B, 1, T]
    valid = kv_block >= 0
    if noised is None:
        allowed = kv_block <= q_block
    else:
        q_noised, kv_noised = noised[:, :, None], noised[:, None, :]
        clean_query = ~q_noised & ~kv_noised & (kv_block <= q_block)
        noised_query = q_noised & ((~kv_noised & (kv_block < q_block)) | (kv_noised & (kv_block == q_block)))
        allowed = clean_query | noised_query
    eye = torch.eye(block.shape[1], dtype=torch.bool)[None]
    return (allowed & valid) | eye


def d2f_rows(ids: "torch.Tensor", prompt_len: "torch.Tensor", block_size: "torch.Tensor", mask_id: int,
             min_ratio: float, generator: "torch.Generator") -> dict[str, "torch.Tensor"]:
    """D2F rows (block sizes [B] > 1) from ids [B, T]: prompt-relative blocks, per-block monotonic noise.

    A row has K = ceil(answer / block) blocks; S ~ U{0..K-1} leading ones are clean (settled), the other
    K - S draw ratios that are sorted uniforms on [min_ratio, 1] (so ratios never fall from one block to
    the next) and mask each of their tokens with that probability. Returns input_ids [B, T], targets,
    scored (masked tokens), weight (1/ratio of the token's block), answer_len [B], attention_mask
    [B, T, T] (block-causal) and teacher="full" (the KL target is the full-attention base).
    """
    import torch

    batch, width = ids.shape
    block = prompt_blocks(prompt_len, width, block_size)  # [B, T]
    n_blocks = torch.div(width - prompt_len + block_size - 1, block_size, rounding_mode="floor")  # [B]
    settled = torch.floor(torch.rand(batch, generator=generator) * n_blocks).long()  # [B] in [0, K)
    most = int(n_blocks.max())
    draws = min_ratio + (1.0 - min_ratio) * torch.rand(batch, most, generator=generator)  # [B, Kmax]
    # Draws beyond a row's K - S noised blocks sort to the end, so its first K - S values are the sorted
    # K - S draws it owns.
    unused = torch.arange(most)[None, :] >= (n_blocks - settled)[:, None]  # [B, Kmax]
    ratios = draws.masked_fill(unused, math.inf).sort(dim=1).values  # [B, Kmax]
    noised_block = (block > settled[:, None]) & (block > 0)  # [B, T]
    index = (block - 1 - settled[:, None]).clamp(0, most - 1)  # [B, T]
    ratio = torch.where(noised_block, ratios.gather(1, index), torch.zeros(()))  # [B, T]
    scored = torch.rand(batch, width, generator=generator) < ratio  # [B, T]; ratio 0: never
    weight = torch.where(scored, 1.0 / ratio.clamp_min(min_ratio), torch.zeros(()))  # [B, T]
    return {"input_ids": torch.where(scored, mask_id, ids), "targets": ids, "scored": scored, "weight": weight,
            "answer_len": width - prompt_len, "attention_mask": block_mask(block), "teacher": "full"}


def choice_ranges(ids: "torch.Tensor", colon_id: int, dot_id: int) -> tuple["torch.Tensor", "torch.Tensor"]:
    """The free choices of ids [B, T]: a token written right after its range, `lo..hi:c` (digitsum's digits,
    letters' letters; the suite's digits and letters are consecutive token ids). Returns lo, hi [B, T], the
    token ids bounding the choice at each position, -1 where the token is not a choice."""
    import torch

    lo = torch.full_like(ids, -1)
    hi = torch.full_like(ids, -1)
    if ids.shape[1] > 5:
        # Position p (>= 5) is a choice when p - 4 .. p - 1 read "..", hi, ":" after lo at p - 5.
        written = (ids[:, 4:-1] == colon_id) & (ids[:, 2:-3] == dot_id) & (ids[:, 1:-4] == dot_id)
        written &= ids[:, :-5] <= ids[:, 3:-2]
        lo[:, 5:] = torch.where(written, ids[:, :-5], -1)
        hi[:, 5:] = torch.where(written, ids[:, 3:-2], -1)
    return lo, hi


def ar_rows(ids: "torch.Tensor", prompt_len: "torch.Tensor", mask_id: int, pad_id: int,
            shifted: bool, range_tokens: tuple[int, int] | None = None) -> dict[str, "torch.Tensor"]:
    """AR rows (block size 1) from ids [B, T]: every answer token is a target of exactly the forward the
    AR mode / S2D2 verifier makes for it (clean prefix, stored token-causally; the prompt bidirectional).

    Shifted (Dream): the clean row itself under the block-causal mask at block size 1; the target p is
    read from row p - 1. Position-aligned (LLaDA): the doubled row [ids ‖ a mask at every answer
    position] with `position_ids`, the mask at p seeing the prompt, the clean answer before p and itself.
    Returns input_ids, targets, scored, weight (1), answer_len, attention_mask (and position_ids); with
    `range_tokens` (the ":" and "." ids) also choice_lo / choice_hi, `choice_ranges` of each row's targets.
    """
    import torch

    batch, width = ids.shape
    ones = torch.ones(batch, dtype=torch.long)
    block = prompt_blocks(prompt_len, width, ones)  # [B, T]
    answer = block > 0  # [B, T]
    answer_len = width - prompt_len
    choices = {}
    if range_tokens is not None:
        choices = dict(zip(("choice_lo", "choice_hi"), choice_ranges(ids, *range_tokens)))
    if shifted:
        return {"input_ids": ids, "targets": ids, "scored": answer, "weight": answer.float(),
                "answer_len": answer_len, "attention_mask": block_mask(block), "teacher": False, **choices}
    extra = int(answer_len.max())
    copy = torch.arange(extra)[None, :]  # [1, A]
    copy_pos = prompt_len[:, None] + copy  # [B, A]: the position each mask copy stands for
    copy_real = copy_pos < width  # [B, A]
    position = torch.cat([torch.arange(width)[None, :].expand(batch, width), copy_pos.clamp(max=width - 1)], 1)
    copy_ids = torch.where(copy_real, mask_id, pad_id)  # [B, A]
    copy_block = torch.where(copy_real, copy + 1, -1)  # [B, A]
    targets = ids.gather(1, copy_pos.clamp(max=width - 1))  # [B, A]
    noised = torch.cat([torch.zeros(batch, width, dtype=torch.bool), torch.ones(batch, extra, dtype=torch.bool)], 1)
    scored = torch.cat([torch.zeros(batch, width, dtype=torch.bool), copy_real], 1)  # [B, T + A]
    # The copies' choice bounds are those of the positions they stand for; the clean copy has none.
    copy_choices = {key: torch.cat([torch.full_like(ids, -1), bound.gather(1, copy_pos.clamp(max=width - 1))], 1)
                    for key, bound in choices.items()}
    return {"input_ids": torch.cat([ids, copy_ids], 1), "position_ids": position,
            "targets": torch.cat([ids, targets], 1), "scored": scored, "weight": scored.float(),
            "answer_len": answer_len, "attention_mask": block_mask(torch.cat([block, copy_block], 1), noised),
            "teacher": False, **copy_choices}


# ---------------------------------------------------------------------------------------------------------
# Losses.


def aligned_log_probs(logits: "torch.Tensor", shifted: bool) -> "torch.Tensor":
    """log-softmax in float32 (or wider) [B, T, V], moved so that row p scores token p: shifted models' logit at
    p - 1 predicts p (Dream's own `cat([logits[:, :1], logits[:, :-1]])`; row 0 is a prompt token and
    never scored)."""
    import torch

    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))  # float64 stays float64 (tests)
    if shifted:
        logits = torch.cat([logits[:, :1], logits[:, :-1]], dim=1)
    return torch.log_softmax(logits, dim=-1)


def row_losses(model: Any, rows: dict[str, "torch.Tensor"], shifted: bool, data_weight: float,
               teacher: Callable[[], Any] | None = None, choice_weight: float = 0.0,
               teacher_temperature: float = 1.0) -> dict[str, "torch.Tensor"]:
    """Per-row losses [B] of one group of rows: sum over scored tokens of weight * (KL(teacher || student)
    + data_weight * CE) when `teacher` (a context manager that turns the model into the teacher, e.g.
    `model.disable_adapter`) is given and the rows ask for it, else weight * CE; each row divided by its
    answer length. rows["teacher"]: "full" (the teacher sees the row with full attention: D2F rows),
    "same" (the teacher gets the student's inputs, mask and positions included: AR rows kept at the
    base's AR mode) or False. With `choice_weight` and rows carrying choice_lo / choice_hi (`ar_rows`), each
    scored free choice adds choice_weight * weight * -log(mass of its written range): the mass a sampled
    decode can put outside the range is what it costs. The teacher's distribution is the softmax of its
    logits / `teacher_temperature`. Returns {"loss", "kl", "data", "choice"}, each [B] (kl is 0 without a
    teacher, choice 0 without choice_weight)."""
    import torch

    inputs = {"input_ids": rows["input_ids"], "attention_mask": rows.get("attention_mask")}
    if "position_ids" in rows:
        inputs["position_ids"] = rows["position_ids"]
    student = aligned_log_probs(model(**inputs).logits, shifted)  # [B, T, V]
    ce = -student.gather(-1, rows["targets"][..., None])[..., 0]  # [B, T]
    scored, weight, length = rows["scored"], rows["weight"], rows["answer_len"].float()
    data = (ce * weight * scored).sum(1) / length  # [B]
    kl = torch.zeros_like(data)
    leak = torch.zeros_like(data)
    if choice_weight and "choice_lo" in rows:
        lo, hi = rows["choice_lo"], rows["choice_hi"]  # [B, T]
        choice = (lo >= 0) & scored  # [B, T]
        vocab = torch.arange(student.shape[-1], device=student.device)  # [V]
        # Every token counts as inside where there is no choice, so its log-mass is 0 (and its gradient too).
        inside = ((vocab >= lo[..., None]) & (vocab <= hi[..., None])) | ~choice[..., None]  # [B, T, V]
        range_nll = -torch.logsumexp(student.masked_fill(~inside, float("-inf")), dim=-1)  # [B, T]
        leak = (range_nll * weight * choice).sum(1) / length
    if rows.get("teacher") and teacher is not None:
        with torch.no_grad(), teacher():
            # "full": the same noised row with FULL attention (D2F rows have no batch padding).
            seen = inputs if rows["teacher"] == "same" else {"input_ids": rows["input_ids"]}
            logits = model(**seen).logits
            logits = logits.to(torch.promote_types(logits.dtype, torch.float32)) / teacher_temperature
            reference = aligned_log_probs(logits, shifted)  # [B, T, V]
        per_token = (reference.exp() * (reference - student)).sum(-1)  # [B, T]
        kl = (per_token * weight * scored).sum(1) / length
        return {"loss": kl + data_weight * data + choice_weight * leak, "kl": kl, "data": data, "choice": leak}
    return {"loss": data + choice_weight * leak, "kl": kl, "data": data, "choice": leak}


# ---------------------------------------------------------------------------------------------------------
# Training.


class _Stage:
    """The loop of one stage: optimiser steps under train_tiny.py's schedule and wall-clock cap, logging."""

    def __init__(self, name: str, helpers: TrainTinyHelpers, steps: int, warmup: int, lr: float,
                 min_lr_ratio: float, budget_s: float, log_every: int) -> None:
        self.name, self.helpers = name, helpers
        self.steps, self.warmup, self.lr, self.floor = steps, warmup, lr, min_lr_ratio
        self.budget_s, self.log_every = budget_s, log_every

    def run(self, params: list[Any], step_loss: Callable[[int, float], dict[str, "torch.Tensor"]], optimizer: Any,
            grad_clip: float) -> dict[str, Any]:
        """Run the stage; `step_loss(step, progress)` builds a batch and returns its mean losses ("loss"
        backpropagated); progress is train_tiny.py's `training_progress` in [0, 1]."""
        import torch
        from torch.nn.attention import SDPBackend, sdpa_kernel
        from tqdm import tqdm

        # On the CPU, SDPA's flash kernel with a mask has a backward ~10x its forward (40% of a D2F step
        # under the torch profiler); the math kernel, chosen here for the forward of the step only, took
        # D2F-Dream's base steps from 0.171 to 0.117 s and D2F-LLaDA's masked-diffusion-phase steps from 0.23
        # to 0.20 s (its doubled AR rows already ran on the math kernel), 2 threads, full runs.
        on_cpu = params[0].device.type == "cpu"
        start, cpu_start = time.perf_counter(), time.process_time()
        warm_end = 0.0
        losses: list[float] = []
        log: list[dict[str, Any]] = []
        ema: dict[str, float] = {}
        stopped_early = False
        time_bound_steps = 0
        bar = tqdm(range(self.steps), desc=self.name, dynamic_ncols=True, mininterval=2.0)
        for step in bar:
            elapsed = time.perf_counter() - start
            if elapsed > self.budget_s:
                stopped_early = True
                break
            if step <= self.warmup:
                warm_end = elapsed
            after_warmup = (elapsed - warm_end, self.budget_s - warm_end)
            progress = self.helpers.training_progress(step, self.steps, self.warmup, *after_warmup)
            time_bound_steps += progress > self.helpers.training_progress(step, self.steps, self.warmup, 0.0,
                                                                          after_warmup[1])
            lr = self.lr * self.helpers.lr_factor(step, progress, self.warmup, self.floor)
            for group in optimizer.param_groups:
                group["lr"] = lr
            with sdpa_kernel([SDPBackend.MATH]) if on_cpu else contextlib.nullcontext():
                parts = step_loss(step, progress)
            optimizer.zero_grad(set_to_none=True)
            parts["loss"].backward()
            torch.nn.utils.clip_grad_norm_(params, grad_clip)
            optimizer.step()
            values = {key: float(value.detach()) for key, value in parts.items()}
            losses.append(values["loss"])
            ema = {k: v if k not in ema else 0.98 * ema[k] + 0.02 * v for k, v in values.items()}
            bar.set_postfix(loss=f"{ema['loss']:.4f}", lr=f"{lr:.2e}", refresh=False)
            if (step + 1) % self.log_every == 0 or step + 1 == self.steps:
                entry = {"step": step + 1, **{f"{k}_ema": round(v, 5) for k, v in ema.items()}, "lr": lr,
                         "elapsed_s": round(time.perf_counter() - start, 1)}
                log.append(entry)
                bar.write(json.dumps(entry), file=sys.stderr)
        bar.close()
        wall, cpu = time.perf_counter() - start, time.process_time() - cpu_start
        tail = losses[-50:]
        return {"steps_done": len(losses), "stopped_early_by_max_minutes": stopped_early,
                "time_bound_steps": time_bound_steps, "wall_time_s": round(wall, 3),
                "seconds_per_step": round(wall / max(1, len(losses)), 4),
                # CPU seconds of this process: on a shared machine, what the step costs without waiting.
                "cpu_seconds_per_step": round(cpu / max(1, len(losses)), 4),
                "final_loss": round(sum(tail) / len(tail), 5) if tail else None, "log": log}


def train(args: argparse.Namespace, helpers: TrainTinyHelpers) -> dict[str, Any]:
    """Both stages; writes base/, lora/, training_args.json and README.md to args.output_dir and returns
    the record."""
    import torch
    import transformers
    from peft import LoraConfig, get_peft_model

    import D2F  # noqa: F401  (registers the D2F model types, so base/ reloads with the Auto classes)
    from D2F.lora import RELEASED_TARGET_MODULES
    from synthetic.checkpoint import save_checkpoint, tiny_model
    from synthetic.tasks import iter_training_items
    from synthetic.tokenizer import build_tokenizer, encode_example

    device = torch.device(args.device)
    torch.set_num_threads(args.threads)
    if device.type == "cpu":
        reuse_freed_memory()
    torch.manual_seed(args.seed)
    rng = random.Random(args.seed)
    generator = torch.Generator().manual_seed(args.seed)
    tokenizer = build_tokenizer()
    mask_id, pad_id = tokenizer.mask_token_id, tokenizer.pad_token_id
    range_tokens = tuple(tokenizer.convert_tokens_to_ids([":", "."])) if args.choice_weight else None
    shifted = REGISTRY[args.family].shift_aligned
    stream = iter_training_items(args.seed, helpers.weighted_tasks(args.tasks, args.task_weights))
    out = Path(args.output_dir)
    budget_s = 60.0 * args.max_minutes
    data_fingerprint = helpers.source_fingerprint()

    def next_batch() -> tuple["torch.Tensor", "torch.Tensor"]:
        return pad_examples([encode_example(tokenizer, next(stream)) for _ in range(args.batch_size)], pad_id)

    def on_device(rows: dict[str, Any]) -> dict[str, Any]:
        # Rows are drawn on the CPU (one generator, so a run's data does not depend on the device).
        return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in rows.items()}

    def autocast() -> Any:
        return torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.bf16)

    def train_base(model: Any) -> dict[str, Any]:
        """Stage 1 on `model` in place: the AR warm start, then masked diffusion with AR rows mixed in; returns
        the stage's record (with its log)."""
        n_params = sum(p.numel() for p in model.parameters())
        decay = [p for p in model.parameters() if p.dim() >= 2]
        no_decay = [p for p in model.parameters() if p.dim() < 2]
        optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": args.weight_decay},
                                       {"params": no_decay, "weight_decay": 0.0}],
                                      lr=args.lr, betas=(0.9, 0.98), eps=1e-8)
        base_share = args.steps / (args.steps + LORA_STEP_COST * args.lora_steps)
        print(f"{helpers.PROG}: {args.family}: base {n_params:,} parameters, {args.steps} steps; then a rank-"
              f"{args.lora_rank} LoRA, {args.lora_steps} steps over block sizes {args.lora_block_sizes}; "
              f"{args.max_minutes:g} minutes in all", file=sys.stderr)

        ar_steps = 0

        def base_step(step: int, progress: float) -> dict[str, "torch.Tensor"]:
            nonlocal ar_steps
            ids, prompt_len = next_batch()
            # The AR warm start: the first --ar_fraction of the schedule trains the AR rows (block size 1) of the
            # full network, then the masked-diffusion phase makes it the bidirectional base, with --ar_mix of its
            # rows still AR rows.
            ar_phase = helpers.in_ar_phase(step, progress, args.warmup_steps, args.ar_fraction)
            ar_steps += ar_phase
            n_ar = args.batch_size if ar_phase else mixed_ar_rows(args.batch_size, args.ar_mix)
            losses, logged = {}, {}
            with autocast():
                if n_ar:
                    rows = on_device(ar_rows(ids[:n_ar], prompt_len[:n_ar], mask_id, pad_id, shifted, range_tokens))
                    part = row_losses(model, rows, shifted, data_weight=0.0, choice_weight=args.choice_weight)
                    losses["ar_ce"] = part["loss"]
                    if args.choice_weight:  # ar_ce stays the cross entropy; the loss adds the range term
                        logged.update(ar_ce=part["data"].mean(), ar_choice=part["choice"].mean())
                if n_ar < args.batch_size:
                    rows = on_device(base_rows(ids[n_ar:], prompt_len[n_ar:], mask_id, generator))
                    losses["mdm"] = row_losses(model, rows, shifted, data_weight=0.0)["loss"]
            return {"loss": torch.cat(list(losses.values())).mean(), **{k: v.mean() for k, v in losses.items()},
                    **logged}

        stage = _Stage("base", helpers, args.steps, args.warmup_steps, args.lr, args.min_lr_ratio,
                       budget_s * base_share, args.log_every)
        return {**stage.run(list(model.parameters()), base_step, optimizer, args.grad_clip), "ar_steps": ar_steps}

    source = base_source(args.base_from) if args.base_from is not None else None
    if source is None:  # Stage 1: the bidirectional masked-diffusion base.
        model = tiny_model(args.family, tokenizer, **config_sizes(args)).to(device).train()
        base_record = train_base(model)
        base_dir = save_checkpoint(model.cpu(), out / "base")
        model.to(device)
    else:  # Stage 1 done by an earlier run: its base, copied beside the new adapter, and its record.
        model_class = load(REGISTRY[args.family].model_class)
        model = model_class.from_pretrained(str(args.base_from / "base"), torch_dtype=torch.float32).to(device).train()
        base_record = {**source["base"], "log": source["log"]["base"]}
        base_dir = out / "base"
        if base_dir.resolve() != (args.base_from / "base").resolve():
            shutil.copytree(args.base_from / "base", base_dir, dirs_exist_ok=True)
        print(f"{helpers.PROG}: {args.family}: the base of {args.base_from} ({base_record['steps_done']:,} steps "
              f"in {base_record['wall_time_s'] / 60:.1f} min); a rank-{args.lora_rank} LoRA, {args.lora_steps} "
              f"steps over block sizes {args.lora_block_sizes}", file=sys.stderr)
    n_params = sum(p.numel() for p in model.parameters())

    # Stage 2: the D2F adapter on the frozen base.
    targets = list(RELEASED_TARGET_MODULES[MODEL_TYPES[args.family]])
    lora_config = LoraConfig(r=args.lora_rank, lora_alpha=args.lora_alpha or args.lora_rank,
                             lora_dropout=args.lora_dropout, target_modules=targets)
    peft_model = get_peft_model(model, lora_config)
    peft_model.train()
    trainable = [p for p in peft_model.parameters() if p.requires_grad]
    n_lora = sum(p.numel() for p in trainable)
    optimizer = torch.optim.AdamW(trainable, lr=args.lora_lr, betas=(0.9, 0.98), eps=1e-8, weight_decay=0.0)

    def lora_step(step: int, progress: float) -> dict[str, "torch.Tensor"]:
        ids, prompt_len = next_batch()
        sizes = torch.tensor([rng.choice(args.lora_block_sizes) for _ in range(args.batch_size)])  # [B]
        ar = sizes == 1  # [B], on the host: which rows are AR rows
        groups = {}
        if bool(ar.any()):
            groups["ar"] = {**ar_rows(ids[ar], prompt_len[ar], mask_id, pad_id, shifted, range_tokens),
                            "teacher": "same" if args.ar_distill else False}
        if bool((~ar).any()):
            groups["d2f"] = d2f_rows(ids[~ar], prompt_len[~ar], sizes[~ar], mask_id, args.min_mask_ratio, generator)
        with autocast():
            parts = {kind: row_losses(peft_model, on_device(rows), shifted, args.data_weight,
                                      peft_model.disable_adapter, args.choice_weight,
                                      args.ar_distill_temperature if kind == "ar" else 1.0)
                     for kind, rows in groups.items()}
        # The mean over the batch's rows (AR rows first), an AR row's loss weighing --ar_weight.
        weighted = torch.cat([part["loss"] * (args.ar_weight if kind == "ar" else 1.0) for kind, part in parts.items()])
        logged = {"loss": weighted.mean(),
                  "kl": parts["d2f"]["kl"].mean() if "d2f" in parts else torch.zeros(()),
                  "ar_ce": parts["ar"]["data"].mean() if "ar" in parts else torch.zeros(())}
        if args.choice_weight:
            logged["ar_choice"] = parts["ar"]["choice"].mean() if "ar" in parts else torch.zeros(())
        if args.ar_distill:
            logged["ar_kl"] = parts["ar"]["kl"].mean() if "ar" in parts else torch.zeros(())
        return logged

    lora_budget = max(0.0, budget_s - base_record["wall_time_s"])
    stage = _Stage("lora", helpers, args.lora_steps, args.lora_warmup_steps, args.lora_lr, args.min_lr_ratio,
                   lora_budget, args.log_every)
    lora_record = stage.run(trainable, lora_step, optimizer, args.grad_clip)
    # The folder records where its base is; load_d2f is always given both folders.
    peft_model.peft_config["default"].base_model_name_or_path = str(base_dir)
    lora_dir = out / "lora"
    peft_model.cpu().save_pretrained(str(lora_dir))
    # PEFT writes a generic README.md template into the adapter folder; the card is out/README.md.
    (lora_dir / "README.md").unlink(missing_ok=True)

    record = {
        "command": args.command,
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k != "command"},
        "seed": args.seed,
        "family": args.family,
        "parameters": n_params,
        "lora_parameters": n_lora,
        "lora_target_modules": targets,
        **({"base_from": {**base_origin(source), "dir": str(args.base_from)}} if source is not None else {}),
        "base": {k: v for k, v in base_record.items() if k != "log"},
        "lora": {k: v for k, v in lora_record.items() if k != "log"},
        "wall_time_s": round(base_record["wall_time_s"] + lora_record["wall_time_s"], 3),
        "final_loss_note": "base: mean 1/t-weighted masked-token cross entropy per answer token of the last "
                           "50 steps; lora: mean of KL-to-teacher + data_weight * CE (D2F rows) and CE (AR "
                           "rows; with --ar_distill, KL to the base's AR mode + data_weight * CE; with "
                           "--choice_weight, plus that times the written ranges' -log mass at free choices) per "
                           "answer token of the last 50 steps (nats)",
        "time_bound_note": "steps whose LR followed the wall-clock fraction of the stage's share of "
                           "--max_minutes (when 0 in both stages, the run is deterministic from its seed)",
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__,
                     "peft": __import__("peft").__version__, "python": sys.version.split()[0]},
        "threads": args.threads,
        "load_average_at_end": os.getloadavg(),
        "data_sources_sha256": data_fingerprint,
        "log": {"base": base_record["log"], "lora": lora_record["log"]},
    }
    (out / "training_args.json").write_text(json.dumps(record, indent=2) + "\n")
    write_model_card(out, record)
    return record


# ---------------------------------------------------------------------------------------------------------
# Model card.

CARD_TITLES = {"d2f_llada": "d2f-llada-tiny", "d2f_dream": "d2f-dream-tiny"}
ARCHITECTURES = {
    "d2f_llada": "LLaDA (`D2F/modeling_llada.py`, `model_type: llada`, class `LLaDAModelLM`): pre-norm RMSNorm, "
                 "RoPE, SwiGLU (`ff_proj`, `up_proj` -> `ff_out`), no biases, untied output head, bidirectional "
                 "attention, position-aligned logits (the logit at t predicts token t)",
    "d2f_dream": "Dream (`D2F/modeling_dream.py`, `model_type: Dream`, class `DreamModel`): Qwen2 maths (q/k/v "
                 "bias, no o_proj bias, GQA, RoPE, SwiGLU), untied output head, bidirectional attention, "
                 "shift-aligned logits (the logit at t - 1 predicts token t)",
}


MEASURED_HEADER = "## Measured on the shipped test split"


def temperature_text(args: dict[str, Any]) -> str:
    """The card's words for a sharpened --ar_distill target ("" at temperature 1)."""
    temperature = args.get("ar_distill_temperature", 1.0)  # absent from records older than the flag
    if temperature == 1.0:
        return ""
    return (f", at temperature {temperature:g}: the softmax of its logits / {temperature:g}, "
            f"`--ar_distill_temperature {temperature:g}`")


def choice_text(args: dict[str, Any], base_args: dict[str, Any]) -> str:
    """The card's words for --choice_weight: one weight when both stages used it (a full run), each stage's
    when a --base_from adapter used another than its base ("" when neither used one)."""
    adapter, base = args.get("choice_weight", 0.0), base_args.get("choice_weight", 0.0)
    if not (adapter or base):
        return ""
    pays = (f"In both stages an AR row also pays {adapter:g}" if adapter == base else
            f"An AR row also pays {adapter:g} in the adapter stage and {base:g} in the base's")
    flag = f"`--choice_weight {adapter:g}`" if adapter == base else "`--choice_weight`"
    return (f" {pays} × −log(the probability of the written range) at each free choice (`lo..hi:c` in digitsum "
            f"and letters; {flag}): the mass outside the range is what a sampled decode can get wrong there.")


def command_lines(record: dict[str, Any]) -> list[str]:
    """The card's training-command item: one command, or, for a --base_from run, the base's and then the
    adapter's."""
    args, threads = record["args"], record["threads"]
    setting = (f"seed {record['seed']}, {threads} torch thread{'s' if threads > 1 else ''}, bf16 autocast "
               f"{'on' if args['bf16'] else 'off'}, `--max_minutes {args['max_minutes']:g}` for both stages")
    if "base_from" not in record:
        return [f"- **Training command** ({setting}):", "  ```bash", f"  {record['command']}", "  ```"]
    origin = record["base_from"]
    return [f"- **Training commands**: the base is that of the first command's run (its adapter replaced); the "
            f"second trains this adapter on it (`--base_from` names the folder the first wrote, "
            f"`{origin['dir']}` here; {setting}, the base's wall time counted):",
            "  ```bash", f"  {origin['command']}", f"  {record['command']}", "  ```"]


def write_model_card(out_dir: str | Path, record: dict[str, Any]) -> Path:
    """Write `out_dir/README.md` for a trained D2F tiny pair from its training record: what it is, the
    exact command, the measured training numbers, and the evaluation sections still to be filled in from
    sweep records (marked "not measured yet"). A card whose evaluation sections were filled in keeps them:
    everything from `MEASURED_HEADER` on is carried over when it no longer says "Not measured yet"."""
    family, args = record["family"], record["args"]
    base_args = record.get("base_from", record)["args"]  # the base's stage-1 and size flags
    title = CARD_TITLES[family]
    config = json.loads((Path(out_dir) / "base" / "config.json").read_text())
    base, lora = record["base"], record["lora"]
    size_mb = sum(f.stat().st_size for sub in ("base", "lora") for f in (Path(out_dir) / sub).iterdir()) / 2**20
    heads = config.get("n_heads", config.get("num_attention_heads"))
    kv_heads = config.get("n_kv_heads", config.get("num_key_value_heads"))

    def stage_line(name: str, stage: dict[str, Any]) -> str:
        early = "; **stopped by --max_minutes**" if stage["stopped_early_by_max_minutes"] else ""
        return (f"- {name}: {stage['steps_done']:,} steps in {stage['wall_time_s']:.0f} s ({stage['seconds_per_step']:.3f} "
                f"s/step, {stage['cpu_seconds_per_step']:.3f} CPU s/step), {stage['time_bound_steps']} steps on the "
                f"wall-clock schedule{early}; final loss {stage['final_loss']} nats")

    ar_mix = base_args.get("ar_mix", 0.0)  # records written before --ar_mix existed had none
    results = f"results/{family}/"
    text = "\n".join([
        f"# {title} — the repository's tiny {REGISTRY[family].title} pair (base + D2F LoRA adapter)",
        "",
        "A bidirectional masked-diffusion base and a D2F LoRA adapter, trained by this repository on its synthetic "
        "reasoning suite (`synthetic/`) in the released artefacts' format: `base/` is a model folder, `lora/` a PEFT "
        "adapter folder (`adapter_config.json` + `adapter_model.safetensors`). Load both with "
        f"`D2F.lora.load_d2f(base_dir, lora_dir, ...)`; decode with `python D2F/example_d2f.py --family "
        f"{family.removeprefix('d2f_')}`. It is not a mock.",
        "",
        f"- **Architecture**: {ARCHITECTURES[family]}. {base_args['num_layers']} layers, hidden "
        f"{base_args['hidden_size']}, {heads} query / {kv_heads} KV heads, feed-forward "
        f"{base_args['intermediate_size']}, RoPE θ = {base_args['rope_theta']:g}, "
        f"{config['vocab_size']}-token character vocabulary (mask `<|MASK|>` = {config['mask_token_id']}, stop "
        f"`<|im_end|>`, pad `<|endoftext|>`). {record['parameters']:,} base parameters; the adapter (rank "
        f"{args['lora_rank']}, alpha {args['lora_alpha'] or args['lora_rank']}, dropout {args['lora_dropout']}, targets "
        f"{', '.join(f'`{m}`' for m in record['lora_target_modules'])}) adds {record['lora_parameters']:,}. Both "
        f"folders: {size_mb:.1f} MB.",
        f"- **Stage 1, the base** ({base_args['steps']:,} steps, batch {base_args['batch_size']}, peak LR "
        f"{base_args['lr']:g}): an AR warm start ({base.get('ar_steps', 0):,} steps of the AR mode's rows, block size "
        f"1, `--ar_fraction {base_args['ar_fraction']:g}`), then the masked-diffusion objective with bidirectional "
        "attention on "
        f"{1 - ar_mix:.0%} of each batch's rows (the rest AR rows, `--ar_mix {ar_mix:g}`), "
        f"t ~ U[{MASK_RATIO_EPS:g}, 1] per row (stratified over the batch: one draw in each of its equal slices of "
        "the range), the prompt "
        "never masked, trailing padding trained as answer tokens, the loss weighted by 1/t "
        "(`synthetic/train_d2f.py`).",
        f"- **Stage 2, the D2F adapter** ({args['lora_steps']:,} steps, peak LR {args['lora_lr']:g}, the base frozen): "
        f"block sizes drawn per row from {args['lora_block_sizes']}. Above 1: prompt-relative blocks, a block-causal "
        f"student, per-block monotonic noise (ratios ≥ {args['min_mask_ratio']:g}), KL to the adapter-disabled "
        f"full-attention base plus {args['data_weight']:g} × the true-token cross entropy, weighted by 1/ratio. Block "
        + ("size 1: the AR mode's exact forward, KL to the adapter-disabled base on that same forward (its own AR "
           f"mode, `--ar_distill`{temperature_text(args)}) plus {args['data_weight']:g} × the true-token cross "
           "entropy."
           if args.get("ar_distill") else "size 1: the AR mode's exact forward, true-token cross entropy.")
        + (f" An AR row's loss weighs {args['ar_weight']:g}× a D2F row's (`--ar_weight {args['ar_weight']:g}`): "
           "the D2F rows' distillation moves the attention that the AR mode also reads."
           if args.get("ar_weight", 1.0) != 1.0 else "")
        + choice_text(args, base_args),
        *command_lines(record),
        stage_line("base", base),
        stage_line("adapter", lora),
        f"- Wall time {record['wall_time_s'] / 60:.1f} min in all (load average at the end: "
        f"{', '.join(f'{x:.2f}' for x in record['load_average_at_end'])}). `training_args.json` holds the full "
        "record, the loss logs and the hashes of `synthetic/tasks.py` and of the test split it was trained against.",
        "",
        f"{MEASURED_HEADER} (400 items, 100 per task)",
        "",
        "Not measured yet. To be filled in from the sweep records under " + f"`{results}`: AR mode "
        "(`configs/decoding/d2f_ar.yaml`, block size 1) greedy and at T = 1, the `d2f` decoder over its "
        "thresholds, and S2D2. The bars: AR mode ≥ 95% per task; S2D2 ≥ 2× AR mode's tokens per forward within "
        "2 points of its accuracy.",
        "",
    ])
    path = Path(out_dir) / "README.md"
    old = path.read_text() if path.is_file() else ""
    if MEASURED_HEADER in old and "Not measured yet" not in old:
        text = text[: text.index(MEASURED_HEADER)] + old[old.index(MEASURED_HEADER):]
    path.write_text(text)
    return path


if __name__ == "__main__":
    # python -m synthetic.train_d2f OUT_DIR: rewrite OUT_DIR/README.md from OUT_DIR/training_args.json.
    if len(sys.argv) != 2 or not (Path(sys.argv[1]) / "training_args.json").is_file():
        sys.exit("usage: python -m synthetic.train_d2f OUT_DIR (a folder written by train_tiny.py --family d2f_*)")
    print(write_model_card(sys.argv[1], json.loads((Path(sys.argv[1]) / "training_args.json").read_text())))
