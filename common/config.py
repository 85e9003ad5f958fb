"""Small helpers for the frozen config dataclasses of `common/` and the families."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any


def chain_post_init(obj: object, cls: type) -> None:
    """Run the `__post_init__` that follows `cls` in `obj`'s MRO, if any.

    Configs combined by multiple inheritance (a family's S2D2 config is the family's baseline config
    plus `S2D2Flags` = verification + routing + estimator) each validate their own fields: every
    `__post_init__` calls this first, so one dataclass `__init__` runs all of them.
    """
    following = getattr(super(cls, obj), "__post_init__", None)
    if following is not None:
        following()


def check_field_bounds(values: Mapping[str, Any], metadata: Mapping[str, Mapping[str, Any]]) -> None:
    """ValueError naming the first field whose value breaks its metadata: `"bounds": (low, high)` (closed
    interval; None = unbounded on that side; a None value is not checked) or `"at_most": other_field`.

    Works on plain mappings so a command line can check its parsed flags with the same declarations
    before importing the decoder (and torch); a config's `__post_init__` checks itself through
    `require_field_bounds`."""
    for name, meta in metadata.items():
        value = values.get(name)
        if value is None:
            continue
        if "bounds" in meta:
            low, high = meta["bounds"]
            if not ((low is None or value >= low) and (high is None or value <= high)):
                interval = f"[{'-inf' if low is None else f'{low:g}'}, {'inf' if high is None else f'{high:g}'}]"
                raise ValueError(f"{name} must be in {interval}, got {value}")
        other = meta.get("at_most")
        if other is not None and values.get(other) is not None and value > values[other]:
            raise ValueError(f"{name} ({value}) must be <= {other} ({values[other]})")


def require_field_bounds(obj: Any) -> None:
    """`check_field_bounds` over the fields of a config dataclass instance."""
    fields = dataclasses.fields(obj)
    check_field_bounds({f.name: getattr(obj, f.name) for f in fields}, {f.name: f.metadata for f in fields})
