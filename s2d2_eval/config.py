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
from s2d2_eval.model_args import field_types

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
    """`decoding.generate` spec -> the keyword dataclass of that decoder, for every entry of DECODERS."""
    import importlib

    classes = {}
    for spec in DECODERS:
        module, _, name = spec.partition(":")
        classes[spec] = getattr(importlib.import_module(module), name).config_class
    return classes


def union_of_fields(config_classes: dict[str, type]) -> dict[str, Any]:
    """name -> annotation over all decoder configs; a name two configs annotate differently raises
    TypeError (one schema field cannot type both)."""
    union: dict[str, Any] = {}
    owner: dict[str, str] = {}
    for spec, config_class in config_classes.items():
        for name, annotation in field_types(config_class).items():
            if name in union and union[name] != annotation:
                raise TypeError(f"decoder field {name!r} is {annotation} in {spec} ({config_class.__name__}) but "
                                f"{union[name]} in {owner[name]}: decoding.params cannot type both")
            union.setdefault(name, annotation)
            owner.setdefault(name, spec)
    return union


def _decoding_params_schema() -> type:
    fields = [
        (name, _optional_schema_type(annotation), field(default=None))
        for name, annotation in union_of_fields(decoder_config_classes()).items()
        if name not in SET_BY_ADAPTER
    ]
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
