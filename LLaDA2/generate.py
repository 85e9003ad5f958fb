"""LLaDA2 threshold decoding with token editing: the model card's decoder without a cache (`generate`,
the slow, obvious reference) and the KV-cached one (`generate_cached`); ALGORITHM.md §1.3.

Each iteration drafts the whole current block and applies LLaDA2.1's two rules (common.editing):
fill every mask whose drawn token's probability exceeds `threshold` (at least the `num_to_transfer`
most confident), and rewrite every decoded generated token of the block whose new draw differs and
exceeds `editing_threshold`. Once no mask is left, up to `max_post_steps` edit-only iterations run,
until one edits nothing. With `editing_threshold >= 1` nothing decoded is ever overwritten.

    python LLaDA2/example_llada.py --generate_fn nocache     # the command line (all three decoders)
"""

from __future__ import annotations

if __name__ == "__main__":  # a decoder module; its command line is the family's example script
    raise SystemExit("error: LLaDA2/generate.py holds the decoder, not a command line; run python LLaDA2/example_llada.py "
                     "--generate_fn cached (--help lists its flags)")

import torch
from torch import Tensor

from common.cli import dataclass_from_kwargs, takes_config
from common.editing import threshold_fill
from common.stats import COMMIT_DIFFUSION, COMMIT_EDIT
from LLaDA2.blocks import CachedDecodeConfig, IterationStep, LLaDA2Blocks, LLaDA2DecodeConfig, decode_blocks


class ThresholdEditStep(IterationStep):
    """Draft the block; fill the confident masks (M2T) and apply the confident edits (T2T)."""

    def __call__(self, blocks: LLaDA2Blocks, b: int, blk: Tensor, masked: Tensor, editable: Tensor,
                 live: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        _, drafts, confidence = self.draft(blocks, b, live)
        fill = threshold_fill(confidence, masked, self.cfg.threshold, self.cfg.num_to_transfer)  # [B, L]
        edit = self.edits(drafts, confidence, blk, editable, live)  # [B, L], disjoint from fill
        kinds = fill.long() * COMMIT_DIFFUSION + edit.long() * COMMIT_EDIT
        return fill | edit, drafts, kinds


def _decode(config_cls: type, where: str, model: torch.nn.Module, input_ids: Tensor, attention_mask: Tensor | None,
            generator: torch.Generator | None, kwargs: dict) -> Tensor | tuple[Tensor, list[dict]]:
    cfg = dataclass_from_kwargs(config_cls, kwargs, where).resolved(model)
    ids, stats = decode_blocks(model, input_ids, attention_mask, cfg, ThresholdEditStep(cfg, generator))
    return (ids, stats) if cfg.return_forward_stats else ids


@takes_config(LLaDA2DecodeConfig)
def generate(model: torch.nn.Module, input_ids: Tensor, attention_mask: Tensor | None = None,
             generator: torch.Generator | None = None, **kwargs) -> Tensor | tuple[Tensor, list[dict]]:
    """No-cache decoding of left-padded prompts `input_ids` [B, P]: every iteration re-forwards the
    prefix up to the current block's end with the block-causal mask. Keyword arguments are the fields
    of `LLaDA2DecodeConfig` (unknown names raise TypeError, bad values ValueError, before any forward).
    Returns [B, P + budget] ids, each row cut after its first stop token (included) and padded with the
    stop id; with `return_forward_stats=True` returns `(ids, stats)`, one stats dict per row."""
    return _decode(LLaDA2DecodeConfig, "generate", model, input_ids, attention_mask, generator, kwargs)


@takes_config(CachedDecodeConfig)
def generate_cached(model: torch.nn.Module, input_ids: Tensor, attention_mask: Tensor | None = None,
                    generator: torch.Generator | None = None, **kwargs) -> Tensor | tuple[Tensor, list[dict]]:
    """KV-cached decoding with the same rule and the same tokens as `generate` (keyword arguments: the
    fields of `CachedDecodeConfig`; same return contract). lm-eval `custom_generate` entry point."""
    return _decode(CachedDecodeConfig, "generate_cached", model, input_ids, attention_mask, generator, kwargs)
