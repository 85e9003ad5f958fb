"""A batch decodes each row exactly as that row alone would be decoded.

Ragged prompts are left-padded to one width; every decoder that draws no random numbers (greedy
baselines at any threshold, greedy-exact S2D2, AR mode) must give each row the tokens and the per-row
forward counts it gets at batch 1. Decoders that sample are covered by the layout test: each row of a
batched buffer holds exactly its batch-1 blocks, positions and decodable columns.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import common.cache
from common.sequence import SequenceBuffer
from fast_dllm_v2.generate import generate as fast_baseline
from fast_dllm_v2.generate_ssd_policy import generate_ssd_policy as fast_s2d2
from fast_dllm_v2.modeling_fast_dllm import Fast_dLLM_QwenForCausalLM
from LLaDA2.generate import generate as llada2_nocache
from LLaDA2.generate import generate_cached as llada2_cached
from LLaDA2.generate_ssd_policy import generate_ssd_policy as llada2_s2d2
from LLaDA2.modeling_llada2_moe import LLaDA2MoeModelLM
from SDAR.generate import block_diffusion_generate as sdar_baseline
from SDAR.generate_ssd_policy import block_diffusion_generate as sdar_s2d2
from SDAR.modeling_sdar import SDARForCausalLM

ROOT = Path(__file__).resolve().parent.parent
MASK_ID, STOP_ID = 95, 3

SDAR_DECODERS = [
    (sdar_baseline, dict(block_length=4, denoising_steps=4, remasking_strategy="low_confidence_dynamic",
                         confidence_threshold=0.05)),
    (sdar_baseline, dict(block_length=4, denoising_steps=2, remasking_strategy="low_confidence_static")),
    (sdar_baseline, dict(block_length=1, denoising_steps=1)),  # AR mode
    (sdar_s2d2, dict(block_length=4, denoising_steps=4, acceptance="greedy_exact", confidence_threshold=0.05)),
]
FAST_DECODERS = [
    (fast_baseline, dict(block_size=4, small_block_size=2, threshold=0.05)),
    (fast_baseline, dict(block_size=1, small_block_size=1)),  # AR mode
    (fast_s2d2, dict(block_size=4, small_block_size=4, acceptance="greedy_exact", cache_ver=True)),
]

LLADA2_DECODERS = [
    (llada2_nocache, dict(block_length=4, threshold=0.05, editing_threshold=0.0, max_post_steps=2)),
    (llada2_cached, dict(block_length=4, threshold=0.05, editing_threshold=0.0, max_post_steps=2)),
    (llada2_cached, dict(block_length=4, threshold=0.3, num_to_transfer=2, editing_threshold=1.0, fold_commit=False)),
    (llada2_cached, dict(block_length=1)),  # AR mode
    (llada2_s2d2, dict(block_length=4, acceptance="greedy_exact", threshold=0.05, editing_threshold=0.0,
                       max_post_steps=1)),
]


def _ragged(n: int, seed: int) -> tuple[list[torch.Tensor], torch.Tensor, torch.Tensor]:
    """n prompts of lengths 1..11 and their left-padded batch."""
    g = torch.Generator().manual_seed(seed)
    prompts = [torch.randint(4, 90, (int(torch.randint(1, 12, (1,), generator=g)),), generator=g) for _ in range(n)]
    width = max(len(p) for p in prompts)
    ids = torch.stack([torch.cat([torch.zeros(width - len(p), dtype=torch.long), p]) for p in prompts])
    attn = torch.stack([torch.cat([torch.zeros(width - len(p)), torch.ones(len(p))]) for p in prompts]).long()
    return prompts, ids, attn


def _decode_rows(fn, model, ids, attn, batch_size: int, **kw) -> tuple[list[list[int]], list[dict]]:
    """Generated ids and stats per row, decoding `batch_size` rows at a time."""
    rows, stats = [], []
    for i in range(0, ids.shape[0], batch_size):
        chunk, chunk_mask = ids[i : i + batch_size], attn[i : i + batch_size]
        keep = chunk_mask.sum(0) > 0  # drop columns that are padding in every row of the chunk
        out, chunk_stats = fn(model, chunk[:, keep], attention_mask=chunk_mask[:, keep], return_forward_stats=True, **kw)
        rows += out[:, int(keep.sum()):].tolist()
        stats += chunk_stats
    return rows, stats


def _per_row(stats: list[dict]) -> list[tuple]:
    return [(s["generated_tokens"], s["nfe"], tuple(sorted(s["nfe_by_kind"].items())), s["mean_query_width"],
             tuple(s["accepted_lengths"]), s["edits"], s["post_steps"]) for s in stats]


@pytest.fixture(scope="module")
def sdar_model():
    from SDAR.configuration_sdar import SDARConfig

    torch.manual_seed(0)
    config = SDARConfig(vocab_size=96, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                        num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=256)
    model = SDARForCausalLM(config).to(torch.float64).eval()
    model.generation_config.mask_token_id, model.generation_config.eos_token_id = MASK_ID, STOP_ID
    return model


@pytest.fixture(scope="module")
def fast_model():
    from fast_dllm_v2.configuration_fast_dllm import Fast_dLLM_QwenConfig

    torch.manual_seed(0)
    config = Fast_dLLM_QwenConfig(vocab_size=96, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                                  bd_size=4)
    model = Fast_dLLM_QwenForCausalLM(config).to(torch.float64).eval()
    model.generation_config.mask_token_id, model.generation_config.eos_token_id = MASK_ID, STOP_ID
    return model


@pytest.fixture(scope="module")
def llada2_model():
    from LLaDA2.configuration_llada2_moe import LLaDA2MoeConfig

    torch.manual_seed(0)
    config = LLaDA2MoeConfig(vocab_size=96, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                             num_attention_heads=4, num_key_value_heads=2, head_dim=16, rotary_dim=8, num_experts=8,
                             n_group=4, topk_group=2, num_experts_per_tok=2, moe_intermediate_size=32,
                             pad_token_id=0, max_position_embeddings=256, initializer_range=0.1)
    model = LLaDA2MoeModelLM(config).to(torch.float64).eval()
    model.config.mask_token_id, model.config.eos_token_id = MASK_ID, STOP_ID  # LLaDA2 has no generation config
    return model


def _check_invariance(fn, model, kw, n: int = 16, seed: int = 0) -> None:
    _, ids, attn = _ragged(n, seed)
    alone, alone_stats = _decode_rows(fn, model, ids, attn, 1, **kw)
    for batch_size in (4, n):
        rows, stats = _decode_rows(fn, model, ids, attn, batch_size, **kw)
        assert rows == alone, f"batch {batch_size}: rows {[i for i, (a, b) in enumerate(zip(rows, alone)) if a != b]}"
        assert _per_row(stats) == _per_row(alone_stats)


@pytest.mark.parametrize("fn,kw", SDAR_DECODERS)
def test_sdar_batches_equal_batch_one(sdar_model, fn, kw):
    # The first generated token of a random model is a stop for some rows: early stops are covered too.
    _check_invariance(fn, sdar_model, dict(gen_length=10, **kw))


@pytest.mark.parametrize("fn,kw", FAST_DECODERS)
def test_fast_dllm_batches_equal_batch_one(fast_model, fn, kw):
    _check_invariance(fn, fast_model, dict(max_new_tokens=10, **kw))


@pytest.mark.parametrize("fn,kw", LLADA2_DECODERS)
def test_llada2_batches_equal_batch_one(llada2_model, fn, kw):
    """Edits and post steps included: each row's iterations, edits and forwards are its batch-1 ones."""
    _check_invariance(fn, llada2_model, dict(gen_length=10, **kw))


