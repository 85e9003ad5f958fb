"""The model-family registry: everything the evaluation pipeline, the scripts and the tests need to know
about a family, in one entry per family.

Adding a family is its folder (modeling, configuration, decoders on `common/`) plus one `Family` entry
here, plus its package in pyproject.toml's `packages` (a test checks that). Entries name code by
"module:attribute" strings and import nothing, so reading the registry costs no torch import: command
lines validate their arguments (and a model directory's family, from its config.json) before any heavy
import or model load.
"""

from __future__ import annotations

import difflib
import importlib
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Family:
    """One model family and where its pieces live."""

    name: str  # registry key, e.g. "sdar" (also scripts' --family value)
    title: str  # human name, e.g. "SDAR"
    folder: str  # folder in the repository, e.g. "Fast-dLLM-v2"
    package: str  # importable package of that folder, e.g. "fast_dllm_v2"
    model_types: tuple[str, ...]  # config.json `model_type` values its modeling registers
    config_class: str  # "module:Class" of the configuration
    model_class: str  # "module:Class" of the causal-LM model
    baseline: str  # "module:function" of the baseline decoder (its `config_class` is the base config)
    s2d2: str  # "module:function" of the S2D2 decoder (its `config_class` holds every flag)
    block_field: str  # decode-config field of the block length
    budget_field: str  # decode-config field of the generation budget
    threshold_field: str  # decode-config field of the baseline's commit threshold
    ar_mode: Mapping[str, int]  # decode-config values that make the decoder AR mode
    tiny_model: str  # repo-relative folder of the shipped tiny model
    entry_point: str  # the single-run command line, repo-relative
    train_command: str  # how the tiny model is made
    shift_aligned: bool = False  # logit t-1 predicts token t (causal verifier) instead of logit t
    mask_tokens: tuple[str, ...] = ()  # added mask tokens of released tokenizers that declare no mask_token
    adapter_loader: str | None = None  # "module:function" loading base + LoRA adapter (D2F), else None
    adapter_check: str | None = None  # "module:function(lora_dir, model_type)" validating an adapter folder
    tiny_adapter: str | None = None  # repo-relative adapter folder of the shipped tiny model, if any

    @property
    def tiny_model_dir(self) -> Path:
        return REPO_ROOT / self.tiny_model

    @property
    def tiny_adapter_dir(self) -> Path | None:
        return None if self.tiny_adapter is None else REPO_ROOT / self.tiny_adapter

    def decoder(self, mode: str) -> Any:
        """The baseline ("baseline", "ar") or S2D2 ("s2d2") generate function (imports the family)."""
        return load(self.s2d2 if mode == "s2d2" else self.baseline)

    def decoder_specs(self) -> tuple[str, str]:
        return self.baseline, self.s2d2


def load(spec: str) -> Any:
    """Import "module:attribute"."""
    module, _, name = spec.partition(":")
    return getattr(importlib.import_module(module), name)


