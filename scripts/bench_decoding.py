"""Decoding benchmark on a shipped tiny model: our AR mode, the family's baseline, S2D2 (paper config A
and greedy-exact) and, where the family has a transformers twin, transformers' own `generate` with its
KV cache on the same weights. Every family: sdar, fast_dllm_v2, llada2, d2f_llada, d2f_dream (D2F: the
base with its shipped adapter merged).

    python scripts/bench_decoding.py                                # SDAR, 16 prompts per task, 3 repeats
    python scripts/bench_decoding.py --family fast_dllm_v2 --out bench.json
    python scripts/bench_decoding.py --family d2f_llada --per_task 4 --repeats 1   # no hf_generate there
    python scripts/bench_decoding.py --per_task 2 --repeats 1 --batch_sizes 1,4 --gen_length 32   # quick look

Contenders (each decoder's flags are read from its preset in configs/decoding/ and placed at the model's
block length as the family's sweep places them, so the benchmark runs exactly what the published tables
run: `${model.block_length}` is the model's block size, and SDAR's block decoders (all but AR mode) are
moved to it with their steps scaled, as `configs/sweep/sdar.yaml`'s top-level `block_length` does):
* `hf_generate`: `Qwen3ForCausalLM.generate` (SDAR) / `Qwen2ForCausalLM.generate` (Fast-dLLM v2,
  D2F-Dream), greedy, KV cache, SDPA attention, holding the decoded model's weights (the shipped
  safetensors as loaded: every key must match, none is renamed). Fast-dLLM v2 is shift-aligned like a
  causal LM, so this is the same greedy decoder as our AR mode and must give the same tokens (the record
  checks it). SDAR predicts each masked position at its own position, and D2F reads the prompt as one
  bidirectional block, so there a causal LM's reading of the weights is not the trained task: it is a
  COST baseline only, end of sequence suppressed and each row generating exactly as many tokens as our
  AR mode wrote for it (a batch runs until its longest row is done, as our decoders do; rows are
  credited their own count), and it gets no accuracy. LLaDA2 (MoE) and D2F-LLaDA have no twin.
* `ar`: our AR mode (block length 1, one forward per token): ar / fast_ar / llada2_ar / d2f_ar;
* `baseline`: dynamic / fast_threshold / llada2_conservative / d2f_paper;
* `s2d2_config_a`: s2d2_config_a / fast_config_a / llada2_s2d2_conservative / d2f_s2d2 (stochastic
  acceptance, seeded);
* `s2d2_greedy`: s2d2_greedy / fast_greedy / llada2_greedy / d2f_s2d2_greedy (greedy-exact acceptance).

Prompts: the first `--per_task` items of each task of the synthetic test split, task after task in file
order, templated and tokenised as scripts/eval_tiny.py does, left padded. Every batch size decodes the
same prompts in consecutive chunks of B (ragged prompts and completions, as a server would see them).

Protocol: per batch size, every contender first makes one untimed warm-up pass over the first chunk and
one profiled pass (below); then `--repeats` timed passes over all prompts, contenders interleaved and
their order rotated by one each repeat. Reported times are medians over the repeats of wall time
(time.perf_counter), the calling thread's CPU time (time.thread_time) and the process CPU time
(time.process_time); tokenisation and scoring are outside the timed region. Tokens/s = generated
tokens / median wall time; on a shared machine the thread CPU figure is the steadier one. The load
average (os.getloadavg) before and after, the torch thread count and the CPU model are in the record,
and whether glibc keeps freed memory for reuse (`families.cpu_memory`, set for every CPU run; the
warm-up passes hide the difference it makes to a fresh process).

Counted, not timed (machine-independent):
* generated tokens (up to and including the stop token), NFE and TPF from the decoders' stats
  (TPF = generated tokens / non-prefill forwards charged to a row; for hf_generate every forward of a
  batch is charged to every row and its first forward is the prefill);
* forwards and rows processed: a forward pre-hook on the decoder stack (`model.base_model`) counts
  every model forward and adds its batch rows. Rows processed is the work a batch really does: a row
  riding along in a forward counts even when the decoder does not charge it NFE;
* steps: decoding iterations = forwards other than verifications (a verification belongs to the step
  whose drafts it checks; the prefill counts as a step), at every batch size: our decoders charge each
  forward to its rows through `common.stats.DecodeRecorder.forward` with its kind, which is counted
  (every kind but "verify"); every hf_generate forward is a step. At batch 1, where every forward is
  charged to the one row, this is NFE minus verify NFE (the test checks it);
* profiled pass (torch.profiler, CPU activity, on the first max(B, 8) prompts in chunks of B):
  - top-level ops outside model forwards: profiler events with no parent op, excluding the model's
    own forwards (the hooks wrap the outermost causal-LM, decoder-stack or LM-head call in a
    `bench::model_forward` range, so a decoder that calls the stack and the head separately is
    still measured the same way). The whole decode call counts: setup, loop and stats;
  - host syncs: device-to-host reads that make the host wait for the device on a GPU: every
    `aten::_local_scalar_dense` (what `.item()`, `bool()`, `int()`, `float()` of a tensor reduce to),
    every data-dependent-shape op in SYNC_OPS (e.g. `aten::nonzero`, also when nested in boolean
    indexing) and every Python-level `Tensor.tolist()` call (on the CPU it dispatches no op, so it is
    counted by wrapping the method during the profiled pass). Reported outside and inside the model
    forwards separately; `.cpu()` copies are not counted;
  - peak memory: on the CPU the highest running sum of the profiler's allocation events
    (profile_memory) during the decode call, on CUDA torch.cuda.max_memory_allocated; both relative to
    what was allocated before the call (weights excluded);
* CPU time outside model forwards: the thread CPU time of the timed passes minus the thread CPU time
  spent inside model forwards (read by the same hooks), per step at batch 1 and per forward.
* tokens at batch B against batch 1, per prompt, for the greedy contenders: the number of prompts
  whose tokens differ (`mismatched_rows_vs_batch_1`).

Human-readable tables go to stderr; ONE JSON record is printed last on stdout (`--out FILE` also
writes it, atomically). Every argument, and the model directory's family (its config.json's model_type
against --family; for D2F also the shipped adapter folder), is checked before torch is imported.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from common.cli import ScriptParser
from families import FAMILIES as REGISTRY
from families.cpu_memory import reuse_freed_memory
from synthetic.tasks import TASKS, TEST_SPLIT_PATH, load_jsonl

SCRIPTS_DIR = Path(__file__).resolve().parent
if str(SCRIPTS_DIR) not in sys.path:  # run as a script it is there already; imported by path (tests), not
    sys.path.insert(0, str(SCRIPTS_DIR))
from eval_tiny import model_dir_error  # noqa: E402  (no torch import)

REPO_ROOT = SCRIPTS_DIR.parent
PRESET_DIR = REPO_ROOT / "configs" / "decoding"
DEFAULT_BATCH_SIZES = "1,4,8,16,64"
DEFAULT_GEN_LENGTH = 64
"""The eval budget (scripts/eval_tiny.py): the longest synthetic answer is 56 tokens with its EOS."""
PROFILE_PROMPTS = 8
"""The profiled pass decodes at least this many prompts, so per-step figures average over several."""
MODEL_SCOPE = "bench::model_forward"
SYNC_OPS = frozenset({
    "aten::_local_scalar_dense",  # item(), bool(), int(), float() of a tensor
    "aten::nonzero",  # output shape depends on values (also inside boolean indexing)
    "aten::masked_select",
    "aten::unique_consecutive",
    "aten::_unique2",
    "aten::unique_dim",
})
"""Ops that read device values on the host: on a GPU each one waits for the device."""
CONTENDERS = ("hf_generate", "ar", "baseline", "s2d2_config_a", "s2d2_greedy")
GREEDY = frozenset({"hf_generate", "ar", "baseline", "s2d2_greedy"})
"""Contenders whose tokens depend on no random draw (s2d2_config_a's acceptance rule samples)."""


@dataclass(frozen=True)
class Family:
    """The benchmark's side of a registered family (families.FAMILIES[registry]: its tiny model, adapter and
    budget keyword): its presets and transformers twin."""

    registry: str  # families.FAMILIES key
    model_preset: Path  # configs/model/*.yaml: the block length `${model.block_length}` resolves to
    presets: dict[str, str]  # contender -> preset name in configs/decoding/
    hf_class: str | None  # transformers causal LM with the same key names (None: no hf_generate contender)
    hf_config: str | None
    hf_config_keys: tuple[str, ...]  # config fields copied to the transformers config
    shifted: bool  # our AR mode is a causal LM's greedy decoder: HF greedy must give the same tokens
    moves_block: bool  # its sweep sets the top-level block_length: non-AR presets move to the model's

    @property
    def model_dir(self) -> Path:
        return REGISTRY[self.registry].tiny_model_dir

    @property
    def budget_field(self) -> str:  # the decoders' generation-budget keyword
        return REGISTRY[self.registry].budget_field

    @property
    def contenders(self) -> tuple[str, ...]:
        return tuple(name for name in CONTENDERS if self.hf_class or name != "hf_generate")


_QWEN_KEYS = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
              "num_key_value_heads", "hidden_act", "max_position_embeddings", "initializer_range", "rms_norm_eps",
              "tie_word_embeddings", "rope_theta", "rope_scaling")
