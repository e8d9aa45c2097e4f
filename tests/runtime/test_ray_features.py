"""Partial rollouts, dynamic sampling and agent rollouts in the Ray runtime, each a short ``longcot train`` on one
Ray instance shared by the module (the buffers, the filtering and the agent driver live in the driver; generation
and evaluation on the workers)."""

import os
import random
from pathlib import Path

import pytest
from raytest import ROOT, local_ray, rows

from longcot.config import load_recipe
from longcot.pipeline import train
from longcot.rewards.registry import REWARDS, reward

pytestmark = pytest.mark.slow
SMALL = ["threads=1", "sft.enabled=false", "rl.prompts_per_step=4", "rollout.n=4", "eval.num_problems=4", "eval.n=1",
         "data.num_heldout=8", "cluster.backend=ray", "rl.max_off_policy_steps=1",
         "rl.rollout_correction.rollout_is=token",
         "rollout.sync_check_every=1"]

if "test_coin_on_odd" not in REWARDS:

    @reward("test_coin_on_odd")
    def coin_on_odd(sample) -> float:
        """Even prompts: always 1 (an uninformative group); odd prompts: a coin flip per sample."""
        if int(sample.prompt_id.rsplit("-", 1)[-1]) % 2 == 0:  # arith ids: "train-<row>"
            return 1.0
        return float(random.Random(f"{sample.group_id}-{sample.response_ids}").random() < 0.5)


@pytest.fixture(scope="module", autouse=True)
def ray_instance():
    os.environ["LONGCOT_NO_PROGRESS"] = "1"
    with local_ray("lcray-f-"):
        yield


def run(tmp_path: Path, recipe: str, overrides: list[str]) -> tuple[dict, list[dict]]:
    r = load_recipe(ROOT / "recipes/tiny" / recipe, [*SMALL, f"out_dir={tmp_path}", "name=run", *overrides])
    return train(r), rows(tmp_path / "run")


def test_partial_rollouts_buffer_in_the_driver(tmp_path):
    summary, got = run(tmp_path, "arith-moe-partial.yaml", [
        "rl.steps=3", "data.num_train=200", "rollout.max_tokens=48", "eval.max_tokens=48", "partial.token_budget=16",
        "partial.repetition.enabled=false"])
    assert [r["step"] for r in got] == [0, 1, 2]
    assert all(r["async/batch_samples"] == 16 for r in got)
    assert max(r.get("partial/segments_per_traj", 0) for r in got) > 1  # samples were continued across versions
    assert all(r["async/staleness_max"] <= 1 for r in got)
    assert summary["eval"]["after_rl"]["n"] == 4


def test_resume_deals_the_partial_buffer_to_more_workers(tmp_path):
    """A finished Ray run with partial rollouts, saved by one worker, is extended (rl.steps 2 -> 4) on two: the
    unfinished samples buffered in the state are dealt to both, new prompts are drawn for the added steps (before,
    the prompt count left came from the old rl.steps and the run waited forever), and every step after the resume
    trains on a complete batch."""
    partial = ["data.num_train=200", "rollout.max_tokens=48", "eval.max_tokens=48", "partial.token_budget=16",
               "partial.repetition.enabled=false", "rl.checkpoint_every=1"]
    run(tmp_path, "arith-moe-partial.yaml", ["rl.steps=2", *partial])
    assert any(r["partial/buffered"] > 0 for r in rows(tmp_path / "run"))  # the state has a buffer to deal
    r = load_recipe(ROOT / "recipes/tiny/arith-moe-partial.yaml", [*SMALL, f"out_dir={tmp_path}", "name=run",
                                                                   "rl.steps=4", *partial, "cluster.rollout_workers=2",
                                                                   "cluster.worker_cpus=0.5"])  # the shared 2-CPU Ray
    train(r, resume=True)
    got = rows(tmp_path / "run")
    assert [x["step"] for x in got] == [0, 1, 2, 3]
    assert all(x["async/batch_samples"] == 16 and x["async/staleness_max"] <= 1 for x in got)
    assert "async/busy/worker1" in got[-1]  # the second worker took part


def test_dynamic_sampling_fills_the_batch_with_informative_groups(tmp_path):
    _, got = run(tmp_path, "arith-moe.yaml", [
        "rl.steps=2", "data.num_train=200", "rollout.max_tokens=16", "eval.max_tokens=16", "rl.dynamic_sampling=true",
        "rl.dynamic_max_extra_rounds=3", "rewards=[{name: test_coin_on_odd}]"])
    for r in got:
        assert 0.2 <= r["dynamic/kept_fraction"] <= 0.8
        assert r["dynamic/groups_short"] == 0 and r["async/batch_samples"] == 16


def test_agent_rollouts_on_the_workers(tmp_path):
    summary, got = run(tmp_path, "parl-arith.yaml", [
        "rl.steps=2", "rl.prompts_per_step=2", "rollout.n=2", "data.num_train=64", "rollout.max_tokens=64",
        "eval.max_tokens=64", "agents.subagent_max_tokens=32", "rl.checkpoint_every=0"])
    assert [r["step"] for r in got] == [0, 1]
    assert all("agents/critical_path_tokens_mean" in r and r["async/batch_samples"] >= 4 for r in got)
    assert "agents/critical_path_tokens_mean" in summary["eval"]["after_rl"]
    assert list((tmp_path / "run" / "agents" / "worker0").glob("*.jsonl"))  # agent trees from the training rollouts


