"""One evaluation run: a composed `EvalConfig` in, one JSON record out (scripts/run_eval.py is the
Hydra entry point around `run`).

Order of work, cheapest first, so a bad configuration fails in well under a second:
1. effective decoder keywords (block-length rescaling), typed and checked against the chosen
   decoder's `config_class`; a local model's `model_type` checked against the decoder's family;
2. record path from the resolved configuration; an existing record means the run is skipped;
3. the tasks are loaded and checked (metric, filter, code execution confirmed), the record's lock
   taken (a second identical run waits, then skips);
4. only then the model is loaded and evaluated, and the record and its samples written as one unit.

Where a record goes. Its file name is `<decoding>-<key>.json`, the key hashing everything that
changes the measurement (`run_identity`). Its sweep folder is `<results_dir>/<sweep_name>` only for
the runs of a published folder's documented command (`s2d2_eval.sweeps`); any other run goes to
`<results_dir>/<sweep_name>-<group id>`, the group id hashing what every run of one table shares
(`group_identity`: model, task and its limit, seed, batching, top-level block length, the sampling
settings). So runs that differ in model path, task, limit or any override never land among the
published records, and one sweep folder never mixes two models, tasks, sample counts or sampling
regimes (a greedy and a sampled sweep). `sweep_name` is a plain folder name and `results_dir` lies
outside every published folder, so nothing is written inside one but its documented command's runs.
"""

from __future__ import annotations

import logging
import os
import re
import time
from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from collections.abc import Mapping
from typing import Any

from omegaconf import DictConfig, OmegaConf

import families
from s2d2_eval import REPO_ROOT, TASKS_DIR
from s2d2_eval.config import DECODER_KINDS
from s2d2_eval.model_args import field_types, load_object, type_decoding_args, validate_decoding_args
from s2d2_eval.logs import silence_known_notices
from s2d2_eval.records import (
    RECORD_SUFFIX,
    SCHEMA,
    RecordError,
    accuracy_with_stderr,
    device_info,
    display_path,
    git_state,
    load_record,
    package_versions,
    record_lock,
    run_key,
    samples_path,
    write_record,
)
from s2d2_eval.report import describe_decoding
from s2d2_eval.stats import summarize

logger = logging.getLogger(__name__)


class ConfigError(ValueError):
    """The configuration cannot run; raised before anything heavy is loaded."""


@dataclass(frozen=True)
class RunPlan:
    """Everything decided before any heavy import: what runs, and where its record goes."""

    decoding_params: dict[str, Any]  # effective decoder keywords (JSON-able)
    identity: dict[str, Any]  # what the record key hashes
    record: Path
    label: str
    published: bool  # one of the runs of a published folder's documented command

    @property
    def sweep_dir(self) -> Path:
        """The folder the table and plots of this run's sweep are made from."""
        return self.record.parents[2]


def _repo_path(path: str) -> Path:
    candidate = Path(path).expanduser()
    return candidate if candidate.is_absolute() else REPO_ROOT / candidate


def resolve_pretrained(path_or_id: str) -> str:
    """A local model directory (relative paths: to the working directory, then the repo root) or a
    hub id (`org/name`). A path that looks local but is missing is an error here, not an obscure
    hub lookup failure after lm-eval has started."""
    local = _repo_path(path_or_id)
    for candidate in (Path(path_or_id).expanduser(), local):
        if candidate.is_dir():
            return str(candidate.resolve())
    head = path_or_id.split("/", 1)[0]
    looks_local = (path_or_id.startswith((".", "/", "~")) or path_or_id.count("/") != 1 or head == "models"
                   or (REPO_ROOT / head).is_dir() or Path(head).is_dir())
    if looks_local:
        shipped = families.by_tiny_model(path_or_id)
        hint = f" (the shipped tiny model is made by `{shipped.train_command}`)" if shipped else ""
        raise FileNotFoundError(f"model.pretrained={path_or_id!r}: no model directory at {local}{hint}")
    return path_or_id


