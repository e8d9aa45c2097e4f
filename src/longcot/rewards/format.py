"""The format reward: 1.0 when a response has the shape the task asks for, else 0.0.

Checks, each switchable: the response finished (``finish == "stop"``); with ``think=True`` it has exactly one
``<think>`` ... ``</think>`` pair, the reasoning first and the answer after; with ``boxed=True`` the answer
section has a complete ``\\boxed{}``; with ``pattern`` the whole response matches that regular expression
(``re.DOTALL``). A format reward is a shaping signal: keep its weight small next to correctness.
"""

from __future__ import annotations

import re
from functools import lru_cache

from longcot.record import Trajectory
from longcot.rewards.math import answer_section, last_boxed
from longcot.rewards.registry import reward


@lru_cache(maxsize=64)
def _compile(pattern: str) -> re.Pattern:
    return re.compile(pattern, re.DOTALL)


@reward("format")
def format_reward(sample: Trajectory, *, think: bool = False, boxed: bool = True, pattern: str | None = None) -> float:
    """1.0 if the response is finished and has the requested shape (see module docstring), else 0.0."""
    text = sample.response_text
    if sample.finish != "stop":
        return 0.0
    if think:
        if text.count("<think>") != 1 or text.count("</think>") != 1 or text.index("<think>") > text.index("</think>"):
            return 0.0
        if text.split("<think>", 1)[0].strip():  # nothing before the reasoning
            return 0.0
    if boxed:
        section = answer_section(text)
        if section is None or last_boxed(section) is None:
            return 0.0
    if pattern is not None and not _compile(pattern).fullmatch(text):
        return 0.0
    return 1.0
