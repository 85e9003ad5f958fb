"""lm-eval model `s2d2`: block-diffusion / S2D2 decoding of generation tasks on the stock lm-eval.

    python scripts/lm_eval_cli.py --model s2d2 --device cpu --apply_chat_template \
        --model_args pretrained=models/sdar-tiny,block_length=8,denoising_steps=8,cache_ver=true \
        --tasks synthetic --limit 8 --log_samples --output_path results/lm_eval

model_args (everything else is rejected before the model loads, with the valid keywords listed):
  * lm-eval's HFLM arguments (`pretrained`, `dtype`, `revision`, `max_length`, `think_end_token`, ...).
  * `custom_generate=PATH.py:FUNC` or `package.module:FUNC`: the decoder. Default
    `SDAR.generate_ssd_policy:block_diffusion_generate` (= `SDAR/generate_ssd_policy.py:...`);
    Fast-dLLM v2: `fast_dllm_v2.generate:generate`, `fast_dllm_v2.generate_ssd_policy:generate_ssd_policy`
    (= `Fast-dLLM-v2/generate_ssd_policy.py:...`, or the reference's `./generate_policy_utils.py:...`
    from inside that folder). A file of a family folder is imported as its package module, so it is
    the package's own function. It must take `(model, input_ids [B,P] left-padded, attention_mask,
    generator, **kwargs)` and expose its keyword dataclass as `FUNC.config_class`.
  * `custom_model_class=PATH.py:CLASS`: class whose `from_pretrained` loads the model (its
    `config_class` then loads the config).
  * every field of `FUNC.config_class` (SDAR: block_length, denoising_steps, remasking_strategy,
    confidence_threshold, ...; Fast-dLLM v2: block_size, small_block_size, threshold, use_block_cache,
    max_new_tokens, ...; both: cache_ver, draft_ver, do_verify_policy, min_ssd_span_length, ...),
    converted to the field's type.
  * `lora_dir=DIR` (and `merge_lora=true|false`, default false): for a base + LoRA family (D2F), the
    adapter folder put on `pretrained` (the base model folder) by the family's loader
    (`D2F.lora.load_d2f`: both folders validated before any weight loads; merged into the base weights
    with `merge_lora=true`). Without it a D2F base model is decoded alone (with a warning). lm-eval's own
    `peft=DIR` also loads an adapter, without those checks.
  * `trust_remote_code`: accepted; for model types registered with transformers (`sdar` after
    `import SDAR`, `Fast_dLLM_Qwen` after `import fast_dllm_v2`) it is ignored with a warning, so our
    classes load the checkpoint instead of the checkpoint's own code.
  * `seed` (decoder randomness: drafts when sampling, stochastic acceptance; default 1234) and
    `bucket_by_length` (default true: a batch only holds prompts of equal token length, so there is
    no padding and batching never shifts block boundaries relative to batch 1).

Precedence of generation settings: a decoding keyword given in model_args wins; otherwise the
request's gen_kwargs (the task YAML, updated by `--gen_kwargs`) apply: `max_gen_toks` (the
decoder's budget; `gen_length` or `max_new_tokens` in model_args also count as set), `do_sample`,
`temperature`, `top_p`, `top_k`; otherwise the decoder's defaults. gen_kwargs the decoder does not
know (e.g. `num_beams`) are ignored with a warning, except `do_sample` for decoders that sample iff
`temperature > 0` (Fast-dLLM v2): lm-eval has already folded it into `temperature`. `until`
strings cut the decoded text; the decoder itself stops on stop token ids (generation config EOS
plus the tokenizer's EOS), so decoding stats count tokens up to the stop token.

Per-sample decoding stats: every completion is a `s2d2_eval.stats.Completion` carrying its stats;
the repository's tasks turn them into per-sample metrics (logged with each sample and aggregated:
NFE, TPF, tokens/s, ...). For any task, `self.decode_log` keeps one entry per request and
`get_model_info()` adds per-task pooled stats to the results' `config.s2d2.decoding_stats`
(rank 0's share under data parallelism).
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import logging
from collections import defaultdict
from pathlib import Path
from typing import Any, Callable

import torch
from lm_eval.api.instance import Instance
from lm_eval.api.registry import register_model
from lm_eval.models.huggingface import HFLM
from lm_eval.models.utils import handle_stop_sequences, normalize_gen_kwargs, postprocess_generated_text
from tqdm import tqdm

import families
from common.token_ids import resolve_token_ids
from families.cpu_memory import reuse_freed_memory
from s2d2_eval import REPO_ROOT
from s2d2_eval.model_args import ModelArgError, field_types, load_object, type_decoding_args, validate_decoding_args
from s2d2_eval.stats import Completion, summarize

logger = logging.getLogger(__name__)
families.register_model_types()  # our classes for every family's model_type, no trust_remote_code

DEFAULT_GENERATE = "SDAR.generate_ssd_policy:block_diffusion_generate"
ADAPTER_ARGS = ("custom_generate", "custom_model_class", "trust_remote_code", "seed", "bucket_by_length", "lora_dir",
                "merge_lora")
FROM_PRETRAINED_KWARGS = frozenset({"attn_implementation", "device_map", "low_cpu_mem_usage", "local_files_only",
                                    "load_in_8bit", "load_in_4bit", "bnb_4bit_compute_dtype"})
"""Extra HFLM **kwargs that lm-eval forwards to from_pretrained; anything else is a typo."""

RESERVED_DECODING_ARGS = frozenset({"return_forward_stats"})
"""Set by the adapter (stats are always collected)."""

BUDGET_ARGS = ("max_gen_toks", "gen_length", "max_new_tokens")
"""Decoder fields that set the generation budget; one of them in model_args beats the request's
max_gen_toks. Where both are fields, `max_gen_toks` overrides the other in the decoder itself."""

_HFLM_ARGS = frozenset(
    name for name, p in inspect.signature(HFLM.__init__).parameters.items()
    if name != "self" and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)
)


def _is_registered_model_type(pretrained: str, revision: str | None, subfolder: str) -> tuple[bool, str | None]:
    """(registered?, model_type) of a checkpoint's config.json, read without instantiating code."""
    from transformers import PretrainedConfig
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    config_dict, _ = PretrainedConfig.get_config_dict(pretrained, revision=revision, subfolder=subfolder)
    model_type = config_dict.get("model_type")
    return model_type is not None and model_type in CONFIG_MAPPING, model_type


