"""Character-level Hugging Face tokenizer for the synthetic suite.

A tiny model trained in minutes needs a tiny vocabulary in which every digit
and letter is its own token: arithmetic and letter-order rules are then local
lookups instead of being hidden inside multi-character tokens. The tokenizer is
a ``tokenizers`` WordLevel model over single characters, wrapped in
:class:`transformers.PreTrainedTokenizerFast`, so ``save_pretrained`` /
``AutoTokenizer.from_pretrained`` and lm-eval work offline like with any hub
model.

Ids are stable and documented: the special tokens come first, then the
characters of :data:`CHARACTERS` in code-point order.

===  ==================  =====================================================
id   token               role
===  ==================  =====================================================
0    ``<|endoftext|>``   pad token (fills batches after the end of an answer)
1    ``<|im_start|>``    opens a chat turn
2    ``<|im_end|>``      closes a chat turn; the EOS token, generation stops here
3    ``<|MASK|>``        mask token of the block-diffusion model
4    ``<|unk|>``         any character outside the vocabulary
5..  characters          ``\\n``, space, punctuation, ``0-9``, ``a-z``
===  ==================  =====================================================

EOS is ``<|im_end|>`` (not ``<|endoftext|>``) because an answer ends where the
assistant turn ends; padding uses ``<|endoftext|>`` so padding is never
confused with a real stop. There is no BOS token, as in Qwen3/SDAR.

The chat template is ChatML-like::

    <|im_start|>user\\n{prompt}<|im_end|>\\n<|im_start|>assistant\\n

and a training example is that prompt, the item's target and ``<|im_end|>``.
``decode(encode(s)) == s`` holds for every string over :data:`CHARACTERS`
(plus special tokens); any other character becomes ``<|unk|>``.
"""

from __future__ import annotations

import string
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

PAD_TOKEN: str = "<|endoftext|>"
IM_START: str = "<|im_start|>"
IM_END: str = "<|im_end|>"
MASK_TOKEN: str = "<|MASK|>"
UNK_TOKEN: str = "<|unk|>"
EOS_TOKEN: str = IM_END
SPECIAL_TOKENS: tuple[str, ...] = (PAD_TOKEN, IM_START, IM_END, MASK_TOKEN, UNK_TOKEN)

PUNCTUATION: str = "!\"#'()*+,-./:;<=>?[]_|"
"""Everything the tasks write (``#+-*=,.``) plus common marks, so stray text still encodes."""

CHARACTERS: str = "".join(sorted(set("\n " + PUNCTUATION + string.digits + string.ascii_lowercase)))

MODEL_MAX_LENGTH: int = 256
"""Longest example is under 80 tokens; this only bounds warnings and truncation."""

CHAT_TEMPLATE: str = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


def vocabulary() -> dict[str, int]:
    """Token-to-id map: special tokens first, then characters in code-point order."""
    tokens = list(SPECIAL_TOKENS) + list(CHARACTERS)
    return {token: index for index, token in enumerate(tokens)}


def build_tokenizer() -> PreTrainedTokenizerFast:
    """Build the character-level tokenizer from scratch (no files, deterministic)."""
    backend = Tokenizer(models.WordLevel(vocab=vocabulary(), unk_token=UNK_TOKEN))
    backend.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    backend.decoder = decoders.Fuse()
    backend.add_special_tokens(
        [AddedToken(token, special=True, normalized=False) for token in SPECIAL_TOKENS]
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        eos_token=EOS_TOKEN,
        pad_token=PAD_TOKEN,
        mask_token=MASK_TOKEN,
        unk_token=UNK_TOKEN,
        additional_special_tokens=[IM_START, IM_END],
        clean_up_tokenization_spaces=False,
        model_max_length=MODEL_MAX_LENGTH,
        padding_side="right",
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def save_tokenizer(out_dir: str | Path) -> Path:
    """Write the tokenizer with the chat template inside ``tokenizer_config.json``.

    ``save_jinja_files=False`` keeps the template in the config, where older
    loaders (and lm-eval running against a different transformers) look for it.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    build_tokenizer().save_pretrained(str(out), save_jinja_files=False)
    return out


def render_prompt(prompt: str) -> str:
    """What the chat template produces for one user turn plus the generation prompt.

    Pure string formatting so data pipelines need no tokenizer; the tests check
    it against ``apply_chat_template``.
    """
    return f"{IM_START}user\n{prompt}{IM_END}\n{IM_START}assistant\n"


def format_prompt(tokenizer: PreTrainedTokenizerFast, prompt: str) -> str:
    """Apply the tokenizer's chat template to one user prompt, ready for generation."""
    messages = [{"role": "user", "content": prompt}]
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def training_text(item: Mapping[str, Any]) -> str:
    """Full training string: templated prompt, target (scratchpad and answer), EOS."""
    return render_prompt(item["prompt"]) + item["target"] + EOS_TOKEN


def encode_example(tokenizer: PreTrainedTokenizerFast, item: Mapping[str, Any]) -> tuple[list[int], int]:
    """Token ids of :func:`training_text` and how many of them belong to the prompt.

    The prompt length lets the training loss (and the diffusion masking) skip
    the prompt and cover only the target and the EOS.
    """
    prompt_ids = tokenizer.encode(format_prompt(tokenizer, item["prompt"]), add_special_tokens=False)
    target_ids = tokenizer.encode(item["target"], add_special_tokens=False)
    return prompt_ids + target_ids + [tokenizer.eos_token_id], len(prompt_ids)
