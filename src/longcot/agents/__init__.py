"""Parallel-agent rollouts (Kimi K2.5 PARL): an orchestrator policy spawns sub-agents that run as one batch.

* :mod:`longcot.agents.protocol`: the plain-text directives an orchestrator writes, parsed and checked;
* :mod:`longcot.agents.driver`: :class:`AgentEngine`, the multi-round driver (itself an Engine);
* :mod:`longcot.agents.roles`: sub-agent roles (``agents.subagents``: shared policy, frozen checkpoint, specialist);
* :mod:`longcot.agents.budget`: what one task may spend on sub-agents; :mod:`longcot.agents.fidelity`: whether a
  sub-agent's task is one of the problem's parts;
* :mod:`longcot.agents.state`, :mod:`longcot.agents.records`: per-sample state, and what it becomes (records,
  metrics, agent trees);
* :mod:`longcot.agents.report`: agent trees for ``longcot report RUN --sample ID`` and the PARL curves.

The PARL reward is a reward like any other (:mod:`longcot.rewards.parl`); docs/agents.md has the whole picture.
``AgentEngine`` and ``wrap_engine`` are imported on first use, so a task that only writes the protocol's text
(``longcot.data.compound``) does not pull in the engine stack.
"""

from __future__ import annotations

from typing import Any

__all__ = ["AgentEngine", "train_specialists", "wrap_engine"]


def __getattr__(name: str) -> Any:
    if name in ("AgentEngine", "wrap_engine"):
        from longcot.agents import driver

        return getattr(driver, name)
    if name == "train_specialists":
        from longcot.agents.roles import train_specialists

        return train_specialists
    raise AttributeError(f"module 'longcot.agents' has no attribute '{name}'")
