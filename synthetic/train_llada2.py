"""The LLaDA2 MoE part of `scripts/train_tiny.py --family llada2`: architecture flags, the dense
training MoE, aux-loss-free expert balancing, and the token-to-token (T2T) editing objective.

`scripts/train_tiny.py` owns the loop and the mask-to-token (M2T) objective shared with SDAR: the
doubled sequence [x_t ‖ x_0] with the block-causal mask parts, an AR phase (block size 1) first, then
a block-size mix that keeps block size 1, so AR mode (the S2D2 verifier) is trained. This module adds,
through four hooks the loop calls (`add_arguments`, `validate`, `Recipe.prepare` / `.row` / `.after_step`):

* **T2T** (LLaDA2.1's editing; its report describes recovering original tokens from random
  substitutions, and no training code for it is public). A decoder edits a visible, non-prompt token
  of the current block when the model's sampled token there differs and is more probable than
  tau_edit. Without training at visible positions those logits are arbitrary and edits fire at random.
  So, in the noised half of a block-diffusion row, every visible answer token is substituted with
  probability r ~ U(0, --t2t_max_rate) (drawn per row) by a random token: half the time one of the
  row's own answer tokens (a plausible error: a digit for a digit, or a premature EOS / pad), otherwise
  any printable character; the ORIGINAL token is the target; and each untouched visible answer token gets an identity target with probability
  --t2t_identity_rate, so the model keeps a correct token with confidence and edits only wrong ones.
  Block size 1 rows have no visible token in their noised half and stay pure AR rows.
* **A dense MoE for training.** With 8 small experts, running every expert on every token and
  weighting it by the router's top-k weight (zero for unchosen experts) gives the token-dispatch
  output (the same sum of the same products; tests/test_train_llada2.py checks equality in float64)
  without the per-expert sort, split and host sync. Only the training model's forward is swapped; the
  saved checkpoint is the plain `LLaDA2MoeModelLM`, decoded with dispatch.
* **Aux-loss-free balancing** (DeepSeek-V3's rule, which LLaDA2's `expert_bias` buffer serves): after
  every optimiser step, each MoE layer's bias moves by --expert_bias_rate * sign(mean load - load) per
  expert, where load counts the step's (token, slot) picks. The bias only changes WHICH experts are
  chosen (the weights use the unbiased scores), so this is outside backprop.
"""

from __future__ import annotations

import argparse
import math
import random
from dataclasses import replace
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

