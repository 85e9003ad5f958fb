"""Structured schemas of the Hydra configs in `configs/` (HOUSE-STYLE habit 8: dataclasses first,
YAML second). Registered in Hydra's ConfigStore as `eval_schema`; `configs/eval.yaml` lists it
first in its defaults, so every group option is merged into a typed node and an unknown key or a
value of the wrong type fails at composition, before anything runs.

`decoding.params` is typed from the union of the fields of every decoder's keyword dataclass
(`DECODERS`: SDAR's `BlockDiffusionConfig` and `S2D2Config`, Fast-dLLM v2's `FastDecodeConfig` and
`S2D2Config`, D2F's `D2FDecodeConfig` and `S2D2Config`): every field is optional and None means "the decoder's default". A name that two
families share must have one type in both, which is checked when this module is imported. Whether a
key fits the chosen decoder (an S2D2 key for a baseline, a Fast-dLLM key such as `small_block_size`
for an SDAR decoder) is checked by `run_eval` against that decoder's own `config_class`, still
before the model loads.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING

from families import FAMILIES

DECODER_KINDS = ("ar", "static", "dynamic", "s2d2")
"""Decoder families: the plot series and the table's baselines (AR mode, best dynamic)."""


def _optional_schema_type(annotation: Any) -> Any:
    """OmegaConf-compatible Optional[...] for a decoder field annotation (tuples become lists)."""
    inner = annotation
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if typing.get_origin(annotation) is not None and type(None) in typing.get_args(annotation) and len(args) == 1:
        inner = args[0]
    if typing.get_origin(inner) in (tuple, list):
        element = typing.get_args(inner)[0]
        return Optional[List[element]]  # type: ignore[valid-type]
    return Optional[inner]


DECODERS = tuple(spec for family in FAMILIES.values() for spec in family.decoder_specs())
"""The repository's decoders (`decoding.generate` specs); `decoding.params` accepts their fields."""

SET_BY_ADAPTER = frozenset({"return_forward_stats"})
"""Decoder fields the lm-eval adapter sets itself; not configurable."""


def decoder_config_classes() -> dict[str, type]:
    """`decoding.generate` spec -> the keyword dataclass of that decoder, for every entry of DECODERS
    (imports the decoders, hence torch)."""
    import importlib

    classes = {}
    for spec in DECODERS:
        module, _, name = spec.partition(":")
        classes[spec] = getattr(importlib.import_module(module), name).config_class
    return classes


_STORED_TYPES = {"int": int, "float": float, "bool": bool, "str": str}


def stored_field_types() -> dict[str, dict[str, Any]]:
    """`decoding.generate` spec -> name -> annotation of its config's fields, read from the stored flag
    specs (`families.cli_schema`, kept equal to the classes by tests/test_cli_fast.py): no decoder and
    no torch is imported to build the schema, so Hydra composes (and --help answers) in a fraction
    of a second. Optional[...] is left out: every schema field is optional anyway."""
    from families import cli_schema

    def annotation(spec: dict[str, Any]) -> Any:
        kind = _STORED_TYPES[spec["type"]]
        return tuple[kind, ...] if spec["many"] else kind

    return {decoder: {spec["name"]: annotation(spec) for spec in cli_schema.fields(decoder)} for decoder in DECODERS}


