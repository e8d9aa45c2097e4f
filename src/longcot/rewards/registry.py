"""The reward registry and how a recipe's list of rewards scores a batch of trajectories.

A reward is a function registered by name (or named ``module:function`` in a recipe):

* per sample: ``f(sample: Trajectory, **options) -> float | dict[str, float]``
* per group:  ``f(group: list[Trajectory], **options) -> list[float]`` (register with ``per_group=True``)

It never sees the trainer. An exception in a user's reward is caught per sample, counted, logged with the
sample id, and scored ``on_error`` (default 0.0).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from longcot.record import Trajectory, groups
from longcot.registry import Registry, check_options

log = logging.getLogger(__name__)
REWARDS: Registry = Registry("reward")


def reward(name: str | None = None, *, per_group: bool = False) -> Callable:
    """Register a reward function: ``@reward("my_reward")``."""
    return REWARDS.register(name, per_group=per_group)


@dataclass
class RewardSpec:
    """One entry of a recipe's ``rewards:`` list."""

    name: str
    weight: float = 1.0
    options: dict[str, Any] = field(default_factory=dict)
    on_error: float = 0.0

    def resolve(self) -> Callable:
        fn = REWARDS.get(self.name)
        check_options(fn, self.options, where=f"rewards[{self.name}]")
        return fn


def _as_components(name: str, value) -> dict[str, float]:
    if isinstance(value, dict):
        return {f"{name}/{k}" if k != name else name: float(v) for k, v in value.items()}
    return {name: float(value)}


def compute_rewards(trajs: list[Trajectory], specs: list[RewardSpec]) -> dict[str, float]:
    """Score every trajectory with every spec; set ``t.rewards[...]`` and ``t.reward`` (weighted sum).

    Returns counters (``reward_errors/<name>``) for the step's metrics.
    """
    errors: dict[str, float] = {}
    for t in trajs:
        t.rewards.clear()
    for spec in specs:
        fn = spec.resolve()
        if getattr(fn, "per_group", False):
            for members in groups(trajs).values():
                try:
                    values = list(fn(members, **spec.options))
                    if len(values) != len(members):
                        raise ValueError(f"returned {len(values)} values for a group of {len(members)}")
                except Exception as e:  # noqa: BLE001 - a user reward must never kill training
                    log.warning("reward %s failed on group %s: %r", spec.name, members[0].group_id, e)
                    errors[spec.name] = errors.get(spec.name, 0) + len(members)
                    values = [spec.on_error] * len(members)
                for t, v in zip(members, values, strict=True):
                    t.rewards[spec.name] = float(v)
        else:
            for t in trajs:
                try:
                    t.rewards.update(_as_components(spec.name, fn(t, **spec.options)))
                except Exception as e:  # noqa: BLE001
                    log.warning("reward %s failed on sample %s: %r", spec.name, t.prompt_id, e)
                    errors[spec.name] = errors.get(spec.name, 0) + 1
                    t.rewards[spec.name] = spec.on_error
    for t in trajs:
        t.reward = sum(s.weight * t.rewards.get(s.name, 0.0) for s in specs)
    return {f"reward_errors/{k}": v for k, v in errors.items()}