def effective_decoding_params(cfg: DictConfig) -> dict[str, Any]:
    """The decoder keywords this run uses: the decoding config's params without the unset (None)
    ones; with top-level `block_length` set, every SDAR block decoder (not AR) is moved to it and its
    steps scaled so that tokens per step are unchanged.

    Fast-dLLM v2 decoders have no steps to scale: they are threshold-driven per sub-block, and the
    sub-block size is what distinguishes their presets (config A: 4, B: 16, C: the whole block). Moving
    `block_size` would leave `small_block_size` to be guessed (keep it? scale it? it may no longer
    divide the block), so a top-level `block_length` with a non-AR Fast-dLLM decoder is an error that
    names the explicit alternatives: the fast_* presets read `block_size` from `model.block_length`."""
    params = {k: v for k, v in OmegaConf.to_container(cfg.decoding.params, resolve=True).items() if v is not None}
    if cfg.block_length is None or cfg.decoding.kind == "ar":
        return params
    generate = load_object(cfg.decoding.generate, "decoding.generate", (REPO_ROOT,))
    names = field_types(generate.config_class)
    if "block_length" not in names or "denoising_steps" not in names:
        alternative = ("model.block_length=N (the fast_* presets take block_size from it) or "
                       "decoding.params.block_size=N" if "block_size" in names else "the decoder's own keywords")
        raise ValueError(f"block_length={cfg.block_length} moves decoders with block_length and denoising_steps "
                         f"(SDAR); decoding={cfg.decoding.name} ({generate.config_class.__name__}) lacks them: "
                         f"set {alternative} instead")
    return move_block_length(params, generate.config_class, int(cfg.block_length))


def move_block_length(params: dict[str, Any], config_class: type, new_length: int) -> dict[str, Any]:
    """SDAR block-decoder keywords moved to block length `new_length`, denoising steps scaled so that
    tokens per step are unchanged (a copy; `config_class` supplies the defaults of unset keywords)."""
    if new_length < 1:
        raise ValueError(f"block_length must be >= 1, got {new_length}")
    defaults = config_class()
    old_length = params.get("block_length", defaults.block_length)
    old_steps = params.get("denoising_steps", defaults.denoising_steps)
    return {**params, "block_length": new_length,
            "denoising_steps": max(1, round(old_steps * new_length / old_length))}


OPTIONAL_MODEL_FIELDS = {"lora_dir": None, "merge_lora": False}
"""Model fields added after records were published, with their defaults: they enter a run's identity
only when set to something else, so every earlier record keeps its key."""


def model_identity(model: Mapping[str, Any]) -> dict[str, Any]:
    """The model part of an identity: its fields, less the optional ones left at their defaults."""
    return {k: v for k, v in model.items() if not (k in OPTIONAL_MODEL_FIELDS and v == OPTIONAL_MODEL_FIELDS[k])}


def run_identity(cfg: DictConfig, params: dict[str, Any]) -> dict[str, Any]:
    """Everything that changes the measurement of one run; the record key is its hash. (Unchanged
    since the published records were made: changing it renames every record.)"""
    return {
        "model": model_identity(OmegaConf.to_container(cfg.model, resolve=True)),
        "decoding": {"name": cfg.decoding.name, "kind": cfg.decoding.kind, "generate": cfg.decoding.generate,
                     "params": params},
        "task": OmegaConf.to_container(cfg.task, resolve=True),
        "seed": cfg.seed,
        "batch_size": cfg.batch_size,
        "bucket_by_length": cfg.bucket_by_length,
    }


SAMPLING_KEYS = ("do_sample", "temperature", "top_k", "top_p")
"""Decoding keys that make a sweep greedy or sampled: one table holds one setting of them."""


def group_identity(config: Mapping[str, Any]) -> dict[str, Any]:
    """What every run of one sweep table shares: the resolved config without the decoding (but its
    sampling settings) and the bookkeeping keys. Takes a plain resolved config, so a record's own
    `config` gives the same value."""
    params = config["decoding"].get("params") or {}
    return {"model": model_identity(config["model"]), "task": config["task"], "seed": config["seed"],
            "batch_size": config["batch_size"], "bucket_by_length": config["bucket_by_length"],
            "block_length": config["block_length"], "sampling": {key: params.get(key) for key in SAMPLING_KEYS}}


def group_id(cfg: DictConfig) -> str:
    return run_key(group_identity(OmegaConf.to_container(cfg, resolve=True)))


