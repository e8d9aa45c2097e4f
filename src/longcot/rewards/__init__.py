"""Verifiable rewards. Importing this package registers every built-in reward (``longcot rewards list``)."""

from longcot.rewards import code, math  # noqa: F401  (register "code", "math")
from longcot.rewards.registry import REWARDS, RewardSpec, compute_rewards, reward

__all__ = ["REWARDS", "RewardSpec", "compute_rewards", "reward"]
