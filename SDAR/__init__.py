"""SDAR block-diffusion LLMs (JetLM/SDAR-*-Chat): our own Qwen3-based modeling code.

Importing this package registers `SDARConfig`, `SDARModel` and `SDARForCausalLM` with
transformers' Auto classes under `model_type "sdar"`. After `import SDAR`,
`AutoModelForCausalLM.from_pretrained(checkpoint_dir)` loads released SDAR checkpoints with our
classes, without `trust_remote_code`: the local registration takes precedence over the
checkpoint's `auto_map`, which is then ignored. Do not pass `trust_remote_code=True`: transformers
then prefers the checkpoint's own `modeling_sdar.py` named by `auto_map` over these classes.
"""

from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

from SDAR.configuration_sdar import SDARConfig
from SDAR.modeling_sdar import SDARForCausalLM, SDARModel, SDARPreTrainedModel

# exist_ok=True keeps re-imports (e.g. importlib.reload) from raising and lets these classes win
# over any other registration of the same model type.
AutoConfig.register(SDARConfig.model_type, SDARConfig, exist_ok=True)
AutoModel.register(SDARConfig, SDARModel, exist_ok=True)
AutoModelForCausalLM.register(SDARConfig, SDARForCausalLM, exist_ok=True)

__all__ = ["SDARConfig", "SDARForCausalLM", "SDARModel", "SDARPreTrainedModel"]
