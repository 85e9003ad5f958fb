"""Command-line flags derived from a frozen config dataclass, so a CLI and the function it wraps
share ONE set of defaults (HOUSE-STYLE habit 8). Pure argparse: no file I/O, no models."""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import types
import typing
from typing import Any, Callable, TypeVar

T = TypeVar("T")
F = TypeVar("F", bound=Callable[..., Any])


def _scalar_type(annotation: Any) -> tuple[type, bool]:
    """(element type, is_sequence) of a field annotation such as `int | None` or `tuple[int, ...] | None`."""
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType) and len(args) == 1:
        return _scalar_type(args[0])
    if origin in (tuple, list):
        return typing.get_args(annotation)[0], True
    return annotation, False


def add_dataclass_arguments(
    parser: argparse.ArgumentParser, cls: type, aliases: dict[str, list[str]] | None = None
) -> None:
    """One `--name` flag per dataclass field with the field's default. Booleans get
    `--name/--no-name`; a field's `metadata["choices"]` become the flag's choices (listed by --help);
    `aliases` adds extra spellings (e.g. the reference's `--forward_stats`)."""
    aliases = aliases or {}
    hints = typing.get_type_hints(cls)
    group = parser.add_argument_group(cls.__name__)
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        kind, many = _scalar_type(hints[f.name])
        names = [f"--{f.name}", *aliases.get(f.name, [])]
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        help_text = f.metadata.get("help", "") + f" (default: {default})"
        if kind is bool:
            group.add_argument(*names, action=argparse.BooleanOptionalAction, default=default, help=help_text)
        elif many:
            group.add_argument(*names, type=kind, nargs="+", default=default, help=help_text)
        else:
            group.add_argument(*names, type=kind, default=default, choices=f.metadata.get("choices"), help=help_text)


def dataclass_from_namespace(cls: type[T], namespace: argparse.Namespace) -> T:
    """Build `cls` from the parsed flags that belong to it."""
    values = {f.name: getattr(namespace, f.name) for f in dataclasses.fields(cls) if f.init}
    for name, value in values.items():
        if isinstance(value, list):
            values[name] = tuple(value)
    return cls(**values)  # type: ignore[call-arg]


def dataclass_from_kwargs(cls: type[T], kwargs: dict[str, Any], where: str) -> T:
    """Build `cls` from keyword arguments, rejecting unknown keys with the list of valid ones."""
    names = {f.name for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(kwargs) - names)
    if unknown:
        raise TypeError(f"{where}: unknown argument(s) {unknown}; valid: {sorted(names)}")
    return cls(**kwargs)  # type: ignore[call-arg]


def takes_config(cls: type) -> Callable[[F], F]:
    """Decorate a `func(..., **kwargs)` whose keywords are the fields of `cls`: its signature (for
    `help()` and `inspect`) then lists every field with its default, and `func.config_class = cls`
    lets adapters type and validate keywords without duplicating the defaults."""

    def wrap(func: F) -> F:
        signature = inspect.signature(func)
        fixed = [p for p in signature.parameters.values() if p.kind is not inspect.Parameter.VAR_KEYWORD]
        hints = typing.get_type_hints(cls)
        fields = [
            inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=f.default, annotation=hints[f.name])
            for f in dataclasses.fields(cls) if f.init
        ]
        func.__signature__ = signature.replace(parameters=fixed + fields)  # type: ignore[attr-defined]
        func.config_class = cls  # type: ignore[attr-defined]
        return func

    return wrap


class OneLineErrorParser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line on stderr (`error: ...`, exit status 2's message)
    instead of the usage block followed by the message: bad input gets one clear line."""

    def error(self, message: str) -> typing.NoReturn:
        raise SystemExit(f"error: {message} (see --help)")
