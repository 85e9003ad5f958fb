"""Command-line flags derived from a frozen config dataclass, so a CLI and the function it wraps
share ONE set of defaults (HOUSE-STYLE habit 8). Pure argparse: no file I/O, no models."""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import types
import typing
from typing import Any, Callable, TypeVar

from common.config import check_field_bounds

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


FIELD_TYPES: dict[str, type] = {"int": int, "float": float, "str": str, "bool": bool}
"""Element types a config field may have, by the name a field spec records."""


def field_specs(cls: type) -> list[dict[str, Any]]:
    """What a command line needs to know of each init field of a config dataclass, as JSON-ready dicts:
    name, element type name (FIELD_TYPES), whether it takes several values, default, help, and the
    checks argparse or `common.config.check_field_bounds` can make without the class (choices, bounds,
    at_most). A CLI can build its flags from a stored copy of these without importing the decoder."""
    hints = typing.get_type_hints(cls)
    specs = []
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        kind, many = _scalar_type(hints[f.name])
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        spec = {"name": f.name, "type": kind.__name__, "many": many,
                "default": list(default) if isinstance(default, tuple) else default, "help": f.metadata.get("help", "")}
        for key in ("choices", "bounds", "at_most"):
            if key in f.metadata:
                value = f.metadata[key]
                spec[key] = list(value) if isinstance(value, tuple) else value
        specs.append(spec)
    return specs


def add_dataclass_arguments(
    parser: argparse.ArgumentParser, cls: type, aliases: dict[str, list[str]] | None = None
) -> None:
    """One `--name` flag per dataclass field with the field's default (see `add_field_arguments`)."""
    add_field_arguments(parser, field_specs(cls), cls.__name__, aliases)


def add_field_arguments(parser: argparse.ArgumentParser, specs: list[dict[str, Any]], title: str,
                        aliases: dict[str, list[str]] | None = None) -> None:
    """One `--name` flag per field spec (`field_specs`) with its default. Booleans get `--name/--no-name`;
    a field's choices become the flag's choices (listed by --help), its bounds are named in the help;
    `aliases` adds extra spellings (e.g. the reference's `--forward_stats`)."""
    aliases = aliases or {}
    group = parser.add_argument_group(title)
    for spec in specs:
        kind = FIELD_TYPES[spec["type"]]
        default = tuple(spec["default"]) if isinstance(spec["default"], list) else spec["default"]
        names = [f"--{spec['name']}", *aliases.get(spec["name"], [])]
        limits = ""
        if "bounds" in spec:
            low, high = ("-inf" if spec["bounds"][0] is None else f"{spec['bounds'][0]:g}",
                         "inf" if spec["bounds"][1] is None else f"{spec['bounds'][1]:g}")
            limits = f"; in [{low}, {high}]"
        help_text = f"{spec['help']} (default: {default}{limits})".lstrip()
        if kind is bool:
            group.add_argument(*names, action=argparse.BooleanOptionalAction, default=default, help=help_text)
        elif spec["many"]:
            group.add_argument(*names, type=kind, nargs="+", default=default, help=help_text)
        else:
            group.add_argument(*names, type=kind, default=default, choices=spec.get("choices"), help=help_text)


def defer_default(parser: argparse.ArgumentParser, dest: str, help_text: str) -> None:
    """Make flag `dest` default to None, to be resolved later (e.g. from the model folder), with `help_text`
    saying how."""
    parser.set_defaults(**{dest: None})
    for action in parser._actions:
        if action.dest == dest:
            action.help = help_text


def check_flag_values(specs: list[dict[str, Any]], namespace: argparse.Namespace) -> None:
    """The field specs' bounds and at_most checks (`common.config.check_field_bounds`) on parsed flags:
    the same declarations the config's `__post_init__` checks, run before the config class is imported."""
    values = {spec["name"]: getattr(namespace, spec["name"], None) for spec in specs}
    metadata = {spec["name"]: {k: spec[k] for k in ("bounds", "at_most") if k in spec} for spec in specs}
    check_field_bounds(values, {name: meta for name, meta in metadata.items() if meta})


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


class ScriptParser(argparse.ArgumentParser):
    """The scripts' ArgumentParser (scripts/): a bad flag is one `prog: error: ...` line on stderr with exit
    status 2, argparse's own line without the usage block."""

    def error(self, message: str) -> typing.NoReturn:
        self.exit(2, f"{self.prog}: error: {message}\n")


class OneLineErrorParser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line on stderr (`error: ...`, exit status 2's message)
    instead of the usage block followed by the message: bad input gets one clear line."""

    def error(self, message: str) -> typing.NoReturn:
        raise SystemExit(f"error: {message} (see --help)")
