"""Advantage estimators: pure functions from a group's rewards to per-sample advantages.

Each estimator takes ``rewards`` of shape [G] (the G samples of one prompt) and returns advantages of
shape [G]. Batch-level estimators (REINFORCE++) also get a ``batch_normalize`` pass over the whole step:
:func:`assign_advantages` calls ``fn.batch_normalize(trajs, **batch_options)`` after the per-group pass.
Registered by name; a recipe picks one with ``rl.advantage.name`` and passes options next to it.

A group whose rewards are all equal carries no signal: every estimator here gives it advantage 0
(DAPO's dynamic sampling drops such groups before they cost a backward pass).
"""

from __future__ import annotations

import inspect

import torch

from longcot.record import Trajectory, groups
from longcot.registry import Registry, check_options

ADVANTAGES: Registry = Registry("advantage estimator")


def centred(rewards: torch.Tensor) -> torch.Tensor:
    """R_i - mean_G R, exactly 0 for a group of equal rewards: eight rewards of 0.1 average to 0.09999999999999999,
    and the 1e-17 left over would make GRPO's std division an advantage of 1e-11 instead of 0. Exact zeros are
    what lets the trainer leave such samples out of the backward pass (``rl.skip_zero_advantage``)."""
    if rewards.numel() == 0 or bool((rewards == rewards[0]).all()):
        return torch.zeros_like(rewards)
    return rewards - rewards.mean()


@ADVANTAGES.register("grpo")
def grpo(rewards: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """GRPO: (R_i - mean_G R) / (std_G R + eps). Population std (``unbiased=False``) so G=2 behaves; 0 for
    a group with equal rewards."""
    if rewards.numel() < 2:
        return torch.zeros_like(rewards)
    return centred(rewards) / (rewards.std(unbiased=False) + eps)


@ADVANTAGES.register("dr_grpo")
def dr_grpo(rewards: torch.Tensor) -> torch.Tensor:
    """Dr.GRPO (Liu et al. 2025): R_i - mean_G R. No std division: dividing by the group's std up-weights
    prompts that are nearly always solved or failed (a difficulty bias)."""
    return centred(rewards)


@ADVANTAGES.register("rloo")
def rloo(rewards: torch.Tensor) -> torch.Tensor:
    """RLOO (Ahmadian et al. 2024): R_i - mean_{j != i} R_j, a baseline that does not contain the sample
    itself, so the estimate is unbiased. Equals G/(G-1) * (R_i - mean_G R). A lone sample gets 0."""
    g = rewards.numel()
    if g < 2:
        return torch.zeros_like(rewards)
    return centred(rewards) * (g / (g - 1))


@ADVANTAGES.register("k15")
def k15(rewards: torch.Tensor) -> torch.Tensor:
    """Kimi k1.5: r_j - r_bar with r_bar the group mean (the empirical estimate of tau log Z). The 1/k of
    the paper's gradient is the loss aggregation's mean over sequences."""
    return centred(rewards)


def _reinforce_pp_batch_normalize(trajs: list[Trajectory], eps: float = 1e-6) -> None:
    """REINFORCE++ second stage: whiten the group-centred advantages over every *token* of the batch, as the
    paper and OpenRLHF/verl do (a response of L trained tokens counts L times in the mean and the std), so the
    token-level advantages the loss sees have mean 0 and std 1. Population std (verl uses Bessel's correction;
    the difference is a factor sqrt(N / (N - 1)) over N tokens). Scalar advantages only: per-token
    advantages are left alone."""
    scalars = [t for t in trajs if not isinstance(t.advantage, list) and sum(t.mask()) > 0]
    if len(scalars) < 2:
        return
    a = torch.tensor([t.advantage for t in scalars], dtype=torch.float64)
    w = torch.tensor([float(sum(t.mask())) for t in scalars], dtype=torch.float64)
    mean = (w * a).sum() / w.sum()
    std = ((w * (a - mean) ** 2).sum() / w.sum()).sqrt()
    for t, v in zip(scalars, ((a - mean) / (std + eps)).tolist(), strict=True):
        t.advantage = float(v)


@ADVANTAGES.register("reinforce_pp", batch_normalize=_reinforce_pp_batch_normalize)
def reinforce_pp(rewards: torch.Tensor) -> torch.Tensor:
    """REINFORCE++-baseline (Hu et al. 2025): A = R - mean_G R per group, then whitened over the batch's tokens
    (``batch_normalize``, eps 1e-6). Using the batch std instead of each group's avoids GRPO's blow-up on
    near-uniform groups while keeping advantages on a unit scale."""
    return centred(rewards)


def assign_advantages(trajs: list[Trajectory], name: str = "grpo", **kwargs) -> None:
    """Fill ``t.advantage`` for every trajectory, group by group, with the named estimator.

    ``kwargs`` go to the estimator; keys it does not take but the batch pass does (e.g. ``eps`` for
    reinforce_pp) go to ``batch_normalize``. Unknown keys fail with the closest valid name.
    """
    fn = ADVANTAGES.get(name)
    post = getattr(fn, "batch_normalize", None)
    group_keys = set(inspect.signature(fn).parameters)
    group_opts = {k: v for k, v in kwargs.items() if k in group_keys}
    batch_opts = {k: v for k, v in kwargs.items() if k not in group_keys}
    check_options(fn, group_opts, where=f"advantage[{name}]")
    if batch_opts:
        if post is None:
            check_options(fn, batch_opts, where=f"advantage[{name}]")
        check_options(post, batch_opts, where=f"advantage[{name}] batch_normalize")
    for members in groups(trajs).values():
        r = torch.tensor([t.reward for t in members], dtype=torch.float64)
        adv = fn(r, **group_opts)
        for t, a in zip(members, adv.tolist(), strict=True):
            t.advantage = float(a)
    if post is not None:
        post(trajs, **batch_opts)
