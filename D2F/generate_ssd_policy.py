r"""S2D2 on the pipelined D2F decoder (ALGORITHM.md §2.6, with every routing policy of §3).

Each step drafts every block in flight. A routing policy decides whether to verify the first contiguous
masked span of the row's earliest unfinished block (with `ssd_span_across_blocks`, as the reference, the
span may run on into the next blocks). Verification is one forward: the 2L trick for position-aligned
D2F-LLaDA, a causal forward whose row t - 1 gives q_t for shift-aligned D2F-Dream (the Fast-dLLM v2
construction, with the mask really applied: the reference's Dream verifier ran bidirectional,
MODEL-FAMILIES.md §8.2). Accepted drafts and the recovered token are committed; then every fully
activated block that got fewer than `min_tokens_per_step` commits is topped up by the D2F rule, and
semi-activated blocks commit nothing outside the span (the reference). A row that does not verify
takes exactly the `d2f` step, so a policy that never verifies reproduces `generate.py` token for token.

    python D2F/example_d2f.py --generate_fn ssd_policy --token_acceptance_estimator soft_entropy_negexp
    python D2F/example_d2f.py --generate_fn ssd_policy --family dream --do_verify_policy score_hysteresis \
        --hysteresis_threshold_on 1 --hysteresis_threshold_off -5 --score_penalty_coef 1
"""

from __future__ import annotations

if __name__ == "__main__":  # a decoder module; its command line is the family's example script
    raise SystemExit("error: D2F/generate_ssd_policy.py holds the decoder, not a command line; run python D2F/example_d2f.py "
                     "--generate_fn ssd_policy (--help lists its flags)")

from dataclasses import dataclass, field

import torch
from torch import Tensor

from common import s2d2
from common.cache import row_mask
from common.cli import dataclass_from_kwargs, takes_config
from common.s2d2 import S2D2Flags
from common.spans import first_masked_span
from common.stats import COMMIT_DIFFUSION
from D2F.pipeline import D2FDecodeConfig, D2FPipeline, PipelineStep, Window, block_commits, decode_pipeline, per_block


@dataclass(frozen=True)
class S2D2Config(S2D2Flags, D2FDecodeConfig):
    """S2D2 decoding for D2F: the `d2f` fields, the shared S2D2 flags (common.s2d2.S2D2Flags) and the D2F
    reference's own verifier options (ALGORITHM.md §2.6, §4.4)."""

    target_block_size: int = field(default=1, metadata={"help": "verifier block size B_t (1 = AR verification)"})
    min_tokens_per_step: int = field(
        default=1, metadata={"help": "after a verification, fully activated blocks are topped up to this many commits"})
    ssd_span_across_blocks: bool = field(
        default=False, metadata={"help": "the span may run past the earliest unfinished block (the reference)"})

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("target_block_size", "min_tokens_per_step"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")


@dataclass(frozen=True)
class PipelineTopUp:
    """The D2F commit rule after the verified span (common.s2d2.TopUpRule). A row that did not verify
    takes the `d2f` step; a row that verified gets, in each fully activated block with fewer than
    `min_k` commits this step, the drafts above the threshold if enough of them, else its top ones;
    semi-activated blocks get nothing outside the span (ALGORITHM.md §2.6 step 5)."""

    threshold: float
    block_size: int
    activated: Tensor  # [B, L]

    def apply(self, kinds: Tensor, *, masked: Tensor, confidence: Tensor, probs: Tensor, min_k: Tensor,
              live: Tensor, routed: Tensor) -> Tensor:
        size = self.block_size
        full = per_block(self.activated, size)  # [B, NL]
        got = (kinds > 0).view(kinds.shape[0], -1, size).sum(-1)  # [B, NL] commits of the span
        need = (min_k[:, None] - got).clamp_min(0)  # [B, NL]
        budget = torch.where(routed[:, None], need, full.long())
        allowed = torch.where(routed[:, None], full & (need > 0), torch.ones_like(full))  # [B, NL]
        remaining = masked & (kinds == 0) & live[:, None]
        chosen = block_commits(confidence, remaining, budget, size, self.threshold)
        chosen &= allowed.repeat_interleave(size, dim=1)
        return torch.where(chosen, COMMIT_DIFFUSION, kinds)


class S2D2Step(PipelineStep):
    """D2F's adapter to the shared step (common.s2d2.S2D2Step): drafts of every block in flight, the span of
    the earliest unfinished block (its decoded fraction is the routing progress), the 2L or shifted causal
    verifier, and the D2F rule as top-up."""

    def __init__(self, cfg: S2D2Config, batch: int, device: torch.device,
                 generator: torch.Generator | None = None) -> None:
        super().__init__(cfg, generator)
        self.core = s2d2.S2D2Step(cfg, self.sampling, batch, device, generator)

    def select(self, keep: Tensor) -> None:
        self.core.select(keep)

    def __call__(self, pipe: D2FPipeline, w: Window, logits: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        cfg = self.cfg
        probs, drafts, confidence = self.draft(logits)
        region = None if cfg.ssd_span_across_blocks else w.earliest
        span = first_masked_span(w.masked if region is None else w.masked & region)
        min_k = torch.full_like(w.settled_end, cfg.min_tokens_per_step)
        current = pipe.region(w)
        drafted_all = torch.where(w.masked, drafts, current)  # [B, L]: what the core drafts, for every row

        def verify(drafted: Tensor, rows: Tensor) -> Tensor:
            """The core's contract ([R, L] drafts of the routed rows -> [R, L, V]): the pipelined verifier
            forward runs over the routed rows only (every row: no cache copy)."""
            batch = drafted_all.shape[0]
            routed = row_mask(rows, batch)
            index = None if rows.numel() == batch else rows
            return pipe.verify(w, drafted_all, routed, span, cfg.target_block_size, index,
                               bounds=self.core.routing_reads)

        return self.core(
            probs, drafts, confidence, current, w.masked, w.live, progress=w.progress,
            context_length=cfg.block_size, min_k=min_k,
            top_up_rule=PipelineTopUp(cfg.skip_threshold, cfg.block_size, w.activated),
            verify=verify, recorder=pipe.recorder, span_region=region,
            read_with_routing=lambda routed: pipe.verify_bounds(w, routed, span))


@takes_config(S2D2Config)
def generate_ssd_policy(model: torch.nn.Module, input_ids: Tensor, attention_mask: Tensor | None = None,
                        generator: torch.Generator | None = None, **kwargs) -> Tensor | tuple[Tensor, list[dict]]:
    """S2D2 decoding of left-padded prompts `input_ids` [B, P]; keyword arguments are the fields of
    `S2D2Config` (unknown names raise TypeError, bad values ValueError, both before any forward). Same
    return contract as `D2F.generate.generate`."""
    cfg = dataclass_from_kwargs(S2D2Config, kwargs, "generate_ssd_policy").resolved(model)
    step = S2D2Step(cfg, input_ids.shape[0], input_ids.device, generator)
    ids, stats = decode_pipeline(model, input_ids, attention_mask, cfg, step)
    return (ids, stats) if cfg.return_forward_stats else ids
