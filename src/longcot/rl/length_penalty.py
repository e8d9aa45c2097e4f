"""The k1.5 length-penalty schedule: how much of the length reward counts at a given training step.

k1.5 found that a length penalty applied from step 0 slows training, so it is off during a warm-up and
then held at a constant weight. The penalty itself (lambda_i over a group's lengths) is a per-group reward
(``rewards/length.py``); the trainer multiplies its recipe weight by this schedule each step.
"""

from __future__ import annotations


def length_penalty_weight(step: int, warmup: int, weight: float) -> float:
    """0.0 for ``step < warmup`` (steps count from 0), then ``weight``.

    >>> [length_penalty_weight(s, warmup=2, weight=0.5) for s in range(4)]
    [0.0, 0.0, 0.5, 0.5]
    """
    if warmup < 0:
        raise ValueError(f"length penalty warmup must be >= 0 (got {warmup})")
    return 0.0 if step < warmup else float(weight)
