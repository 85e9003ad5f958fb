"""Alias of `fast_dllm_v2.modeling_fast_dllm` under the S2D2 reference's file name.

The paper's lm-eval command for Fast-dLLM v2 is run from this folder and names
`custom_model_class=./modeling_fast.py:Fast_dLLM_QwenForCausalLM`. This file lets that command load
our model class unchanged: the adapter imports it as `fast_dllm_v2.modeling_fast`, so the class below
is the very one registered with transformers. Nothing is defined here.
"""

from fast_dllm_v2.modeling_fast_dllm import (
    Fast_dLLM_QwenForCausalLM,
    Fast_dLLM_QwenModel,
    Fast_dLLM_QwenPreTrainedModel,
)

__all__ = ["Fast_dLLM_QwenForCausalLM", "Fast_dLLM_QwenModel", "Fast_dLLM_QwenPreTrainedModel"]
