"""Role routing, budget enforcement and sub-task fidelity through real engines (fixtures in conftest.py).

Sub-agents named ``@calc`` go to a frozen HF engine, the others to the shared vLLM policy; a directive that names
no known role, or that the task's budget cannot cover, is refused in the observation and never reaches an engine.
"""

from __future__ import annotations

import pytest

from longcot.agents.budget import Budget
from longcot.agents.driver import AgentEngine
from longcot.agents.fidelity import FidelityTracker, subtasks
from longcot.config.schema import AgentBudget, AgentsConfig, SubagentRole
from longcot.rewards.parl import parl
from longcot.rollout.base import SamplingConfig


def error_lines(orch) -> list[str]:
    return [ln for ln in orch.response_text.splitlines() if ln.startswith("[error:")]


def test_roles_route_to_their_engines_with_their_settings(vllm_engine, hf_engine, tok, recording, scripted):
    shared, frozen = recording(vllm_engine), recording(hf_engine)
    cfg = AgentsConfig(enabled=True, max_rounds=1, subagent_max_tokens=6, subagent_temperature=0.0,
                       train_subagents=True, subagents={
                           "worker": SubagentRole(),
                           "calc": SubagentRole(policy="frozen", template="C: {task}\n", max_tokens=4)})
    agents = AgentEngine(shared, tok, cfg, frozen={"calc": frozen})
    turn = "[a@calc: 1+2]\n[b: 3*4]\n[c@calk: 5]\n[d@calc after a: {a}+1]\n[e@worker: 6-1]\n[wait]"
    trajs = agents.generate([scripted(turn)], SamplingConfig(n=1, max_tokens=4, seed=0), group_tag="@0")
    orch = trajs[0]

    # calc's sub-agents reach only the frozen engine, wave by wave, with calc's template and token limit
    assert [[p.prompt_text for p in ps] for ps, _ in frozen.calls][0] == ["C: 1+2\n"]
    assert len(frozen.calls) == 2 and frozen.calls[1][0][0].prompt_text.startswith("C: ")
    assert all(s.max_tokens == 4 for _, s in frozen.calls)
    # the default role (the first listed, worker) and an explicit @worker go to the shared policy
    sub_calls = [ps for ps, s in shared.calls if s.max_tokens == 6]
    assert [p.prompt_text for p in sub_calls[0]] == ["Q: 3*4\n", "Q: 6-1\n"]
    # an unknown role is refused in the observation, with the closest name, and never runs
    assert error_lines(orch) == ["[error: no sub-agent role 'calk' (did you mean 'calc'?); roles: worker, calc; "
                                 "'c' was not run]", "[error: round limit reached (1): no more sub-agents; "
                                                     "give the final answer]"]
    info = orch.meta["agents"]
    assert info["roles"] == {"calc": 2, "worker": 2} and info["problems"]["unknown_role"] == 1
    assert agents.last_metrics["agents/role_frac/calc"] == 0.5
    # only the shared policy's sub-agents are returned for training; every record says its sampling temperature
    returned = [t for t in trajs if t.agent.role == "subagent"]
    assert sorted(t.meta["agents"]["name"] for t in returned) == ["b", "e"]
    assert all(t.loss_mask == [1] * len(t.response_ids) for t in returned)
    frozen_recs = [t for t in agents.last_subagents if t.meta["agents"]["role"] == "calc"]
    assert len(frozen_recs) == 2 and all(t.loss_mask == [0] * len(t.response_ids) for t in frozen_recs)
    assert {t.meta["temperature"] for t in agents.last_subagents} == {0.0}


def test_budget_refuses_directives_in_the_observation_and_never_runs_them(vllm_engine, tok, recording, scripted):
    engine = recording(vllm_engine)
    turn = "[a: 1+1]\n[b: 2+2]\n[c after a: {a}+3]\n[d: 4+4]\n[e: 5+5]\n[wait]"
    cfg = AgentsConfig(enabled=True, max_rounds=1, subagent_max_tokens=5, vote_k=2,
                       budget=AgentBudget(max_subagents=3, max_subagent_tokens=25))
    agents = AgentEngine(engine, tok, cfg)
    (orch,) = agents.generate([scripted(turn)], SamplingConfig(n=1, max_tokens=4, seed=0))

    # each directive reserves 5 tokens x 2 votes: a and b fit (20 of 25); c, d and e would each need 10 more
    sub_prompts = [p.prompt_text for ps, s in engine.calls if s.n == 2 for p in ps]
    assert sub_prompts == ["Q: 1+1\n", "Q: 2+2\n"]
    assert error_lines(orch)[:3] == [
        "[error: budget: 5 sub-agent tokens left, 'c' may need 10; it was not run]",
        "[error: budget: 5 sub-agent tokens left, 'd' may need 10; it was not run]",
        "[error: budget: 5 sub-agent tokens left, 'e' may need 10; it was not run]",
    ]
    info = orch.meta["agents"]
    spent = sum(len(t.response_ids) for t in agents.last_subagents)
    assert info["budget"] == {"max_subagents": 3, "max_tokens": 25, "subagents": 2, "tokens": spent}
    assert spent <= 20 and info["subagent_tokens"] == spent and info["problems"]["over_budget"] == 3
    assert agents.last_metrics["agents/budget_tokens_frac"] == pytest.approx(spent / 25)
    assert agents.last_metrics["agents/problems/over_budget"] == 3

    cfg.budget = AgentBudget(max_subagents=2)
    (orch,) = agents.generate([scripted(turn)], SamplingConfig(n=1, max_tokens=4, seed=0))
    assert error_lines(orch)[:3] == [f"[error: budget: at most 2 sub-agents per task; '{n}' was not run]"
                                     for n in "cde"]
    assert orch.meta["agents"]["subagents"] == 2 and orch.meta["agents"]["budget"]["subagents"] == 2