def run_slot(cfg: DictConfig) -> tuple[str, str]:
    """(group id, record file name) of a run: what decides whether it belongs to a published folder.
    Needs no model directory (the published set is computed from the configs alone)."""
    params = effective_decoding_params(cfg)
    return group_id(cfg), f"{cfg.decoding.name}-{run_key(run_identity(cfg, params))}{RECORD_SUFFIX}"


def plan(cfg: DictConfig) -> RunPlan:
    """Validate the configuration and derive the record path (no model, no lm-eval); any problem
    is a ConfigError with a one-line message."""
    try:
        return _plan(cfg)
    except (ValueError, TypeError, FileNotFoundError) as err:
        raise ConfigError(str(err)) from None


def check_destination(cfg: DictConfig) -> None:
    """`sweep_name` is one plain folder name, and `results_dir` is not inside a published folder (whose
    records only its documented command writes)."""
    from s2d2_eval.sweeps import PUBLISHED_SWEEPS

    if not re.fullmatch(r"[A-Za-z0-9_.-]+", str(cfg.sweep_name)) or str(cfg.sweep_name).strip(".") == "":
        raise ValueError(f"sweep_name={cfg.sweep_name!r} must be a plain folder name (letters, digits, _ . -)")
    results = _repo_path(cfg.results_dir).resolve()
    for name in PUBLISHED_SWEEPS:
        published = (REPO_ROOT / "results" / name).resolve()
        if results == published or published in results.parents:
            raise ValueError(f"results_dir={cfg.results_dir} is inside the published folder "
                             f"{display_path(published)}, which only its documented command writes; "
                             "pick another results_dir")


def _plan(cfg: DictConfig) -> RunPlan:
    check_destination(cfg)
    if cfg.decoding.kind not in DECODER_KINDS:
        raise ValueError(f"decoding.kind={cfg.decoding.kind!r}; valid: {', '.join(DECODER_KINDS)}")
    if cfg.batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {cfg.batch_size}")
    if cfg.task.limit is not None and cfg.task.limit < 1:
        raise ValueError(f"task.limit must be >= 1 (documents per task) or null, got {cfg.task.limit}")
    pretrained = resolve_pretrained(cfg.model.pretrained)
    lora = resolve_pretrained(cfg.model.lora_dir) if cfg.model.get("lora_dir") else None  # older records lack it
    params = effective_decoding_params(cfg)
    generate = load_object(cfg.decoding.generate, "decoding.generate", (REPO_ROOT,))
    config_class = getattr(generate, "config_class", None)
    if config_class is None:
        raise ValueError(f"decoding.generate={cfg.decoding.generate!r} has no config_class")
    check_params_fit_decoder(cfg.decoding.name, cfg.decoding.generate, config_class, params)
    check_model_fits_decoder(pretrained, cfg.decoding.generate, generate, lora)
    typed = type_decoding_args(config_class, params)
    validate_decoding_args(config_class, {**typed, "return_forward_stats": True})
    identity = run_identity(cfg, params)
    slot = (group_id(cfg), f"{cfg.decoding.name}-{run_key(identity)}{RECORD_SUFFIX}")
    from s2d2_eval.sweeps import published_runs

    published = slot in published_runs(cfg.sweep_name)
    folder = cfg.sweep_name if published else f"{cfg.sweep_name}-{slot[0]}"
    path = _repo_path(cfg.results_dir) / folder / cfg.model.name / cfg.task.name / slot[1]
    defaults = {name: getattr(config_class(), name) for name in field_types(config_class)}
    label = describe_decoding(cfg.decoding.kind, cfg.decoding.name, {**defaults, **params})
    return RunPlan(decoding_params=params, identity=identity, record=path, label=label, published=published)


def check_params_fit_decoder(name: str, spec: str, config_class: type, params: dict[str, Any]) -> None:
    """Every key of decoding.params must be a field of the chosen decoder's config; a key that belongs
    to another decoder (e.g. Fast-dLLM's `small_block_size` given to an SDAR decoder) is named with
    the decoders that do take it."""
    from s2d2_eval.config import decoder_config_classes

    unknown = sorted(set(params) - set(field_types(config_class)))
    if not unknown:
        return
    owners = {key: [other for other, cls in decoder_config_classes().items() if key in field_types(cls)]
              for key in unknown}
    details = "; ".join(f"{key} is a keyword of {', '.join(found)}" if found else f"{key} is no decoder's keyword"
                        for key, found in owners.items())
    raise ValueError(f"decoding={name}: params {unknown} do not fit decoding.generate={spec} "
                     f"({config_class.__name__}): {details}. Valid: {sorted(field_types(config_class))}")


