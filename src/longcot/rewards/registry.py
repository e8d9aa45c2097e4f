"""The reward registry and how a recipe's list of rewards scores a batch of trajectories.

A reward is a function registered by name (or named ``module:function`` in a recipe):

* per sample: ``f(sample: Trajectory, **options) -> float | dict[str, float]``
* per group:  ``f(group: list[Trajectory], **options) -> list[float]`` (register with ``per_group=True``)

It never sees the trainer. An exception in a user's reward is caught per sample, marked on the sample,
counted, logged with the sample id, and scored as ``on_error`` says; too many failures in one step stop the run
(:mod:`longcot.rewards.errors`).
"""

from __future__ import annotations

import logging
import math
import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Literal

from longcot.record import Trajectory, groups
from longcot.registry import Registry, check_options
from longcot.rewards.errors import RewardError, RewardSetupError, check_error_rate, describe, error_score

log = logging.getLogger(__name__)
REWARDS: Registry = Registry("reward")
__all__ = ["REWARDS", "RewardError", "RewardSetupError", "RewardSpec", "compute_rewards", "prepare_rewards",
           "reward"]


# Modules whose import registers built-in rewards. repeat_cut lives beside the loop detector it scores
# (longcot.rollout.repetition, which imports numpy and the rollout package): imported on demand, not with
# longcot.rewards, so the reward worker processes stay light.
BUILTIN_REWARD_MODULES = ("longcot.rewards", "longcot.rollout.repetition")


def load_builtin_rewards() -> None:
    """Register every built-in reward (``longcot rewards list``, validation, eval graders)."""
    import importlib

    for module in BUILTIN_REWARD_MODULES:
        importlib.import_module(module)


def reward(name: str | None = None, *, per_group: bool = False) -> Callable:
    """Register a reward function: ``@reward("my_reward")``."""
    return REWARDS.register(name, per_group=per_group)


@dataclass
class RewardSpec:
    """One entry of a recipe's ``rewards:`` list."""

    name: str
    weight: float = 1.0
    options: dict[str, Any] = field(default_factory=dict)
    # a failed sample scores 0 ("zero") or this number; "raise": the first failure stops the run
    on_error: float | Literal["zero", "raise"] = "zero"
    max_error_rate: float = 0.1  # more than this fraction of a step's samples failing stops the run
    timeout_s: float | None = 60.0  # per sample (per group for group rewards); None: no limit

    def __post_init__(self) -> None:
        if isinstance(self.on_error, str) and self.on_error not in ("zero", "raise"):
            raise ValueError(f"rewards[{self.name}].on_error must be 'zero', 'raise' or a number, "
                             f"got {self.on_error!r}")
        if not 0.0 <= self.max_error_rate <= 1.0:
            raise ValueError(f"rewards[{self.name}].max_error_rate must be in [0, 1], got {self.max_error_rate}")
        if self.timeout_s is not None and self.timeout_s <= 0:
            raise ValueError(f"rewards[{self.name}].timeout_s must be > 0 or null, got {self.timeout_s}")

    def resolve(self) -> Callable:
        fn = REWARDS.get(self.name)
        check_options(fn, self.options, where=f"rewards[{self.name}]")
        return fn

    @property
    def key(self) -> str:
        """The component name: the function's registered name, also when the recipe names it ``module:function``
        (so ``myfile:concise`` of an ``@reward("concise")`` function logs ``concise``); else ``name``."""
        if ":" not in self.name:
            return self.name
        return REWARDS.name_of(REWARDS.get(self.name)) or self.name


def _as_components(name: str, value) -> dict[str, float]:
    if isinstance(value, dict):
        return {f"{name}/{k}" if k != name else name: _finite(v) for k, v in value.items()}
    return {name: _finite(value)}


def _finite(value) -> float:
    """A reward value as a float; NaN or infinity is an error of the reward (a 0/0 in a user's formula), counted and
    scored by ``on_error`` like an exception: passed on, one NaN would turn the group's advantages, the loss and
    then every weight into NaN without a word."""
    out = float(value)
    if not math.isfinite(out):
        raise ValueError(f"returned {out}, not a finite number")
    return out


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
    except RewardSetupError:
        raise
    except Exception as e:  # noqa: BLE001 - a user reward must never kill training
        return e


def _sample_id(t: Trajectory) -> str:
    return str(t.meta.get("id", t.prompt_id))


