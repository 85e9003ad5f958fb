"""Typing and validation of decoder keywords that arrive as lm-eval `model_args`, and loading of
`PATH:NAME` specs (`custom_generate`, `custom_model_class`).

lm-eval hands model_args over as strings (`block_length=8`) or as values it guessed a type for
(`cache_ver=true` -> True, `confidence_threshold=1` -> int 1). A decoder config dataclass has exact
field types, so every value is converted to its field's type here, and any keyword the decoder does
not know is rejected with the list of valid ones, before a model is loaded (a typo in a 10-minute
evaluation should cost milliseconds). Pure Python: no torch, no lm-eval.

A `PATH.py` inside a model family's folder (`SDAR/`, `Fast-dLLM-v2/`) is imported under its package
name (`SDAR.generate`, `fast_dllm_v2.generate_ssd_policy`), never as a loose file: a second copy of
the module would carry second copies of its config classes and model classes (not the ones registered
with transformers), and its package-relative imports would break.
"""

from __future__ import annotations

import ast
import dataclasses
import importlib
import importlib.util
import sys
import types
import typing
from pathlib import Path
from typing import Any

from families import FAMILIES
from s2d2_eval import REPO_ROOT

FAMILY_PACKAGES = {family.folder: family.package for family in FAMILIES.values()}
"""Repository folder of each model family -> the package it is installed as (pyproject.toml's
`packages` and `package-dir`)."""

_TRUE = {"true", "1", "yes", "on"}
_FALSE = {"false", "0", "no", "off"}
_NONE = {"none", "null"}


class ModelArgError(ValueError):
    """A model_arg that is unknown or cannot be converted to its field's type."""