MODEL_PRESETS = REPO_ROOT / "configs" / "model"
FAMILIES = {
    "sdar": Family(
        "sdar", MODEL_PRESETS / "sdar_tiny.yaml",
        {"ar": "ar", "baseline": "dynamic", "s2d2_config_a": "s2d2_config_a", "s2d2_greedy": "s2d2_greedy"},
        "Qwen3ForCausalLM", "Qwen3Config", _QWEN_KEYS + ("head_dim", "attention_bias"), False, True,
    ),
    "fast_dllm_v2": Family(
        "fast_dllm_v2", MODEL_PRESETS / "fast_dllm_v2_tiny.yaml",
        {"ar": "fast_ar", "baseline": "fast_threshold", "s2d2_config_a": "fast_config_a",
         "s2d2_greedy": "fast_greedy"},
        "Qwen2ForCausalLM", "Qwen2Config", _QWEN_KEYS, True, False,
    ),
    # LLaDA2 (MoE) and D2F-LLaDA have no transformers twin. D2F-Dream is Qwen2-shaped (base + merged LoRA)
    # and shift-aligned, but D2F reads the prompt as one bidirectional block, so a causal LM's greedy
    # tokens are not its AR mode's: there hf_generate is a cost baseline at forced lengths, as for SDAR.
    "llada2": Family(
        "llada2", MODEL_PRESETS / "llada2_tiny.yaml",
        {"ar": "llada2_ar", "baseline": "llada2_conservative", "s2d2_config_a": "llada2_s2d2_conservative",
         "s2d2_greedy": "llada2_greedy"},
        None, None, (), False, False,
    ),
    "d2f_llada": Family(
        "d2f_llada", MODEL_PRESETS / "d2f_llada_tiny.yaml",
        {"ar": "d2f_ar", "baseline": "d2f_paper", "s2d2_config_a": "d2f_s2d2", "s2d2_greedy": "d2f_s2d2_greedy"},
        None, None, (), False, False,
    ),
    "d2f_dream": Family(
        "d2f_dream", MODEL_PRESETS / "d2f_dream_tiny.yaml",
        {"ar": "d2f_ar", "baseline": "d2f_paper", "s2d2_config_a": "d2f_s2d2", "s2d2_greedy": "d2f_s2d2_greedy"},
        "Qwen2ForCausalLM", "Qwen2Config", _QWEN_KEYS, False, False,
    ),
}


# ------------------------------------------------------------------------------------ arguments