def _failed(t: Trajectory, spec: RewardSpec, exc: BaseException, errors: dict[str, list]) -> None:
    """Mark, count and score one failed sample (or stop at once with ``on_error: raise``)."""
    message = describe(exc)
    t.reward_errors[spec.key] = message
    errors.setdefault(spec.key, []).append((_sample_id(t), message))
    if spec.on_error == "raise":
        raise RewardError(f"reward '{spec.name}' failed on sample {_sample_id(t)}: {message} "
                          "(rewards[].on_error: raise)") from exc
    t.rewards[spec.key] = error_score(spec.on_error)


def _per_group(trajs: list[Trajectory], spec: RewardSpec, fn: Callable, errors: dict[str, list]) -> None:
    for members in groups(trajs).values():
        values = _call(fn, members, spec)
        if not isinstance(values, BaseException):
            try:
                values = [_finite(v) for v in values]
                if len(values) != len(members):
                    values = ValueError(f"returned {len(values)} values for a group of {len(members)}")
            except Exception as e:  # noqa: BLE001
                values = e
        if isinstance(values, BaseException):
            log.warning("reward %s failed on group %s (samples %s): %r", spec.name, members[0].group_id,
                        ", ".join(_sample_id(t) for t in members), values)
            for t in members:
                _failed(t, spec, values, errors)
            continue
        for t, v in zip(members, values, strict=True):
            t.rewards[spec.key] = float(v)


def _per_sample(trajs: list[Trajectory], spec: RewardSpec, fn: Callable, errors: dict[str, list]) -> None:
    """Score each sample; a reward with a ``batch`` attribute grades the whole list at once (worker pool)."""
    batch = getattr(fn, "batch", None)
    if batch is not None:
        try:
            values = list(batch(trajs, **spec.options))
        except RewardSetupError:
            raise
        except Exception as e:  # noqa: BLE001
            values = [e] * len(trajs)
    else:
        values = [_call(fn, t, spec) for t in trajs]
    for t, v in zip(trajs, values, strict=True):
        if not isinstance(v, BaseException):
            try:
                t.rewards.update(_as_components(spec.key, v))
                continue
            except Exception as e:  # noqa: BLE001 - e.g. a reward that returned None
                v = e
        log.warning("reward %s failed on sample %s: %r", spec.name, _sample_id(t), v)
        _failed(t, spec, v, errors)


def _takes_options(hook: Callable) -> bool:
    import inspect

    return any(p.kind in (p.KEYWORD_ONLY, p.VAR_KEYWORD) for p in inspect.signature(hook).parameters.values())


def prepare_rewards(specs: list[RewardSpec]) -> None:
    """Let each reward get ready before the first step (a reward's optional ``prepare(**options)``: the
    built-in math and code rewards start their worker pools), so that start-up never lands inside a timed
    step. A ``prepare()`` without parameters is called without the options."""
    for spec in specs:
        prepare = getattr(spec.resolve(), "prepare", None)
        if prepare is not None:
            prepare(**spec.options) if _takes_options(prepare) else prepare()


def compute_rewards(trajs: list[Trajectory], specs: list[RewardSpec], *, enforce: bool = True) -> dict[str, float]:
    """Score every trajectory with every spec; set ``t.rewards[...]`` (every component) and ``t.reward``.

    ``t.reward`` is the weighted sum of the specs' main components; a failed sample is marked in
    ``t.reward_errors``. Returns counters for the step's metrics: ``reward_errors/<name>`` (failed or timed-out
    samples) and ``reward_mean/<component>``. With ``enforce`` (the RL loop), a reward failing on more than its
    ``max_error_rate`` of the samples raises :class:`RewardError` (:func:`~longcot.rewards.errors.check_error_rate`).
    """
    errors: dict[str, list[tuple[str, str]]] = {}
    for t in trajs:
        t.rewards.clear()
        t.reward_errors.clear()
    for spec in specs:
        fn = spec.resolve()
        if getattr(fn, "per_group", False):
            _per_group(trajs, spec, fn, errors)
        else:
            _per_sample(trajs, spec, fn, errors)
    for t in trajs:
        t.reward = sum(s.weight * t.rewards.get(s.key, 0.0) for s in specs)
    if enforce:
        check_error_rate(errors, len(trajs), specs)
    metrics = {f"reward_errors/{k}": float(len(v)) for k, v in errors.items()}
    keys = sorted({k for t in trajs for k in t.rewards})
    for k in keys:
        vals = [t.rewards[k] for t in trajs if k in t.rewards]
        metrics[f"reward_mean/{k}"] = sum(vals) / len(vals)
    return metrics
