"""The sub-agent budget of one task: how many sub-agents it may spawn and how many tokens they may generate.

``agents.budget`` sets both per orchestrator sample, over all its rounds (0: no limit). A directive that would
go over is refused before it runs, with an ``[error: ...]`` line in the observation, so the orchestrator sees
what it cost. Tokens are not known before a sub-agent runs, so a directive *reserves* the most it can use
(its role's ``max_tokens`` times ``vote_k``); after its wave the reservation becomes what it really used and
the rest returns to the budget for later rounds. The sub-agents of a task therefore never generate more
tokens than its budget, whatever they write.
"""

from __future__ import annotations

from dataclasses import dataclass

from longcot.agents.protocol import Problem


@dataclass
class Budget:
    """What one orchestrator sample may still spend; ``max_*`` of 0 means no limit."""

    max_subagents: int = 0
    max_tokens: int = 0
    subagents: int = 0  # spawned so far (admitted)
    tokens: int = 0  # generated so far by its sub-agents (every vote)
    reserved: int = 0  # tokens held by admitted sub-agents that have not run yet

    def admit(self, name: str, need: int) -> Problem | None:
        """Admit one sub-agent that may generate up to ``need`` tokens, or say why not (kind ``over_budget``)."""
        if self.max_subagents and self.subagents >= self.max_subagents:
            return Problem("over_budget", f"budget: at most {self.max_subagents} sub-agents per task; "
                                          f"'{name}' was not run")
        left = self.max_tokens - self.tokens - self.reserved
        if self.max_tokens and need > left:
            return Problem("over_budget", f"budget: {max(left, 0)} sub-agent tokens left, '{name}' may need "
                                          f"{need}; it was not run")
        self.subagents += 1
        self.reserved += need
        return None

    def settle(self, reserved: int, used: int) -> None:
        """A sub-agent ran (or was dropped): its reservation becomes the tokens it really generated."""
        self.reserved -= reserved
        self.tokens += used

    def release(self, reserved: int) -> None:
        """An admitted sub-agent that never ran: it neither counts nor holds tokens."""
        self.reserved -= reserved
        self.subagents -= 1

    def summary(self) -> dict:
        return {"max_subagents": self.max_subagents, "max_tokens": self.max_tokens,
                "subagents": self.subagents, "tokens": self.tokens}
