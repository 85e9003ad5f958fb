"""One evaluation run: a composed `EvalConfig` in, one JSON record out (scripts/run_eval.py is the
Hydra entry point around `run`).

Order of work, cheapest first, so a bad configuration fails in well under a second:
1. effective decoder keywords (block-length rescaling), typed and checked against the chosen
   decoder's `config_class`; a local model's `model_type` checked against the decoder's family;
2. record path from the resolved configuration; an existing record means the run is skipped;
3. only then lm-eval, the model and the tasks are loaded and evaluated.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

import families
from s2d2_eval import REPO_ROOT, TASKS_DIR
from s2d2_eval.config import DECODER_KINDS
from s2d2_eval.model_args import field_types, load_object, type_decoding_args, validate_decoding_args
from s2d2_eval.records import (
    SCHEMA,
    accuracy_with_stderr,
    atomic_write_json,
    atomic_write_jsonl,
    device_info,
    git_state,
    load_record,
    package_versions,
    record_path,
    run_key,
    samples_path,
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
    defaults = generate.config_class()
    old_length = params.get("block_length", defaults.block_length)
    old_steps = params.get("denoising_steps", defaults.denoising_steps)
    new_length = int(cfg.block_length)
    if new_length < 1:
        raise ValueError(f"block_length must be >= 1, got {new_length}")
    params["block_length"] = new_length
    params["denoising_steps"] = max(1, round(old_steps * new_length / old_length))
    return params


def plan(cfg: DictConfig) -> RunPlan:
    """Validate the configuration and derive the record path (no model, no lm-eval); any problem
    is a ConfigError with a one-line message."""
    try:
        return _plan(cfg)
    except (ValueError, TypeError, FileNotFoundError) as err:
        raise ConfigError(str(err)) from None


def _plan(cfg: DictConfig) -> RunPlan:
    if cfg.decoding.kind not in DECODER_KINDS:
        raise ValueError(f"decoding.kind={cfg.decoding.kind!r}; valid: {', '.join(DECODER_KINDS)}")
    if cfg.batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {cfg.batch_size}")
    if cfg.task.limit is not None and cfg.task.limit < 1:
        raise ValueError(f"task.limit must be >= 1 (documents per task) or null, got {cfg.task.limit}")
    pretrained = resolve_pretrained(cfg.model.pretrained)
    params = effective_decoding_params(cfg)
    generate = load_object(cfg.decoding.generate, "decoding.generate", (REPO_ROOT,))
    config_class = getattr(generate, "config_class", None)
    if config_class is None:
        raise ValueError(f"decoding.generate={cfg.decoding.generate!r} has no config_class")
    check_params_fit_decoder(cfg.decoding.name, cfg.decoding.generate, config_class, params)
    check_model_fits_decoder(pretrained, cfg.decoding.generate, generate)
    typed = type_decoding_args(config_class, params)
    validate_decoding_args(config_class, {**typed, "return_forward_stats": True})
    identity = {
        "model": OmegaConf.to_container(cfg.model, resolve=True),
        "decoding": {"name": cfg.decoding.name, "kind": cfg.decoding.kind, "generate": cfg.decoding.generate,
                     "params": params},
        "task": OmegaConf.to_container(cfg.task, resolve=True),
        "seed": cfg.seed,
        "batch_size": cfg.batch_size,
        "bucket_by_length": cfg.bucket_by_length,
    }
    path = record_path(_repo_path(cfg.results_dir), cfg.sweep_name, cfg.model.name, cfg.task.name,
                       cfg.decoding.name, run_key(identity))
    defaults = {name: getattr(config_class(), name) for name in field_types(config_class)}
    label = describe_decoding(cfg.decoding.kind, cfg.decoding.name, {**defaults, **params})
    return RunPlan(decoding_params=params, identity=identity, record=path, label=label)


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


def check_model_fits_decoder(pretrained: str, spec: str, generate: Any) -> None:
    """A repository decoder with a model of another family (say `decoding=fast_config_a` with the default
    `model=sdar_tiny`), a missing directory or an offline hub id fails here in one line, before lm-eval
    starts or any weight loads (`families.check_model`)."""
    try:
        found = families.check_model(pretrained)
    except families.ModelDirError as err:
        raise ValueError(f"model.pretrained={pretrained}: {err}") from None
    expected = families.by_package(getattr(generate, "__module__", "").split(".")[0])
    if expected is not None and found is not None and found is not expected:
        types = (", ".join(repr(t) for t in f.model_types) for f in (expected, found))
        raise ValueError(f"decoding.generate={spec} decodes model_type {next(types)} ({expected.title}), but "
                         f"model.pretrained={pretrained} is {next(types)} ({found.title}); pick a decoding preset "
                         "of the model's family (fast_* presets for Fast-dLLM v2, llada2_* for LLaDA2, the others "
                         "for SDAR)")


def _drop_custom_dataset_notice(record: logging.LogRecord) -> bool:
    """lm-eval warns on every task with a `custom_dataset` that kwargs can be passed via --metadata;
    our local tasks always use one, so the notice is noise in a sweep log."""
    return "Custom kwargs can be passed" not in record.getMessage()


def _quiet_libraries(verbose: bool) -> None:
    """Hydra sets the root logger to INFO; keep lm-eval's per-task INFO lines out of sweep logs."""
    level = logging.INFO if verbose else logging.WARNING
    for name in ("lm_eval", "transformers", "datasets", "accelerate"):
        logging.getLogger(name).setLevel(level)
    task_logger = logging.getLogger("lm_eval.api.task")
    if _drop_custom_dataset_notice not in task_logger.filters:
        task_logger.addFilter(_drop_custom_dataset_notice)