def check_model_fits_decoder(pretrained: str, spec: str, generate: Any, lora: str | None = None) -> None:
    """A repository decoder with a model of another family (say `decoding=fast_config_a` with the default
    `model=sdar_tiny`), a missing directory, an offline hub id or an adapter that does not fit the base
    (`model.lora_dir`) fails here in one line, before lm-eval starts or any weight loads
    (`families.check_model`, `families.check_adapter`)."""
    try:
        found = families.check_model(pretrained)
    except families.ModelDirError as err:
        raise ValueError(f"model.pretrained={pretrained}: {err}") from None
    if lora is not None:
        try:
            families.check_adapter(lora, found)
        except families.ModelDirError as err:
            raise ValueError(f"model.lora_dir={err}") from None
    expected = families.of_package(getattr(generate, "__module__", "").split(".")[0])
    if expected and found is not None and found not in expected:
        decodes = ", ".join(f"{t!r} ({f.title})" for f in expected for t in f.model_types)
        types = ", ".join(repr(t) for t in found.model_types)
        raise ValueError(f"decoding.generate={spec} decodes model_type {decodes}, but "
                         f"model.pretrained={pretrained} is {types} ({found.title}); pick a decoding preset "
                         "of the model's family (fast_* presets for Fast-dLLM v2, d2f_* for D2F, llada2_* for "
                         "LLaDA2, the others for SDAR)")


def _quiet_libraries(verbose: bool) -> None:
    """Hydra sets the root logger to INFO; keep lm-eval's per-task INFO lines out of sweep logs."""
    level = logging.INFO if verbose else logging.WARNING
    for name in ("lm_eval", "transformers", "datasets", "accelerate"):
        logging.getLogger(name).setLevel(level)
    silence_known_notices()


UNSAFE_CODE_HINT = ("executes model-written code; to allow it for this run, add task.confirm_run_unsafe_code=true "
                    "to the command line")


def check_task_metric(cfg: DictConfig, task_manager: Any) -> None:
    """For local tasks (cheap to load), fail before the model loads if a task is unknown, lacks the
    configured metric or filter, or executes model-written code without `task.confirm_run_unsafe_code`.
    Built-in tasks are checked for code execution from lm-eval's task index (their YAML); the rest
    only after evaluation (loading them means downloading their data)."""
    if not cfg.task.local:
        for name in cfg.task.tasks:
            entry = task_manager.task_index.get(name)
            if entry is not None and (entry.cfg or {}).get("unsafe_code") and not cfg.task.confirm_run_unsafe_code:
                raise ConfigError(f"task {name} {UNSAFE_CODE_HINT}")
        return
    try:
        loaded = task_manager.load(list(cfg.task.tasks))["tasks"]
    except (KeyError, ValueError) as err:
        raise ConfigError(f"task.tasks={list(cfg.task.tasks)}: {err}") from None
    if not loaded:
        raise ConfigError(f"task.tasks={list(cfg.task.tasks)}: no such local task in {TASKS_DIR}")
    for name, task in loaded.items():
        if getattr(task, "UNSAFE_CODE", False) and not cfg.task.confirm_run_unsafe_code:
            raise ConfigError(f"task {name} {UNSAFE_CODE_HINT}")
        filters = [f.name for f in task._filters]
        if cfg.task.filter not in filters:
            raise ConfigError(f"task {name}: no filter {cfg.task.filter!r}; available: {filters}")
        if cfg.task.metric not in task.aggregation():
            raise ConfigError(f"task {name}: no metric {cfg.task.metric!r}; available: {list(task.aggregation())}")


