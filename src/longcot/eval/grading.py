"""Eval grading reuses the training rewards: one grader, so eval and RL agree on what "correct" means.

A grader is ``grade(response, gold) -> (extracted_answer | None, correct)``. :func:`make_grader` builds it
from a reward name (``"math"``) or ``module:function``: the reward scores a :class:`Trajectory` whose
``meta["answer"]`` is the gold answer, and a score > 0.5 counts as correct. The extracted answer (for
maj@k) comes from an ``extract_answer(text)`` function in the reward's module when it has one.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

from longcot.record import Trajectory
from longcot.rewards.registry import REWARDS

Grader = Callable[[str, str], "tuple[str | None, bool]"]


def _load_builtin_rewards() -> None:
    """Import the modules that register the built-in rewards (registration happens on import)."""
    try:
        import longcot.rewards.math  # noqa: F401
    except ImportError:
        pass


def _score(value, name: str) -> float:
    if isinstance(value, dict):
        for key in (name, "correct", "reward"):
            if key in value:
                return float(value[key])
        raise ValueError(f"grader '{name}' returned {sorted(value)}; expected a key '{name}' or 'correct'")
    return float(value)


def make_grader(name: str = "math") -> Grader:
    """``grade(response, gold)`` for a registered reward (or ``module:function``)."""
    _load_builtin_rewards()
    fn = REWARDS.get(name)
    if getattr(fn, "per_group", False):
        raise ValueError(f"grader '{name}' is a per-group reward; a grader must score one response")
    extract = getattr(sys.modules.get(fn.__module__), "extract_answer", None)

    def grade(response: str, gold: str) -> tuple[str | None, bool]:
        traj = Trajectory(prompt_id="", group_id="", prompt_ids=[], response_ids=[], rollout_logprobs=[],
                          response_text=response, meta={"answer": gold})
        correct = _score(fn(traj), name) > 0.5
        extracted = extract(response) if extract is not None else None
        return (None if extracted is None else str(extracted)), correct

    return grade
