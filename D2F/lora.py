"""Load a released D2F LoRA adapter onto its base model with PEFT.

Released format (MODEL-FAMILIES.md §4.1, §8.2): an adapter folder with `adapter_config.json` and
`adapter_model.safetensors`, trained with `LoraConfig(r=32, lora_alpha=32, lora_dropout=0.1)` on
q/k/v/`attn_out` (LLaDA) or q/k/v/`o_proj` (Dream). Its tensors are named
`base_model.model.<base module path>.lora_{A,B}.weight`, e.g.
`base_model.model.model.transformer.blocks.{i}.q_proj.lora_A.weight` (LLaDA) and
`base_model.model.model.layers.{i}.self_attn.o_proj.lora_B.weight` (Dream). Because our modules
carry the checkpoint's names, `PeftModel.from_pretrained` places every tensor without remapping.
The adapter changes W to W + (lora_alpha / r) * B @ A; `disable_adapter()` gives exactly the base.
"""

import json
from pathlib import Path
from typing import Union

import torch
from peft import PeftModel, get_peft_model_state_dict
from safetensors import safe_open
from transformers import AutoModelForCausalLM, PreTrainedModel

# Importing this module runs D2F/__init__.py first, which registers "llada" and "Dream" with the
# Auto classes that load_d2f uses.

# Linear layers of each family that an adapter may target, keyed by config.json's model_type.
FAMILY_LINEAR_MODULES: dict[str, frozenset[str]] = {
    "llada": frozenset({"q_proj", "k_proj", "v_proj", "attn_out", "ff_proj", "up_proj", "ff_out"}),
    "Dream": frozenset({"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj", "lm_head"}),
}
# The released D2F adapters' target modules (D2F-train/utils/model.py), keyed by model_type.
RELEASED_TARGET_MODULES: dict[str, tuple[str, ...]] = {
    "llada": ("q_proj", "k_proj", "v_proj", "attn_out"),
    "Dream": ("q_proj", "k_proj", "v_proj", "o_proj"),
}
_BASE_WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)
_ADAPTER_WEIGHTS = "adapter_model.safetensors"
_ADAPTER_PREFIX = "base_model.model."


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON: {err}") from err


def check_base_dir(base_model_dir: Union[str, Path]) -> str:
    """Validate a base checkpoint folder without loading weights -> its model_type."""
    base = Path(base_model_dir)
    config_path = base / "config.json"
    if not config_path.is_file():
        raise ValueError(f"Base model folder {base} has no config.json.")
    model_type = _read_json(config_path).get("model_type")
    if model_type not in FAMILY_LINEAR_MODULES:
        raise ValueError(
            f"{config_path} has model_type {model_type!r}; D2F bases are {sorted(FAMILY_LINEAR_MODULES)}."
        )
    if not any((base / name).is_file() for name in _BASE_WEIGHT_FILES):
        raise ValueError(f"Base model folder {base} has none of the weight files {list(_BASE_WEIGHT_FILES)}.")
    return model_type


def check_lora_dir(lora_dir: Union[str, Path], model_type: str) -> set[str]:
    """Validate an adapter folder against a base family without loading tensors -> its tensor names.

    Checks: adapter_config.json is a LoRA config whose target modules exist in the family, and every
    tensor in adapter_model.safetensors is `base_model.model.<path>.<target>.lora_{A,B}.weight`.
    A Dream adapter on a LLaDA base (or the reverse) fails here, not as missing keys after loading.
    """
    lora = Path(lora_dir)
    config_path = lora / "adapter_config.json"
    if not config_path.is_file():
        raise ValueError(f"LoRA folder {lora} has no adapter_config.json.")
    adapter_config = _read_json(config_path)
    if adapter_config.get("peft_type") != "LORA":
        raise ValueError(f"{config_path} has peft_type {adapter_config.get('peft_type')!r}; expected 'LORA'.")
    targets = adapter_config.get("target_modules")
    known = FAMILY_LINEAR_MODULES[model_type]
    if isinstance(targets, (list, tuple)) and not set(targets) <= known:
        raise ValueError(
            f"{config_path} targets {sorted(set(targets) - known)}, which are not linear layers of a "
            f"{model_type!r} model ({sorted(known)}); is the adapter for the other D2F base?"
        )
    weights_path = lora / _ADAPTER_WEIGHTS
    if not weights_path.is_file():
        raise ValueError(f"LoRA folder {lora} has no {_ADAPTER_WEIGHTS}.")
    with safe_open(str(weights_path), framework="pt") as handle:
        names = set(handle.keys())
    for name in names:
        parts = name.split(".")
        if (
            not name.startswith(_ADAPTER_PREFIX)
            or parts[-1] != "weight"
            or parts[-2] not in ("lora_A", "lora_B")
            or parts[-3] not in known
        ):
            raise ValueError(
                f"{weights_path} holds {name!r}; expected 'base_model.model.<module>.lora_A/lora_B.weight' "
                f"on a {model_type!r} linear layer."
            )
    return names


def load_d2f(
    base_model_dir: Union[str, Path],
    lora_dir: Union[str, Path],
    merge: bool,
    dtype: torch.dtype,
    device: Union[str, torch.device],
) -> Union[PeftModel, PreTrainedModel]:
    """Load a D2F base checkpoint and its LoRA adapter on `device`, all in `dtype`, in eval mode.

    Both folders are validated (check_base_dir, check_lora_dir) before any weight is read. After
    loading, the adapter's tensors must be exactly the adapter parameters PEFT created (no missing
    and no unexpected keys). merge=True folds the adapter into the base weights
    (`merge_and_unload`) and returns the plain base class, which runs at base-model speed;
    merge=False returns the `PeftModel`, whose `disable_adapter()` context gives the base model.
    """
    model_type = check_base_dir(base_model_dir)
    adapter_names = check_lora_dir(lora_dir, model_type)
    base = AutoModelForCausalLM.from_pretrained(str(base_model_dir), torch_dtype=dtype).to(device)
    model = PeftModel.from_pretrained(base, str(lora_dir), is_trainable=False)
    # PEFT keeps half-precision adapters in float32 by default; one dtype everywhere is what was asked.
    model.to(dtype)
    loaded = set(get_peft_model_state_dict(model, save_embedding_layers=False))
    if loaded != adapter_names:
        raise ValueError(
            f"Adapter in {lora_dir} does not match the base in {base_model_dir}: "
            f"missing {sorted(loaded - adapter_names)[:4]}, unexpected {sorted(adapter_names - loaded)[:4]}."
        )
    if merge:
        return model.merge_and_unload().eval()
    return model.eval()


__all__ = ["FAMILY_LINEAR_MODULES", "RELEASED_TARGET_MODULES", "check_base_dir", "check_lora_dir", "load_d2f"]
