"""The code reward: run model-written Python against the sample's tests in the sandbox.

``sample.meta["tests"]`` is one of

* ``{"kind": "io", "cases": [{"input": "...", "output": "..."}, ...]}`` (contest style, stdin -> stdout);
* ``{"kind": "assert", "prompt": ..., "test": ..., "entry_point": ...}`` (HumanEval style).

The code is the last fenced ```` ```python ```` block of the answer section (after ``</think>``; the last fenced
block of any language when none is tagged python), else the whole answer section (a HumanEval completion).
Score: ``mode="all"`` (default) 1.0 when every test passes, else 0.0; ``mode="fraction"`` the fraction of
passing cases (io) or passing top-level asserts of ``check`` (assert). A truncated response
(``finish`` = length/budget/repeat) earns ``truncated_score`` and is not run.

Grading runs in a warm pool of worker processes, each driving its own sandbox server (see
:mod:`longcot.rewards.executor` for the verdict, :mod:`longcot.rewards.sandbox` for the jail).
"""

from __future__ import annotations

import re
from dataclasses import asdict, fields

from longcot.record import Trajectory
from longcot.rewards.executor import Limits
from longcot.rewards.math import CUT_OFF, answer_section
from longcot.rewards.pool import get_pool
from longcot.rewards.registry import reward

_FENCE = re.compile(r"```([A-Za-z0-9_+-]*)[ \t]*\n(.*?)```", re.S)


def extract_code(text: str) -> str | None:
    """The program in a response (see module docstring), or ``None`` when there is none."""
    section = answer_section(text)
    if section is None or not section.strip():
        return None
    blocks = _FENCE.findall(section)
    if blocks:
        python = [body for lang, body in blocks if lang.lower() in ("python", "py", "python3")]
        return (python or [body for _, body in blocks])[-1]
    return section


def _limits(options: dict) -> dict:
    known = {f.name for f in fields(Limits)}
    bad = sorted(set(options) - known)
    if bad:
        raise KeyError(f"code reward: unknown limit(s) {bad}; valid: {sorted(known)}")
    return asdict(Limits(**options))


def code_batch(
    samples: list[Trajectory],
    *,
    mode: str = "all",
    truncated_score: float = 0.0,
    limits: dict | None = None,
    details: bool = False,
) -> list[float | dict | Exception]:
    """Scores for ``samples``; with ``details`` each is a dict with ``passed``/``total`` as extra components."""
    if mode not in ("all", "fraction"):
        raise ValueError(f"code reward: mode must be 'all' or 'fraction', got {mode!r}")
    lim = _limits(limits or {})
    out: list = [0.0] * len(samples)
    jobs, where, hard = [], [], 10.0
    for i, s in enumerate(samples):
        tests = s.meta.get("tests")
        if not isinstance(tests, dict) or tests.get("kind") not in ("io", "assert"):
            out[i] = KeyError(f"sample {s.prompt_id}: meta['tests'] must be a dict with kind 'io' or 'assert'")
            continue
        code = extract_code(s.response_text)
        if s.finish in CUT_OFF or code is None:
            out[i] = float(truncated_score) if s.finish in CUT_OFF else 0.0
            continue
        runs = len(tests.get("cases", ())) if tests["kind"] == "io" else 1
        hard = max(hard, runs * (lim["wall_s"] + 1.0) + 10.0)  # the sandbox enforces wall_s; this is a backstop
        jobs.append((tests, code, lim, mode))
        where.append(i)
    if jobs:
        for i, (status, value) in zip(where, _pool().map("longcot.rewards.executor:grade", jobs, hard), strict=True):
            if status != "ok":
                out[i] = RuntimeError(f"code grading {status}: {value}")
            elif details:
                out[i] = {"code": value["score"], "passed": value["passed"], "total": value.get("total", 1)}
            else:
                out[i] = value["score"]
    return out


def _pool():
    return get_pool("code", preload=("longcot.rewards.executor",))


@reward("code")
def code(
    sample: Trajectory,
    *,
    mode: str = "all",
    truncated_score: float = 0.0,
    limits: dict | None = None,
    details: bool = False,
) -> float | dict:
    """Pass score of the response's program on ``sample.meta["tests"]`` (see module docstring)."""
    (value,) = code_batch([sample], mode=mode, truncated_score=truncated_score, limits=limits, details=details)
    if isinstance(value, Exception):
        raise value
    return value


code.batch = code_batch
code.prepare = lambda: _pool().start()  # prepare_rewards: workers start with the trainer, not mid-step
