"""A random-init tiny model (SDAR, Fast-dLLM v2 or LLaDA2) with the synthetic tokenizer, saved like a real
checkpoint, so the whole evaluation pipeline (lm-eval adapter, tasks, records, sweeps) can be
exercised in seconds without a trained model. Its answers are garbage; its stats and plumbing are real.

    python -m s2d2_eval.testing /tmp/rand_tiny
    python -m s2d2_eval.testing /tmp/rand_fast --family fast_dllm_v2
    python -m s2d2_eval.testing /tmp/rand_d2f --family d2f_llada      # writes base/ and lora/
    python -m s2d2_eval.testing /tmp/rand_llada2 --family llada2

`load_script` imports one of the repository's scripts (scripts/, the families' example CLIs: not
packages) as a module, for the tests; `run_fresh` runs one as `__main__` in a new interpreter and reports
how it exited and whether torch or transformers got imported (bad input must end before they are).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

from synthetic.checkpoint import FAMILIES


def load_script(path: str | Path, name: str | None = None) -> ModuleType:
    """The script at `path` as a module named `name` (default `_script_<file stem>`), executed once and
    then reused from sys.modules. It is registered before it runs: dataclasses look their module up
    there while the class is built."""
    path = Path(path)
    name = name or f"_script_{path.stem}"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


REPO_ROOT = Path(__file__).resolve().parent.parent
HEAVY_MODULES = ("torch", "transformers")
_FRESH_REPORT = "@run_fresh "
_FRESH_MAIN = f"""
import json, runpy, sys
sys.argv = sys.argv[1:]
code = None
try:
    runpy.run_path(sys.argv[0], run_name="__main__")
except SystemExit as exc:
    code = exc.code
heavy = sorted(name for name in {HEAVY_MODULES!r} if name in sys.modules)
print("\\n{_FRESH_REPORT}" + json.dumps({{"exit": code if code is None or isinstance(code, int) else str(code),
                                          "heavy": heavy}}))
"""


@dataclass(frozen=True)
class FreshRun:
    """What `run_fresh` saw: the script's own stdout and stderr, its SystemExit code (None when it
    returned; a message for `SystemExit("...")`) and which of HEAVY_MODULES were imported by the end."""

    stdout: str
    stderr: str
    exit: int | str | None
    heavy: list[str]


def run_fresh(script: str | Path, argv: list[str], cwd: str | Path = REPO_ROOT, timeout: float = 120) -> FreshRun:
    """Run `script` (a path) as `__main__` with `argv` in a new interpreter, the repository first on its
    path, and report how it ended."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-c", _FRESH_MAIN, str(script), *argv], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0 or _FRESH_REPORT not in done.stdout:
        raise AssertionError(f"{script} did not end through SystemExit or a return:\n{done.stderr}")
    stdout, _, report = done.stdout.rpartition("\n" + _FRESH_REPORT)
    fields = json.loads(report)
    return FreshRun(stdout=stdout, stderr=done.stderr, exit=fields["exit"], heavy=fields["heavy"])