def union_of_fields(fields_by_decoder: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """name -> annotation over all decoders' fields (decoder spec -> name -> annotation); a name two
    decoders annotate differently raises TypeError (one schema field cannot type both)."""
    union: dict[str, Any] = {}
    owner: dict[str, str] = {}
    for spec, fields in fields_by_decoder.items():
        for name, annotation in fields.items():
            if name in union and union[name] != annotation:
                raise TypeError(f"decoder field {name!r} is {annotation} in {spec} but {union[name]} in "
                                f"{owner[name]}: decoding.params cannot type both")
            union.setdefault(name, annotation)
            owner.setdefault(name, spec)
    return union


def decoding_params_fields(fields_by_decoder: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The schema's field name -> OmegaConf type (`union_of_fields`, made optional, less SET_BY_ADAPTER)."""
    return {name: _optional_schema_type(annotation) for name, annotation in union_of_fields(fields_by_decoder).items()
            if name not in SET_BY_ADAPTER}


def _decoding_params_schema() -> type:
    fields = [(name, kind, field(default=None)) for name, kind in decoding_params_fields(stored_field_types()).items()]
    return dataclasses.make_dataclass("DecodingParams", fields)


DecodingParams = _decoding_params_schema()


@dataclass
class ModelConfig:
    """A checkpoint and how to load it."""

    name: str = MISSING  # short name: record paths and tables
    pretrained: str = MISSING  # local directory (relative: to the working dir, then the repo root) or hub id
    dtype: str = "float32"  # float32 | float16 | bfloat16 | auto
    device: str = "cpu"
    custom_model_class: Optional[str] = None  # PATH.py:CLASS, else AutoModelForCausalLM (our registered types)
    lora_dir: Optional[str] = None  # base + LoRA families (D2F): the adapter folder put on `pretrained`
    merge_lora: bool = False  # fold the adapter into the base weights after loading (faster, same maths)
    block_length: Optional[int] = None  # block length the checkpoint is meant for; sweeps, fast_* presets use it
    torch_threads: Optional[int] = None  # CPU threads; 1 is fastest for tiny models on a shared machine
    max_length: Optional[int] = None  # prompt + generation limit (default: the model config's)


@dataclass
class DecodingConfig:
    """A decoder and its keywords (the fields of the generate function's `config_class`)."""

    name: str = MISSING
    kind: str = MISSING  # one of DECODER_KINDS
    generate: str = "SDAR.generate_ssd_policy:block_diffusion_generate"  # custom_generate spec
    params: DecodingParams = field(default_factory=DecodingParams)  # type: ignore[valid-type]


@dataclass
class TaskConfig:
    """lm-eval task(s) scored as one number."""

    name: str = MISSING
    tasks: List[str] = MISSING  # lm-eval task or group names
    local: bool = True  # only this repo's tasks (fast TaskManager); false: lm-eval's built-ins too (hub)
    metric: str = "exact_match"  # per-sample metric that is the accuracy
    filter: str = "none"  # lm-eval filter whose metric is read (e.g. gsm8k: flexible-extract)
    limit: Optional[int] = None  # documents per task (None: all)
    num_fewshot: Optional[int] = None
    apply_chat_template: bool = True
    fewshot_as_multiturn: bool = False
    system_instruction: Optional[str] = None
    confirm_run_unsafe_code: bool = False  # code-execution tasks (HumanEval) refuse to run without it; no config sets it
    gen_kwargs: Dict[str, Any] = field(default_factory=dict)  # overrides the task YAML's generation_kwargs


@dataclass
class EvalConfig:
    """One (model, decoding, task) run; see scripts/run_eval.py."""

    model: ModelConfig = field(default_factory=ModelConfig)
    decoding: DecodingConfig = field(default_factory=DecodingConfig)
    task: TaskConfig = field(default_factory=TaskConfig)
    sweep_name: str = "default"  # records go to <results_dir>/<sweep_name>/...
    results_dir: str = "results"  # relative paths: to the repo root
    block_length: Optional[int] = None  # set: every SDAR block decoder (not AR) runs at it, steps scaled
    seed: int = 1234
    batch_size: int = 1
    bucket_by_length: bool = True  # batches of equal prompt length only (no padding)
    overwrite: bool = False  # rerun even if the record exists
    dry_run: bool = False  # validate, print the record path, run nothing
    log_samples: bool = True  # also write <record>.samples.jsonl (completions and per-sample stats)
    verbose: bool = False  # lm-eval's INFO logging


def register_configs() -> None:
    """Store the schema so `configs/eval.yaml` can put `eval_schema` first in its defaults."""
    ConfigStore.instance().store(name="eval_schema", node=EvalConfig)
