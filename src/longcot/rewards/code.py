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
``sandbox="required"`` (default) stops with :class:`~longcot.rewards.executor.SandboxUnavailable` when the jail
cannot start; ``"allow_unsafe"`` runs programs without isolation there, with a warning on every run.
"""

from __future__ import annotations

import logging
import re
from dataclasses import asdict, fields

from longcot.record import Trajectory
from longcot.rewards.executor import POLICIES, Limits, SandboxUnavailable, check_sandbox
from longcot.rewards.math import CUT_OFF, answer_section
from longcot.rewards.pool import get_pool
from longcot.rewards.registry import reward

log = logging.getLogger(__name__)
_WARNED: set[str] = set()

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
        from longcot.registry import did_you_mean

        raise KeyError(f"code reward: unknown limit '{bad[0]}'{did_you_mean(bad[0], known)}; valid: {sorted(known)}")
    lim = asdict(Limits(**options))
    for key, value in lim.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
            raise ValueError(f"code reward: limits.{key} must be a number > 0, got {value!r}")
    return lim


def validate(*, mode: str = "all", truncated_score: float = 0.0, limits: dict | None = None,
             details: bool = False, sandbox: str = "required") -> None:
    """Option values, before any work (``longcot.config.validate``)."""
    if mode not in ("all", "fraction"):
        raise ValueError(f"code reward: mode must be 'all' or 'fraction', got {mode!r}")
    if sandbox not in POLICIES:
        raise ValueError(f"code reward: sandbox must be one of {list(POLICIES)}, got {sandbox!r}")
    _limits(limits or {})


def check(*, sandbox: str = "required", **_options) -> dict:
    """The start-up probe: a jail that cannot start stops here with :class:`SandboxUnavailable`, before any
    work, instead of grading every program 0. Logs whenever programs will run without isolation."""
    found = check_sandbox(sandbox)
    if "unsafe" in found["features"]:
        log.warning("code reward: sandbox=allow_unsafe and the jail cannot start here: model-written programs "
                    "run WITHOUT isolation in this run (they can read and write your files and use the network)")
    return found


def code_batch(
    samples: list[Trajectory],
    *,
    mode: str = "all",
    truncated_score: float = 0.0,
    limits: dict | None = None,
    details: bool = False,
    sandbox: str = "required",
) -> list[float | dict | Exception]:
    """Scores for ``samples``; with ``details`` each is a dict with ``passed``/``total`` as extra components."""
    validate(mode=mode, limits=limits, sandbox=sandbox)
    if sandbox == "allow_unsafe" and "allow_unsafe" not in _WARNED:
        _WARNED.add("allow_unsafe")
        log.warning("code reward: sandbox=allow_unsafe: where the jail cannot start, programs run without isolation")
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
        jobs.append((tests, code, lim, mode, sandbox))
        where.append(i)
    if jobs:
        for i, (status, value) in zip(where, _pool().map("longcot.rewards.executor:grade", jobs, hard), strict=True):
            if status == "error" and str(value).startswith("SandboxUnavailable"):
                raise SandboxUnavailable(str(value).partition(": ")[2])
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
    sandbox: str = "required",
) -> float | dict:
    """Pass score of the response's program on ``sample.meta["tests"]`` (see module docstring)."""
    (value,) = code_batch([sample], mode=mode, truncated_score=truncated_score, limits=limits, details=details,
                          sandbox=sandbox)
    if isinstance(value, Exception):
        raise value
    return value


code.batch = code_batch
code.validate = validate
code.check = check
code.prepare = lambda **_options: _pool().start()  # prepare_rewards: workers start with the trainer, not mid-step
