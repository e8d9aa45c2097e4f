"""Verifiable rewards. Importing this package registers every built-in reward (``longcot rewards list``).

Write your own in a few lines (docs/rewards.md)::

    from longcot.rewards import reward

    @reward("short_answer")
    def short_answer(sample, *, limit: int = 200) -> float:
        return 1.0 if len(sample.response_text) <= limit else 0.0
"""

from longcot.rewards import code, format, length, math, parl  # noqa: F401  (register the built-in rewards)
from longcot.rewards.registry import REWARDS, RewardSpec, compute_rewards, reward

__all__ = ["REWARDS", "RewardSpec", "compute_rewards", "reward"]
