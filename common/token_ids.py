"""One resolver for the special token ids a decoder needs: the mask id, the stop ids and the pad id.

Precedence, for each id: an explicit argument > the model's `generation_config` > the model's `config`
> the tokenizer. The tokenizer step reads `mask_token_id` and then, for tokenizers whose mask token is
an added token not declared as `mask_token` (the released Fast-dLLM v2 ones: `|<MASK>|`), the first of
`mask_tokens` it knows. Stop ids are the first source's EOS id(s), as a tuple; the pad id falls back to
the first stop id. Every command line, decoder and the lm-eval adapter resolves through here, so one
model gives the same ids everywhere. Duck-typed: no transformers import.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class TokenIds:
    mask_id: int
    stop_ids: tuple[int, ...]
    pad_id: int | None


def _as_ids(value: Any) -> tuple[int, ...] | None:
    if value is None:
        return None
    return tuple(int(v) for v in value) if isinstance(value, (list, tuple)) else (int(value),)


def _tokenizer_mask_id(tokenizer: Any, mask_tokens: tuple[str, ...]) -> int | None:
    if tokenizer is None:
        return None
    if getattr(tokenizer, "mask_token_id", None) is not None:
        return tokenizer.mask_token_id
    vocab = tokenizer.get_vocab() if hasattr(tokenizer, "get_vocab") else {}
    return next((vocab[token] for token in mask_tokens if token in vocab), None)


def resolve_token_ids(model: Any = None, tokenizer: Any = None, *, mask_id: int | None = None,
                      stop_ids: Any = None, pad_id: int | None = None,
                      mask_tokens: tuple[str, ...] = ()) -> TokenIds:
    """Resolve (mask, stop, pad) ids; raises ValueError with a one-line hint when no mask id is found."""
    sources = [getattr(model, "generation_config", None), getattr(model, "config", None)]
    sources = [s for s in sources if s is not None]

    def first(explicit: Any, attribute: str, from_tokenizer: Any) -> Any:
        if explicit is not None:
            return explicit
        found = next((getattr(s, attribute) for s in sources if getattr(s, attribute, None) is not None), None)
        return found if found is not None else from_tokenizer

    mask = first(mask_id, "mask_token_id", _tokenizer_mask_id(tokenizer, mask_tokens))
    if mask is None:
        raise ValueError("no mask token id: pass mask_id (the tokenizer's mask token id) or set mask_token_id "
                         "in the model's generation_config.json")
    stops = _as_ids(first(stop_ids, "eos_token_id", getattr(tokenizer, "eos_token_id", None))) or ()
    pad = first(pad_id, "pad_token_id", getattr(tokenizer, "pad_token_id", None))
    if pad is None and stops:
        pad = stops[0]
    return TokenIds(mask_id=int(mask), stop_ids=stops, pad_id=None if pad is None else int(pad))


def with_token_ids(cfg: Any, model: Any) -> Any:
    """A decode config (fields `mask_id`, `stopping_criteria_idx`) with both filled by `resolve_token_ids`
    from the model where they were not given."""
    ids = resolve_token_ids(model, mask_id=cfg.mask_id, stop_ids=cfg.stopping_criteria_idx)
    return dataclasses.replace(cfg, mask_id=ids.mask_id, stopping_criteria_idx=ids.stop_ids)