def _task_samples(results: dict[str, Any], metric: str, filter_key: str) -> dict[str, list[dict[str, Any]]]:
    """Logged samples per leaf task, keeping the configured filter; fails if the metric is absent."""
    chosen: dict[str, list[dict[str, Any]]] = {}
    for task, samples in results.get("samples", {}).items():
        rows = [s for s in samples if s.get("filter") == filter_key]
        if not rows:
            filters = sorted({s.get("filter") for s in samples})
            raise ValueError(f"task {task}: no samples for filter {filter_key!r}; available: {filters}")
        if metric not in rows[0]:
            raise ValueError(f"task {task}: no per-sample metric {metric!r}; available: {rows[0].get('metrics')}")
        chosen[task] = rows
    if not chosen:
        raise ValueError("lm-eval returned no samples (nothing evaluated?)")
    return chosen


def build_metrics(samples: dict[str, list[dict[str, Any]]], decode_log: list[dict[str, Any]],
                  metric: str) -> dict[str, Any]:
    """Accuracy (pooled over all documents of all tasks, with its s.e.) and pooled decoding stats."""
    per_task: dict[str, Any] = {}
    correct = 0.0
    n = 0
    by_task: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for entry in decode_log:
        by_task[entry["task"]].append(entry)
    for task, rows in samples.items():
        task_correct = sum(float(row[metric]) for row in rows)
        acc, stderr = accuracy_with_stderr(task_correct, len(rows))
        per_task[task] = {"accuracy": acc, "accuracy_stderr": stderr, "n": len(rows),
                          "decoding": summarize(by_task.get(task, []))}
        correct += task_correct
        n += len(rows)
    accuracy, stderr = accuracy_with_stderr(correct, n)
    return {"accuracy": accuracy, "accuracy_stderr": stderr, "n": n, "metric": metric,
            **summarize(decode_log), "per_task": per_task}


def _sample_rows(samples: dict[str, list[dict[str, Any]]], decode_log: list[dict[str, Any]],
                 metric: str) -> list[dict[str, Any]]:
    stats = {(e["task"], e["doc_id"]): e for e in decode_log if e["repeat"] == 0 and e["idx"] == 0}
    rows = []
    for task, logged in samples.items():
        for sample in logged:
            entry = stats.get((task, sample["doc_id"]), {})
            resps = sample.get("filtered_resps") or [""]
            rows.append({"task": task, "doc_id": sample["doc_id"], metric: sample[metric],
                         "completion": str(resps[0]),
                         "stats": {k: v for k, v in entry.items() if k not in ("task", "doc_id")}})
    return rows


def _record_exists(path: Path, overwrite: bool) -> bool:
    """Whether a whole record is at `path`. A file there that is not one (a truncated write, a bad
    merge) is an error naming it, unless the run is to overwrite it anyway."""
    try:
        return load_record(path) is not None
    except RecordError as err:
        if overwrite:
            return True
        raise ConfigError(f"{err}; delete it, or pass overwrite=true to rerun it") from None


def _describe_folder(cfg: DictConfig, run_plan: RunPlan) -> str | None:
    """Why a run of a published sweep's name does not write into the published folder."""
    from s2d2_eval.sweeps import PUBLISHED_SWEEPS, documented_command

    if run_plan.published or cfg.sweep_name not in PUBLISHED_SWEEPS:
        return None
    published_dir = display_path(_repo_path(cfg.results_dir) / cfg.sweep_name)
    return (f"not the published {published_dir}: that folder holds only the runs of "
            f"`{documented_command(cfg.sweep_name)}`, and this run differs from them")


def run(cfg: DictConfig) -> Path:
    """Run one configuration (or skip it when its record exists); returns the record path."""
    start = time.perf_counter()
    run_plan = plan(cfg)
    shown = display_path(run_plan.record)
    exists = _record_exists(run_plan.record, cfg.overwrite)
    if exists and not cfg.overwrite and not cfg.dry_run:
        logger.info("record exists, skipping: %s", shown)
        print(f"skip (record exists): {shown}")
        return run_plan.record
    _quiet_libraries(cfg.verbose)
    from lm_eval.tasks import TaskManager

    task_manager = TaskManager(include_path=str(TASKS_DIR), include_defaults=not cfg.task.local)
    check_task_metric(cfg, task_manager)
    if cfg.dry_run:
        print(f"record: {shown} ({'exists' if exists else 'to run'})")
        print(f"sweep_dir: {display_path(run_plan.sweep_dir)}")
        note = _describe_folder(cfg, run_plan)
        if note:
            print(f"note: {note}")
        return run_plan.record
    with record_lock(run_plan.record) as waited:
        if waited and _record_exists(run_plan.record, overwrite=False):
            print(f"skip (written by a concurrent run while this one waited): {shown}")
            return run_plan.record
        _evaluate_and_write(cfg, run_plan, task_manager, start)
    return run_plan.record


