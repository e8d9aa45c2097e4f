"""Compound arithmetic traces (serial and decomposed) and the PARL reward terms with their annealing."""

from __future__ import annotations

import random
import re

import pytest

from longcot.agents.protocol import parse_turn, substitute, validate, waves
from longcot.config.schema import DataConfig
from longcot.data import build_task
from longcot.data.arith import evaluate_expression
from longcot.data.compound import (
    CompoundSpec,
    decomposed_turns,
    make_compound,
    make_compound_split,
    serial_solution,
    sft_pairs,
    subagent_solution,
)
from longcot.record import AgentInfo, Segment, Trajectory
from longcot.rewards.parl import annealed, parl
from longcot.rewards.registry import RewardSpec, compute_rewards

STEP = re.compile(r"^(-?\d+)([+*-])(\d+)=(-?\d+)$")


def check_steps(text: str) -> None:
    for line in text.splitlines():
        if m := STEP.match(line):
            a, op, b, c = int(m[1]), m[2], int(m[3]), int(m[4])
            assert {"+": a + b, "-": a - b, "*": a * b}[op] == c, line


@pytest.mark.parametrize("spec", [CompoundSpec(), CompoundSpec(ops="+-", dep_prob=0.5, min_parts=2, max_parts=6),
                                  CompoundSpec(ops="+-", dep_prob=0.0, min_parts=3, max_parts=8, combine="tuple"),
                                  CompoundSpec(ops="+-", dep_prob=0.0, min_parts=12, max_parts=12, combine="tuple")])
def test_traces_are_correct_and_decompositions_follow_the_protocol(spec):
    rng = random.Random(0)
    for _ in range(200):
        row = make_compound(rng, spec)
        serial = serial_solution(row, spec)
        assert serial.endswith(f"\\boxed{{{row['answer']}}}")
        check_steps(serial)
        first, obs, final = decomposed_turns(row)
        turn = parse_turn(first)
        assert turn.waited and not turn.problems
        accepted, problems = validate(turn.spawns, set(), cap=16)
        assert not problems and [s.name for s in accepted] == [p["name"] for p in row["parts"]]
        values = {p["name"]: str(p["value"]) for p in row["parts"]}
        plan = waves(accepted, set())
        for spawn in accepted:  # a sub-agent given its dependencies' answers solves its part
            expr = substitute(spawn.task, values)
            assert evaluate_expression(expr) == int(values[spawn.name])
            assert subagent_solution(expr, spec).endswith(f"\\boxed{{{values[spawn.name]}}}")
            if spawn.deps:
                assert all(spawn not in w for w in plan[:1])
        assert obs == "\n" + "".join(f"[{n} = {v}]\n" for n, v in values.items())
        assert final.endswith(f"\\boxed{{{row['answer']}}}")
        check_steps(final)
        if spec.combine == "tuple":  # the wide task's answer lists every part, in order, graded as a tuple
            assert row["answer"] == "(" + ", ".join(values.values()) + ")" and final == f"\\boxed{{{row['answer']}}}"


def test_sft_pairs_never_train_on_observations():
    spec = CompoundSpec(decomposed_frac=0.5)
    train, held = make_compound_split(spec, 60, 20, seed=1)
    assert not {r["problem"] for r in train} & {r["problem"] for r in held}
    pairs = sft_pairs(train, lambda row: f"Q: {row['problem']}\n", spec)
    n_dec = sum(r["decompose"] for r in train)
    assert 0 < n_dec < len(train)
    assert len(pairs) == (len(train) - n_dec) + sum(2 + len(r["parts"]) for r in train if r["decompose"])
    for _, completion in pairs:
        assert not re.search(r"\[\w+ = ", completion)  # results only ever appear in prompts
    second_turns = [p for p, _ in pairs if "[wait]" in p]
    assert len(second_turns) == n_dec and all(re.search(r"\[a = -?\d+\]", p) for p in second_turns)


def test_subtasks_name_every_part_and_roles_are_written_into_directives():
    from longcot.agents.fidelity import subtasks as check

    spec = CompoundSpec(ops="+-", dep_prob=0.5, min_parts=3, max_parts=5, roles="worker,calc")
    rng = random.Random(3)
    rows = [make_compound(rng, spec) for _ in range(50)]
    for row in rows:
        first, _, _ = decomposed_turns(row)
        spawns = parse_turn(first).spawns
        # the first role is the default: its directives name no role
        assert [s.role for s in spawns] == [None if r == "worker" else r for r in row["roles"]]
        values = {p["name"]: str(p["value"]) for p in row["parts"]}
        for j, s in enumerate(spawns):  # the decomposition's own tasks are the parts, as written and resolved
            assert check(row, s.task) == j and check(row, substitute(s.task, values)) == j
    assert {r for row in rows for r in row["roles"]} == {"worker", "calc"}
    plain = make_compound(random.Random(3), CompoundSpec(ops="+-", dep_prob=0.5, min_parts=3, max_parts=5))
    assert plain["problem"] == rows[0]["problem"] and "roles" not in plain  # roles do not change the problems


def test_build_task_compound_and_unknown_option():
    task = build_task(DataConfig(task="compound", template="Q: {problem}\n", num_train=30, num_heldout=5,
                                 task_options={"min_parts": 2, "max_parts": 2}))
    assert len(task.train) == 30 and all(len(r["parts"]) == 2 for r in task.train) and task.sft_pairs
    with pytest.raises(KeyError, match="unknown compound option.*'parts'"):
        build_task(DataConfig(task="compound", task_options={"parts": 3}))


