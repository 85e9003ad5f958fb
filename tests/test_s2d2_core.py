"""common/s2d2.py on literal tensors: what one verification commits and how a step is topped up."""

import pytest
import torch

from common.s2d2 import VerifyConfig, top_up, verify_commits
from common.spans import first_masked_span
from common.stats import COMMIT_ACCEPTED, COMMIT_DIFFUSION, COMMIT_HIGH_CONF, COMMIT_RATIO, COMMIT_RESAMPLED


def _onehot_probs(tokens, v=5, mass=0.9):
    probs = torch.full((*tokens.shape, v), (1 - mass) / (v - 1))
    return probs.scatter(-1, tokens[..., None], mass)


def test_greedy_exact_commits_prefix_and_correction():
    masked = torch.tensor([[False, True, True, True]])
    drafts = torch.tensor([[1, 2, 3, 4]])
    q = _onehot_probs(torch.tensor([[1, 2, 0, 4]]))  # verifier disagrees at position 2
    p = _onehot_probs(drafts)
    span = first_masked_span(masked)
    tokens, kinds, verdict, recovered = verify_commits(
        q, p, drafts, p.gather(-1, drafts[..., None])[..., 0], masked, span, torch.tensor([True]), 3,
        VerifyConfig(acceptance="greedy_exact"))
    assert kinds.tolist() == [[0, COMMIT_ACCEPTED, COMMIT_RESAMPLED, 0]]
    assert tokens.tolist() == [[1, 2, 0, 4]] and recovered.tolist() == [True]
    assert verdict.n_accepted.tolist() == [1]


def test_rows_not_verified_commit_nothing_and_ratio_threshold_extends():
    masked = torch.tensor([[True, True, True], [True, True, True]])
    drafts = torch.tensor([[1, 2, 3], [1, 2, 3]])
    q = _onehot_probs(torch.tensor([[1, 0, 3], [1, 2, 3]]))
    p = _onehot_probs(drafts)
    conf = p.gather(-1, drafts[..., None])[..., 0]
    cfg = VerifyConfig(acceptance="greedy_exact", ssd_ratio_threshold=0.5)
    _, kinds, _, _ = verify_commits(q, p, drafts, conf, masked, first_masked_span(masked),
                                    torch.tensor([True, False]), 3, cfg)
    assert kinds.tolist() == [[COMMIT_ACCEPTED, COMMIT_RESAMPLED, COMMIT_RATIO], [0, 0, 0]]


def test_no_resample_leaves_rejected_position_masked():
    masked = torch.tensor([[True, True]])
    drafts = torch.tensor([[1, 2]])
    q = _onehot_probs(torch.tensor([[0, 0]]), mass=0.999)
    p = _onehot_probs(drafts, mass=0.999)
    conf = p.gather(-1, drafts[..., None])[..., 0]
    torch.manual_seed(0)
    _, kinds, verdict, recovered = verify_commits(q, p, drafts, conf, masked, first_masked_span(masked),
                                                  torch.tensor([True]), 2, VerifyConfig(allow_resample=False))
    assert verdict.n_accepted.tolist() == [0] and kinds.tolist() == [[0, 0]] and not recovered.any()


@pytest.mark.parametrize("high_confidence", [False, True])
def test_top_up_never_touches_decoded_and_reaches_min_k(high_confidence):
    masked = torch.tensor([[False, True, True, True]])
    kinds = torch.zeros(1, 4, dtype=torch.long)
    conf = torch.tensor([[0.99, 0.95, 0.2, 0.3]])
    probs = torch.softmax(torch.randn(1, 4, 5), -1)
    out = top_up(kinds, masked, conf, torch.tensor([2]), torch.tensor([True]), strategy="low_confidence_static",
                 threshold=0.9, probs=probs, eb_threshold=0.35, high_confidence=high_confidence)
    assert out[0, 0] == 0
    if high_confidence:
        assert out.tolist() == [[0, COMMIT_HIGH_CONF, 0, COMMIT_DIFFUSION]]
    else:
        assert out.tolist() == [[0, COMMIT_DIFFUSION, 0, COMMIT_DIFFUSION]]


def test_verify_config_validation():
    with pytest.raises(ValueError, match="acceptance"):
        VerifyConfig(acceptance="lenient")
    with pytest.raises(ValueError, match="tempering"):
        VerifyConfig(ssd_ratio_tempering_factor=0.0)
