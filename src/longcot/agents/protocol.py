"""The plain-text protocol an orchestrator writes to run sub-agents (docs/agents.md), parsed and checked.

An orchestrator turn is ordinary text with bracketed directives::

    [a: 7+5*2-3]                 spawn sub-agent ``a`` with the task ``7+5*2-3`` (the default role)
    [b@calc: 9*2-4]              spawn ``b`` in the role ``calc`` (``agents.subagents`` maps roles to policies)
    [c after a,b: {a}*3-{b}]     spawn ``c`` once ``a`` and ``b`` have answered; ``{a}`` becomes a's answer
    [wait]                       end the turn: run the spawned sub-agents, read their answers

The engine stops generating at ``[wait]``. The answers come back as observation text the orchestrator did
not write (``[a = 12]``, ``[error: ...]``) and it continues. Everything here is pure text processing, so
the rules (what is malformed, what is over the cap, what a vote returns) are tested without an engine.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from longcot.rewards.math import last_boxed

WAIT = "[wait]"
RESERVED = ("wait", "error")
_NAME = r"[A-Za-z][A-Za-z0-9_]*"
_HEADER = re.compile(rf"\[({_NAME})(?:@({_NAME}))?(?: after ({_NAME}(?: ?, ?{_NAME})*))?: ?")
_PLACEHOLDER = re.compile(rf"\{{({_NAME})\}}")
PROBLEM_KINDS = ("malformed", "unclosed", "reserved_name", "duplicate_name", "unknown_dependency", "over_cap",
                 "unknown_role", "over_budget", "round_cap", "task_too_long", "unwaited")


@dataclass
class Spawn:
    """One ``[name@role after deps: task]`` directive; ``deps`` include every ``{name}`` used in the task;
    ``role`` is None when the directive names none (the driver then uses the default role)."""

    name: str
    task: str
    deps: list[str] = field(default_factory=list)
    role: str | None = None


@dataclass
class Problem:
    """A directive that was not run; ``message`` goes back to the orchestrator, ``kind`` into a counter."""

    kind: str
    message: str


@dataclass
class Turn:
    spawns: list[Spawn]
    problems: list[Problem]
    waited: bool


def _snippet(text: str, limit: int = 24) -> str:
    one_line = text.replace("\n", " ")
    return one_line if len(one_line) <= limit else one_line[:limit] + "..."


def parse_turn(text: str) -> Turn:
    """Directives of one generated turn, in order, plus every malformed or unclosed one as a :class:`Problem`.

    A ``[`` always opens a directive: ``[wait]`` (ends the turn; text after it is ignored), a spawn header
    ``[name: `` / ``[name@role: `` / ``[name after a,b: `` closed by the next ``]``, or else a malformed
    directive. A spawn whose ``]`` is missing, or comes after another ``[``, is unclosed.
    """
    spawns, problems = [], []
    pos, waited = 0, False
    while (i := text.find("[", pos)) != -1:
        if text.startswith(WAIT, i):
            waited = True
            break
        nxt = text.find("[", i + 1)
        m = _HEADER.match(text, i)
        if m is None:
            end = text.find("]", i)
            end = len(text) if end == -1 or (nxt != -1 and nxt < end) else end + 1
            problems.append(Problem("malformed", f"malformed directive '{_snippet(text[i:end])}': expected "
                                                 "'[NAME: TASK]', '[NAME@ROLE: TASK]', '[NAME after A,B: TASK]' "
                                                 "or '[wait]'"))
            pos = end
            continue
        close = text.find("]", m.end())
        if close == -1 or (nxt != -1 and nxt < close):
            problems.append(Problem("unclosed", f"unclosed directive '{_snippet(text[i:nxt if nxt != -1 else None])}'"
                                                ": expected ']' at the end of the task"))
            pos = nxt if nxt != -1 else len(text)
            continue
        name, task = m.group(1), text[m.end():close].strip()
        pos = close + 1
        if not task:
            problems.append(Problem("malformed", f"directive '[{name}: ]' has an empty task"))
            continue
        deps = [d.strip() for d in (m.group(3) or "").split(",") if d.strip()]
        deps += [d for d in _PLACEHOLDER.findall(task) if d not in deps]
        spawns.append(Spawn(name, task, deps, m.group(2)))
    return Turn(spawns, problems, waited)


def validate(spawns: list[Spawn], known: set[str], cap: int,
             admit: Callable[[Spawn], Problem | None] | None = None) -> tuple[list[Spawn], list[Problem]]:
    """Spawns that may run this round, and a :class:`Problem` for each that may not.

    ``known`` holds the names of sub-agents from earlier rounds. A dependency must name an earlier sub-agent
    (earlier round, or earlier in this turn and accepted), which also rules out cycles. At most ``cap`` run.
    ``admit`` is asked last about each spawn that passed these checks (its role, the task's budget) and may
    refuse it with a Problem; a refused spawn is unknown to the spawns after it, like any rejected one.
    """
    accepted: list[Spawn] = []
    problems: list[Problem] = []
    seen = set(known)
    for s in spawns:
        if s.name in RESERVED:
            problems.append(Problem("reserved_name", f"'{s.name}' is reserved; pick another sub-agent name"))
        elif s.name in seen:
            problems.append(Problem("duplicate_name", f"sub-agent '{s.name}' already exists; '[{s.name}: "
                                                      f"{_snippet(s.task)}]' was not run"))
        elif missing := [d for d in s.deps if d not in seen]:
            problems.append(Problem("unknown_dependency", f"'{s.name}' depends on unknown sub-agent(s) "
                                    f"{', '.join(missing)}; it was not run"))
        elif len(accepted) >= cap:
            problems.append(Problem("over_cap", f"at most {cap} sub-agents per round; '{s.name}' was not run"))
        elif admit is not None and (refused := admit(s)) is not None:
            problems.append(refused)
        else:
            accepted.append(s)
            seen.add(s.name)
    return accepted, problems


def waves(spawns: list[Spawn], resolved: set[str], sequential: bool = False) -> list[list[Spawn]]:
    """Group a round's spawns into waves: a spawn joins the first wave after all of its dependencies.

    Sub-agents in one wave have no unmet dependency and run together (one engine batch). ``sequential``
    puts each spawn in its own wave, in order (a baseline for what the batching buys).
    """
    if sequential:
        return [[s] for s in spawns]
    level: dict[str, int] = {}
    for s in spawns:  # validate() guarantees dependencies precede their dependents
        level[s.name] = max((level[d] + 1 for d in s.deps if d not in resolved), default=0)
    out: list[list[Spawn]] = [[] for _ in range(max(level.values(), default=-1) + 1)]
    for s in spawns:
        out[level[s.name]].append(s)
    return out


def substitute(task: str, answers: dict[str, str]) -> str:
    """``{name}`` -> that sub-agent's answer (dependencies only; other braces are left alone)."""
    return _PLACEHOLDER.sub(lambda m: answers.get(m.group(1), m.group(0)), task)


def extract_answer(text: str, max_chars: int = 32) -> str:
    """A sub-agent's answer: the last ``\\boxed{}``, else its last non-empty line; '' when there is none.

    Brackets and newlines are removed so an answer can never forge a directive or an observation line.
    """
    boxed = last_boxed(text)
    if boxed is None:
        lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
        boxed = lines[-1] if lines else ""
    clean = re.sub(r"[\[\]\n\r]", " ", boxed).strip()
    return clean[:max_chars]


def majority(answers: list[str]) -> str:
    """Majority vote over non-empty answers; ties go to the answer seen first. '' if all are empty."""
    votes = Counter(a for a in answers if a)
    if not votes:
        return ""
    best = max(votes.values())
    return next(a for a in answers if votes.get(a) == best)


def round_notes(rounds_done: int, max_rounds: int) -> list[Problem]:
    """The notice after the last allowed round (the orchestrator must answer now), or nothing. The driver and
    SFT data that teaches the final turn (``data/compound.py``) both take it from here, or that turn is trained
    on a context it never sees."""
    if rounds_done < max_rounds:
        return []
    return [Problem("round_cap", f"round limit reached ({max_rounds}): no more sub-agents; give the final answer")]


def format_results(results: list[tuple[str, str]], problems: list[Problem]) -> str:
    """The observation appended to the orchestrator's context after a round."""
    lines = [f"[{name} = {answer if answer else '?'}]" for name, answer in results]
    lines += [f"[error: {p.message}]" for p in problems]
    return "\n" + "\n".join(lines) + "\n"
