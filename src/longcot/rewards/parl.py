"""The PARL reward (Kimi K2.5 Agent Swarm): r = r_outcome + l1 * r_parallel + l2 * r_finish.

* ``r_outcome``: the math reward of the orchestrator's final answer (1 correct, 0 not).
* ``r_parallel``: min(sub-agents spawned, ``parallel_target``) / ``parallel_target``; it pays for trying
  decomposition at all, against the "serial collapse" where an orchestrator never learns to delegate.
* ``r_finish``: the fraction of spawned sub-agents that finished with an answer; it stops the policy from
  farming ``r_parallel`` with sub-agents that do nothing useful ("spurious parallelism").

Both auxiliary weights anneal linearly to 0 over ``anneal_steps`` policy versions (one per RL step, read
from the sample's last segment), so late training optimises the outcome alone. Every term and the current
l1, l2 are returned as components, so the trainer logs ``rewards/parl/outcome`` etc. per step.

A sub-agent record (``agents.train_subagents``) earns its orchestrator's outcome: it is credited with the
result it contributed to, and the shaping terms (which describe the orchestrator's choices) are 0.
"""

from __future__ import annotations

from dataclasses import replace

from longcot.record import Trajectory
from longcot.rewards.math import math as math_reward
from longcot.rewards.registry import reward


def annealed(weight: float, step: int, anneal_steps: int) -> float:
    """``weight`` falling linearly to 0 at ``anneal_steps`` (constant when ``anneal_steps`` is 0)."""
    if anneal_steps <= 0:
        return weight
    return weight * max(0.0, 1.0 - step / anneal_steps)


def _version(sample: Trajectory) -> int:
    return sample.segments[-1].policy_version if sample.segments else 0


@reward("parl")
def parl(sample: Trajectory, *, l1: float = 0.3, l2: float = 0.2, anneal_steps: int = 20,
         parallel_target: int = 3, truncated_score: float = 0.0) -> dict[str, float]:
    """PARL reward of one orchestrator (or sub-agent) record; see the module docstring."""
    if parallel_target < 1:
        raise ValueError(f"parl reward: parallel_target must be >= 1, got {parallel_target}")
    info = sample.meta.get("agents") or {}
    if sample.agent is not None and sample.agent.role == "subagent":
        parent = replace(sample, response_text=sample.meta.get("parent_response", ""),
                         finish=sample.meta.get("parent_finish", "stop"))
        outcome = math_reward(parent, truncated_score=truncated_score)
        return {"parl": outcome, "outcome": outcome, "parallel": 0.0, "finish": 0.0, "l1": 0.0, "l2": 0.0}
    outcome = math_reward(sample, truncated_score=truncated_score)
    spawned = int(info.get("subagents", 0))
    r_parallel = min(spawned, parallel_target) / parallel_target
    r_finish = info.get("finished_subagents", 0) / spawned if spawned else 0.0
    step = _version(sample)
    w1, w2 = annealed(l1, step, anneal_steps), annealed(l2, step, anneal_steps)
    return {"parl": outcome + w1 * r_parallel + w2 * r_finish, "outcome": outcome, "parallel": r_parallel,
            "finish": r_finish, "l1": w1, "l2": w2}