def test_hf_engine_workers(tmp_path):
    _, got = run(tmp_path, "arith-moe.yaml", ["rl.steps=3", "data.num_train=200", "rollout.engine=hf",
                                              "rollout.max_tokens=16", "eval.max_tokens=16", "rl.entropy_coef=0.01"])
    assert [r["step"] for r in got] == [0, 1, 2] and all(r["async/batch_samples"] == 16 for r in got)
    checks = [r["sync_check/gap_max"] for r in got if "sync_check/gap_max" in r]
    assert checks and max(checks) < 1e-4  # the HF worker's copy follows the trainer too


def test_trainer_ranks_inside_the_trainer_actor(tmp_path):
    """trainer.strategy fsdp x 2 in Ray mode: the trainer actor starts the two ranks on its node, publishes the
    gathered full weights, and the workers' copy follows (docs/cluster.md, "The trainer as a group of ranks")."""
    summary, got = run(tmp_path, "arith-moe.yaml", ["rl.steps=3", "data.num_train=200", "rollout.max_tokens=16",
                                                    "eval.max_tokens=16", "rl.entropy_coef=0.01",
                                                    "trainer.strategy=fsdp", "trainer.ranks=2"])
    assert [r["step"] for r in got] == [0, 1, 2] and all(r["async/batch_samples"] == 16 for r in got)
    assert all(r["async/staleness_max"] <= 1 for r in got)
    checks = [r["sync_check/gap_max"] for r in got if "sync_check/gap_max" in r]
    assert checks and max(checks) < 1e-4
    assert (tmp_path / "run" / "checkpoints" / "final" / "config.json").is_file()
    assert summary["eval"]["after_rl"]["n"] == 4



def test_routing_replay_r3_on_the_workers(tmp_path):
    """R3 in Ray mode: the workers' vLLM engines return each token's experts with the samples and the trainer
    actor replays them (before, the loop never asked for them, and the update stopped: 'this batch carries no
    engine routing'); the weight-sync check on the trainer routes freely, as the workers' forward does."""
    _, got = run(tmp_path, "arith-moe.yaml", ["rl.steps=3", "data.num_train=200", "rollout.max_tokens=16",
                                              "eval.max_tokens=16", "rl.routing_replay=r3"])
    assert [r["step"] for r in got] == [0, 1, 2] and all(r["async/batch_samples"] == 16 for r in got)
    assert all("routing/agreement" in r for r in got)  # the trainer saw the engine's routing on every step
    checks = [r["sync_check/gap_max"] for r in got if "sync_check/gap_max" in r]
    assert checks and max(checks) < 1e-4


FROZEN = ["agents.subagents.calc.recipe=''", "agents.subagents.calc.engine=hf", "agents.subagents.calc.max_tokens=8",
          "agents.subagent_max_tokens=16", "agents.budget.max_subagent_tokens=64", "agents.default_role=calc"]


def test_frozen_role_is_served_by_its_checkpoint_in_each_worker(tmp_path):
    """A frozen sub-agent role (a fixed checkpoint that never gets weights) in Ray mode: each rollout worker builds
    its engine beside the policy's, and each worker's agent loop sends that role to the one in its own actor. The
    frozen checkpoint's greedy answers come back, not the policy's."""
    from longcot.policies.build import build_tiny_moe
    from longcot.policies.load import load_tokenizer
    from longcot.rollout.base import Prompt, SamplingConfig
    from longcot.rollout.hf import HFEngine
    from longcot.runtime.ray import RayRuntime

    policy, frozen = build_tiny_moe(tmp_path / "policy"), build_tiny_moe(tmp_path / "frozen", seed=1)
    recipe = load_recipe(ROOT / "recipes/tiny/parl-wide-specialist.yaml",
                         [*SMALL, "cluster.rollout_workers=2", "cluster.worker_cpus=0.5", f"out_dir={tmp_path}",
                          "name=run", f"agents.subagents.calc.path={frozen}", *FROZEN])
    tok = load_tokenizer(str(policy))
    prompts = [Prompt("p0", tok("Q: 7-2+4\n")["input_ids"]), Prompt("p1", tok("Q: 9-3\n")["input_ids"])]
    greedy = SamplingConfig(n=1, temperature=0.0, max_tokens=12, logprobs=False)
    runtime = RayRuntime(recipe, tmp_path / "run", str(policy), tok, 256, {})
    try:
        assert len(runtime.frozen) == 2 and runtime.frozen_roles == ["calc"]
        stacks = [runtime._agent_stack(w, i) for i, w in enumerate(runtime.workers)]
        assert [s.roles["calc"].engine for s in stacks] == runtime.frozen  # each worker's own frozen engine
        assert stacks[0].roles["worker"].engine is runtime.workers[0]  # the shared role: the policy
        served = [[t.response_ids for t in f.generate(prompts, greedy)] for f in runtime.frozen]
        policy_out = [t.response_ids for t in runtime.workers[0].generate(prompts, greedy)]
    finally:
        runtime.shutdown()
    local = [t.response_ids for t in HFEngine(str(frozen), tok).generate(prompts, greedy)]
    assert served == [local, local] and policy_out != local


def test_frozen_role_run_finishes(tmp_path):
    """The parl-wide-specialist recipe in Ray mode with its frozen role (refused before): the run trains and
    evaluates with the frozen engines up beside the policy's."""
    from longcot.policies.build import build_tiny_moe

    frozen = build_tiny_moe(tmp_path / "frozen", seed=1)
    summary, got = run(tmp_path, "parl-wide-specialist.yaml", [
        "rl.steps=2", "rl.prompts_per_step=2", "rollout.n=2", "data.num_train=16", "rollout.max_tokens=32",
        "eval.max_tokens=32", "rl.checkpoint_every=0", f"agents.subagents.calc.path={frozen}", *FROZEN])
    assert [r["step"] for r in got] == [0, 1] and all(r["async/batch_samples"] >= 4 for r in got)
    assert summary["eval"]["after_rl"]["n"] == 4
