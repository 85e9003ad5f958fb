"""Decoding benchmark: AR mode, the dynamic-threshold baseline and S2D2 on a fixed prompt set.

Prints one JSON record last: per decoder NFE by kind, generated tokens, TPF (generated tokens per
non-prefill forward), tokens/s, accuracy on the synthetic items, and host syncs per decode step
(tensor->host conversions counted during decoding: bool()/item()/tolist()/int()). Timings come from
this machine and are only comparable within one record.

    python scripts/bench_decoding.py                          # shipped tiny model, 8 prompts per task
    python scripts/bench_decoding.py --model_dir DIR --per_task 20 --block_length 8
"""

from __future__ import annotations

import argparse
import contextlib
import json
import platform
import random
import sys
from pathlib import Path

import torch
from tqdm import tqdm

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_MODEL_DIR = REPO_ROOT / "models" / "sdar-tiny"
TEST_SPLIT = REPO_ROOT / "synthetic" / "data" / "test.jsonl"


@contextlib.contextmanager
def count_host_syncs():
    """Count tensor -> host conversions, the calls that force a device sync on a GPU."""
    counter = {"n": 0}
    names = ("__bool__", "item", "tolist", "__int__", "__float__")
    originals = {name: getattr(torch.Tensor, name) for name in names}

    def wrap(original):
        def counted(self, *args, **kwargs):
            counter["n"] += 1
            return original(self, *args, **kwargs)
        return counted

    for name, original in originals.items():
        setattr(torch.Tensor, name, wrap(original))
    try:
        yield counter
    finally:
        for name, original in originals.items():
            setattr(torch.Tensor, name, original)


def decoders(block_length: int, steps: int, threshold: float) -> dict[str, tuple[str, dict]]:
    """name -> (module, kwargs). AR mode is block length 1 with one step (one forward per token)."""
    return {
        "ar": ("SDAR.generate", dict(block_length=1, denoising_steps=1)),
        "dynamic": ("SDAR.generate", dict(block_length=block_length, denoising_steps=steps,
                                          remasking_strategy="low_confidence_dynamic", confidence_threshold=threshold)),
        "s2d2": ("SDAR.generate_ssd_policy", dict(block_length=block_length, denoising_steps=steps,
                                                  remasking_strategy="low_confidence_dynamic",
                                                  confidence_threshold=threshold, cache_ver=True, draft_ver=True)),
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model_dir", default=str(DEFAULT_MODEL_DIR))
    parser.add_argument("--per_task", type=int, default=8, help="prompts per task from the test split")
    parser.add_argument("--block_length", type=int, default=8)
    parser.add_argument("--denoising_steps", type=int, default=8)
    parser.add_argument("--confidence_threshold", type=float, default=0.9)
    parser.add_argument("--gen_length", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)
    if args.per_task <= 0 or args.block_length <= 0 or args.denoising_steps <= 0 or args.gen_length <= 0:
        sys.exit("error: --per_task, --block_length, --denoising_steps and --gen_length must be positive")
    if not Path(args.model_dir).is_dir():
        sys.exit(f"error: no model directory at {args.model_dir}; pass --model_dir")

    import importlib

    import transformers

    import SDAR  # noqa: F401  (registers model_type sdar)
    from synthetic.scorer import score

    tokenizer = transformers.AutoTokenizer.from_pretrained(args.model_dir, local_files_only=True)
    model = transformers.AutoModelForCausalLM.from_pretrained(args.model_dir, local_files_only=True,
                                                              torch_dtype=torch.float32).to(args.device).eval()
    items = [json.loads(line) for line in TEST_SPLIT.read_text().splitlines()]
    chosen: list[dict] = []
    for task in sorted({it["task"] for it in items}):
        chosen += [it for it in items if it["task"] == task][: args.per_task]
    prompts = [tokenizer.apply_chat_template([{"role": "user", "content": it["prompt"]}], add_generation_prompt=True,
                                             tokenize=False) for it in chosen]

    record: dict = {"model_dir": args.model_dir, "n_prompts": len(chosen), "block_length": args.block_length,
                    "denoising_steps": args.denoising_steps, "confidence_threshold": args.confidence_threshold,
                    "device": args.device, "torch": torch.__version__, "transformers": transformers.__version__,
                    "machine": platform.machine(), "decoders": {}}
    specs = decoders(args.block_length, args.denoising_steps, args.confidence_threshold)
    for name, (module_name, kwargs) in specs.items():
        generate = importlib.import_module(module_name).block_diffusion_generate
        random.seed(args.seed)
        torch.manual_seed(args.seed)
        totals = {"generated_tokens": 0, "nfe": 0, "prefill": 0, "wall_time": 0.0, "correct": 0, "syncs": 0,
                  "draft_forwards": 0, "verifications": 0}
        for item, prompt in tqdm(list(zip(chosen, prompts)), desc=name, file=sys.stderr):
            ids = tokenizer(prompt, return_tensors="pt", add_special_tokens=False).input_ids.to(args.device)
            with count_host_syncs() as syncs:
                out, stats = generate(model, ids, gen_length=args.gen_length, mask_id=tokenizer.mask_token_id,
                                      return_forward_stats=True, **kwargs)
            row = stats[0]
            text = tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True)
            totals["correct"] += int(score(item, text))
            totals["generated_tokens"] += row["generated_tokens"]
            totals["nfe"] += row["nfe"]
            totals["prefill"] += row["nfe_by_kind"]["prefill"]
            totals["draft_forwards"] += row["nfe_by_kind"]["draft"]
            totals["verifications"] += row["verifications"]
            totals["wall_time"] += row["wall_time"]
            totals["syncs"] += syncs["n"]
        decode_nfe = totals["nfe"] - totals["prefill"]
        record["decoders"][name] = {
            "settings": kwargs,
            "accuracy": totals["correct"] / len(chosen),
            "generated_tokens": totals["generated_tokens"],
            "nfe": totals["nfe"],
            "nfe_per_sample": totals["nfe"] / len(chosen),
            "verifications": totals["verifications"],
            "tpf": totals["generated_tokens"] / decode_nfe if decode_nfe else 0.0,
            "tokens_per_second": totals["generated_tokens"] / totals["wall_time"] if totals["wall_time"] else 0.0,
            "host_syncs_per_step": totals["syncs"] / max(1, totals["draft_forwards"]),
        }
    ar_tpf = record["decoders"]["ar"]["tpf"] or 1.0
    for entry in record["decoders"].values():
        entry["tpf_vs_ar"] = entry["tpf"] / ar_tpf
    print(json.dumps(record))
    return record


if __name__ == "__main__":
    main()