@pytest.mark.parametrize("unit,whole_blocks", [(4, True), (4, False), (1, False), (8, True)])
def test_each_row_gets_its_batch_one_layout(unit, whole_blocks):
    """Row r of a batched buffer, read from its own first token, equals the buffer of r alone: the same
    tokens, positions, decodable columns and prefill length, at a column shift of whole blocks."""
    prompts, ids, attn = _ragged(12, seed=3)
    batch = SequenceBuffer(ids, attn, unit=unit, budget=7, mask_id=MASK_ID, whole_blocks=whole_blocks)
    for r, prompt in enumerate(prompts):
        alone = SequenceBuffer(prompt[None], None, unit=unit, budget=7, mask_id=MASK_ID, whole_blocks=whole_blocks)
        shift = int(batch.offset[r])
        assert shift % unit == 0
        width = alone.x.shape[1]
        assert batch.x[r, shift : shift + width].tolist() == alone.x[0].tolist()
        assert batch.positions[r, shift : shift + width].tolist() == alone.positions[0].tolist()
        assert batch.decodable(0, batch.x.shape[1])[r, shift : shift + width].tolist() == \
            alone.decodable(0, width)[0].tolist()
        assert not batch.decodable(0, batch.x.shape[1])[r, shift + width :].any()
        assert int(batch.prompt_block_tokens[r]) == int(alone.prompt_block_tokens[0])
        assert not batch.valid[r, :shift].any() and batch.valid[r, shift:].all()