def build_parser() -> ScriptParser:
    parser = ScriptParser(prog="bench_decoding.py",
                          description="Decoding benchmark: HF generate, AR mode, baseline and S2D2 on a tiny model.",
                          epilog=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--family", choices=sorted(FAMILIES), default="sdar")
    parser.add_argument("--model_dir", type=Path, default=None, help="default: the family's shipped tiny model")
    parser.add_argument("--split", type=Path, default=TEST_SPLIT_PATH, help="JSONL items (default: the test split)")
    parser.add_argument("--tasks", default=",".join(TASKS), help="comma-separated tasks")
    parser.add_argument("--per_task", type=int, default=16, help="prompts per task (first N in file order)")
    parser.add_argument("--batch_sizes", default=DEFAULT_BATCH_SIZES, help="comma-separated, must include 1")
    parser.add_argument("--repeats", type=int, default=3, help="timed passes per contender and batch size")
    parser.add_argument("--gen_length", "--max_new_tokens", dest="gen_length", type=int, default=DEFAULT_GEN_LENGTH,
                        help="generation budget in tokens for every contender")
    parser.add_argument("--block_length", type=int, default=None,
                        help="SDAR: move the block decoders to this block length (default: the model's, as the sweep)")
    parser.add_argument("--contenders", default=None, help="comma-separated subset of " + ", ".join(CONTENDERS)
                        + " (default: all; hf_generate only where the family has a transformers twin)")
    parser.add_argument("--seed", type=int, default=0, help="seeds torch and each pass's sampling generator")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    parser.add_argument("--out", type=Path, default=None, help="also write the JSON record here (atomically)")
    return parser


def _int_list(parser: ScriptParser, flag: str, text: str) -> list[int]:
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        parser.error(f"{flag} must be comma-separated integers, got {text!r}")
    if not values:
        parser.error(f"{flag} is empty")
    return values


def validate(parser: ScriptParser, args: argparse.Namespace) -> list[dict]:
    """Check every argument (no torch yet); returns the chosen items, task after task."""
    for name in ("per_task", "repeats", "gen_length", "threads"):
        if getattr(args, name) <= 0:
            parser.error(f"--{name} must be a positive integer, got {getattr(args, name)}")
    if args.block_length is not None:
        if not FAMILIES[args.family].moves_block:
            parser.error(f"--block_length moves SDAR's block decoders; {args.family} decodes at its model's block size")
        if args.block_length <= 0:
            parser.error(f"--block_length must be a positive integer, got {args.block_length}")
    tasks = [t for t in args.tasks.split(",") if t]
    unknown = [t for t in tasks if t not in TASKS]
    if not tasks or unknown:
        parser.error(f"--tasks: unknown task(s) {unknown or tasks}; valid: {', '.join(TASKS)}")
    family = FAMILIES[args.family]
    if args.contenders is None:
        args.contenders = ",".join(family.contenders)
    contenders = [c for c in args.contenders.split(",") if c]
    if not contenders or any(c not in CONTENDERS for c in contenders) or len(set(contenders)) != len(contenders):
        parser.error(f"--contenders must name distinct contenders among {', '.join(CONTENDERS)}; got {args.contenders!r}")
    if "hf_generate" in contenders and family.hf_class is None:
        parser.error(f"hf_generate: {args.family} has no transformers twin; drop it from --contenders")
    if "hf_generate" in contenders and not FAMILIES[args.family].shifted and "ar" not in contenders:
        parser.error(f"hf_generate on {args.family} generates as many tokens as our AR mode: add ar to --contenders")
    batch_sizes = _int_list(parser, "--batch_sizes", args.batch_sizes)
    if any(b <= 0 for b in batch_sizes) or len(set(batch_sizes)) != len(batch_sizes) or 1 not in batch_sizes:
        parser.error(f"--batch_sizes must be distinct positive integers including 1 (the reference for token "
                     f"identity), got {args.batch_sizes!r}")
    if not (args.device == "cpu" or args.device == "cuda" or
            (args.device.startswith("cuda:") and args.device[5:].isdigit())):
        parser.error(f"--device must be cpu, cuda or cuda:N, got {args.device!r}")
    args.model_dir = args.model_dir or FAMILIES[args.family].model_dir
    # the directory's family from its config.json, and a D2F family's shipped adapter (merged on the base)
    problem = model_dir_error(args.family, args.model_dir, REGISTRY[args.family].tiny_adapter_dir)
    if problem is not None:
        parser.error(problem)
    if not args.split.is_file():
        parser.error(f"no split file at {args.split}")
    if args.out is not None and not args.out.parent.is_dir():
        parser.error(f"--out: directory {args.out.parent} does not exist")
    presets = [FAMILIES[args.family].presets[c] for c in contenders if c != "hf_generate"]
    for preset in presets:
        if not (PRESET_DIR / f"{preset}.yaml").is_file():
            parser.error(f"preset {preset}.yaml missing from {PRESET_DIR}")
    split, items = load_jsonl(args.split), []
    for task in tasks:
        of_task = [item for item in split if item["task"] == task]
        if len(of_task) < args.per_task:
            parser.error(f"--per_task {args.per_task}: task {task} has only {len(of_task)} items in {args.split}")
        items += of_task[: args.per_task]
    if max(batch_sizes) > len(items):
        parser.error(f"--batch_sizes {max(batch_sizes)} exceeds the {len(items)} prompts chosen "
                     f"({len(tasks)} tasks x --per_task {args.per_task}); raise --per_task or lower the batch size")
    args.tasks, args.contenders, args.batch_sizes = tasks, contenders, sorted(batch_sizes)
    return items


# ------------------------------------------------------------------------------------ contenders


def resolve_preset(name: str, block_length: int, move_block: bool) -> tuple[str, dict[str, Any]]:
    """(module:function, params) of a decoding preset, `${model.block_length}` set to `block_length`;
    with `move_block`, a block decoder (any kind but AR) is moved to `block_length` as
    `s2d2_eval.runner.effective_decoding_params` moves it when a sweep sets the top-level block_length."""
    from omegaconf import OmegaConf

    from s2d2_eval.model_args import load_object
    from s2d2_eval.runner import move_block_length

    cfg = OmegaConf.merge({"model": {"block_length": block_length}},
                          {"decoding": OmegaConf.load(PRESET_DIR / f"{name}.yaml")})
    decoding = OmegaConf.to_container(cfg.decoding, resolve=True)
    params = {k: v for k, v in decoding["params"].items() if v is not None}
    if move_block and decoding["kind"] != "ar":
        generate = load_object(decoding["generate"], "decoding.generate", (REPO_ROOT,))
        params = move_block_length(params, generate.config_class, block_length)
    return decoding["generate"], params


@dataclass
class Output:
    """One decode call: per row, its generated tokens (stop included) and stats."""

    tokens: list[list[int]]
    completions: list[str]
    nfe: list[int]
    prefill: list[int]
    verify: list[int]  # verify forwards charged to each row


@dataclass
class Probe:
    """Forward hooks on the model: forward and row counts, time inside forwards, profiler ranges."""

    forwards: int = 0
    rows: int = 0
    model_wall: float = 0.0
    model_cpu: float = 0.0
    depth: int = 0
    scoped: bool = False  # open a profiler range around each outermost model call
    tolist_outside: int = 0
    steps: int = 0  # forwards our decoders charged with any kind but "verify" (counting_steps)
    _start: tuple[float, float] = (0.0, 0.0)
    _ranges: list[Any] = field(default_factory=list)

    def reset(self) -> None:
        self.forwards = self.rows = self.tolist_outside = self.steps = 0
        self.model_wall = self.model_cpu = 0.0

    def attach(self, model: Any) -> list[Any]:
        """Hooks on the causal LM, its decoder stack and its head; rows are counted on the stack."""
        import torch

        def enter(module: Any, args: tuple, kwargs: dict) -> None:
            self.depth += 1
            if self.depth == 1:
                if self.scoped:
                    scope = torch.profiler.record_function(MODEL_SCOPE)
                    scope.__enter__()
                    self._ranges.append(scope)
                self._start = (time.perf_counter(), time.thread_time())

        def leave(module: Any, args: tuple, *rest: Any) -> None:
            self.depth -= 1
            if self.depth == 0:
                self.model_wall += time.perf_counter() - self._start[0]
                self.model_cpu += time.thread_time() - self._start[1]
                if self._ranges:
                    self._ranges.pop().__exit__(None, None, None)

        def count(module: Any, args: tuple, kwargs: dict) -> None:
            ids = kwargs.get("input_ids", args[0] if args else None)
            if ids is None:
                ids = kwargs["inputs_embeds"]
            self.forwards += 1
            self.rows += ids.shape[0]

        stack = model.base_model
        modules = {id(m): m for m in (model, stack, model.get_output_embeddings()) if m is not None}
        handles = [stack.register_forward_pre_hook(count, with_kwargs=True)]
        for module in modules.values():
            handles.append(module.register_forward_pre_hook(enter, with_kwargs=True))
            handles.append(module.register_forward_hook(leave, always_call=True))
        return handles


def hf_twin(model: Any, family: Family) -> Any:
    """The transformers class of the family's backbone holding the decoded model's weights (the shipped
    safetensors as loaded, which no key renaming touches; for D2F, the base with its adapter merged),
    every key matched by name (ValueError listing any that is missing or left over)."""
    import transformers

    config = getattr(transformers, family.hf_config)(
        **{key: copy.deepcopy(getattr(model.config, key)) for key in family.hf_config_keys})
    config._attn_implementation = "sdpa"
    # No family here uses a sliding window (their models refuse one); transformers warns whenever
    # `sliding_window` is set, even with use_sliding_window off.
    config.sliding_window = None
    twin = getattr(transformers, family.hf_class)(config)
    missing, unexpected = twin.load_state_dict(model.state_dict(), strict=False)
    if config.tie_word_embeddings:
        missing = [key for key in missing if key != "lm_head.weight"]
        twin.tie_weights()
    if missing or unexpected:
        raise ValueError(f"{family.hf_class} does not take the checkpoint's keys as they are: "
                         f"missing {missing}, unexpected {unexpected}")
    return twin.to(device=model.device, dtype=model.dtype).eval()


@dataclass
class Call:
    """What one timed decode call left: the ids [B, P + G], the decoder's per-row stats (None for
    hf_generate), the model forwards it made, and the forced lengths it was given (if any)."""

    ids: Any
    stats: list[dict] | None
    forwards: int
    prompt_len: int
    targets: list[int] | None


@dataclass
class Contender:
    """A named decoder: `run(input_ids, attention_mask, generator, targets) -> (ids, stats)` is the timed
    part, `output(call) -> Output` the bookkeeping done after the clock (and the sync count) stopped."""

    name: str
    source: str  # preset file or transformers class
    decoder: str  # module:function
    params: dict[str, Any]
    run: Callable[..., tuple[Any, list[dict] | None]]
    output: Callable[[Call], Output]
    greedy: bool


def make_contenders(names: list[str], family: Family, model: Any, twin: Any, tokenizer: Any, budget: int,
                    block_length: int, stop_ids: list[int]) -> dict[str, Contender]:
    import importlib

    import torch
    from transformers import GenerationConfig

    def texts(call: Call) -> list[str]:
        return [tokenizer.decode(row[call.prompt_len:], skip_special_tokens=True) for row in call.ids.tolist()]

    def ours(spec: str, params: dict[str, Any]) -> Callable[..., tuple[Any, list[dict]]]:
        module, _, function = spec.partition(":")
        generate = getattr(importlib.import_module(module), function)

        def run(input_ids: Any, attention_mask: Any, generator: Any, targets: list[int] | None) -> tuple[Any, list[dict]]:
            return generate(model, input_ids, attention_mask, generator=generator, return_forward_stats=True, **params)

        return run

    def our_output(call: Call) -> Output:
        rows = call.ids[:, call.prompt_len:].tolist()
        stats = call.stats
        return Output([row[: s["generated_tokens"]] for row, s in zip(rows, stats)], texts(call),
                      [s["nfe"] for s in stats], [s["nfe_by_kind"]["prefill"] for s in stats],
                      [s["nfe_by_kind"]["verify"] for s in stats])

    def hf_run(input_ids: Any, attention_mask: Any, generator: Any, targets: list[int] | None) -> tuple[Any, None]:
        # Forced length (targets given): end of sequence suppressed until the batch's longest target.
        length = max(targets) if targets is not None else budget
        config = GenerationConfig(do_sample=False, num_beams=1, use_cache=True, max_new_tokens=length,
                                  min_new_tokens=length if targets is not None else 0,
                                  eos_token_id=stop_ids, pad_token_id=stop_ids[0])
        with torch.inference_mode():
            return twin.generate(input_ids=input_ids, attention_mask=attention_mask, generation_config=config), None

    def hf_output(call: Call) -> Output:
        rows = call.ids[:, call.prompt_len:].tolist()
        if call.targets is not None:
            tokens = [row[:n] for row, n in zip(rows, call.targets)]
        else:  # up to and including the first stop token, as our decoders count
            tokens = [row[: next((i + 1 for i, t in enumerate(row) if t in stop_ids), len(row))] for row in rows]
        n = len(rows)
        # Every forward of the batch carries every row; the first one is the prefill.
        return Output(tokens, texts(call), [call.forwards] * n, [1] * n, [0] * n)

    out = {}
    for name in names:
        if name == "hf_generate":
            out[name] = Contender(name, f"transformers {family.hf_class}.generate", f"transformers:{family.hf_class}",
                                  {"do_sample": False, "use_cache": True, "max_new_tokens": budget,
                                   "forced_length": not family.shifted}, hf_run, hf_output, True)
            continue
        preset = family.presets[name]
        spec, params = resolve_preset(preset, block_length, family.moves_block)
        params[family.budget_field] = budget
        out[name] = Contender(name, f"configs/decoding/{preset}.yaml", spec, params, ours(spec, params), our_output,
                              name in GREEDY)
    return out


# ------------------------------------------------------------------------------------ measuring


@dataclass
class Pass:
    """Totals of one pass over a list of chunks, and its calls."""

    wall: float = 0.0
    thread_cpu: float = 0.0
    process_cpu: float = 0.0
    model_wall: float = 0.0
    model_cpu: float = 0.0
    forwards: int = 0
    rows: int = 0
    steps: int = 0
    calls: list[Call] = field(default_factory=list)

    def outputs(self, contender: Contender) -> list[Output]:
        return [contender.output(call) for call in self.calls]


Chunk = tuple[Any, Any, list[int] | None]
"""input_ids [B, P], attention_mask [B, P] (left padded) and, for a forced-length hf_generate, the
number of tokens each row must get."""


def run_pass(contender: Contender, chunks: list[Chunk], seed: int, device: Any, probe: Probe) -> Pass:
    """Decode every chunk in order with one fresh seeded generator; time each call and nothing else."""
    import torch

    generator = torch.Generator(device=device).manual_seed(seed)
    result = Pass()
    probe.reset()
    with counting_steps(probe):  # one integer increment per forward: nothing to time
        for input_ids, attention_mask, targets in chunks:
            before = probe.forwards
            wall, thread_cpu, process_cpu = time.perf_counter(), time.thread_time(), time.process_time()
            ids, stats = contender.run(input_ids, attention_mask, generator, targets)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            result.wall += time.perf_counter() - wall
            result.thread_cpu += time.thread_time() - thread_cpu
            result.process_cpu += time.process_time() - process_cpu
            result.calls.append(Call(ids, stats, probe.forwards - before, input_ids.shape[1], targets))
    result.model_wall, result.model_cpu = probe.model_wall, probe.model_cpu
    result.forwards, result.rows = probe.forwards, probe.rows
    result.steps = probe.forwards if contender.name == "hf_generate" else probe.steps
    return result


@contextmanager
def quiet_stderr_fd() -> Iterator[None]:
    """Silence C++ writes to fd 2 (the profiler's start/stop banners) for the duration."""
    sys.stderr.flush()
    saved = os.dup(2)
    with open(os.devnull, "w") as devnull:
        os.dup2(devnull.fileno(), 2)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


@contextmanager
def counting_tolist(probe: Probe) -> Iterator[None]:
    """Count Python-level Tensor.tolist() calls made outside model forwards."""
    import torch

    original = torch.Tensor.tolist

    def counted(self: Any) -> Any:
        if probe.depth == 0:
            probe.tolist_outside += 1
        return original(self)

    torch.Tensor.tolist = counted
    try:
        yield
    finally:
        torch.Tensor.tolist = original


@contextmanager
def counting_steps(probe: Probe) -> Iterator[None]:
    """Count the decoding steps of our decoders: forwards their recorder is told of, verifications aside."""
    from common.stats import DecodeRecorder

    original = DecodeRecorder.forward

    def counted(self: Any, kind: str, *args: Any, **kwargs: Any) -> None:
        if kind != "verify":
            probe.steps += 1
        original(self, kind, *args, **kwargs)

    DecodeRecorder.forward = counted
    try:
        yield
    finally:
        DecodeRecorder.forward = original


@dataclass
class TraceCounts:
    """What one profiled pass did outside (and inside) the model's forwards."""

    top_level_ops: int = 0  # CPU ops with no enclosing op, outside every model forward
    syncs_outside: int = 0  # SYNC_OPS outside model forwards, nested or not
    syncs_inside: int = 0
    peak_bytes: int = 0  # highest running sum of CPU allocations minus frees


def count_trace(events: list[Any]) -> TraceCounts:
    """Nest the profiler's raw events by time on each thread and count them.

    The raw kineto events are read (one sweep, O(n log n)) instead of `profile.events()`: that one
    builds a Python object tree and attributes every allocation to its op, which takes seconds per
    pass, and it folds the allocations made inside an op into the op's net total, hiding the peak
    inside a forward. Here an event is inside another when its interval lies within it on the same
    thread; the allocation trace ("[memory]" events, +bytes / -bytes) is summed in time order."""
    counts = TraceCounts()
    ops, memory = [], []
    for index, event in enumerate(events):
        if event.name() == "[memory]":
            memory.append((event.start_ns(), index, event.nbytes()))
        elif not event.is_async():
            ops.append((event.start_ns(), -event.end_ns(), index, event.start_thread_id(), event.name()))
    stacks: dict[int, list[tuple[int, bool]]] = {}  # thread -> open intervals (end, inside a model forward)
    for start, neg_end, _, thread, name in sorted(ops):  # parents sort before their children
        stack = stacks.setdefault(thread, [])
        while stack and stack[-1][0] <= start:
            stack.pop()
        inside = bool(stack) and stack[-1][1]
        if not stack and name != MODEL_SCOPE:
            counts.top_level_ops += 1
        if name in SYNC_OPS:
            if inside:
                counts.syncs_inside += 1
            else:
                counts.syncs_outside += 1
        stack.append((-neg_end, inside or name == MODEL_SCOPE))
    running = 0
    for _, _, nbytes in sorted(memory):
        running += nbytes
        counts.peak_bytes = max(counts.peak_bytes, running)
    return counts


def profile_pass(contender: Contender, chunks: list[Chunk], seed: int, device: Any, probe: Probe) -> dict[str, Any]:
    """One pass under torch.profiler: ops outside forwards, host syncs, peak memory."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    peak_cuda = None
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
    profiler = profile(activities=[ProfilerActivity.CPU], profile_memory=device.type == "cpu")
    with quiet_stderr_fd():
        profiler.start()
    probe.scoped = True
    try:
        with counting_tolist(probe):
            result = run_pass(contender, chunks, seed, device, probe)
            tolist = probe.tolist_outside
    finally:
        probe.scoped = False
        with quiet_stderr_fd():
            profiler.stop()
    if device.type == "cuda":
        peak_cuda = torch.cuda.max_memory_allocated(device) - base
    # kineto_results: the raw trace behind profile.events() (see count_trace).
    counts = count_trace(profiler.profiler.kineto_results.events())
    peak_bytes = peak_cuda if peak_cuda is not None else counts.peak_bytes
    outputs = result.outputs(contender)
    steps = result.steps
    syncs = counts.syncs_outside + tolist
    top_level = counts.top_level_ops
    return {
        "prompts": sum(len(o.tokens) for o in outputs),
        "forwards": result.forwards,
        "steps": steps,
        "top_level_ops_outside_forwards": top_level,
        "top_level_ops_per_forward": _ratio(top_level, result.forwards),
        "top_level_ops_per_step": _ratio(top_level, steps),
        "host_syncs_outside_forwards": syncs,
        "host_syncs_tolist_calls": tolist,
        "host_syncs_per_forward": _ratio(syncs, result.forwards),
        "host_syncs_per_step": _ratio(syncs, steps),
        "host_syncs_inside_forwards": counts.syncs_inside,
        "peak_memory_mib": round(peak_bytes / 2**20, 3),
        "peak_memory_method": "torch.cuda.max_memory_allocated" if peak_cuda is not None
        else "torch.profiler profile_memory (running sum of allocations)",
    }


def _ratio(num: float, den: float | None, digits: int = 3) -> float | None:
    return round(num / den, digits) if den else None


def summarize(contender: Contender, passes: list[Pass], items: list[dict], profiled: dict[str, Any],
              batch_size: int) -> tuple[dict[str, Any], list[list[int]]]:
    """Per-contender figures at one batch size; also the per-prompt tokens of the first timed pass."""
    from synthetic.scorer import score

    first, outputs = passes[0], passes[0].outputs(contender)
    tokens = [t for o in outputs for t in o.tokens]
    texts = [t for o in outputs for t in o.completions]
    varied = any([t for o in p.outputs(contender) for t in o.tokens] != tokens for p in passes[1:])
    generated = sum(len(t) for t in tokens)
    nfe = sum(n for o in outputs for n in o.nfe)
    prefill = sum(n for o in outputs for n in o.prefill)
    steps = first.steps
    wall = statistics.median(p.wall for p in passes)
    thread_cpu = statistics.median(p.thread_cpu for p in passes)
    outside_cpu = statistics.median(p.thread_cpu - p.model_cpu for p in passes)
    scored = contender.name != "hf_generate" or contender.params["forced_length"] is False
    correct = sum(score(item, text) for item, text in zip(items, texts)) if scored else None
    accuracy = correct / len(items) if scored else None
    return {
        "batch_size": batch_size,
        "prompts": len(items),
        "generated_tokens": generated,
        "nfe": nfe,
        "prefill_nfe": prefill,
        "tpf": _ratio(generated, nfe - prefill, 4),
        "verify_nfe": sum(n for o in outputs for n in o.verify),
        "forwards": first.forwards,
        "rows_processed": first.rows,
        "steps": steps,
        "wall_s": round(wall, 6),
        "thread_cpu_s": round(thread_cpu, 6),
        "process_cpu_s": round(statistics.median(p.process_cpu for p in passes), 6),
        "model_forward_wall_s": round(statistics.median(p.model_wall for p in passes), 6),
        "model_forward_thread_cpu_s": round(statistics.median(p.model_cpu for p in passes), 6),
        "wall_s_per_repeat": [round(p.wall, 6) for p in passes],
        "thread_cpu_s_per_repeat": [round(p.thread_cpu, 6) for p in passes],
        "tokens_per_second": _ratio(generated, wall, 1),
        "tokens_per_thread_cpu_second": _ratio(generated, thread_cpu, 1),
        "outside_forward_cpu_ms_per_step": _ratio(1000 * outside_cpu, steps, 4),
        "outside_forward_cpu_ms_per_forward": _ratio(1000 * outside_cpu, first.forwards, 4),
        "tokens_vary_across_repeats": varied,
        "correct": correct,
        "accuracy": None if accuracy is None else round(accuracy, 4),
        "stderr": None if accuracy is None else round(math.sqrt(accuracy * (1 - accuracy) / len(items)), 4),
        "profile": profiled,
    }, tokens


# ------------------------------------------------------------------------------------ report


def git_sha() -> str | None:
    """Commit of the working tree, or None outside git."""
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def _fmt(value: Any, spec: str = "") -> str:
    return "-" if value is None else format(value, spec)


def print_tables(record: dict[str, Any]) -> None:
    """The batch-1 table, the batch-size table and the headline, on stderr."""
    results = record["results"]
    names = list(record["contenders"])
    say = lambda line="": print(line, file=sys.stderr)  # noqa: E731
    say(f"\n{record['family']} ({record['model_dir']}), {record['prompts']} prompts, budget {record['gen_length']}, "
        f"median of {record['repeats']}, {record['environment']['torch_threads']} torch thread(s), "
        f"load average {record['environment']['load_average_before']}, {record['environment']['cpu_model']}")
    say("batch 1       tokens    NFE    TPF   rows  tok/s  wall s thread s  proc s    acc ops/step sync/step "
        "out-fwd ms/step  peak MiB")
    for name in names:
        r = results["1"][name]
        p = r["profile"]
        say(f"{name:<13}{r['generated_tokens']:>7}{r['nfe']:>7}{_fmt(r['tpf'], '.2f'):>7}{r['rows_processed']:>7}"
            f"{_fmt(r['tokens_per_second'], '.1f'):>7}{r['wall_s']:>8.2f}{r['thread_cpu_s']:>9.2f}"
            f"{r['process_cpu_s']:>8.2f}{_fmt(r['accuracy'], '.3f'):>7}{_fmt(p['top_level_ops_per_step'], '.1f'):>9}"
            f"{_fmt(p['host_syncs_per_step'], '.2f'):>10}{_fmt(r['outside_forward_cpu_ms_per_step'], '.3f'):>16}"
            f"{p['peak_memory_mib']:>10.2f}")
    say("\nbatch  contender     rows processed  tok/s  tok/cpu-s  ops/step  sync/step  ops/fwd  sync/fwd  peak MiB  "
        "mismatched rows vs B=1")
    for batch, by_name in results.items():
        for name in names:
            r = by_name[name]
            p = r["profile"]
            say(f"{batch:>5}  {name:<13}{r['rows_processed']:>15}{_fmt(r['tokens_per_second'], '.1f'):>7}"
                f"{_fmt(r['tokens_per_thread_cpu_second'], '.1f'):>11}{_fmt(p['top_level_ops_per_step'], '.1f'):>10}"
                f"{_fmt(p['host_syncs_per_step'], '.2f'):>11}{_fmt(p['top_level_ops_per_forward'], '.1f'):>9}"
                f"{_fmt(p['host_syncs_per_forward'], '.2f'):>10}{p['peak_memory_mib']:>10.2f}"
                f"{_fmt(r['mismatched_rows_vs_batch_1']):>24}")
    head = record["headline"]
    for name, ratio in head["speed_vs_hf_generate_batch_1"].items():
        say(f"batch 1: {name} / hf_generate tokens/s = {ratio:.2f}x "
            f"(thread CPU: {head['thread_cpu_speed_vs_hf_generate_batch_1'][name]:.2f}x)")
    scaling = head["batch_scaling"]
    if scaling is not None:
        for name in names:
            say(f"batch {scaling['to']} / batch {scaling['from']}: {name} rows processed "
                f"{scaling['rows_processed_ratio'][name]:.2f}x, tokens/s {_fmt(scaling['tokens_per_second_ratio'][name], '.2f')}x")
    identity = record["token_identity"]
    if identity["hf_generate_vs_ar_mismatched_rows"] is not None:
        say(f"hf_generate vs our AR mode at batch 1: {identity['hf_generate_vs_ar_mismatched_rows']} of "
            f"{record['prompts']} prompts differ")


def cpu_model() -> str | None:
    """The CPU's model name (/proc/cpuinfo on Linux): timings, and on the CPU even the last bits of a
    product, depend on it."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


def write_atomically(path: Path, text: str) -> None:
    """Write via a temporary file in the same directory and rename, so readers never see half a record."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    umask = os.umask(0)
    os.umask(umask)
    try:
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes the file private; a record is an ordinary file
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


# ------------------------------------------------------------------------------------ main


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = build_parser()
    args = parser.parse_args(argv)
    items = validate(parser, args)
    started = time.perf_counter()
    load_before = [round(x, 2) for x in os.getloadavg()]

    import torch
    import transformers
    from omegaconf import OmegaConf
    from tqdm import tqdm
    from transformers import AutoModelForCausalLM, AutoTokenizer

    import families
    from common.token_ids import resolve_token_ids

    families.register_model_types()
    from synthetic.tokenizer import format_prompt

    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error(f"--device {args.device}: CUDA is not available")
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    if device.type == "cpu":
        reuse_freed_memory()
    family = FAMILIES[args.family]
    tokenizer = AutoTokenizer.from_pretrained(args.model_dir, local_files_only=True)
    tokenizer.padding_side = "left"
    registry = REGISTRY[family.registry]
    if registry.adapter_loader is not None:  # D2F: base + its shipped adapter, merged
        model = families.load(registry.adapter_loader)(str(args.model_dir), str(registry.tiny_adapter_dir),
                                                       merge=True, dtype=torch.float32, device=str(device))
    else:
        model = AutoModelForCausalLM.from_pretrained(args.model_dir, local_files_only=True,
                                                     torch_dtype=torch.float32).to(device).eval()
    # ${model.block_length}: the model's own block size where its config has one (Fast-dLLM v2's bd_size).
    block_length = (args.block_length or getattr(model.config, "bd_size", None)
                    or int(OmegaConf.load(family.model_preset).block_length))
    stop_ids = list(resolve_token_ids(model, tokenizer).stop_ids)  # the decoders' own resolution
    twin = hf_twin(model, family) if "hf_generate" in args.contenders else None
    probe = Probe()
    hooks = [hook for module in (model, twin) if module is not None for hook in probe.attach(module)]
    contenders = make_contenders(args.contenders, family, model, twin, tokenizer, args.gen_length, block_length,
                                 stop_ids)
    texts = [format_prompt(tokenizer, item["prompt"]) for item in items]
    n = len(items)

    def chunks(batch: int, targets: list[int] | None) -> list[Chunk]:
        out = []
        for first in range(0, n, batch):
            enc = tokenizer(texts[first : first + batch], return_tensors="pt", padding=True, add_special_tokens=False)
            out.append((enc.input_ids.to(device), enc.attention_mask.to(device),
                        None if targets is None else targets[first : first + batch]))
        return out

    # SDAR's hf_generate writes as many tokens per prompt as our AR mode: one untimed AR pass at the
    # largest batch size (also the first warm-up) gives the counts.
    forced = "hf_generate" in contenders and not family.shifted
    targets = None
    if forced:
        reference = run_pass(contenders["ar"], chunks(args.batch_sizes[-1], None), args.seed, device, probe)
        targets = [len(t) for o in reference.outputs(contenders["ar"]) for t in o.tokens]

    names = list(contenders)
    passes: dict[int, dict[str, list[Pass]]] = {b: {name: [] for name in names} for b in args.batch_sizes}
    profiles: dict[int, dict[str, dict[str, Any]]] = {b: {} for b in args.batch_sizes}
    bar = tqdm(total=len(args.batch_sizes) * len(names) * (args.repeats + 2), desc="bench", file=sys.stderr,
               disable=not sys.stderr.isatty(), leave=False)
    for batch in args.batch_sizes:
        plain = {name: chunks(batch, targets if name == "hf_generate" else None) for name in names}
        profiled_chunks = math.ceil(min(n, max(batch, PROFILE_PROMPTS)) / batch)
        for name in names:
            bar.set_postfix_str(f"B={batch} warm-up {name}")
            run_pass(contenders[name], plain[name][:1], args.seed, device, probe)
            profiles[batch][name] = profile_pass(contenders[name], plain[name][:profiled_chunks], args.seed, device,
                                                 probe)
            bar.update(2)
        for repeat in range(args.repeats):
            shift = repeat % len(names)
            for name in names[shift:] + names[:shift]:
                bar.set_postfix_str(f"B={batch} repeat {repeat + 1} {name}")
                passes[batch][name].append(run_pass(contenders[name], plain[name], args.seed, device, probe))
                bar.update()
    bar.close()
    for hook in hooks:
        hook.remove()

    results: dict[str, dict[str, Any]] = {}
    tokens: dict[int, dict[str, list[list[int]]]] = {}
    for batch in args.batch_sizes:
        results[str(batch)], tokens[batch] = {}, {}
        for name in names:
            summary, tokens[batch][name] = summarize(contenders[name], passes[batch][name], items,
                                                     profiles[batch][name], batch)
            mismatched = None
            if contenders[name].greedy:
                mismatched = sum(a != b for a, b in zip(tokens[batch][name], tokens[1][name]))
            summary["mismatched_rows_vs_batch_1"] = mismatched
            results[str(batch)][name] = summary

    hf_vs_ar = None
    if family.shifted and "hf_generate" in names and "ar" in names:
        hf_vs_ar = sum(a != b for a, b in zip(tokens[1]["hf_generate"], tokens[1]["ar"]))
    first = results["1"]
    hf = first.get("hf_generate")
    scaling = None
    if len(args.batch_sizes) > 1:
        small, large = args.batch_sizes[-2], args.batch_sizes[-1]
        scaling = {
            "from": small, "to": large,
            "rows_processed_ratio": {name: _ratio(results[str(large)][name]["rows_processed"],
                                                  results[str(small)][name]["rows_processed"]) for name in names},
            "tokens_per_second_ratio": {name: _ratio(results[str(large)][name]["tokens_per_second"],
                                                     results[str(small)][name]["tokens_per_second"]) for name in names},
        }
    record = {
        "record": "bench_decoding",
        "family": args.family,
        "model_dir": str(args.model_dir),
        "model_parameters": sum(p.numel() for p in model.parameters()),
        "block_length": block_length,
        "split": str(args.split),
        "tasks": args.tasks,
        "per_task": args.per_task,
        "prompts": n,
        "mean_prompt_tokens": round(sum(len(tokenizer.encode(t, add_special_tokens=False)) for t in texts) / n, 2),
        "gen_length": args.gen_length,
        "batch_sizes": args.batch_sizes,
        "repeats": args.repeats,
        "seed": args.seed,
        "contenders": {name: {"source": c.source, "decoder": c.decoder, "params": c.params, "greedy": c.greedy}
                       for name, c in contenders.items()},
        "results": results,
        "token_identity": {
            "hf_generate_vs_ar_mismatched_rows": hf_vs_ar,
            "hf_generate_forced_lengths": targets,
            "hf_generate_forced_lengths_equal_ar_batch_1": None if targets is None
            else targets == [len(t) for t in tokens[1]["ar"]],
        },
        "headline": {
            "speed_vs_hf_generate_batch_1": {} if hf is None else {
                name: _ratio(r["tokens_per_second"], hf["tokens_per_second"]) for name, r in first.items()
                if name != "hf_generate"},
            "thread_cpu_speed_vs_hf_generate_batch_1": {} if hf is None else {
                name: _ratio(r["tokens_per_thread_cpu_second"], hf["tokens_per_thread_cpu_second"])
                for name, r in first.items() if name != "hf_generate"},
            "batch_scaling": scaling,
        },
        "environment": {
            "device": str(device),
            "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor()
            or platform.machine(),
            "cpu_model": cpu_model(),
            "torch_threads": torch.get_num_threads(),
            "torch_interop_threads": torch.get_num_interop_threads(),
            "cpu_count": os.cpu_count(),
            "malloc_reuses_freed_memory": device.type == "cpu" and reuse_freed_memory(),  # families.cpu_memory
            "load_average_before": load_before,
            "load_average_after": [round(x, 2) for x in os.getloadavg()],
            "platform": platform.platform(),
            "python": sys.version.split()[0],
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "git_sha": git_sha(),
        },
        "bench_wall_time_s": round(time.perf_counter() - started, 1),
    }
    print_tables(record)
    text = json.dumps(record)
    if args.out is not None:
        write_atomically(args.out, text + "\n")
    print(text)
    return record


if __name__ == "__main__":
    main()