def _jsonable(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


@dataclasses.dataclass(frozen=True)
class ParsedModelArgs:
    """model_args after typing and validation; nothing loaded but the decoder's module."""

    generate_fn: Callable
    generate_spec: str
    decoding_args: dict[str, Any]
    loader_kwargs: dict[str, Any]
    custom_model_class: type | None
    trust_remote_code: bool
    seed: int
    bucket_by_length: bool
    lora_dir: str | None = None
    merge_lora: bool = False


@register_model("s2d2")
class S2D2LM(HFLM):
    """HFLM whose generation is a block-diffusion decoder; see the module docstring for model_args."""

    def __init__(self, pretrained: str | Any, **model_args: Any) -> None:
        parsed = self.parse_model_args(**model_args)
        self.generate_fn, self.generate_spec = parsed.generate_fn, parsed.generate_spec
        self.config_class = self.generate_fn.config_class
        self.decoding_args = parsed.decoding_args
        self.seed, self.bucket_by_length = parsed.seed, parsed.bucket_by_length
        self.custom_model_class = parsed.custom_model_class
        if self.custom_model_class is not None:
            self.AUTO_MODEL_CLASS = self.custom_model_class
        family = None
        if isinstance(pretrained, str) and self.custom_model_class is None:
            family = self.check_pretrained(pretrained, self.generate_fn)
        self.lora_dir, self.merge_lora, self.adapter_loader = parsed.lora_dir, parsed.merge_lora, None
        if self.lora_dir is not None:
            self.adapter_loader = self._adapter_loader(family, pretrained)
        elif family is not None and family.adapter_loader is not None:
            logger.warning("no lora_dir: decoding the %s base model %s without its LoRA adapter", family.title,
                           pretrained)
        trust = self._resolve_trust_remote_code(pretrained, parsed.trust_remote_code, parsed.loader_kwargs)

        if str(parsed.loader_kwargs.get("device")) == "cpu":
            reuse_freed_memory()  # before the weights: glibc keeps freed memory for the decoder's tensors
        super().__init__(pretrained=pretrained, trust_remote_code=trust, **parsed.loader_kwargs)
        self.tokenizer.padding_side = "left"
        self.mask_id, self.stop_ids = self._resolve_token_ids()
        self.generator = torch.Generator(device=self.device).manual_seed(self.seed)
        self.decode_log: list[dict[str, Any]] = []
        self.progress_label = f"s2d2 {self.generate_spec.rsplit(':', 1)[-1]}"
        self._warned_gen_kwargs: set[str] = set()

    @staticmethod
    def check_pretrained(pretrained: str, generate_fn: Callable) -> Any:
        """One line (ModelArgError) for a missing directory, an offline hub id or a model of another
        family than the decoder's, before any weight loads; returns the directory's family (None for a
        hub id)."""
        try:
            found = families.check_model(pretrained)
        except families.ModelDirError as err:
            raise ModelArgError(f"pretrained={pretrained}: {err}") from None
        expected = families.of_package(generate_fn.__module__.split(".")[0])
        if found is not None and expected and found not in expected:
            raise ModelArgError(
                f"pretrained={pretrained} is a {found.title} model, not {' or '.join(f.title for f in expected)}; "
                f"pass custom_generate={found.s2d2} (S2D2) or "
                f"custom_generate={found.baseline} (its baseline)")
        return found

    @staticmethod
    def check_adapter(lora: str, family: families.Family | None) -> None:
        """One line (ModelArgError) for an adapter on a model that takes none, or a local adapter folder
        that does not fit the base's family, before any weight loads."""
        try:
            families.check_adapter(lora, family)
        except families.ModelDirError as err:
            raise ModelArgError(f"lora_dir={err}") from None

    @classmethod
    def parse_model_args(
        cls,
        custom_generate: str | Callable = DEFAULT_GENERATE,
        custom_model_class: str | type | None = None,
        trust_remote_code: bool | str | None = False,
        seed: int | str = 1234,
        bucket_by_length: bool | str = True,
        lora_dir: str | None = None,
        merge_lora: bool | str = False,
        **kwargs: Any,
    ) -> ParsedModelArgs:
        """Split, type and validate model_args (all but `pretrained`) without loading a model, so that
        errors come first; the CLI wrapper calls it before lm-eval indexes its tasks."""
        generate_fn, generate_spec = cls._load_generate(custom_generate)
        config_class = generate_fn.config_class
        decoding_names = set(field_types(config_class))
        raw_decoding = {k: v for k, v in kwargs.items() if k in decoding_names}
        loader_kwargs = {k: v for k, v in kwargs.items() if k not in decoding_names}
        cls._check_unknown(loader_kwargs, decoding_names)
        reserved = sorted(RESERVED_DECODING_ARGS & set(raw_decoding))
        if reserved:
            raise ModelArgError(f"model_arg(s) {reserved} are set by the s2d2 adapter and cannot be passed")
        decoding_args = type_decoding_args(config_class, raw_decoding)
        validate_decoding_args(config_class, {**decoding_args, "return_forward_stats": True})
        adapter = type_decoding_args(_AdapterArgs, {
            "seed": seed, "bucket_by_length": bucket_by_length, "lora_dir": lora_dir, "merge_lora": merge_lora,
            "trust_remote_code": False if trust_remote_code is None else trust_remote_code})
        lora = adapter["lora_dir"]
        if lora is not None and not Path(lora).is_dir() and not families.looks_like_hub_id(lora):
            raise ModelArgError(f"lora_dir={lora}: no such adapter folder (a local folder or a hub id)")
        if str(loader_kwargs.get("batch_size", 1)).startswith("auto"):
            raise ModelArgError("batch_size=auto is not supported by s2d2 (decode memory depends on the block "
                                "schedule, not on one forward); pass an integer")
        device = loader_kwargs.get("device") or "cuda"
        if str(device).startswith("cuda") and not torch.cuda.is_available():
            logger.warning("device=%s requested but CUDA is not available; using cpu", device)
            loader_kwargs["device"] = "cpu"
        loader_kwargs.setdefault("backend", "causal")
        model_class = (load_object(custom_model_class, "custom_model_class", (REPO_ROOT,))
                       if isinstance(custom_model_class, str) else custom_model_class)
        return ParsedModelArgs(generate_fn=generate_fn, generate_spec=generate_spec, decoding_args=decoding_args,
                               loader_kwargs=loader_kwargs, custom_model_class=model_class,
                               trust_remote_code=adapter["trust_remote_code"], seed=adapter["seed"],
                               bucket_by_length=adapter["bucket_by_length"], lora_dir=adapter["lora_dir"],
                               merge_lora=adapter["merge_lora"])

    @staticmethod
    def _load_generate(spec: str | Callable) -> tuple[Callable, str]:
        fn = load_object(spec, "custom_generate", (REPO_ROOT,)) if isinstance(spec, str) else spec
        name = spec if isinstance(spec, str) else f"{fn.__module__}:{fn.__qualname__}"
        config_class = getattr(fn, "config_class", None)
        if config_class is None or not dataclasses.is_dataclass(config_class):
            raise ModelArgError(
                f"custom_generate={name!r} has no `config_class` dataclass; the adapter needs it to type and "
                "validate decoding keywords (set FUNC.config_class = YourConfig)"
            )
        return fn, name

    @staticmethod
    def _check_unknown(loader_kwargs: dict[str, Any], decoding_names: set[str]) -> None:
        unknown = sorted(k for k in loader_kwargs if k not in _HFLM_ARGS and k not in FROM_PRETRAINED_KWARGS)
        if unknown:
            raise ModelArgError(
                f"unknown model_arg(s) {unknown}. Decoding keywords: {sorted(decoding_names - RESERVED_DECODING_ARGS)}; "
                f"adapter: {list(ADAPTER_ARGS)}; loader (lm-eval HFLM): {sorted(_HFLM_ARGS)}; "
                f"from_pretrained: {sorted(FROM_PRETRAINED_KWARGS)}"
            )

    def _adapter_loader(self, family: families.Family | None, pretrained: Any) -> str:
        """The loader of a base + adapter family; a one-line error for any other model."""
        if family is None or family.adapter_loader is None:
            what = family.title if family is not None else f"pretrained={pretrained!r} (family unknown)"
            raise ModelArgError(f"lora_dir is for base + LoRA families (D2F); {what} takes no adapter")
        return family.adapter_loader

    def _create_model(self, pretrained: str, *, revision: str = "main", dtype: str | torch.dtype | None = "auto",
                      **kwargs: Any) -> None:
        """With `lora_dir`, the family's loader puts the adapter on the base (module docstring); otherwise
        HFLM's own loading."""
        if self.lora_dir is None:
            super()._create_model(pretrained, revision=revision, dtype=dtype, **kwargs)
            return
        from lm_eval.models.utils_hf import get_dtype

        torch_dtype = get_dtype(dtype)
        if not isinstance(torch_dtype, torch.dtype):  # "auto": the checkpoint's own dtype
            torch_dtype = getattr(self.config, "torch_dtype", None) or torch.float32
        loader = families.load(self.adapter_loader)
        try:
            self._model = loader(families.local_dir(pretrained), families.local_dir(self.lora_dir), merge=self.merge_lora,
                                 dtype=torch_dtype, device=self.device)
        except ValueError as err:
            raise ModelArgError(str(err)) from None

    def _resolve_trust_remote_code(self, pretrained: Any, trust: bool, loader_kwargs: dict[str, Any]) -> bool:
        """Never let transformers run checkpoint code for a model type we (or transformers) register."""
        if not trust:
            return False
        if self.custom_model_class is not None:
            logger.warning("trust_remote_code is ignored: custom_model_class=%s loads the model",
                           self.custom_model_class.__name__)
            return False
        if not isinstance(pretrained, str):
            return False
        registered, model_type = _is_registered_model_type(
            pretrained, loader_kwargs.get("revision", "main"), loader_kwargs.get("subfolder", ""))
        if registered:
            logger.warning("trust_remote_code=true is unnecessary: model_type %r is registered with transformers "
                           "(our classes load it); not passing it on", model_type)
            return False
        return True

    def _get_config(self, pretrained: str, *, revision: str = "main", trust_remote_code: bool = False,
                    gguf_file: str | None = None, subfolder: str = "") -> None:
        """With custom_model_class, its own config class reads config.json (the model type need not be
        registered with AutoConfig)."""
        config_class = getattr(self.custom_model_class, "config_class", None)
        if config_class is None:
            super()._get_config(pretrained, revision=revision, trust_remote_code=trust_remote_code,
                                gguf_file=gguf_file, subfolder=subfolder)
            return
        self._config = config_class.from_pretrained(pretrained, revision=revision, subfolder=subfolder)

    def _resolve_token_ids(self) -> tuple[int, tuple[int, ...]]:
        """(mask id, stop ids) by `common.token_ids` precedence: model_args > generation config > model
        config > tokenizer (its mask token, or a family's added mask token such as Fast-dLLM v2's
        `|<MASK>|`)."""
        mask_tokens = tuple(token for family in families.FAMILIES.values() for token in family.mask_tokens)
        try:
            ids = resolve_token_ids(self.model, self.tokenizer, mask_id=self.decoding_args.get("mask_id"),
                                    stop_ids=self.decoding_args.get("stopping_criteria_idx"), mask_tokens=mask_tokens)
        except ValueError as err:
            raise ModelArgError(str(err)) from None
        if not ids.stop_ids:
            raise ModelArgError("no stop token ids: pass stopping_criteria_idx=... or set eos_token_id")
        return ids.mask_id, ids.stop_ids

    def loglikelihood(self, requests, disable_tqdm: bool = False):
        raise NotImplementedError("s2d2 evaluates generation tasks (output_type generate_until) only: a "
                                  "block-diffusion model has no causal log-likelihood without a decoding schedule")

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False):
        raise NotImplementedError("s2d2 evaluates generation tasks (output_type generate_until) only")

    def decode_kwargs(self, gen_kwargs: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
        """Keyword arguments for the decoder and the until strings for one request's gen_kwargs
        (precedence in the module docstring)."""
        normalized = dict(normalize_gen_kwargs(gen_kwargs, self.max_gen_toks))
        until = handle_stop_sequences(normalized.pop("until", None),
                                      eos=self.tok_decode(self.eot_token_id, skip_special_tokens=False))
        budget = normalized.pop("max_gen_toks")
        names = set(field_types(self.config_class))
        folded = {"do_sample"} if "do_sample" not in names and "temperature" in names else set()
        from_request = {}
        for key, value in normalized.items():
            if key in names:
                from_request[key] = value
            elif key not in self._warned_gen_kwargs and key not in folded:
                self._warned_gen_kwargs.add(key)
                logger.warning("gen_kwargs %s=%r is not a %s field; ignored", key, value, self.config_class.__name__)
        merged = {**type_decoding_args(self.config_class, from_request), **self.decoding_args}
        if not any(name in self.decoding_args for name in BUDGET_ARGS):
            merged["max_gen_toks"] = budget
        merged.update(mask_id=self.mask_id, return_forward_stats=True)
        merged.setdefault("stopping_criteria_idx", self.stop_ids)
        validate_decoding_args(self.config_class, merged)
        return merged, until

    def _encode(self, context: str, budget: int) -> list[int]:
        tokens = self.tok_encode(context)
        room = self.max_length - budget
        if room <= 0:
            raise ValueError(f"generation budget {budget} leaves no room for the prompt within max_length "
                             f"{self.max_length}; pass max_length=... or a smaller max_gen_toks")
        if len(tokens) > room:
            logger.warning("prompt of %d tokens left-truncated to %d (max_length %d - budget %d)",
                           len(tokens), room, self.max_length, budget)
            tokens = tokens[-room:]
        return tokens

    def _batches(self, lengths: list[int]) -> list[list[int]]:
        """Indices grouped into batches: longest first; with bucket_by_length, equal lengths only."""
        order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
        size = max(1, int(self.batch_size))
        if not self.bucket_by_length:
            return [order[i : i + size] for i in range(0, len(order), size)]
        buckets: dict[int, list[int]] = defaultdict(list)
        for i in order:
            buckets[lengths[i]].append(i)
        return [members[i : i + size] for members in buckets.values() for i in range(0, len(members), size)]

    def _decode_batch(self, prompts: list[list[int]], kwargs: dict[str, Any]) -> tuple[torch.Tensor, list[dict], int]:
        width = max(len(p) for p in prompts)
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.stop_ids[0]
        ids = torch.full((len(prompts), width), pad, dtype=torch.long)
        mask = torch.zeros((len(prompts), width), dtype=torch.long)
        for row, tokens in enumerate(prompts):
            ids[row, width - len(tokens):] = torch.tensor(tokens, dtype=torch.long)
            mask[row, width - len(tokens):] = 1
        ids = ids.to(self.device)
        attention_mask = None if bool(mask.all()) else mask.to(self.device)
        out, stats = self.generate_fn(self.model, ids, attention_mask=attention_mask, generator=self.generator, **kwargs)
        return out, stats, width

    def _to_text(self, tokens: list[int], until: list[str]) -> str:
        if isinstance(self.think_end_token, int) and self.think_end_token in tokens:
            tokens = tokens[len(tokens) - tokens[::-1].index(self.think_end_token):]
        text = self.tok_decode(tokens)
        think = self.think_end_token if isinstance(self.think_end_token, str) else None
        return postprocess_generated_text(generation=text, stop=until, think_end_token=think)

    def generate_until(self, requests: list[Instance], disable_tqdm: bool = False) -> list[str]:
        """Decode every request; returns Completions (strings with `.decode_stats`) in request order."""
        results: list[Completion | None] = [None] * len(requests)
        groups: dict[str, list[int]] = defaultdict(list)
        for i, request in enumerate(requests):
            groups[json.dumps(request.args[1], sort_keys=True, default=str)].append(i)
        seen: dict[tuple, int] = defaultdict(int)
        progress = tqdm(total=len(requests), desc=self.progress_label, disable=disable_tqdm or self.rank != 0)
        for members in groups.values():
            kwargs, until = self.decode_kwargs(requests[members[0]].args[1])
            budget = next((kwargs[name] for name in BUDGET_ARGS if kwargs.get(name)), self.max_gen_toks)
            prompts = [self._encode(requests[i].args[0], budget) for i in members]
            for batch in self._batches([len(p) for p in prompts]):
                out, stats, width = self._decode_batch([prompts[j] for j in batch], kwargs)
                generated = out[:, width:].tolist()
                for row, j in enumerate(batch):
                    request = requests[members[j]]
                    key = (request.task_name, request.doc_id, request.idx)
                    row_stats = {**stats[row], "batch_rows": len(batch),
                                 "wall_time_share": stats[row]["wall_time"] / len(batch)}
                    completion = Completion(self._to_text(generated[row], until), row_stats)
                    results[members[j]] = completion
                    self.decode_log.append({"task": request.task_name, "doc_id": request.doc_id,
                                            "idx": request.idx, "repeat": seen[key], **row_stats})
                    seen[key] += 1
                    self.cache_hook.add_partial("generate_until", request.args, completion)
                progress.update(len(batch))
        progress.close()
        return results  # type: ignore[return-value]

    def get_model_info(self) -> dict[str, Any]:
        """HFLM's model info (no hub lookup for local directories) plus the decoder and per-task
        pooled decoding stats."""
        local = isinstance(self.pretrained, str) and Path(self.pretrained).is_dir()
        if local or not isinstance(self.pretrained, str):
            info: dict[str, Any] = {
                "model_num_parameters": sum(p.numel() for p in self.model.parameters()),
                "model_dtype": str(self.model.dtype),
                "model_revision": self.revision,
                "model_sha": "",
            }
        else:
            info = super().get_model_info()
        by_task: dict[str, list[dict]] = defaultdict(list)
        for entry in self.decode_log:
            by_task[entry["task"]].append(entry)
        info["s2d2"] = {
            "custom_generate": self.generate_spec,
            "lora_dir": self.lora_dir,
            "merge_lora": self.merge_lora,
            "decoding_args": {k: _jsonable(v) for k, v in self.decoding_args.items()},
            "mask_id": self.mask_id,
            "stop_ids": list(self.stop_ids),
            "seed": self.seed,
            "bucket_by_length": self.bucket_by_length,
            "decoding_stats": {task: summarize(rows) for task, rows in by_task.items()},
        }
        return info


@dataclasses.dataclass(frozen=True)
class _AdapterArgs:
    """Types of the adapter's own scalar model_args (typed with the same rules as decoding ones)."""

    seed: int = 1234
    bucket_by_length: bool = True
    trust_remote_code: bool = False
    lora_dir: str | None = None
    merge_lora: bool = False
