"""The PARL reward (Kimi K2.5 Agent Swarm) with credit only for faithful sub-agents, and a cost term.

K2.5 (arXiv:2602.02276) trains its orchestrator on ``r = l1 * r_parallel + l2 * r_finish + r_perf``: ``r_parallel``
pays for spawning sub-agents at all (against "serial collapse", an orchestrator that never learns to delegate),
``r_finish`` for sub-agents that complete their sub-task (against "spurious parallelism", spawning for show),
and both weights anneal to 0 so that late training optimises the outcome alone. Here::

    r = r_outcome + l1(t) * r_parallel + l2(t) * r_finish - l3(t) * r_cost

* ``r_outcome``: the math reward of the orchestrator's final answer (1 correct, 0 not; a truncated one 0).
* ``r_parallel``: min(credited sub-agents, ``parallel_target``) / ``parallel_target``.
* ``r_finish``: credited sub-agents that finished with an answer / all sub-agents spawned (0 when none).
* ``r_cost``: tokens the sample's sub-agents generated / ``cost_tokens`` (every vote counts).
* ``l(t) = l0 * max(0, 1 - t / anneal_steps)``, t = policy version = RL step; ``l3`` anneals over
  ``cost_anneal_steps`` (default ``anneal_steps``; 0 keeps a weight constant).

Which sub-agents are credited (``credit``):

* ``faithful`` (default): those whose task is one of the problem's parts, each part once (agents/fidelity.py).
  K2.5's ``r_finish`` does not stop spurious parallelism when a spurious sub-agent finishes too: the tiny run
  of issue 21 split ``a=6-2-2-7; ...`` into ``[a: 4-4-4-4] [b: 4-8-8-4] ...``, four sub-agents that all
  finished, and ``r_parallel + r_finish`` paid it in full. Crediting only parts pays for exactly the
  decomposition the task has: a made-up or duplicated sub-task earns nothing and lowers ``r_finish``.
* ``outcome``: all sub-agents, but the shaping is paid only when the final answer is right (``r_outcome`` = 1);
  for tasks without a fidelity check. A spurious split that still ends in the right answer is paid here.
* ``all``: K2.5 as published: every sub-agent counts.

Every term and the current weights are returned as components, so the trainer logs ``rewards/parl/outcome``,
``rewards/parl/parallel``, ``rewards/parl/cost``, ``rewards/parl/l1`` ... per step.

A sub-agent record (``agents.train_subagents``) earns its orchestrator's outcome: it is credited with the result it
contributed to; the shaping and cost terms (the orchestrator's choices) are 0 for it.
"""

from __future__ import annotations

from dataclasses import replace

from longcot.record import Trajectory
from longcot.rewards.math import math as math_reward
from longcot.rewards.registry import reward

CREDITS = ("faithful", "outcome", "all")


def annealed(weight: float, step: int, anneal_steps: int) -> float:
    """``weight`` falling linearly to 0 at ``anneal_steps`` (constant when ``anneal_steps`` is 0)."""
    if anneal_steps <= 0:
        return weight
    return weight * max(0.0, 1.0 - step / anneal_steps)


def _version(sample: Trajectory) -> int:
    return sample.segments[-1].policy_version if sample.segments else 0


def shaping_terms(info: dict, outcome: float, credit: str, parallel_target: int) -> tuple[float, float]:
    """(r_parallel, r_finish) of one orchestrator's agent summary under a ``credit`` rule."""
    spawned = int(info.get("subagents", 0))
    if credit == "faithful":
        if "faithful_subagents" not in info:
            raise ValueError(f"parl reward: credit='faithful' needs sub-task fidelity, but sample "
                             f"{info.get('sample_id', '?')} has none (its task gives no agents.fidelity check, e.g. "
                             "no meta['subtasks']); use credit='outcome' for such tasks")
        credited, finished = int(info["faithful_subagents"]), int(info.get("faithful_finished", 0))
    else:
        credited, finished = spawned, int(info.get("finished_subagents", 0))
    r_parallel = min(credited, parallel_target) / parallel_target
    r_finish = finished / spawned if spawned else 0.0
    gate = outcome if credit == "outcome" else 1.0
    return gate * r_parallel, gate * r_finish


@reward("parl")
def parl(sample: Trajectory, *, l1: float = 0.3, l2: float = 0.2, anneal_steps: int = 20, parallel_target: int = 3,
         credit: str = "faithful", l3: float = 0.0, cost_tokens: int = 0, cost_anneal_steps: int | None = None,
         truncated_score: float = 0.0) -> dict[str, float]:
    """PARL reward of one orchestrator (or sub-agent) record; see the module docstring."""
    if parallel_target < 1:
        raise ValueError(f"parl reward: parallel_target must be >= 1, got {parallel_target}")
    if credit not in CREDITS:
        raise ValueError(f"parl reward: credit must be one of {CREDITS}, got {credit!r}")
    if l3 and cost_tokens < 1:
        raise ValueError("parl reward: a cost term (l3 > 0) needs cost_tokens >= 1, the sub-agent tokens that cost 1 "
                         "(e.g. agents.budget.max_subagent_tokens)")
    if sample.agent is not None and sample.agent.role == "subagent":
        parent = replace(sample, response_text=sample.meta.get("parent_response", ""),
                         finish=sample.meta.get("parent_finish", "stop"))
        outcome = math_reward(parent, truncated_score=truncated_score)
        return {"parl": outcome, "outcome": outcome, "parallel": 0.0, "finish": 0.0, "cost": 0.0,
                "l1": 0.0, "l2": 0.0, "l3": 0.0}
    info = sample.meta.get("agents")
    if info is None:
        raise ValueError(f"parl reward: sample {sample.prompt_id!r} has no agent summary (meta['agents']); the parl "
                         "reward scores orchestrator rollouts: set agents.enabled: true")
    outcome = math_reward(sample, truncated_score=truncated_score)
    r_parallel, r_finish = shaping_terms(info, outcome, credit, parallel_target)
    r_cost = info.get("subagent_tokens", 0) / cost_tokens if cost_tokens else 0.0
    step = _version(sample)
    w1, w2 = annealed(l1, step, anneal_steps), annealed(l2, step, anneal_steps)
    w3 = annealed(l3, step, anneal_steps if cost_anneal_steps is None else cost_anneal_steps)
    return {"parl": outcome + w1 * r_parallel + w2 * r_finish - w3 * r_cost, "outcome": outcome,
            "parallel": r_parallel, "finish": r_finish, "cost": r_cost, "l1": w1, "l2": w2, "l3": w3}
