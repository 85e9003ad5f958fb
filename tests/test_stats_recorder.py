"""common.stats.DecodeRecorder on a literal scenario: what each row is charged, through a row drop."""

import torch

from common.stats import DecodeRecorder


def test_counters_follow_rows_through_select():
    rec = DecodeRecorder(3)
    t, f = True, False
    rec.forward("prefill", torch.tensor([t, t, f]), torch.tensor([8, 4, 0]))  # per-row widths
    rec.forward("draft", torch.tensor([t, t, t]), 4)
    rec.decision(torch.tensor([t, t, t]))
    rec.forward("verify", torch.tensor([t, f, t]), 8)
    rec.verification(torch.tensor([0, 2]), torch.tensor([3, 1]), torch.tensor([f, t]))
    rec.select(torch.tensor([0, 2]))  # row 1 leaves; held rows are now original rows 0 and 2
    rec.forward("draft", torch.tensor([t, t]), 8)
    rec.decision(torch.tensor([t, f]))
    rec.forward("verify", torch.tensor([f, t]), 8)
    rec.verification(torch.tensor([1]), torch.tensor([2]), torch.tensor([t]))
    rec.post_step(torch.tensor([t, f]))
    stats = rec.finalize([5, 2, 6], wall_time=1.0)

    assert [s["nfe_by_kind"] for s in stats] == [
        {"prefill": 1, "draft": 2, "verify": 1, "commit": 0},
        {"prefill": 1, "draft": 1, "verify": 0, "commit": 0},
        {"prefill": 0, "draft": 2, "verify": 2, "commit": 0},
    ]
    assert [s["routing_decisions"] for s in stats] == [2, 1, 1]
    assert [s["accepted_lengths"] for s in stats] == [[3], [], [1, 2]]
    assert [s["resamples"] for s in stats] == [0, 0, 2]
    assert [s["post_steps"] for s in stats] == [1, 0, 0]
    # query tokens / forwards: row 0 (8 + 4 + 8 + 8) / 4, row 1 (4 + 4) / 2, row 2 (4 + 8 + 8 + 8) / 4
    assert [s["mean_query_width"] for s in stats] == [7.0, 4.0, 7.0]
    assert [s["tpf"] for s in stats] == [5 / 3, 2.0, 6 / 4]


def test_no_forward_logged_gives_zero_counters():
    stats = DecodeRecorder(2).finalize([0, 0], wall_time=0.0)
    assert [s["nfe"] for s in stats] == [0, 0] and [s["accepted_lengths"] for s in stats] == [[], []]
