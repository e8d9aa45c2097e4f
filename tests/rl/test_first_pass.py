"""Rank 0 merges every trainer rank's first-pass measurements into the step's metrics: the merged metrics of a
batch split over two ranks are those of the whole batch measured on one (a max is the max over both ranks, a
fraction is over all tokens), not an average of per-rank values."""

import numpy as np
import pytest
import torch

from longcot.policies.moe import routing_metrics
from longcot.rl.first_pass import FirstPass
from longcot.rl.rollout_correction import mismatch_metrics


def _part(train, rollout, stats=None, rs=None, rs_tokens=0.0):
    return {"train": train, "rollout": rollout, "moe": stats, "rs": rs or {}, "rs_tokens": rs_tokens}


def test_mismatch_of_two_ranks_is_that_of_all_their_tokens():
    g = torch.Generator().manual_seed(0)
    train, rollout = -torch.rand(50, generator=g), -torch.rand(50, generator=g)
    rollout[3] -= 5.0  # the largest gap sits on rank 0's tokens only
    merged = FirstPass.merged([_part(train[:10], rollout[:10]), _part(train[10:], rollout[10:])])
    assert merged == pytest.approx(mismatch_metrics(train, rollout))
    assert merged["mismatch/gap_max"] > 5.0


def test_routing_counts_and_rejection_fractions_are_summed_before_dividing():
    rank0 = (np.array([3.0, 4.0]), np.array([4.0, 4.0]), np.array([[4.0, 0.0], [2.0, 2.0]]))
    rank1 = (np.array([0.0, 8.0]), np.array([8.0, 8.0]), np.array([[0.0, 8.0], [4.0, 4.0]]))
    parts = [_part(None, None, rank0, {"rollout_rs/masked_frac": 0.5 * 4}, 4.0),
             _part(None, None, rank1, {"rollout_rs/masked_frac": 0.0 * 12}, 12.0)]
    merged = FirstPass.merged(parts)
    whole = routing_metrics(*(a + b for a, b in zip(rank0, rank1, strict=True)))
    assert {k: merged[k] for k in whole} == pytest.approx(whole)
    assert merged["routing/agreement/l0"] == pytest.approx(3 / 12)  # not the mean of 3/4 and 0/8
    assert merged["rollout_rs/masked_frac"] == pytest.approx(2 / 16)
