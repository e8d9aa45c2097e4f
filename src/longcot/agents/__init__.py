"""Parallel-agent rollouts (Kimi K2.5 PARL): an orchestrator policy spawns sub-agents that run as one batch.

* :mod:`longcot.agents.protocol`: the plain-text directives an orchestrator writes, parsed and checked;
* :mod:`longcot.agents.driver`: :class:`AgentEngine`, the multi-round driver (itself an Engine);
* :mod:`longcot.agents.report`: agent trees for ``longcot report RUN --sample ID`` and the PARL curves.

The PARL reward is a reward like any other (:mod:`longcot.rewards.parl`); docs/agents.md has the whole picture.
``AgentEngine`` and ``wrap_engine`` are imported on first use, so a task that only writes the protocol's text
(``longcot.data.compound``) does not pull in the engine stack.
"""

from __future__ import annotations

from typing import Any

__all__ = ["AgentEngine", "wrap_engine"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from longcot.agents import driver

        return getattr(driver, name)
    raise AttributeError(f"module 'longcot.agents' has no attribute '{name}'")
