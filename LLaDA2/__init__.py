"""LLaDA2.x-mini MoE block-diffusion LLMs (inclusionAI/LLaDA2.1-mini, LLaDA2.0-mini): our own modeling code.

Importing this package registers `LLaDA2MoeConfig`, `LLaDA2MoeModel` and `LLaDA2MoeModelLM` with
transformers' Auto classes under `model_type "llada2_moe"`. After `import LLaDA2`,
`AutoModelForCausalLM.from_pretrained(checkpoint_dir)` loads the released checkpoints with our
classes, without `trust_remote_code`: the local registration takes precedence over the
checkpoint's `auto_map`, which is then ignored. Do not pass `trust_remote_code=True`: transformers
then prefers the checkpoint's own `modeling_llada2_moe.py` named by `auto_map` over these classes.
"""

from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

from LLaDA2.configuration_llada2_moe import LLaDA2MoeConfig
from LLaDA2.modeling_llada2_moe import LLaDA2MoeModel, LLaDA2MoeModelLM, LLaDA2MoePreTrainedModel

# exist_ok=True keeps re-imports (e.g. importlib.reload) from raising and lets these classes win
# over any other registration of the same model type.
AutoConfig.register(LLaDA2MoeConfig.model_type, LLaDA2MoeConfig, exist_ok=True)
AutoModel.register(LLaDA2MoeConfig, LLaDA2MoeModel, exist_ok=True)
AutoModelForCausalLM.register(LLaDA2MoeConfig, LLaDA2MoeModelLM, exist_ok=True)

__all__ = ["LLaDA2MoeConfig", "LLaDA2MoeModel", "LLaDA2MoeModelLM", "LLaDA2MoePreTrainedModel"]
