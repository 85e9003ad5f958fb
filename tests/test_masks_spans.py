"""Masks against literal matrices; spans against hand-made rows."""

import torch

import pytest

from common.masks import (block_causal, draft_block, materialize, pipelined_verifier, to_additive, token_causal,
                          verifier_2l)
from common.spans import first_masked_span, span_offsets


def _m(rows):
    return torch.tensor(rows, dtype=torch.bool)[None]


def test_token_causal_with_cache():
    assert torch.equal(materialize(token_causal(2), 2, 4), _m([[1, 1, 1, 0], [1, 1, 1, 1]]))


def test_block_causal():
    expected = _m([[1, 1, 0, 0, 0], [1, 1, 0, 0, 0], [1, 1, 1, 1, 0], [1, 1, 1, 1, 0], [1, 1, 1, 1, 1]])
    assert torch.equal(materialize(block_causal(2), 5, 5), expected)


def test_draft_block_partially_causal():
    mask = materialize(draft_block(1, torch.tensor([2, 0])), 4, 5)
    assert torch.equal(mask[0:1], _m([[1, 1, 0, 0, 0], [1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 1, 1, 1, 1]]))
    assert mask[1].all()


def test_verifier_2l_literal():
    expected = _m([
        [1, 1, 0, 0, 0, 0, 0],
        [1, 1, 1, 0, 0, 0, 0],
        [1, 1, 1, 1, 0, 0, 0],
        [1, 0, 0, 0, 1, 0, 0],
        [1, 1, 0, 0, 0, 1, 0],
        [1, 1, 1, 0, 0, 0, 1],
    ])
    assert torch.equal(materialize(verifier_2l(1, 3), 6, 7), expected)


def test_pipelined_verifier_with_one_token_targets_is_the_2l_verifier():
    assert torch.equal(materialize(pipelined_verifier(1, 3, 1, mask_half=True), 6, 7),
                       materialize(verifier_2l(1, 3), 6, 7))
    assert torch.equal(materialize(pipelined_verifier(2, 3, 1, mask_half=False), 3, 5),
                       materialize(token_causal(2), 3, 5))


def test_pipelined_verifier_literal_with_two_token_targets():
    expected = _m([
        [1, 1, 1, 0, 0, 0, 0, 0, 0],
        [1, 1, 1, 0, 0, 0, 0, 0, 0],
        [1, 1, 1, 1, 1, 0, 0, 0, 0],
        [1, 1, 1, 1, 1, 0, 0, 0, 0],
        [1, 0, 0, 0, 0, 1, 1, 0, 0],
        [1, 0, 0, 0, 0, 1, 1, 0, 0],
        [1, 1, 1, 0, 0, 0, 0, 1, 1],
        [1, 1, 1, 0, 0, 0, 0, 1, 1],
    ])
    assert torch.equal(materialize(pipelined_verifier(1, 4, 2, mask_half=True), 8, 9), expected)


@pytest.mark.parametrize("target_block", [1, 2, 3])
@pytest.mark.parametrize("mask_half", [True, False])
def test_pipelined_verifier_follows_its_rules_entry_by_entry(target_block, mask_half):
    """The docstring's rules, one key at a time: first-half row i sees the cache and first-half j with
    T(j) <= T(i); mask row i the cache, first-half j with T(j) < T(i) and mask j with T(j) == T(i)."""
    cache, n1 = 2, 5
    q_len = 2 * n1 if mask_half else n1
    mask = materialize(pipelined_verifier(cache, n1, target_block, mask_half), q_len, cache + q_len)[0]
    for q in range(q_len):
        row_is_mask, i = q >= n1, q % n1
        for kv in range(cache + q_len):
            if kv < cache:
                seen = True
            elif kv < cache + n1:
                j = kv - cache
                seen = j // target_block < i // target_block if row_is_mask else j // target_block <= i // target_block
            else:
                seen = row_is_mask and (kv - cache - n1) // target_block == i // target_block
            assert bool(mask[q, kv]) == seen, (q, kv)


def test_padding_keeps_own_key():
    valid = torch.tensor([[False, True, True]])
    mask = materialize(token_causal(), 3, 3, key_valid=valid)
    assert torch.equal(mask, _m([[1, 0, 0], [0, 1, 0], [0, 1, 1]]))


def test_to_additive():
    add = to_additive(_m([[1, 0]]), torch.float32)
    assert add[0, 0, 0] == 0 and add[0, 0, 1] == torch.finfo(torch.float32).min


def test_first_masked_span_rows():
    masked = torch.tensor([
        [0, 1, 1, 0, 1],
        [1, 1, 1, 1, 1],
        [0, 0, 0, 0, 0],
        [0, 0, 0, 0, 1],
    ], dtype=torch.bool)
    span = first_masked_span(masked)
    assert span.start.tolist() == [1, 0, 0, 4]
    assert span.length.tolist() == [2, 5, 0, 1]
    assert span.member.int().tolist() == [[0, 1, 1, 0, 0], [1, 1, 1, 1, 1], [0] * 5, [0, 0, 0, 0, 1]]


def test_span_offsets_place_values_in_order():
    masked = torch.tensor([[0, 1, 1, 1], [1, 0, 0, 0], [0, 0, 0, 0]], dtype=torch.bool)
    span = first_masked_span(masked)
    vals = torch.tensor([[1, 2, 3], [7, 8, 9], [4, 5, 6]])
    placed = vals.gather(-1, span_offsets(span, 3)).masked_fill(~span.member, -1)
    assert placed.tolist() == [[-1, 1, 2, 3], [7, -1, -1, -1], [-1] * 4]