def _shipped(model_dir: str, n: int):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    import fast_dllm_v2  # noqa: F401  (registers the model types)
    import SDAR  # noqa: F401
    from synthetic.tokenizer import format_prompt

    path = ROOT / "models" / model_dir
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    tokenizer.padding_side = "left"
    model = AutoModelForCausalLM.from_pretrained(path, local_files_only=True, torch_dtype=torch.float32).eval()
    items = [json.loads(line) for line in (ROOT / "synthetic" / "data" / "test.jsonl").read_text().splitlines()]
    items = items[:: len(items) // n][:n]  # every task, ragged prompt lengths
    enc = tokenizer([format_prompt(tokenizer, it["prompt"]) for it in items], return_tensors="pt", padding=True,
                    add_special_tokens=False)
    assert len(set(enc.attention_mask.sum(-1).tolist())) > 4
    return model, enc.input_ids, enc.attention_mask


SHIPPED = [
    ("sdar-tiny", sdar_baseline, dict(block_length=8, denoising_steps=8, confidence_threshold=0.7, gen_length=96)),
    ("sdar-tiny", sdar_baseline, dict(block_length=8, denoising_steps=8, confidence_threshold=0.95, gen_length=96)),
    ("sdar-tiny", sdar_baseline, dict(block_length=1, denoising_steps=1, gen_length=96)),
    ("sdar-tiny", sdar_s2d2, dict(block_length=8, denoising_steps=8, acceptance="greedy_exact", gen_length=96)),
    ("fast-dllm-v2-tiny", fast_baseline, dict(block_size=16, small_block_size=8, threshold=0.7, max_new_tokens=96)),
    ("fast-dllm-v2-tiny", fast_s2d2, dict(block_size=16, small_block_size=16, acceptance="greedy_exact",
                                          cache_ver=True, max_new_tokens=96)),
]


@pytest.mark.slow
@pytest.mark.parametrize("model_dir,fn,kw", SHIPPED)
def test_shipped_models_batches_equal_batch_one(model_dir, fn, kw):
    """On the shipped models and 64 test-split prompts: batch 4, 16 and 64 give every row its batch-1 tokens."""
    model, ids, attn = _shipped(model_dir, 64)
    alone, _ = _decode_rows(fn, model, ids, attn, 1, **kw)
    for batch_size in (4, 16, 64):
        rows, _ = _decode_rows(fn, model, ids, attn, batch_size, **kw)
        assert rows == alone, f"batch {batch_size}: {sum(a != b for a, b in zip(rows, alone))} rows differ"


@pytest.mark.slow
def test_published_greedy_record_reproduces(tmp_path):
    """scripts/check_published.py re-decodes a published batch-1 record's first items with today's code
    and finds the published completions; a tampered completion is reported."""
    import shutil
    import sys

    sys.path.insert(0, str(ROOT / "scripts"))
    import check_published

    source = next((ROOT / "results" / "fast_dllm_v2").rglob("fast_greedy-*.json"))
    folder = tmp_path / "published"
    folder.mkdir()
    record = folder / source.name
    shutil.copy(source, record)
    samples = source.with_name(source.stem + ".samples.jsonl")
    shutil.copy(samples, folder / samples.name)
    assert check_published.main([str(folder), "--per_task", "1"]) == 0
    rows = [json.loads(line) for line in (folder / samples.name).read_text().splitlines()]
    rows[0]["completion"] += " tampered"
    (folder / samples.name).write_text("".join(json.dumps(row) + "\n" for row in rows))
    assert check_published.main([str(folder), "--per_task", "1"]) == 1


def test_verifier_over_routed_rows_equals_the_full_batch_forward(sdar_model, fast_model):
    """The verifier forward over a subset of rows (a copied cache of those rows) gives those rows'
    logits of the forward over every row, for both verifier kinds."""
    from common.stats import DecodeRecorder
    from fast_dllm_v2.blocks import FastDecodeConfig, FastDLLMBlocks
    from SDAR.blocks import BlockDiffusionConfig, SDARBlocks

    _, ids, attn = _ragged(4, seed=5)
    every, some = torch.arange(4), torch.tensor([1, 3])
    cfg = BlockDiffusionConfig(block_length=4, gen_length=8).resolved(sdar_model)
    blocks = SDARBlocks(sdar_model, ids, attn, cfg, DecodeRecorder(4))
    blocks.prefill(torch.ones(4, dtype=torch.bool))
    b = blocks.first_block
    drafted = torch.where(blocks.block(b) == MASK_ID, torch.full_like(blocks.block(b), 7), blocks.block(b))
    full = blocks.verify(b, drafted, every)
    torch.testing.assert_close(blocks.verify(b, drafted[some], some), full[some], rtol=0, atol=1e-12)

    fcfg = FastDecodeConfig(block_size=4, small_block_size=2, max_new_tokens=8).resolved(fast_model)
    fblocks = FastDLLMBlocks(fast_model, ids, attn, fcfg, DecodeRecorder(4))
    fblocks.prefill(torch.ones(4, dtype=torch.bool))
    fb = fblocks.first_block
    sub = fblocks.sub_block(fb, 1)
    drafted = torch.where(sub == MASK_ID, torch.full_like(sub, 7), sub)
    full = fblocks.verify(fb, 1, drafted, every)
    torch.testing.assert_close(fblocks.verify(fb, 1, drafted[some], some), full[some], rtol=0, atol=1e-12)


READ_ONLY_DECODERS = [
    ("sdar", sdar_baseline,
     dict(block_length=4, denoising_steps=4, remasking_strategy="low_confidence_static", gen_length=10)),
    ("sdar", sdar_s2d2,
     dict(block_length=4, denoising_steps=4, acceptance="greedy_exact", confidence_threshold=0.05, gen_length=10)),
    ("fast", fast_baseline, dict(block_size=4, small_block_size=4, threshold=0.05, max_new_tokens=10)),
    ("fast", fast_s2d2, dict(block_size=4, small_block_size=4, acceptance="greedy_exact", cache_ver=True,
                             max_new_tokens=10)),
    ("llada2", llada2_cached, dict(block_length=4, threshold=0.05, editing_threshold=0.0, max_post_steps=2,
                                   gen_length=10)),
    ("llada2", llada2_s2d2, dict(block_length=4, acceptance="greedy_exact", threshold=0.05, editing_threshold=0.0,
                                 max_post_steps=1, gen_length=10)),
]


@pytest.mark.parametrize("family,fn,kw", READ_ONLY_DECODERS)
def test_forwards_inside_a_block_carry_only_the_rows_still_decoding_it(request, monkeypatch, family, fn, kw):
    """Rows of a batch finish a block at different steps (ragged prompt tails, stops, edits). Each row
    still gets its batch-1 tokens and stats, and the forwards that store nothing (drafts after a block's
    first, verifications) carry exactly the rows that take part: their batch rows add up to the rows
    of the same forwards at batch 1. Without the row subset (fraction 0) rows ride along and the sum
    grows, so the scenario exercises it."""
    model = request.getfixturevalue(f"{family}_model")
    store_flag = "update_past_key_values" if family == "fast" else "store_kv"
    counted = []

    def count(module, args, kwargs):
        if not kwargs.get(store_flag, False):
            counted.append(kwargs["input_ids"].shape[0])

    handle = model.register_forward_pre_hook(count, with_kwargs=True)
    try:
        _, ids, attn = _ragged(12, seed=4)
        alone, alone_stats = _decode_rows(fn, model, ids, attn, 1, **kw)
        rows_alone = sum(counted)
        counted.clear()
        rows, stats = _decode_rows(fn, model, ids, attn, 12, **kw)
        assert rows == alone and _per_row(stats) == _per_row(alone_stats)
        assert sum(counted) == rows_alone
        assert min(counted) < 12  # a forward ran over a strict subset of the batch
        counted.clear()
        monkeypatch.setattr(common.cache, "SUBSET_FRACTION", 0.0)
        rows, _ = _decode_rows(fn, model, ids, attn, 12, **kw)
        assert rows == alone
        assert sum(counted) > rows_alone
    finally:
        handle.remove()