FAMILIES: dict[str, Family] = {
    family.name: family
    for family in (
        Family(
            name="sdar", title="SDAR", folder="SDAR", package="SDAR", model_types=("sdar",),
            config_class="SDAR.configuration_sdar:SDARConfig", model_class="SDAR.modeling_sdar:SDARForCausalLM",
            baseline="SDAR.generate:block_diffusion_generate",
            s2d2="SDAR.generate_ssd_policy:block_diffusion_generate",
            block_field="block_length", budget_field="gen_length", threshold_field="confidence_threshold",
            ar_mode={"block_length": 1, "denoising_steps": 1}, tiny_model="models/sdar-tiny",
            entry_point="SDAR/generate_ssd_policy.py", train_command="python scripts/train_tiny.py",
        ),
        Family(
            name="fast_dllm_v2", title="Fast-dLLM v2", folder="Fast-dLLM-v2", package="fast_dllm_v2",
            model_types=("Fast_dLLM_Qwen",),
            config_class="fast_dllm_v2.configuration_fast_dllm:Fast_dLLM_QwenConfig",
            model_class="fast_dllm_v2.modeling_fast_dllm:Fast_dLLM_QwenForCausalLM",
            baseline="fast_dllm_v2.generate:generate", s2d2="fast_dllm_v2.generate_ssd_policy:generate_ssd_policy",
            block_field="block_size", budget_field="max_new_tokens", threshold_field="threshold",
            ar_mode={"block_size": 1, "small_block_size": 1}, tiny_model="models/fast-dllm-v2-tiny",
            entry_point="Fast-dLLM-v2/example_v2.py",
            train_command="python scripts/train_tiny.py --family fast_dllm_v2", shift_aligned=True,
            mask_tokens=("|<MASK>|",),
        ),
        Family(
            name="llada2", title="LLaDA2", folder="LLaDA2", package="LLaDA2", model_types=("llada2_moe",),
            config_class="LLaDA2.configuration_llada2_moe:LLaDA2MoeConfig",
            model_class="LLaDA2.modeling_llada2_moe:LLaDA2MoeModelLM",
            baseline="LLaDA2.generate:generate_cached", s2d2="LLaDA2.generate_ssd_policy:generate_ssd_policy",
            block_field="block_length", budget_field="gen_length", threshold_field="threshold",
            ar_mode={"block_length": 1, "max_post_steps": 0}, tiny_model="models/llada2-tiny",
            entry_point="LLaDA2/example_llada.py", train_command="python scripts/train_tiny.py --family llada2",
            mask_tokens=("<|mask|>",),
        ),
        # D2F: a base model plus a LoRA adapter; both share the D2F package and decoders, which read the
        # alignment from the model type (LLaDA position-aligned, Dream shift-aligned).
        Family(
            name="d2f_llada", title="D2F-LLaDA", folder="D2F", package="D2F", model_types=("llada",),
            config_class="D2F.configuration_llada:LLaDAConfig", model_class="D2F.modeling_llada:LLaDAModelLM",
            baseline="D2F.generate:generate", s2d2="D2F.generate_ssd_policy:generate_ssd_policy",
            block_field="block_size", budget_field="max_new_tokens", threshold_field="skip_threshold",
            ar_mode={"block_size": 1}, tiny_model="models/d2f-llada-tiny/base", entry_point="D2F/example_d2f.py",
            train_command="python scripts/train_tiny.py --family d2f_llada", adapter_loader="D2F.lora:load_d2f",
            adapter_check="D2F.lora:check_lora_dir", tiny_adapter="models/d2f-llada-tiny/lora",
        ),
        Family(
            name="d2f_dream", title="D2F-Dream", folder="D2F", package="D2F", model_types=("Dream",),
            config_class="D2F.configuration_dream:DreamConfig", model_class="D2F.modeling_dream:DreamModel",
            baseline="D2F.generate:generate", s2d2="D2F.generate_ssd_policy:generate_ssd_policy",
            block_field="block_size", budget_field="max_new_tokens", threshold_field="skip_threshold",
            ar_mode={"block_size": 1}, tiny_model="models/d2f-dream-tiny/base", entry_point="D2F/example_d2f.py",
            train_command="python scripts/train_tiny.py --family d2f_dream", shift_aligned=True,
            adapter_loader="D2F.lora:load_d2f", adapter_check="D2F.lora:check_lora_dir",
            tiny_adapter="models/d2f-dream-tiny/lora",
        ),
    )
}


def by_package(package: str) -> Family | None:
    """The first family whose package is `package` (e.g. a decoder function's module root), else None."""
    return next((f for f in FAMILIES.values() if f.package == package), None)


def of_package(package: str) -> tuple[Family, ...]:
    """Every family whose package is `package` (D2F's decoders serve D2F-LLaDA and D2F-Dream)."""
    return tuple(f for f in FAMILIES.values() if f.package == package)


def by_model_type(model_type: str | None) -> Family | None:
    """The family registered for a config.json `model_type`, else None."""
    return next((f for f in FAMILIES.values() if model_type in f.model_types), None)


def by_tiny_model(path: str | Path) -> Family | None:
    """The family whose shipped tiny model folder (or adapter folder) this path names, else None. A path
    matches when it ends with the folder's parts below `models/` (`sdar-tiny`, `d2f-llada-tiny/base`)."""
    parts = Path(path).parts

    def matches(folder: str | None) -> bool:
        tail = Path(folder).parts[1:] if folder else ()
        return bool(tail) and parts[-len(tail):] == tail

    return next((f for f in FAMILIES.values() if matches(f.tiny_model) or matches(f.tiny_adapter)), None)


def register_model_types() -> None:
    """Import every family package, which registers its classes with transformers' Auto classes."""
    for family in FAMILIES.values():
        importlib.import_module(family.package)


class ModelDirError(ValueError):
    """A model directory or hub id that cannot be used by the chosen decoder; the message is one line."""


def looks_like_hub_id(path: str) -> bool:
    """`org/name` that is no local path. A missing `folder/name` below an existing local folder (say
    `models/sdar-tinyy`) is a mistyped path, not a hub id."""
    parts = path.split("/")
    return (len(parts) == 2 and all(parts) and not path.startswith((".", "~")) and not Path(path).exists()
            and not Path(parts[0]).is_dir())


def _missing_dir_message(text: str, what: str) -> str:
    """"no such <what>: <path>", with the closest names in its parent folder or how the shipped one is made."""
    folder = Path(text).expanduser()
    shipped = by_tiny_model(folder)
    if shipped:
        return f"no such {what}: {text} (the shipped tiny model is made by `{shipped.train_command}`)"
    parent = folder.parent
    nearby = difflib.get_close_matches(folder.name, [p.name for p in parent.iterdir() if p.is_dir()], n=3) \
        if parent.is_dir() else []
    hint = f" (did you mean {' or '.join(str(parent / name) for name in nearby)}?)" if nearby else ""
    return f"no such {what}: {text}{hint}"