def orchestrator(text: str, spawned: int, finished: int, version: int, finish: str = "stop",
                 faithful: int | None = None, faithful_finished: int = 0, subagent_tokens: int = 0) -> Trajectory:
    info = {"subagents": spawned, "finished_subagents": finished, "subagent_tokens": subagent_tokens}
    if faithful is not None:
        info |= {"faithful_subagents": faithful, "faithful_finished": faithful_finished}
    return Trajectory("p", "p@0", [1], [5] * 4, [0.0] * 4, finish=finish, response_text=text,
                      segments=[Segment(0, 4, version)], agent=AgentInfo("orchestrator"),
                      meta={"answer": "42", "agents": info})


def test_parl_terms_and_annealing_k25_credit():
    r = parl(orchestrator("[a = 40]\n40+2=42\n\\boxed{42}", spawned=3, finished=2, version=0),
             l1=0.5, l2=0.3, anneal_steps=20, parallel_target=4, credit="all")
    assert r == pytest.approx({"parl": 1 + 0.5 * 0.75 + 0.3 * 2 / 3, "outcome": 1.0, "parallel": 0.75,
                               "finish": 2 / 3, "cost": 0.0, "l1": 0.5, "l2": 0.3, "l3": 0.0})
    half = parl(orchestrator("\\boxed{41}", spawned=8, finished=8, version=10), l1=0.5, l2=0.3, anneal_steps=20,
                parallel_target=4, credit="all")
    assert half["outcome"] == 0 and half["parallel"] == 1 and half["parl"] == pytest.approx(0.25 + 0.15)
    late = parl(orchestrator("\\boxed{42}", spawned=8, finished=8, version=25), anneal_steps=20, credit="all")
    assert late["parl"] == 1.0 and late["l1"] == late["l2"] == 0.0  # shaping annealed away: outcome only
    serial = parl(orchestrator("\\boxed{42}", spawned=0, finished=0, version=0, faithful=0))
    assert (serial["parallel"], serial["finish"]) == (0.0, 0.0)
    assert parl(orchestrator("\\boxed{42}", 2, 2, 0, finish="length", faithful=2))["outcome"] == 0.0
    assert [annealed(1.0, s, 4) for s in (0, 1, 4, 9)] == [1.0, 0.75, 0.0, 0.0] and annealed(1.0, 99, 0) == 1.0


def test_faithful_credit_pays_only_parts_and_outcome_credit_only_right_answers():
    # 4 sub-agents, all finished, one of them a part of the problem
    spurious = orchestrator("\\boxed{41}", spawned=4, finished=4, version=0, faithful=1, faithful_finished=1)
    r = parl(spurious, l1=0.5, l2=0.3, parallel_target=4)
    assert (r["parallel"], r["finish"]) == (0.25, 0.25) and r["parl"] == pytest.approx(0.5 * 0.25 + 0.3 * 0.25)
    assert parl(spurious, parallel_target=4, credit="outcome")["parl"] == 0.0  # wrong answer: no shaping at all
    right = orchestrator("\\boxed{42}", spawned=4, finished=4, version=0)
    assert parl(right, l1=0.5, l2=0.3, parallel_target=4, credit="outcome")["parl"] == pytest.approx(1.8)
    with pytest.raises(ValueError, match="credit='faithful' needs sub-task fidelity.*credit='outcome'"):
        parl(right)
    with pytest.raises(ValueError, match="credit must be one of"):
        parl(right, credit="some")
    plain = Trajectory("p", "p@0", [1], [5], [0.0], response_text="\\boxed{42}", meta={"answer": "42"})
    with pytest.raises(ValueError, match="agents.enabled"):
        parl(plain)


def test_cost_term_charges_subagent_tokens_and_anneals_on_its_own_schedule():
    sample = orchestrator("\\boxed{42}", spawned=2, finished=2, version=10, faithful=2, faithful_finished=2,
                          subagent_tokens=150)
    r = parl(sample, l1=0.0, l2=0.0, l3=0.4, cost_tokens=300, anneal_steps=20)
    assert r["cost"] == 0.5 and r["l3"] == pytest.approx(0.2) and r["parl"] == pytest.approx(1 - 0.2 * 0.5)
    constant = parl(sample, l1=0.0, l2=0.0, l3=0.4, cost_tokens=300, anneal_steps=20, cost_anneal_steps=0)
    assert constant["l3"] == 0.4 and constant["parl"] == pytest.approx(0.8)
    cheaper = orchestrator("\\boxed{42}", 2, 2, 10, faithful=2, faithful_finished=2, subagent_tokens=60)
    assert parl(cheaper, l3=0.4, cost_tokens=300, cost_anneal_steps=0)["parl"] > constant["parl"]
    with pytest.raises(ValueError, match="cost_tokens"):
        parl(sample, l3=0.4)


def test_parl_through_compute_rewards_logs_every_term_and_credits_subagents():
    sub = Trajectory("p", "p@0/sub", [1], [5], [0.0], response_text="\\boxed{40}", agent=AgentInfo("subagent", "p#0"),
                     meta={"answer": "42", "parent_response": "\\boxed{42}", "parent_finish": "stop"})
    trajs = [orchestrator("\\boxed{42}", 4, 4, 0, faithful=4, faithful_finished=4), sub]
    metrics = compute_rewards(trajs, [RewardSpec("parl", options={"l1": 0.5, "l2": 0.3})])
    assert trajs[0].reward == pytest.approx(1.8) and trajs[1].reward == 1.0  # sub-agent: its parent's outcome
    assert {"parl", "parl/outcome", "parl/parallel", "parl/finish", "parl/cost", "parl/l1", "parl/l2",
            "parl/l3"} <= set(trajs[0].rewards)
    assert metrics["reward_mean/parl/l1"] == pytest.approx(0.25)
