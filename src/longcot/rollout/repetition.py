"""N-gram loop detection: end a response whose tail repeats one block over and over.

Long chain-of-thought policies (and tiny ones early in training) fall into loops: the same line or phrase
again and again until ``max_tokens``. Every looped token costs generation time and teaches nothing, so the
partial-rollout engine (:mod:`longcot.rollout.partial`) checks new tokens after each generation chunk and
cuts the response at the first point where a loop is certain, with ``finish="repeat"``.

A loop of period ``p`` is a stretch where ``ids[j] == ids[j - p]`` for every ``j``. The detector fires at the
first prefix ``ids[:k]`` whose last ``need(p) = max(min_repeats * p, min_span)`` tokens are ``p``-periodic for
some ``p <= max_period``. So a loop that starts at token ``s`` is cut at ``k <= s + max(min_repeats *
max_period, min_span)``: the kept response holds a bounded number of looped tokens, whatever ``max_tokens``
is. ``min_span`` keeps short legitimate runs ("1000000", "====") from firing for small periods.

The check is post hoc on token ids (numpy, O(max_period * window) per call), so it works with any engine;
generating in chunks (``partial.repetition.chunk_tokens``) bounds the tokens generated past the cut too.
The optional penalty is the ``repeat_cut`` reward below (recipe: ``rewards: [{name: repeat_cut, weight: 0.5}]``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from longcot.record import Trajectory
from longcot.rewards.registry import reward


@dataclass(frozen=True)
class LoopDetector:
    """Finds the earliest point where a response's tail is a loop (see the module docstring)."""

    max_period: int = 32
    min_repeats: int = 4
    min_span: int = 32

    def __post_init__(self) -> None:
        if self.max_period < 1 or self.min_repeats < 2 or self.min_span < 2:
            raise ValueError(f"LoopDetector needs max_period >= 1, min_repeats >= 2, min_span >= 2, got {self}")

    def need(self, period: int) -> int:
        """Tokens a loop of this period must cover before it counts."""
        return max(self.min_repeats * period, self.min_span)

    @property
    def max_need(self) -> int:
        """The bound: a loop is cut at most this many tokens after it starts."""
        return max(self.need(p) for p in range(1, self.max_period + 1))

    def find(self, ids: list[int], start: int = 0) -> int | None:
        """The smallest ``k > start`` such that ``ids[:k]`` ends in a loop, or None.

        ``start``: tokens before it were already checked (and had no loop), so only prefixes ending after it
        are tested and only a window of ``max_need`` tokens before it is scanned.
        """
        lo = max(0, start - self.max_need)
        a = np.asarray(ids[lo:], dtype=np.int64)
        best: int | None = None
        for p in range(1, min(self.max_period, len(a) - 1) + 1):
            run_needed = self.need(p) - p  # consecutive matches ids[j] == ids[j-p] ending at j
            if run_needed + p > len(a):
                continue
            eq = a[p:] == a[:-p]  # eq[i] compares a[i + p] with a[i]
            idx = np.arange(len(eq))
            last_miss = np.maximum.accumulate(np.where(eq, -1, idx))
            ends = lo + np.flatnonzero(idx - last_miss >= run_needed) + p + 1  # candidate cut points k
            ends = ends[ends > start]
            if ends.size and (best is None or int(ends[0]) < best):
                best = int(ends[0])
        return best


def find_loop(ids: list[int], max_period: int = 32, min_repeats: int = 4, min_span: int = 32) -> int | None:
    """Functional form of :meth:`LoopDetector.find`: the cut point of the first loop in ``ids``, or None."""
    return LoopDetector(max_period, min_repeats, min_span).find(ids)


@reward("repeat_cut")
def repeat_cut(sample: Trajectory) -> float:
    """-1 for a response the loop detector ended (``finish == "repeat"``), else 0; the recipe weight scales it.

    Registered when :mod:`longcot.rollout.partial` (or this module) is imported, which the train pipeline
    does whenever ``partial.enabled`` or ``partial.repetition.enabled`` is set.
    """
    return -1.0 if sample.finish == "repeat" else 0.0
