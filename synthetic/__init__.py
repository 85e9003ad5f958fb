"""Synthetic reasoning suite for the tiny S2D2 reproduction.

No model or dataset can be downloaded here, so the repository trains its own
tiny block-diffusion model on four generated tasks. Two tasks have answers whose
tokens depend on each other (``add``, ``chain``) and two have many valid answers
(``digitsum``, ``letters``): these are the two situations in which decoding
several tokens in parallel fails and self-speculative verification helps.

Modules: :mod:`synthetic.tasks` (seeded generator and the shipped test split),
:mod:`synthetic.validation` (the validation split that chooses between training
runs), :mod:`synthetic.scorer` (pure answer checking) and :mod:`synthetic.tokenizer`
(character-level Hugging Face tokenizer with a ChatML-like template).
"""
