"""Micro-batches by a token budget, and their assignment to trainer ranks."""

from __future__ import annotations

import random

import pytest

from longcot.record import Trajectory
from longcot.rl.batch import assign_to_ranks, batch_tokens, group_ordered_chunks, length_sorted_chunks, micro_batches


def groups(lengths: list[list[int]], prompt_len: int = 5) -> list[Trajectory]:
    out = []
    for g, resp in enumerate(lengths):
        prompt = [g + 10] * prompt_len
        out += [Trajectory(f"p{g}", f"p{g}@0", prompt, [7] * n, [0.0] * n) for n in resp]
    return out


@pytest.mark.parametrize("pack", [True, False])
def test_without_a_budget_micro_batches_are_todays_fixed_counts(pack):
    trajs = groups([[3, 9, 4], [12, 2], [5, 5, 5, 1]])
    want = group_ordered_chunks(trajs, 4) if pack else length_sorted_chunks(trajs, 4)
    assert micro_batches(trajs, 4, 0, pack=pack) == want


@pytest.mark.parametrize("pack", [True, False])
def test_every_micro_batch_fits_the_budget_and_a_long_response_stands_alone(pack):
    rng = random.Random(0)
    trajs = groups([[rng.randint(1, 60) for _ in range(6)] for _ in range(5)] + [[400]])
    chunks = micro_batches(trajs, max_seqs=8, max_tokens=120, pack=pack)
    assert sorted(id(t) for c in chunks for t in c) == sorted(id(t) for t in trajs)  # each exactly once
    for c in chunks:
        assert len(c) <= 8
        assert batch_tokens(c, pack) <= 120 or len(c) == 1
    assert [len(c) for c in chunks if c[0].response_ids == [7] * 400] == [1]
    assert micro_batches([], max_seqs=8, max_tokens=120, pack=pack) == []


def test_packed_budget_counts_a_shared_prompt_once():
    trajs = groups([[10, 10, 10]], prompt_len=20)
    assert batch_tokens(trajs, pack=True) == 20 + 30
    assert batch_tokens(trajs, pack=False) == 3 * 30
    assert len(micro_batches(trajs, max_seqs=8, max_tokens=50, pack=True)) == 1
    assert len(micro_batches(trajs, max_seqs=8, max_tokens=50, pack=False)) == 3  # padded rows of 30


def test_ranks_get_balanced_tokens_and_at_most_ceil_micro_batches():
    costs = [900, 10, 10, 10, 500, 400, 30]
    shares = assign_to_ranks(costs, 3)
    assert sorted(i for s in shares for i in s) == list(range(7))
    assert max(len(s) for s in shares) == 3 and all(s == sorted(s) for s in shares)  # ceil(7 / 3)
    loads = sorted(sum(costs[i] for i in s) for s in shares)
    assert loads == [440, 520, 900]  # the longest micro-batch alone; the rest spread over the others
    assert assign_to_ranks([5], 2) == [[0], []] and assign_to_ranks([], 2) == [[], []]
