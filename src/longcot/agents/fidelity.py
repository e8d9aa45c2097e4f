"""Sub-task fidelity: is a sub-agent's task really one of the problem's parts?

An orchestrator can earn the shape of delegation without its substance: four sub-agents with tasks that are
not the problem's parts (``[a: 4-4-4-4]`` for ``a=6-2-2-7``) look parallel, finish, and help nothing
(docs/agents.md, "spurious parallelism"). Fidelity measures that directly, for tasks that can say what their
parts are.

A *fidelity check* is ``check(meta, task) -> key | None``: ``meta`` is the prompt's metadata (the task row),
``task`` the directive's task text; it returns a hashable key naming the part the task is (``None``: no
part). The driver counts a sub-agent *faithful* when its task maps to a part that no earlier sub-agent of the
same sample claimed, so spawning one part twice is not two faithful sub-agents. A check returns
:data:`UNKNOWN` when the prompt carries nothing to check against; such samples have no fidelity (their
metrics skip them rather than count them as faithful or not).

Checks are registered by name (``agents.fidelity``, default ``subtasks``) or given as ``module:function``:

* ``subtasks``: the row lists its parts under ``meta["subtasks"]``, one entry per part, each a string or a list
  of equivalent strings; a task is that part when it equals one of them after removing whitespace. The compound
  task writes them (a dependent part's entry holds both ``{a}-4`` and its resolved form ``-9-4``).
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import Any

from longcot.registry import Registry

UNKNOWN = object()  # the prompt gives nothing to check against: fidelity is not measured for this sample
FidelityCheck = Callable[[dict, str], Any]
FIDELITY: Registry[FidelityCheck] = Registry("fidelity check")


def _norm(text: str) -> str:
    return "".join(text.split())


@FIDELITY.register("subtasks")
def subtasks(meta: dict, task: str) -> Hashable | None | object:
    """The index of the part in ``meta["subtasks"]`` that ``task`` equals (whitespace ignored)."""
    parts = meta.get("subtasks")
    if parts is None:
        return UNKNOWN
    norm = _norm(task)
    for i, part in enumerate(parts):
        forms = [part] if isinstance(part, str) else part
        if any(_norm(f) == norm for f in forms):
            return i
    return None


class FidelityTracker:
    """Per orchestrator sample: which parts its sub-agents have claimed, and how many were faithful."""

    def __init__(self, check: FidelityCheck, meta: dict) -> None:
        self.check, self.meta = check, meta
        self.claimed: set[Hashable] = set()
        self.known = True
        self.faithful = 0
        self.judged = 0

    def judge(self, *texts: str) -> bool | None:
        """Whether a sub-agent whose task reads as any of ``texts`` is faithful (None: not measurable)."""
        keys = [self.check(self.meta, t) for t in texts if t]
        if not keys or any(k is UNKNOWN for k in keys):
            self.known = False
            return None
        self.judged += 1
        key = next((k for k in keys if k is not None and k not in self.claimed), None)
        if key is None:
            return False
        self.claimed.add(key)
        self.faithful += 1
        return True

    @property
    def parts(self) -> int | None:
        """How many parts the problem has, when the check is the built-in ``subtasks`` one."""
        parts = self.meta.get("subtasks")
        return len(parts) if self.known and parts is not None else None


def get_check(name: str) -> FidelityCheck:
    """The fidelity check named in ``agents.fidelity`` (registered name or ``module:function``)."""
    return FIDELITY.get(name)
