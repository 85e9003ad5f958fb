"""Alias of the LLaDA2 decoders under the S2D2 reference's file name (`LLaDA2/generate_utils.py` holds
`generate` = no cache, `generate_cached` and `generate_ssd_policy` there).

A command written for the reference, e.g. lm-eval's `custom_generate=./generate_utils.py:generate_ssd_policy`
run from this folder, runs our decoders unchanged: the adapter imports this file as
`LLaDA2.generate_utils`, so the functions and their `config_class` are the package's own. Nothing is
defined here.
"""

from LLaDA2.generate import generate, generate_cached
from LLaDA2.generate_ssd_policy import generate_ssd_policy

__all__ = ["generate", "generate_cached", "generate_ssd_policy"]
