"""The short model's traces are the solver's traces without re-check lines: same steps, same answer."""

import random

from longcot.data.arith import ArithSpec, make_problem
from longcot.long2short.short_model import without_rechecks


def test_removes_every_recheck_line_and_nothing_else():
    for seed in range(200):
        long = make_problem(random.Random(seed), ArithSpec(1, 3, 9, recheck_prob=1.0, ops="+-"))
        short = without_rechecks(long["solution"])
        lines = short.split("\n")
        assert lines[-1] == f"\\boxed{{{long['answer']}}}"
        assert len(lines) == long["difficulty"] + 1  # one line per operation, then the answer
        assert not any(line.startswith("check") for line in lines)
        assert [line for line in long["solution"].split("\n") if not line.startswith("check ")] == lines


def test_a_trace_without_rechecks_is_unchanged():
    row = make_problem(random.Random(3), ArithSpec(1, 3, 9, recheck_prob=0.0))
    assert without_rechecks(row["solution"]) == row["solution"]