def check_task_metric(cfg: DictConfig, task_manager: Any) -> None:
    """For local tasks (cheap to load), fail before the model loads if a task is unknown or lacks the
    configured metric or filter; built-in tasks are only checked after evaluation (loading them
    means downloading their data)."""
    if not cfg.task.local:
        return
    try:
        loaded = task_manager.load(list(cfg.task.tasks))["tasks"]
    except (KeyError, ValueError) as err:
        raise ConfigError(f"task.tasks={list(cfg.task.tasks)}: {err}") from None
    if not loaded:
        raise ConfigError(f"task.tasks={list(cfg.task.tasks)}: no such local task in {TASKS_DIR}")
    for name, task in loaded.items():
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


def run(cfg: DictConfig) -> Path:
    """Run one configuration (or skip it when its record exists); returns the record path."""
    start = time.perf_counter()
    run_plan = plan(cfg)
    exists = load_record(run_plan.record) is not None
    if exists and not cfg.overwrite and not cfg.dry_run:
        logger.info("record exists, skipping: %s", run_plan.record)
        print(f"skip (record exists): {run_plan.record}")
        return run_plan.record
    _quiet_libraries(cfg.verbose)
    from lm_eval.tasks import TaskManager

    task_manager = TaskManager(include_path=str(TASKS_DIR), include_defaults=not cfg.task.local)
    check_task_metric(cfg, task_manager)
    if cfg.dry_run:
        print(f"record: {run_plan.record} ({'exists' if exists else 'to run'})")
        print(f"sweep_dir: {run_plan.record.parents[2]}")
        return run_plan.record

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
    if cfg.model.max_length:
        model_args["max_length"] = cfg.model.max_length
    load_start = time.perf_counter()
    lm = S2D2LM(**model_args)
    load_seconds = time.perf_counter() - load_start
    lm.progress_label = f"{run_plan.label} | {cfg.task.name}"
    task = cfg.task
    results = simple_evaluate(
        model=lm, tasks=list(task.tasks), task_manager=task_manager, limit=task.limit,
        num_fewshot=task.num_fewshot, apply_chat_template=task.apply_chat_template,
        fewshot_as_multiturn=task.fewshot_as_multiturn, system_instruction=task.system_instruction,
        gen_kwargs=OmegaConf.to_container(task.gen_kwargs) or None, log_samples=True, bootstrap_iters=0,
        random_seed=cfg.seed, numpy_random_seed=cfg.seed, torch_random_seed=cfg.seed,
        fewshot_random_seed=cfg.seed, confirm_run_unsafe_code=task.confirm_run_unsafe_code,
    )
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
    if cfg.log_samples:
        sidecar = samples_path(run_plan.record)
        atomic_write_jsonl(sidecar, _sample_rows(samples, lm.decode_log, task.metric))
        record["samples_file"] = sidecar.name
    atomic_write_json(run_plan.record, record)
    print(f"wrote {run_plan.record}: accuracy {metrics['accuracy']:.3f} ± {metrics['accuracy_stderr']:.3f} "
          f"(n={metrics['n']}), TPF {metrics['tpf']:.2f}, {metrics['tokens_per_second']:.1f} tok/s")
    return run_plan.record