IGNORE_INDEX = -100


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The LLaDA2-only flags (ignored by the other families; `validate` rejects them there)."""
    group = parser.add_argument_group("llada2 (MoE and editing; --family llada2 only)")
    group.add_argument("--num_experts", type=int, default=8, help="routed experts per MoE layer")
    group.add_argument("--num_experts_per_tok", type=int, default=2, help="top-k experts per token")
    group.add_argument("--n_group", type=int, default=4, help="expert groups (group-limited top-k)")
    group.add_argument("--topk_group", type=int, default=2, help="groups a token may pick experts from")
    group.add_argument("--moe_intermediate_size", type=int, default=96, help="width of each expert's SwiGLU")
    group.add_argument("--expert_bias_rate", type=float, default=1e-3,
                       help="aux-loss-free balancing: expert_bias step per optimiser step (sign update)")
    group.add_argument("--t2t_max_rate", type=float, default=0.25,
                       help="T2T: substitution rate of visible answer tokens is drawn from U(0, this) per row")
    group.add_argument("--t2t_identity_rate", type=float, default=0.3,
                       help="T2T: share of the untouched visible answer tokens given an identity target")


LLADA2_FLAGS = ("num_experts", "num_experts_per_tok", "n_group", "topk_group", "moe_intermediate_size",
                "expert_bias_rate", "t2t_max_rate", "t2t_identity_rate")


def validate(args: argparse.Namespace, defaults: argparse.Namespace) -> str | None:
    """One error line for a bad LLaDA2 flag (or one given to another family), else None."""
    if args.family != "llada2":
        changed = [name for name in LLADA2_FLAGS if getattr(args, name) != getattr(defaults, name)]
        return f"--{changed[0]} only applies to --family llada2" if changed else None
    for name in ("num_experts", "num_experts_per_tok", "n_group", "topk_group", "moe_intermediate_size"):
        if getattr(args, name) <= 0:
            return f"--{name} must be a positive integer, got {getattr(args, name)}"
    if args.num_experts % args.n_group or args.num_experts // args.n_group < 2:
        return (f"--num_experts ({args.num_experts}) must split into --n_group ({args.n_group}) groups of at "
                "least 2 experts (a group's score is the sum of its top 2)")
    if args.topk_group > args.n_group:
        return f"--topk_group ({args.topk_group}) must be <= --n_group ({args.n_group})"
    eligible = args.topk_group * args.num_experts // args.n_group
    if args.num_experts_per_tok > eligible:
        return (f"--num_experts_per_tok ({args.num_experts_per_tok}) exceeds the {eligible} experts of the "
                f"--topk_group {args.topk_group} kept groups")
    if not (math.isfinite(args.expert_bias_rate) and args.expert_bias_rate >= 0):
        return f"--expert_bias_rate must be >= 0, got {args.expert_bias_rate}"
    for name in ("t2t_max_rate", "t2t_identity_rate"):
        if not 0.0 <= getattr(args, name) <= 1.0:
            return f"--{name} must be in [0, 1], got {getattr(args, name)}"
    if args.head_dim % 4:
        return f"--head_dim must be a multiple of 4 for --family llada2 (RoPE on half of it), got {args.head_dim}"
    return None


def config_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    """LLaDA2MoeConfig keys beyond the shared sizes: layer 0 dense, then the MoE; all written out,
    since the config defaults are the released 256-expert model's. `block_length` (an extra key) records
    the largest training block, which `LLaDA2/example_llada.py` decodes at by default."""
    return dict(
        block_length=max(args.block_sizes),
        num_experts=args.num_experts, num_experts_per_tok=args.num_experts_per_tok, n_group=args.n_group,
        topk_group=args.topk_group, moe_intermediate_size=args.moe_intermediate_size, num_shared_experts=1,
        first_k_dense_replace=1, routed_scaling_factor=2.5, partial_rotary_factor=0.5,
        rotary_dim=args.head_dim // 2, use_qkv_bias=False, use_bias=False, use_qk_norm=True,
        rms_norm_eps=1e-6, attention_dropout=0.0,
    )


def dense_moe_forward(block: Any, hidden_states: "torch.Tensor",
                      loads: "torch.Tensor | None" = None) -> "torch.Tensor":
    """`LLaDA2MoeSparseMoeBlock.forward` computed densely: every expert on every token, weighted by the
    router's top-k weights scattered over all experts (0 for an unchosen one). [B, Q, E] -> [B, Q, E].

    `loads` [X] (optional) accumulates how many (token, slot) picks each expert got.
    """
    import torch

    batch, q_len, hidden = hidden_states.shape
    tokens = hidden_states.reshape(batch * q_len, hidden)  # [N, E]
    expert_idx, weights = block.gate(tokens)  # [N, k], [N, k]
    if loads is not None:
        loads += torch.bincount(expert_idx.reshape(-1), minlength=block.num_experts).to(loads.dtype)
    dense = torch.zeros(tokens.shape[0], block.num_experts, dtype=weights.dtype, device=tokens.device)
    dense = dense.scatter(1, expert_idx, weights)  # [N, X]
    gate_w = torch.stack([e.gate_proj.weight for e in block.experts])  # [X, I, E]
    up_w = torch.stack([e.up_proj.weight for e in block.experts])  # [X, I, E]
    down_w = torch.stack([e.down_proj.weight for e in block.experts])  # [X, E, I]
    act = block.experts[0].act_fn
    inner = act(torch.einsum("ne,xie->nxi", tokens, gate_w)) * torch.einsum("ne,xie->nxi", tokens, up_w)  # [N, X, I]
    # The routing weight is applied before the down projection (linear, so the same sum) to skip an
    # [N, X, E] tensor; in the router's precision as the dispatch path, then cast back.
    inner = inner * dense[:, :, None].to(inner.dtype)
    mixed = torch.einsum("nxi,xei->ne", inner, down_w).to(hidden_states.dtype)  # [N, E]
    out = mixed.view(batch, q_len, hidden)
    if block.shared_experts is not None:
        out = out + block.shared_experts(hidden_states)
    return out


class Recipe:
    """Per-run state of the LLaDA2 objective: the T2T substitution vocabulary and the expert loads."""

    def __init__(self, args: argparse.Namespace, tokenizer: Any, rng: random.Random) -> None:
        from synthetic.tokenizer import CHARACTERS

        self.args = args
        self.rng = rng
        self.mask_id = tokenizer.mask_token_id
        # Substitutes: the printable characters the tasks write (no newline, never a special token).
        self.characters = [tokenizer.convert_tokens_to_ids(c) for c in CHARACTERS if c != "\n"]
        self.blocks: list[Any] = []
        self.loads: list["torch.Tensor"] = []
        self.t2t_substituted = 0
        self.t2t_identity = 0

    def prepare(self, model: Any) -> None:
        """Swap every MoE block's forward for the dense one, counting its loads."""
        import torch

        from LLaDA2.modeling_llada2_moe import LLaDA2MoeSparseMoeBlock

        self.blocks = [m for m in model.modules() if isinstance(m, LLaDA2MoeSparseMoeBlock)]
        self.loads = [torch.zeros(b.num_experts, device=b.gate.weight.device) for b in self.blocks]
        for block, loads in zip(self.blocks, self.loads):
            block.forward = lambda h, block=block, loads=loads: dense_moe_forward(block, h, loads)

    def row(self, row: Any, prompt_len: int) -> Any:
        """`row` (a `TrainRow` from `make_row`) with T2T substitutions and identity targets in its
        noised half; block size 1 rows come back unchanged (nothing is visible there)."""
        if row.block_size == 1:
            return row
        input_ids, labels = list(row.input_ids), list(row.labels)
        rate = self.rng.random() * self.args.t2t_max_rate
        visible = [i for i, (noised, pos) in enumerate(zip(row.noised, row.position_ids))
                   if noised and pos >= prompt_len and input_ids[i] != self.mask_id]
        answer_tokens = [t for t, noised, pos in zip(row.input_ids, row.noised, row.position_ids)
                         if not noised and pos >= prompt_len]
        for i in visible:
            original = input_ids[i]
            if self.rng.random() < rate:
                pool = answer_tokens if self.rng.random() < 0.5 else self.characters
                substitute = self.rng.choice(pool)
                if substitute == original:
                    substitute = self.rng.choice([c for c in self.characters if c != original])
                input_ids[i], labels[i] = substitute, original
                self.t2t_substituted += 1
            elif self.rng.random() < self.args.t2t_identity_rate:
                labels[i] = original
                self.t2t_identity += 1
        return replace(row, input_ids=input_ids, labels=labels)

    def after_step(self) -> None:
        """Aux-loss-free balancing: bias += rate * sign(mean load - load) per layer, then reset loads."""
        import torch

        with torch.no_grad():
            for block, loads in zip(self.blocks, self.loads):
                block.gate.expert_bias += self.args.expert_bias_rate * torch.sign(loads.mean() - loads)
                loads.zero_()

    def summary(self) -> dict[str, Any]:
        """Training-record fields: the final biases and how much T2T supervision the run saw."""
        return {
            "expert_bias": [[round(float(v), 5) for v in b.gate.expert_bias] for b in self.blocks],
            "t2t_substituted_targets": self.t2t_substituted,
            "t2t_identity_targets": self.t2t_identity,
        }
