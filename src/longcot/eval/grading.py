"""Eval grading reuses the training rewards: one grader, so eval and RL agree on what "correct" means.

:func:`make_grader` turns a reward name (``"math"``) or ``module:function`` into a :class:`Grader`:
``grader(response, gold, finish) -> (extracted_answer | None, correct)`` and ``grader.many(...)`` for a whole
eval at once (the math reward grades a batch in its worker pool). The reward scores a :class:`Trajectory`
whose ``meta["answer"]`` is the gold answer; a score > 0.5 counts as correct. The extracted answer (what
maj@k votes on) comes from ``extract_answer(text)`` in the reward's module when it has one.

Cut-off responses (``finish`` length/budget/repeat) have no final answer by default: they score 0 and do not
vote, exactly as the math reward treats them in training. ``grade_truncated=True`` grades their text like any
other (some public harnesses do; the difference shows up only when many responses hit ``max_tokens``).
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Sequence

from longcot.record import Trajectory
from longcot.registry import check_options
from longcot.rewards.errors import describe
from longcot.rewards.registry import REWARDS

log = logging.getLogger(__name__)
CUT_OFF = ("length", "budget", "repeat")


def _load_builtin_rewards() -> None:
    """Import the modules that register the built-in rewards (registration happens on import)."""
    from longcot.rewards.registry import load_builtin_rewards

    load_builtin_rewards()


def _score(value, name: str) -> float:
    if isinstance(value, Exception):
        raise value
    if isinstance(value, dict):
        for key in (name, "correct", "reward"):
            if key in value:
                return float(value[key])
        raise ValueError(f"grader '{name}' returned keys {sorted(value)}; expected '{name}' or 'correct'")
    return float(value)


class Grader:
    """A per-sample reward used as a right/wrong judge, plus its module's answer extractor."""

    def __init__(self, name: str = "math", options: dict | None = None, grade_truncated: bool = False):
        _load_builtin_rewards()
        self.name, self.options, self.grade_truncated = name, dict(options or {}), grade_truncated
        self.fn: Callable = REWARDS.get(name)
        if getattr(self.fn, "per_group", False):
            raise ValueError(f"grader '{name}' is a per-group reward; a grader must score one response")
        check_options(self.fn, self.options, where=f"grader[{name}]")
        self.extract = getattr(sys.modules.get(self.fn.__module__), "extract_answer", None)
        self.errors = 0
        self.last_errors: list[str | None] = []  # per sample of the last many(): "Type: message" of a failure

    def _traj(self, response: str, gold: str, finish: str, meta: dict | None = None) -> Trajectory:
        return Trajectory(prompt_id="", group_id="", prompt_ids=[], response_ids=[], rollout_logprobs=[],
                          finish=finish, response_text=response, meta={**(meta or {}), "answer": gold})

    def many(self, responses: Sequence[str], golds: Sequence[str], finishes: Sequence[str],
             metas: Sequence[dict] | None = None) -> list[tuple]:
        """``[(extracted, correct)]`` for every sample; a grading error counts as wrong (logged, counted).
        ``metas`` are the problems' metadata (the code grader's tests live there)."""
        cut = [f in CUT_OFF and not self.grade_truncated for f in finishes]
        metas = metas if metas is not None else [None] * len(responses)
        trajs = [self._traj(r, g, "length" if c else "stop", m)
                 for r, g, c, m in zip(responses, golds, cut, metas, strict=True)]
        batch = getattr(self.fn, "batch", None)
        values = batch(trajs, **self.options) if batch is not None else [self._call(t) for t in trajs]
        out = []
        self.last_errors = []
        for t, c, v in zip(trajs, cut, values, strict=True):
            error = None
            try:
                correct = _score(v, self.name) > 0.5
            except Exception as e:  # noqa: BLE001 - one bad sample must not lose a 30-minute eval
                log.warning("grader %s failed on a response (scored wrong): %r", self.name, e)
                self.errors += 1
                correct, error = False, describe(e)
            self.last_errors.append(error)
            extracted = None if (c or self.extract is None) else self.extract(t.response_text)
            out.append((None if extracted is None else str(extracted), bool(correct)))
        return out

    def _call(self, traj: Trajectory):
        try:
            return self.fn(traj, **self.options)
        except Exception as e:  # noqa: BLE001
            return e

    def __call__(self, response: str, gold: str, finish: str = "stop",
                 meta: dict | None = None) -> tuple[str | None, bool]:
        return self.many([response], [gold], [finish], [meta])[0]


def make_grader(name: str = "math", options: dict | None = None, grade_truncated: bool = False) -> Grader:
    return Grader(name, options, grade_truncated)
