"""`d2f`: the pipelined D2F decoder (ALGORITHM.md §1.4; MODEL-FAMILIES.md §4.4, §8.2).

Several blocks are in flight: a block is added once the newest one is decoded to `block_add_threshold`,
and fully activated once its predecessor is decoded to `decoded_token_threshold`. One forward serves
every block in flight (block-causal across blocks, bidirectional inside); each step commits, in every
block, the drafts above `skip_threshold`, and in a fully activated block with none of them its most
confident draft. Settled blocks are stored in the cache by the next forward.

    python D2F/example_d2f.py --generate_fn d2f               # the command line (both decoders)
"""

from __future__ import annotations

if __name__ == "__main__":  # a decoder module; its command line is the family's example script
    raise SystemExit("error: D2F/generate.py holds the decoder, not a command line; run python D2F/example_d2f.py "
                     "--generate_fn d2f (--help lists its flags)")

import torch
from torch import Tensor

from common.cli import dataclass_from_kwargs, takes_config
from common.stats import COMMIT_DIFFUSION
from D2F.pipeline import D2FDecodeConfig, D2FPipeline, PipelineStep, Window, baseline_commits, decode_pipeline


class BaselineStep(PipelineStep):
    """Draft every block in flight, commit by the D2F rule."""

    def __call__(self, pipe: D2FPipeline, w: Window, logits: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        _, drafts, confidence = self.draft(logits)
        commit = baseline_commits(w, confidence, w.masked, self.cfg.block_size, self.cfg.skip_threshold)
        return commit, drafts, commit.long() * COMMIT_DIFFUSION


@takes_config(D2FDecodeConfig)
def generate(model: torch.nn.Module, input_ids: Tensor, attention_mask: Tensor | None = None,
             generator: torch.Generator | None = None, **kwargs) -> Tensor | tuple[Tensor, list[dict]]:
    """Decode left-padded prompts `input_ids` [B, P] with a D2F model (base + LoRA adapter, merged or a
    PeftModel); keyword arguments are the fields of `D2FDecodeConfig` (unknown names raise TypeError, bad
    values ValueError, both before any forward). Returns [B, P + budget] ids, each row cut before its
    first stop token (excluded, as the reference) and padded with the stop id; with
    `return_forward_stats=True` returns `(ids, stats)`, one stats dict per row. lm-eval `custom_generate`
    entry point."""
    cfg = dataclass_from_kwargs(D2FDecodeConfig, kwargs, "generate").resolved(model)
    ids, stats = decode_pipeline(model, input_ids, attention_mask, cfg, BaselineStep(cfg, generator))
    return (ids, stats) if cfg.return_forward_stats else ids
