"""The reward registry and how a recipe's list of rewards scores a batch of trajectories.

A reward is a function registered by name (or named ``module:function`` in a recipe):

* per sample: ``f(sample: Trajectory, **options) -> float | dict[str, float]``
* per group:  ``f(group: list[Trajectory], **options) -> list[float]`` (register with ``per_group=True``)

It never sees the trainer. An exception in a user's reward is caught per sample, counted, logged with the
sample id, and scored ``on_error`` (default 0.0).
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
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
    timeout_s: float | None = 60.0  # per sample (per group for group rewards); None: no limit

    def resolve(self) -> Callable:
        fn = REWARDS.get(self.name)
        check_options(fn, self.options, where=f"rewards[{self.name}]")
        return fn


def _as_components(name: str, value) -> dict[str, float]:
    if isinstance(value, dict):
        return {f"{name}/{k}" if k != name else name: float(v) for k, v in value.items()}
    return {name: float(value)}


@contextmanager
def time_limit(seconds: float | None) -> Iterator[None]:
    """Raise ``TimeoutError`` in the block after ``seconds`` (SIGALRM; main thread only, else no limit).

    This interrupts Python code, not a C extension stuck in one call; the built-in math and code rewards do
    not rely on it: they run in worker processes that are killed at their limit.
    """
    if not seconds or threading.current_thread() is not threading.main_thread():
        yield
        return

    def _raise(signum, frame):
        raise TimeoutError(f"reward took over {seconds} s")

    previous = signal.signal(signal.SIGALRM, _raise)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def _call(fn: Callable, arg, spec: RewardSpec):
    """``fn(arg, **options)`` under the spec's time limit, or the exception it raised."""
    try:
        with time_limit(spec.timeout_s):
            return fn(arg, **spec.options)
    except Exception as e:  # noqa: BLE001 - a user reward must never kill training
        return e


def _sample_id(t: Trajectory) -> str:
    return str(t.meta.get("id", t.prompt_id))


def _per_group(trajs: list[Trajectory], spec: RewardSpec, fn: Callable, errors: dict[str, float]) -> None:
    for members in groups(trajs).values():
        values = _call(fn, members, spec)
        if not isinstance(values, BaseException):
            try:
                values = [float(v) for v in values]
                if len(values) != len(members):
                    values = ValueError(f"returned {len(values)} values for a group of {len(members)}")
            except Exception as e:  # noqa: BLE001
                values = e
        if isinstance(values, BaseException):
            log.warning("reward %s failed on group %s (samples %s): %r", spec.name, members[0].group_id,
                        ", ".join(_sample_id(t) for t in members), values)
            errors[spec.name] = errors.get(spec.name, 0) + len(members)
            values = [spec.on_error] * len(members)
        for t, v in zip(members, values, strict=True):
            t.rewards[spec.name] = float(v)


def _per_sample(trajs: list[Trajectory], spec: RewardSpec, fn: Callable, errors: dict[str, float]) -> None:
    """Score each sample; a reward with a ``batch`` attribute grades the whole list at once (worker pool)."""
    batch = getattr(fn, "batch", None)
    if batch is not None:
        try:
            values = list(batch(trajs, **spec.options))
        except Exception as e:  # noqa: BLE001
            values = [e] * len(trajs)
    else:
        values = [_call(fn, t, spec) for t in trajs]
    for t, v in zip(trajs, values, strict=True):
        if not isinstance(v, BaseException):
            try:
                t.rewards.update(_as_components(spec.name, v))
                continue
            except Exception as e:  # noqa: BLE001 - e.g. a reward that returned None
                v = e
        log.warning("reward %s failed on sample %s: %r", spec.name, _sample_id(t), v)
        errors[spec.name] = errors.get(spec.name, 0) + 1
        t.rewards[spec.name] = spec.on_error


def prepare_rewards(specs: list[RewardSpec]) -> None:
    """Let each reward get ready before the first step (a reward's optional ``prepare()``: the built-in math
    and code rewards start their worker pools), so that start-up never lands inside a timed step."""
    for spec in specs:
        prepare = getattr(spec.resolve(), "prepare", None)
        if prepare is not None:
            prepare()


def compute_rewards(trajs: list[Trajectory], specs: list[RewardSpec]) -> dict[str, float]:
    """Score every trajectory with every spec; set ``t.rewards[...]`` (every component) and ``t.reward``.

    ``t.reward`` is the weighted sum of the specs' main components. Returns counters for the step's metrics:
    ``reward_errors/<name>`` (failed or timed-out samples) and ``reward_mean/<component>``.
    """
    errors: dict[str, float] = {}
    for t in trajs:
        t.rewards.clear()
    for spec in specs:
        fn = spec.resolve()
        if getattr(fn, "per_group", False):
            _per_group(trajs, spec, fn, errors)
        else:
            _per_sample(trajs, spec, fn, errors)
    for t in trajs:
        t.reward = sum(s.weight * t.rewards.get(s.name, 0.0) for s in specs)
    metrics = {f"reward_errors/{k}": v for k, v in errors.items()}
    keys = sorted({k for t in trajs for k in t.rewards})
    for k in keys:
        vals = [t.rewards[k] for t in trajs if k in t.rewards]
        metrics[f"reward_mean/{k}"] = sum(vals) / len(vals)
    return metrics
