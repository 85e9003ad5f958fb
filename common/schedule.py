"""Denoising schedule: how many tokens each step of a block must commit (ALGORITHM.md §0)."""

from __future__ import annotations


def num_transfer_tokens(block_length: int, steps: int) -> list[int]:
    """Split ``block_length`` tokens over ``steps`` denoising steps as evenly as possible.

    ALGORITHM.md §0: ``base = L // S``, ``rem = L % S``; step ``s`` gets ``base + 1`` if
    ``s < rem`` else ``base``, so the earlier steps absorb the remainder and the counts sum to
    exactly ``L``. It returns plain ints because the schedule is host-side loop metadata
    (indexed by the step counter), not device data.
    """
    if block_length <= 0 or steps <= 0:
        raise ValueError(
            f"block_length and steps must be positive, got block_length={block_length}, steps={steps}"
        )
    base, rem = divmod(block_length, steps)
    return [base + 1 if s < rem else base for s in range(steps)]