def build_random_tiny_model(out_dir: str | Path, hidden_size: int = 32, num_layers: int = 1, seed: int = 0,
                            family: str = "sdar", block_size: int = 16) -> Path:
    """Save config, weights, generation config and tokenizer to `out_dir`; returns it.

    `family` picks the architecture: `sdar` (SDARForCausalLM), `fast_dllm_v2`
    (Fast_dLLM_QwenForCausalLM, whose `bd_size` is `block_size`) or `llada2` (LLaDA2MoeModelLM: layer 0
    dense, then a MoE of 4 routed experts in 2 groups, top-2 from 1 group, one shared expert, RoPE on
    half of each head). The layout is the trained models' (`synthetic.checkpoint.save_checkpoint`).
    """
    import torch

    from synthetic.checkpoint import save_checkpoint, tiny_model
    from synthetic.tokenizer import build_tokenizer

    torch.manual_seed(seed)
    sizes = dict(hidden_size=hidden_size, intermediate_size=2 * hidden_size, num_hidden_layers=num_layers,
                 num_attention_heads=2, num_key_value_heads=1, head_dim=hidden_size // 2)
    if family == "fast_dllm_v2":
        sizes["bd_size"] = block_size
    if family == "llada2":
        sizes.update(num_hidden_layers=max(2, num_layers), num_experts=4, n_group=2, topk_group=1,
                     num_experts_per_tok=2, moe_intermediate_size=hidden_size, num_shared_experts=1,
                     first_k_dense_replace=1, partial_rotary_factor=0.5, rotary_dim=hidden_size // 4)
    return save_checkpoint(tiny_model(family, build_tokenizer(), **sizes), out_dir)


D2F_MODEL_TYPES = {"d2f_llada": "llada", "d2f_dream": "Dream"}
"""The D2F families and their base model_type (whose released adapter targets are
`D2F.lora.RELEASED_TARGET_MODULES`)."""


def build_random_d2f_model(out_dir: str | Path, family: str = "d2f_llada", hidden_size: int = 32, num_layers: int = 1,
                           seed: int = 0, rank: int = 4) -> tuple[Path, Path]:
    """A random D2F pair in the released layout: `out_dir/base` (config, weights, generation config and
    the synthetic tokenizer) and `out_dir/lora` (a PEFT LoRA adapter on the released targets, with
    non-zero B so that it changes the logits). Returns (base_dir, lora_dir)."""
    import torch
    from peft import LoraConfig, get_peft_model

    from D2F.configuration_dream import DreamConfig
    from D2F.configuration_llada import LLaDAConfig
    from D2F.lora import RELEASED_TARGET_MODULES
    from D2F.modeling_dream import DreamModel
    from D2F.modeling_llada import LLaDAModelLM
    from synthetic.checkpoint import save_checkpoint
    from synthetic.tokenizer import MODEL_MAX_LENGTH, build_tokenizer

    if family not in D2F_MODEL_TYPES:
        raise ValueError(f"family={family!r}; valid: {', '.join(D2F_MODEL_TYPES)}")
    tokenizer = build_tokenizer()
    ids = dict(pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
               mask_token_id=tokenizer.mask_token_id)
    torch.manual_seed(seed)
    if family == "d2f_llada":
        config = LLaDAConfig(d_model=hidden_size, n_heads=2, n_kv_heads=2, n_layers=num_layers,
                             mlp_hidden_size=2 * hidden_size, vocab_size=len(tokenizer), embedding_size=len(tokenizer),
                             max_sequence_length=MODEL_MAX_LENGTH, rope_theta=10000.0, **ids)
        model = LLaDAModelLM(config)
    else:
        config = DreamConfig(hidden_size=hidden_size, intermediate_size=2 * hidden_size, num_hidden_layers=num_layers,
                             num_attention_heads=2, num_key_value_heads=1, vocab_size=len(tokenizer),
                             max_position_embeddings=MODEL_MAX_LENGTH, max_window_layers=num_layers,
                             bos_token_id=tokenizer.eos_token_id, **ids)
        model = DreamModel(config)
    out = Path(out_dir)
    base_dir, lora_dir = out / "base", out / "lora"
    save_checkpoint(model, base_dir)
    targets = list(RELEASED_TARGET_MODULES[D2F_MODEL_TYPES[family]])
    lora = get_peft_model(model, LoraConfig(r=rank, lora_alpha=rank, lora_dropout=0.0, target_modules=targets))
    with torch.no_grad():
        for name, param in lora.named_parameters():
            if "lora_B" in name:
                param.normal_(0.0, 0.2)
    lora.save_pretrained(str(lora_dir))
    return base_dir, lora_dir


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m s2d2_eval.testing", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--family", choices=FAMILIES, default="sdar")
    args = parser.parse_args()
    if args.family in D2F_MODEL_TYPES:
        print(*build_random_d2f_model(args.out_dir, family=args.family))
    else:
        print(build_random_tiny_model(args.out_dir, family=args.family))
