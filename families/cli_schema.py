"""A stored copy of the single-run command lines' decode flags, so `--help` and argument errors need no
torch import.

The flags are the fields of the decoders' config dataclasses (`common.cli.field_specs`), which live
beside the decoders and import torch and transformers (1-25 s). `cli_schema.json` holds those field
specs per decoder; the command lines build their parsers and check bounds from it, then import the
decoder and build the real config (its `__post_init__` is the authority). tests/test_cli_fast.py fails
when the copy is stale; refresh it with

    python -m families.cli_schema
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

SCHEMA_FILE = Path(__file__).with_name("cli_schema.json")

DECODERS = (
    "SDAR.generate:block_diffusion_generate",
    "SDAR.generate_ssd_policy:block_diffusion_generate",
    "fast_dllm_v2.generate:generate",
    "fast_dllm_v2.generate_ssd_policy:generate_ssd_policy",
    "LLaDA2.generate:generate",
    "LLaDA2.generate:generate_cached",
    "LLaDA2.generate_ssd_policy:generate_ssd_policy",
    "D2F.generate:generate",
    "D2F.generate_ssd_policy:generate_ssd_policy",
)
"""Every decoder a single-run command line offers ("module:function"; its `config_class` holds the flags)."""


def current() -> dict[str, Any]:
    """The field specs of every decoder's config, read from the classes (imports the decoders)."""
    from common.cli import field_specs
    from families import load

    schema = {}
    for spec in DECODERS:
        cls = load(spec).config_class
        schema[spec] = {"config": f"{cls.__module__}:{cls.__qualname__}", "fields": field_specs(cls)}
    return schema


@cache
def stored() -> dict[str, Any]:
    return json.loads(SCHEMA_FILE.read_text())


def fields(decoder: str) -> list[dict[str, Any]]:
    """The stored field specs of a decoder's config ("module:function" of `DECODERS`)."""
    return stored()[decoder]["fields"]


if __name__ == "__main__":
    SCHEMA_FILE.write_text(json.dumps(current(), indent=1) + "\n")
    print(f"wrote {SCHEMA_FILE}")
