"""Small helpers for the frozen config dataclasses of `common/` and the families."""

from __future__ import annotations


def chain_post_init(obj: object, cls: type) -> None:
    """Run the `__post_init__` that follows `cls` in `obj`'s MRO, if any.

    Configs combined by multiple inheritance (a family's S2D2 config is the family's baseline config
    plus `S2D2Flags` = verification + routing + estimator) each validate their own fields: every
    `__post_init__` calls this first, so one dataclass `__init__` runs all of them.
    """
    following = getattr(super(cls, obj), "__post_init__", None)
    if following is not None:
        following()


def require_positive(obj: object, names: tuple[str, ...], optional: tuple[str, ...] = ()) -> None:
    """ValueError naming the first field of `names` that is not > 0, or of `optional` that is given and
    not > 0 (a decode config's lengths, budgets and step counts)."""
    for name in names:
        if getattr(obj, name) <= 0:
            raise ValueError(f"{name} must be a positive integer, got {getattr(obj, name)}")
    for name in optional:
        value = getattr(obj, name)
        if value is not None and value <= 0:
            raise ValueError(f"{name} must be positive when given, got {value}")
