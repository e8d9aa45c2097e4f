"""Advantage estimators: pure functions from a group's rewards to per-sample advantages.

Each estimator takes ``rewards`` of shape [G] (the G samples of one prompt) and returns advantages of
shape [G]. Batch-level estimators (REINFORCE++) also get a ``batch_normalize`` pass over the whole step.
Registered by name; a recipe picks one with ``rl.advantage.name``.
"""

from __future__ import annotations

import torch

from longcot.record import Trajectory, groups
from longcot.registry import Registry

ADVANTAGES: Registry = Registry("advantage estimator")


@ADVANTAGES.register("grpo")
def grpo(rewards: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """GRPO: (R_i - mean_G R) / (std_G R + eps). Population std (``unbiased=False``) so G=2 behaves; 0 for
    a group with equal rewards."""
    if rewards.numel() < 2:
        return torch.zeros_like(rewards)
    return (rewards - rewards.mean()) / (rewards.std(unbiased=False) + eps)


def assign_advantages(trajs: list[Trajectory], name: str = "grpo", **kwargs) -> None:
    """Fill ``t.advantage`` for every trajectory, group by group, with the named estimator."""
    fn = ADVANTAGES.get(name)
    for members in groups(trajs).values():
        r = torch.tensor([t.reward for t in members], dtype=torch.float64)
        adv = fn(r, **kwargs)
        for t, a in zip(members, adv.tolist(), strict=True):
            t.advantage = float(a)
    post = getattr(fn, "batch_normalize", None)
    if post is not None:
        post(trajs)
