"""Alias of `fast_dllm_v2.generate_ssd_policy` under the S2D2 reference's file name.

The paper's lm-eval command for Fast-dLLM v2 is run from this folder and names
`custom_generate=./generate_policy_utils.py:generate_ssd_policy`. This file lets that command run our
S2D2 decoder unchanged: the adapter imports it as `fast_dllm_v2.generate_policy_utils`, so the
function and its `config_class` are the package's own. Nothing is defined here.
"""

from fast_dllm_v2.generate_ssd_policy import S2D2Config, generate_ssd_policy

__all__ = ["S2D2Config", "generate_ssd_policy"]
