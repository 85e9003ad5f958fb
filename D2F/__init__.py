"""D2F (Discrete Diffusion Forcing): our own modeling code for its two base models.

* LLaDA-8B-Instruct (`model_type "llada"`): `LLaDAConfig`, `LLaDAModel`, `LLaDAModelLM`.
* Dream-v0-Base-7B (`model_type "Dream"`): `DreamConfig`, `DreamBaseModel`, `DreamModel`.
* `D2F.lora.load_d2f` puts a released D2F LoRA adapter on either base through PEFT.

Importing this package registers both configs with AutoConfig, and the models WITH their output
head with AutoModel and AutoModelForCausalLM. AutoModel gets the head too because the released
`auto_map` of both checkpoints maps AutoModel to the class with the head (`LLaDAModelLM`,
`DreamModel`), and the paper's code loads them with `AutoModel`. After `import D2F`,
`AutoModelForCausalLM.from_pretrained(checkpoint_dir)` loads the released checkpoints with these
classes without `trust_remote_code`: a registered model type wins over the checkpoint's `auto_map`.
Do not pass `trust_remote_code=True`: transformers would then run the checkpoint's own code.

The model contract (masks, `store_kv` cache, `logits_to_keep`, alignment) is in D2F/layers.py and
the two modeling files.
"""

from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

from D2F.configuration_dream import DreamConfig
from D2F.configuration_llada import LLaDAConfig
from D2F.modeling_dream import DreamBaseModel, DreamModel, DreamPreTrainedModel
from D2F.modeling_llada import LLaDAModel, LLaDAModelLM, LLaDAPreTrainedModel

# exist_ok=True keeps re-imports (importlib.reload) from raising and lets these classes win over any
# other registration of the same model type.
for _config, _model in ((LLaDAConfig, LLaDAModelLM), (DreamConfig, DreamModel)):
    AutoConfig.register(_config.model_type, _config, exist_ok=True)
    AutoModel.register(_config, _model, exist_ok=True)
    AutoModelForCausalLM.register(_config, _model, exist_ok=True)

__all__ = [
    "DreamBaseModel",
    "DreamConfig",
    "DreamModel",
    "DreamPreTrainedModel",
    "LLaDAConfig",
    "LLaDAModel",
    "LLaDAModelLM",
    "LLaDAPreTrainedModel",
]