def check_model(path: str | Path, expected: Family | tuple[Family, ...] | None = None) -> Family | None:
    """Validate a model directory or hub id before any weight is loaded.

    - a local directory: it must hold config.json; its `model_type` must be a registered family, and
      `expected`'s (or one of them) when given ("this is a <family> model; use <entry point>");
    - a hub id (`org/name`, not an existing path): allowed only when the hub is reachable, i.e. unless
      HF_HUB_OFFLINE=1 (then: "set HF_HUB_OFFLINE=0"). Its family is not known without a download.
    Returns the directory's family (None for a hub id). Raises ModelDirError with a one-line message.
    """
    text = str(path)
    folder = Path(text).expanduser()
    if not folder.exists():
        if looks_like_hub_id(text):
            if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes", "on"):
                raise ModelDirError(f"{text} is a hub id and the hub is offline here (HF_HUB_OFFLINE=1): set "
                                    "HF_HUB_OFFLINE=0 with network access, or pass a local model directory")
            return None
        raise ModelDirError(_missing_dir_message(text, "model directory"))
    config_file = folder / "config.json"
    if not config_file.is_file():
        raise ModelDirError(f"{text} is not a model directory: it has no config.json")
    try:
        model_type = json.loads(config_file.read_text()).get("model_type")
    except (OSError, ValueError) as err:
        raise ModelDirError(f"{config_file} is not valid JSON: {err}") from None
    family = by_model_type(model_type)
    if family is None:
        known = ", ".join(f"{t} ({f.title})" for f in FAMILIES.values() for t in f.model_types)
        raise ModelDirError(f"{text} has model_type {model_type!r}, which no family here decodes; known: {known}")
    allowed = (expected,) if isinstance(expected, Family) else expected
    if allowed and family not in allowed:
        titles = " or ".join(f.title for f in allowed)
        raise ModelDirError(f"{text} is a {family.title} model (model_type {model_type!r}), not {titles}; "
                            f"use {family.entry_point}")
    return family


def require_model(path: str | Path, family: str | tuple[str, ...], flag: str) -> Family | None:
    """`check_model` for command lines (one family name, or several that share a decoder): exit with
    `error: <flag> <one line>` on a bad model; returns the directory's family (None for a hub id)."""
    names = (family,) if isinstance(family, str) else family
    try:
        return check_model(path, tuple(FAMILIES[name] for name in names))
    except ModelDirError as err:
        raise SystemExit(f"error: {flag} {err}") from None


def check_adapter(lora: str | Path, family: Family | None) -> None:
    """An adapter for a base of `family`, before any weight loads: the family must take one (D2F), and a
    local adapter folder must fit it (its targets are that family's layers, its tensors LoRA tensors);
    ModelDirError with one line. A hub id, or a base of unknown family, is checked when it loads."""
    if family is not None and family.adapter_loader is None:
        raise ModelDirError(f"{lora}: {family.title} takes no adapter (D2F bases do)")
    if family is None or family.adapter_check is None or not Path(lora).expanduser().is_dir():
        return
    try:
        load(family.adapter_check)(Path(lora).expanduser(), family.model_types[0])
    except ValueError as err:
        raise ModelDirError(f"{lora}: {err}") from None


def local_dir(path_or_id: str | Path) -> str:
    """A local folder for a model or adapter given as a directory or a hub id: a hub id is fetched into
    (or, offline, read from) the hub cache with `huggingface_hub.snapshot_download`, for loaders that
    read files themselves (D2F's `load_d2f` validates both folders before loading). A hub id that cannot
    be fetched raises ModelDirError with one line."""
    if Path(path_or_id).expanduser().is_dir():
        return str(Path(path_or_id).expanduser())
    from huggingface_hub import snapshot_download

    try:
        return snapshot_download(str(path_or_id))
    except Exception as err:  # noqa: BLE001  (network, missing repo, offline cache miss: all one line here)
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ModelDirError(f"{path_or_id} is no local directory, and fetching it as a hub id failed: "
                            f"{type(err).__name__}: {reason}") from None


def require_mask_id(model: Any, tokenizer: Any, family: str, given: int | None) -> int:
    """The mask id for command lines (`common.token_ids` precedence, the family's added mask tokens);
    exits with one line when there is none."""
    from common.token_ids import resolve_token_ids

    try:
        return resolve_token_ids(model, tokenizer, mask_id=given, mask_tokens=FAMILIES[family].mask_tokens).mask_id
    except ValueError as err:
        raise SystemExit(f"error: {err}") from None
