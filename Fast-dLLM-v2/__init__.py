"""Fast-dLLM v2 block-diffusion LLMs (Efficient-Large-Model/Fast_dLLM_v2_7B, _1.5B): our own Qwen2.5-based
modeling code and the baseline and S2D2 decoders. The folder is installed as the package `fast_dllm_v2`.

Importing this package registers `Fast_dLLM_QwenConfig`, `Fast_dLLM_QwenModel` and
`Fast_dLLM_QwenForCausalLM` with transformers' Auto classes under `model_type "Fast_dLLM_Qwen"`. After
`import fast_dllm_v2`, `AutoModelForCausalLM.from_pretrained(checkpoint_dir)` loads the released
checkpoints with these classes WITHOUT `trust_remote_code`: a registered model type wins over the
checkpoint's `auto_map`, which is then ignored. Do not pass `trust_remote_code=True`: transformers would
then run the checkpoint's own `modeling.py` (which also needs transformers >= 4.53).
"""

from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

from fast_dllm_v2.configuration_fast_dllm import Fast_dLLM_QwenConfig
from fast_dllm_v2.modeling_fast_dllm import (
    Fast_dLLM_QwenForCausalLM,
    Fast_dLLM_QwenModel,
    Fast_dLLM_QwenPreTrainedModel,
)

# exist_ok=True keeps re-imports (importlib.reload) from raising and lets these classes win over any
# other registration of the same model type.
AutoConfig.register(Fast_dLLM_QwenConfig.model_type, Fast_dLLM_QwenConfig, exist_ok=True)
AutoModel.register(Fast_dLLM_QwenConfig, Fast_dLLM_QwenModel, exist_ok=True)
AutoModelForCausalLM.register(Fast_dLLM_QwenConfig, Fast_dLLM_QwenForCausalLM, exist_ok=True)

__all__ = ["Fast_dLLM_QwenConfig", "Fast_dLLM_QwenForCausalLM", "Fast_dLLM_QwenModel", "Fast_dLLM_QwenPreTrainedModel"]