def _unwrap_optional(annotation: Any) -> tuple[Any, bool]:
    """(inner annotation, accepts None) for `X | None` / `Optional[X]`; other annotations pass through."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(args) == 1:
            return args[0], len(args) < len(typing.get_args(annotation))
    return annotation, False


def _to_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
        return value.strip().lower() in _TRUE
    raise ValueError("expected a boolean (true/false/1/0)")


def _to_int(value: Any) -> int:
    if isinstance(value, bool):
        raise ValueError("expected an integer, got a boolean")
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str):
        return int(value.strip())
    raise ValueError("expected an integer")


def _to_float(value: Any) -> float:
    if isinstance(value, bool):
        raise ValueError("expected a number, got a boolean")
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        return float(value.strip())
    raise ValueError("expected a number")


def _to_sequence(value: Any) -> list[Any]:
    """A list from a list/tuple, a bracketed literal "[1, 2]", or "1;2" / "1 2" (commas separate
    lm-eval's key=value pairs, so they cannot separate items)."""
    if isinstance(value, (list, tuple)):
        return list(value)
    if isinstance(value, str):
        text = value.strip()
        if text[:1] in "[(":
            parsed = ast.literal_eval(text)
            return list(parsed) if isinstance(parsed, (list, tuple)) else [parsed]
        return [part for part in text.replace(";", " ").split() if part]
    return [value]


def coerce(value: Any, annotation: Any) -> Any:
    """Convert `value` to the type named by a dataclass field annotation (raises ValueError)."""
    inner, nullable = _unwrap_optional(annotation)
    if value is None or (isinstance(value, str) and value.strip().lower() in _NONE):
        if nullable:
            return None
        raise ValueError("None is not allowed here")
    origin = typing.get_origin(inner)
    if origin in (tuple, list):
        args = typing.get_args(inner)
        element = args[0] if args else str
        items = [coerce(item, element) for item in _to_sequence(value)]
        return tuple(items) if origin is tuple else items
    if inner is bool:
        return _to_bool(value)
    if inner is int:
        return _to_int(value)
    if inner is float:
        return _to_float(value)
    if inner is str:
        if isinstance(value, str):
            return value
        raise ValueError(f"expected a string, got {type(value).__name__}")
    return value


def describe_type(annotation: Any) -> str:
    """`bool`, `int | None`, `tuple[int, ...] | None`: how a field's type reads in an error."""
    return annotation.__name__ if isinstance(annotation, type) else str(annotation).replace("typing.", "")


def field_types(config_class: type) -> dict[str, Any]:
    """name -> resolved annotation of every init field of a config dataclass."""
    hints = typing.get_type_hints(config_class)
    return {f.name: hints[f.name] for f in dataclasses.fields(config_class) if f.init}


def type_decoding_args(config_class: type, raw: dict[str, Any]) -> dict[str, Any]:
    """Convert every entry of `raw` to its field type in `config_class`; unknown keys or bad values
    raise ModelArgError naming the keyword (and, for unknown ones, the valid keywords)."""
    types_by_name = field_types(config_class)
    unknown = sorted(set(raw) - set(types_by_name))
    if unknown:
        raise ModelArgError(
            f"unknown decoding keyword(s) {unknown} for {config_class.__name__}; valid: {sorted(types_by_name)}"
        )
    typed = {}
    for name, value in raw.items():
        try:
            typed[name] = coerce(value, types_by_name[name])
        except (ValueError, SyntaxError) as err:
            raise ModelArgError(
                f"model_arg {name}={value!r} is not a valid {describe_type(types_by_name[name])}: {err}"
            ) from None
    return typed


def validate_decoding_args(config_class: type, typed: dict[str, Any]) -> Any:
    """Build the config once so its own value checks (ranges, strategy names) run before any model
    loads; returns the instance. Value errors are re-raised as ModelArgError."""
    try:
        return config_class(**typed)
    except (TypeError, ValueError) as err:
        raise ModelArgError(f"invalid decoding settings for {config_class.__name__}: {err}") from None


def _module_name_for(path: Path) -> str | None:
    """Dotted name under which `path` is importable (e.g. `SDAR.generate_ssd_policy` for
    SDAR/generate_ssd_policy.py of an installed package), else None. Importing by name keeps one
    copy of the module, and of its config classes, per process."""
    path = path.resolve()
    parts = path.with_suffix("").parts
    for depth in range(min(4, len(parts) - 1), 0, -1):
        name = ".".join(parts[-depth:])
        if not all(part.isidentifier() for part in parts[-depth:]):
            continue
        try:
            spec = importlib.util.find_spec(name)
        except (ImportError, ValueError):
            continue
        if spec is not None and spec.origin and Path(spec.origin).resolve() == path:
            return name
    return None


def family_module_name(path: Path) -> str | None:
    """Package module name of a .py file inside a family folder of this repository
    (`Fast-dLLM-v2/generate_ssd_policy.py` -> `fast_dllm_v2.generate_ssd_policy`), else None."""
    path = path.resolve()
    for folder, package in FAMILY_PACKAGES.items():
        root = (REPO_ROOT / folder).resolve()
        if path.is_relative_to(root):
            parts = list(path.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            return ".".join([package, *parts])
    return None


def _import_family_module(path: Path, name: str) -> types.ModuleType:
    """Import a family file by its package name, and check that the package really is this checkout
    (a non-editable install elsewhere would silently run other code)."""
    try:
        module = importlib.import_module(name)
    except ImportError as err:
        raise ModelArgError(f"{path} belongs to the package {name.split('.')[0]!r}, which cannot be imported "
                            f"({err}); install the repository with `pip install -e .`") from None
    loaded = Path(getattr(module, "__file__", "") or "").resolve()
    if loaded != path.resolve():
        raise ModelArgError(f"{path} belongs to the package {name.split('.')[0]!r}, but `import {name}` loads "
                            f"{loaded}; reinstall this checkout with `pip install -e .`")
    return module


def _load_module_from_file(path: Path) -> types.ModuleType:
    """Import a .py file: a family file (or any file of an importable package) by its module name,
    anything else as a standalone module whose folder is put on sys.path, so sibling imports work
    (the reference's `custom_generate=./generate_policy_utils.py:...` files import their neighbours)."""
    family_name = family_module_name(path)
    if family_name is not None:
        return _import_family_module(path, family_name)
    name = _module_name_for(path)
    if name is not None:
        return importlib.import_module(name)
    folder = str(path.parent)
    if folder not in sys.path:
        sys.path.insert(0, folder)
    unique = f"s2d2_custom_{path.stem}_{abs(hash(str(path))):x}"
    spec = importlib.util.spec_from_file_location(unique, path)
    if spec is None or spec.loader is None:
        raise ModelArgError(f"cannot import {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[unique] = module
    spec.loader.exec_module(module)
    return module


def load_object(spec: str, what: str, search_roots: tuple[Path, ...] = ()) -> Any:
    """Resolve `PATH.py:NAME` (a file, relative to the working directory or `search_roots`) or
    `package.module:NAME` (an importable module) to the named object."""
    if ":" not in spec:
        raise ModelArgError(f"{what}={spec!r}: expected PATH.py:NAME or package.module:NAME")
    target, _, attr = spec.rpartition(":")
    if target.endswith(".py"):
        candidates = [Path(target)] + [root / target for root in search_roots]
        found = next((c for c in candidates if c.is_file()), None)
        if found is None:
            raise ModelArgError(f"{what}={spec!r}: no file {target} (looked in: {', '.join(map(str, candidates))})")
        module = _load_module_from_file(found)
    else:
        try:
            module = importlib.import_module(target)
        except ImportError as err:
            raise ModelArgError(f"{what}={spec!r}: cannot import module {target!r} ({err})") from None
    if not hasattr(module, attr):
        raise ModelArgError(f"{what}={spec!r}: {module.__name__} has no attribute {attr!r}")
    return getattr(module, attr)
