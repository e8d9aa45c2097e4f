"""What a finished orchestrator sample becomes: its Trajectory, its sub-agents' records, metrics and an agent tree.

Every number here is per orchestrator sample (``summary``) or over one ``generate`` call (``batch_metrics``);
docs/agents.md, "Metrics", defines each.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

from longcot.agents.protocol import PROBLEM_KINDS
from longcot.agents.state import Orchestrator
from longcot.record import AgentInfo, Trajectory


def summary(s: Orchestrator) -> dict:
    """One sample's agent numbers (``Trajectory.meta["agents"]``, the trace, the reward's inputs)."""
    subs = list(s.subagents.values())
    sub_tokens = sum(len(t.response_ids) for sub in subs for t in sub.trajs)
    fid = s.fidelity
    out = {
        "sample_id": s.sample_id, "subagents": len(subs), "rounds": s.rounds, "turns": s.turns,
        "finished_subagents": sum(sub.finished for sub in subs),
        "critical_steps": s.turns + s.sub_steps,
        "orchestrator_tokens": s.generated_tokens,
        "critical_path_tokens": s.generated_tokens + s.sub_path_tokens,
        "subagent_tokens": sub_tokens,
        "total_tokens": s.generated_tokens + sub_tokens,
        "roles": dict(Counter(sub.role for sub in subs)),
        "problems": dict(s.problems),
    }
    if fid is not None and fid.known:
        out["faithful_subagents"] = fid.faithful
        out["faithful_finished"] = sum(bool(sub.faithful and sub.finished) for sub in subs)
        out["subtask_fidelity"] = fid.faithful / len(subs) if subs else None
        out["parts"] = fid.parts
    if s.budget.max_subagents or s.budget.max_tokens:
        out["budget"] = s.budget.summary()
    return out


def orchestrator_record(s: Orchestrator, group_tag: str) -> Trajectory:
    info = summary(s)
    return Trajectory(
        prompt_id=s.prompt.prompt_id, group_id=s.prompt.prompt_id + group_tag, prompt_ids=list(s.prompt.prompt_ids),
        response_ids=list(s.ids), rollout_logprobs=[] if s.logprobs_missing else list(s.logprobs), finish=s.finish,
        response_text="".join(p["text"] for p in s.pieces), prompt_text=s.prompt.prompt_text,
        segments=list(s.segments), loss_mask=list(s.mask),
        agent=AgentInfo("orchestrator", None, 0, info["critical_steps"]),
        meta={**s.prompt.meta, "agents": {**info, "spans": [(p["kind"], p["start"], p["end"]) for p in s.pieces]}},
    )


def subagent_records(s: Orchestrator, orch: Trajectory, trained_roles: set[str]) -> list[Trajectory]:
    """Sub-agent records: parent, depth 1, their round; loss mask 1 only for a role in ``trained_roles``.

    ``meta["temperature"]`` is the temperature the tokens were sampled at (sub-agents often sample greedily while
    the orchestrator samples at T=1), so a trainer can score them at the temperature they came from.
    """
    out = []
    for sub in s.subagents.values():
        for t in sub.trajs:
            t.prompt_id, t.group_id = orch.prompt_id, orch.group_id + "/sub"
            t.agent = AgentInfo("subagent", s.sample_id, 1, sub.round)
            t.loss_mask = [int(sub.role in trained_roles)] * len(t.response_ids)
            t.meta = {**t.meta, "agents": {"parent": s.sample_id, "name": sub.name, "role": sub.role,
                                           "faithful": sub.faithful},
                      "temperature": sub.temperature,
                      "parent_response": orch.response_text, "parent_finish": orch.finish}
            out.append(t)
    return out


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)


def batch_metrics(states: list[Orchestrator], batch_sizes: list[int], roles: list[str]) -> dict[str, float]:
    """``agents/*`` metrics over one generate call. Fidelity and budget metrics appear only when measured."""
    n = max(len(states), 1)
    sums = [summary(s) for s in states]
    spawned = sum(x["subagents"] for x in sums)
    out = {
        "agents/subagents_mean": spawned / n,
        "agents/multi_agent_frac": sum(x["subagents"] >= 2 for x in sums) / n,
        "agents/rounds_mean": sum(x["rounds"] for x in sums) / n,
        "agents/finish_rate": sum(x["finished_subagents"] for x in sums) / spawned if spawned else 0.0,
        "agents/critical_steps_mean": sum(x["critical_steps"] for x in sums) / n,
        "agents/critical_path_tokens_mean": sum(x["critical_path_tokens"] for x in sums) / n,
        "agents/orchestrator_tokens_mean": sum(x["orchestrator_tokens"] for x in sums) / n,
        "agents/subagent_tokens_mean": sum(x["subagent_tokens"] for x in sums) / n,
        "agents/total_tokens_mean": sum(x["total_tokens"] for x in sums) / n,
        "agents/subagent_engine_calls": float(len(batch_sizes)),
        "agents/subagent_batch_max": float(max(batch_sizes, default=0)),
    }
    judged = [x for x in sums if "faithful_subagents" in x]
    judged_spawned = sum(x["subagents"] for x in judged)
    if judged_spawned:  # over sub-agents: the share of delegated tasks that are parts of the problem
        out["agents/subtask_fidelity"] = sum(x["faithful_subagents"] for x in judged) / judged_spawned
    with_parts = [x for x in judged if x.get("parts")]
    if with_parts:  # over samples: the share of the problem's parts that went to a sub-agent
        out["agents/part_coverage"] = _mean([x["faithful_subagents"] / x["parts"] for x in with_parts])
    budgeted = [x["budget"] for x in sums if "budget" in x]
    if budgeted and budgeted[0]["max_subagents"]:
        out["agents/budget_subagents_frac"] = _mean([b["subagents"] / b["max_subagents"] for b in budgeted])
    if budgeted and budgeted[0]["max_tokens"]:
        out["agents/budget_tokens_frac"] = _mean([b["tokens"] / b["max_tokens"] for b in budgeted])
    if len(roles) > 1 and spawned:
        for role in roles:
            out[f"agents/role_frac/{role}"] = sum(x["roles"].get(role, 0) for x in sums) / spawned
    for kind in PROBLEM_KINDS:
        out[f"agents/problems/{kind}"] = float(sum(s.problems[kind] for s in states))
    return out


def tree(s: Orchestrator) -> dict:
    """A JSON-able agent tree: the orchestrator's turns and observations, and every sub-agent it spawned."""
    return {
        "sample_id": s.sample_id, "prompt": s.prompt.prompt_text, "answer": s.prompt.meta.get("answer"),
        "finish": s.finish, "summary": summary(s),
        "pieces": [{**p, "tokens": p["end"] - p["start"]} for p in s.pieces],
        "subagents": [{"name": sub.name, "role": sub.role, "task": sub.task, "directive": sub.directive,
                       "deps": sub.deps, "round": sub.round, "wave": sub.wave, "answer": sub.answer,
                       "votes": sub.votes, "finished": sub.finished, "faithful": sub.faithful, "tokens": sub.tokens,
                       "tokens_total": sum(len(t.response_ids) for t in sub.trajs),
                       "responses": [t.response_text for t in sub.trajs],
                       "finish": [t.finish for t in sub.trajs]} for sub in s.subagents.values()],
    }


def write_trace(trace_dir: Path, tag: str, states: list[Orchestrator], metrics: dict[str, float]) -> None:
    """``trace_dir/<tag>.jsonl``: one agent tree per orchestrator; ``trace_dir/metrics.jsonl``: one row."""
    trace_dir.mkdir(parents=True, exist_ok=True)
    with open(trace_dir / f"{tag}.jsonl", "w") as f:
        for s in states:
            f.write(json.dumps(tree(s)) + "\n")
    with open(trace_dir / "metrics.jsonl", "a") as f:
        f.write(json.dumps({"tag": tag, **metrics}) + "\n")