def _evaluate_and_write(cfg: DictConfig, run_plan: RunPlan, task_manager: Any, start: float) -> None:
    """Load the model, evaluate, write the record (and its samples) as one unit."""
    # As lm-eval's own CLI does: code-execution tasks fork after the fast tokenizer has run.
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import torch
    from lm_eval import simple_evaluate

    from s2d2_eval.lm import S2D2LM

    if cfg.model.torch_threads:
        torch.set_num_threads(int(cfg.model.torch_threads))
    model_args: dict[str, Any] = dict(
        pretrained=resolve_pretrained(cfg.model.pretrained), custom_generate=cfg.decoding.generate,
        device=cfg.model.device, dtype=cfg.model.dtype, batch_size=cfg.batch_size, seed=cfg.seed,
        bucket_by_length=cfg.bucket_by_length, **run_plan.decoding_params,
    )
    if cfg.model.custom_model_class:
        model_args["custom_model_class"] = cfg.model.custom_model_class
    if cfg.model.get("lora_dir"):
        model_args.update(lora_dir=resolve_pretrained(cfg.model.lora_dir), merge_lora=bool(cfg.model.get("merge_lora")))
    if cfg.model.max_length:
        model_args["max_length"] = cfg.model.max_length
    load_start = time.perf_counter()
    lm = S2D2LM(**model_args)
    load_seconds = time.perf_counter() - load_start
    lm.progress_label = f"{run_plan.label} | {cfg.task.name}"
    task = cfg.task
    try:
        results = simple_evaluate(
            model=lm, tasks=list(task.tasks), task_manager=task_manager, limit=task.limit,
            num_fewshot=task.num_fewshot, apply_chat_template=task.apply_chat_template,
            fewshot_as_multiturn=task.fewshot_as_multiturn, system_instruction=task.system_instruction,
            gen_kwargs=OmegaConf.to_container(task.gen_kwargs) or None, log_samples=True, bootstrap_iters=0,
            random_seed=cfg.seed, numpy_random_seed=cfg.seed, torch_random_seed=cfg.seed,
            fewshot_random_seed=cfg.seed, confirm_run_unsafe_code=task.confirm_run_unsafe_code,
        )
    except ValueError as err:
        if "marked as unsafe" not in str(err):  # a built-in task (not checked before loading)
            raise
        raise ConfigError(f"task.tasks={list(task.tasks)} {UNSAFE_CODE_HINT}") from None
    samples = _task_samples(results, task.metric, task.filter)
    metrics = build_metrics(samples, lm.decode_log, task.metric)
    record = {
        "schema": SCHEMA,
        "key": run_plan.record.stem.rsplit("-", 1)[-1],
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "sweep_name": cfg.sweep_name,
        "label": run_plan.label,
        "model": run_plan.identity["model"],
        "decoding": run_plan.identity["decoding"],
        "task": run_plan.identity["task"],
        "seed": cfg.seed,
        "batch_size": cfg.batch_size,
        "bucket_by_length": cfg.bucket_by_length,
        "config": OmegaConf.to_container(cfg, resolve=True),
        "git": git_state(REPO_ROOT),
        "versions": package_versions(),
        "device": device_info(cfg.model.device),
        "metrics": metrics,
        "lm_eval": {"results": results.get("results"), "groups": results.get("groups"),
                    "n_samples": results.get("n-samples")},
        "timing": {"model_load_seconds": load_seconds, "total_seconds": time.perf_counter() - start},
    }
    rows = _sample_rows(samples, lm.decode_log, task.metric) if cfg.log_samples else None
    if rows is not None:
        record["samples_file"] = samples_path(run_plan.record).name
    write_record(run_plan.record, record, rows)
    print(f"wrote {display_path(run_plan.record)}: accuracy {metrics['accuracy']:.3f} ± "
          f"{metrics['accuracy_stderr']:.3f} (n={metrics['n']}), TPF {metrics['tpf']:.2f}, "
          f"{metrics['tokens_per_second']:.1f} tok/s")