def test_budget_reservations_return_what_a_sub_agent_did_not_use():
    budget = Budget(max_subagents=0, max_tokens=30)
    assert budget.admit("a", 20) is None and budget.admit("b", 20).kind == "over_budget"
    budget.settle(20, 7)  # a used 7 of its 20
    assert budget.admit("b", 20) is None and budget.tokens == 7 and budget.reserved == 20
    budget.release(20)  # b never ran (its task was too long)
    assert budget.summary() == {"max_subagents": 0, "max_tokens": 30, "subagents": 1, "tokens": 7}


SPURIOUS = "[a: 4-4-4-4]\n[b: 4-8-8-4]\n[c: 4+4+4-4]\n[d: 4-4-4-4]\n[wait]"  # issue 21's trained orchestrator
FAITHFUL = "[a: 6-2-2-7]\n[b: 5-5+6-6]\n[c: 9+3+6+4]\n[d: 6-1+4+8]\n[wait]"
PARTS = [["6-2-2-7"], ["5-5+6-6"], ["9+3+6+4"], ["6-1+4+8"]]


@pytest.mark.parametrize(("turn", "faithful"), [(SPURIOUS, 0), (FAITHFUL, 4)])
def test_spurious_subagents_earn_no_parallel_reward(vllm_engine, tok, scripted, turn, faithful):
    cfg = AgentsConfig(enabled=True, max_rounds=1, subagent_max_tokens=6)
    agents = AgentEngine(vllm_engine, tok, cfg)
    (orch,) = agents.generate([scripted(turn, subtasks=PARTS)], SamplingConfig(n=1, max_tokens=4, seed=0))
    info = orch.meta["agents"]
    assert info["subagents"] == 4 and info["faithful_subagents"] == faithful
    assert agents.last_metrics["agents/subtask_fidelity"] == faithful / 4
    assert agents.last_metrics["agents/part_coverage"] == faithful / 4
    r = parl(orch, l1=0.5, l2=0.3, parallel_target=4)
    assert r["parallel"] == faithful / 4
    assert parl(orch, l1=0.5, l2=0.3, parallel_target=4, credit="all")["parallel"] == 1.0  # K2.5's pays all four


def test_fidelity_counts_each_part_once_and_knows_when_it_cannot_say():
    meta = {"subtasks": [["{a}-4", "-9-4"], ["1+2"]]}
    fid = FidelityTracker(subtasks, meta)
    assert fid.judge("1+2") is True and fid.judge("1 + 2") is False  # the same part twice: one faithful
    assert fid.judge("{a}-4", "-9-4") is True and fid.judge("7*7") is False
    assert (fid.faithful, fid.judged, fid.parts) == (2, 4, 2)
    blind = FidelityTracker(subtasks, {})
    assert blind.judge("1+2") is None and not blind.known and blind.parts is None


def test_recipe_roles_are_validated_with_the_key_named(tmp_path):
    from longcot.config import ConfigError, Recipe, load

    path = tmp_path / "r.yaml"
    path.write_text("agents:\n  subagents:\n    calc: {polcy: frozen}\n")
    with pytest.raises(ConfigError, match=r"unknown key 'agents.subagents.calc.polcy' \(did you mean 'policy'\?\)"):
        load(Recipe, path)
    path.write_text("agents:\n  subagents:\n    calc: {policy: frozen, recipe: s.yaml}\n    worker: {}\n"
                    "  default_role: worker\n  budget: {max_subagent_tokens: 400}\n")
    recipe = load(Recipe, path)
    assert recipe.agents.subagents["calc"] == SubagentRole(policy="frozen", recipe="s.yaml")
    assert recipe.agents.default == "worker" and recipe.agents.budget.max_subagent_tokens == 400
    with pytest.raises(ConfigError, match="default_role 'calc2' is not a role"):
        load(Recipe, path, ["agents.default_role=calc2"])
    with pytest.raises(ConfigError, match="need policy: frozen"):
        load(Recipe, path, ["agents.subagents.worker.path=x"])
