"""Training states on disk (atomic, verified, pruned), sampler state, and what may change on resume (fast)."""

from __future__ import annotations

import logging

import pytest
import torch

from longcot.config import load_recipe
from longcot.data.samplers import make_sampler
from longcot.policies.build import build_tiny_moe
from longcot.policies.load import load_policy, load_tokenizer
from longcot.record import Trajectory
from longcot.rl.learner import Learner
from longcot.run.resume import unsafe_changes
from longcot.run.state import StateError, load_latest, save_state


@pytest.fixture(scope="module")
def learner(tmp_path_factory) -> Learner:
    path = build_tiny_moe(tmp_path_factory.mktemp("m"))
    recipe = load_recipe(None, ["rl.lr=0.01"])
    lrn = Learner(load_policy(path), load_tokenizer(path), recipe)
    trajs = [Trajectory("p", "g", [1, 5, 6], [7, 8, 9], [], advantage=a) for a in (1.0, -1.0)]
    lrn.update(trajs)  # a real optimizer step: the state has moments to save
    return lrn


def test_state_round_trip_and_pruning(tmp_path, learner):
    for step in (1, 2, 3):
        save_state(tmp_path, step, learner, {"marker": step}, keep=2)
    assert sorted(p.name for p in tmp_path.glob("step-*")) == ["step-00000002", "step-00000003"]
    state = load_latest(tmp_path)
    assert state.step == 3 and state.loop["marker"] == 3 and state.learner["version"] == learner.version == 1
    saved = state.learner["optimizer"]["state"]  # keyed by parameter name (the same for every trainer strategy)
    opt = learner.optimizer.state
    live = {name: opt[p] for name, p in learner.scorer.named_parameters() if p in opt}
    assert live and saved.keys() == live.keys()
    assert all(torch.equal(saved[k]["exp_avg"], live[k]["exp_avg"]) for k in live)
    assert (state.policy_path / "config.json").is_file() and (state.policy_path / "tokenizer.json").is_file()


def test_torn_latest_is_skipped_with_the_file_named(tmp_path, learner, caplog):
    for step in (4, 5):
        save_state(tmp_path, step, learner, {"marker": step}, keep=0)
    torn = tmp_path / "step-00000005" / "loop.pkl"
    torn.write_bytes(torn.read_bytes()[:-3])
    with caplog.at_level(logging.WARNING):
        state = load_latest(tmp_path)
    assert state.step == 4
    assert f"{torn}:" in caplog.text and "truncated or torn write" in caplog.text
    flipped = tmp_path / "step-00000004" / "learner.pt"
    data = bytearray(flipped.read_bytes())
    data[100] ^= 0xFF  # same size, different content: only the hash can tell
    flipped.write_bytes(bytes(data))
    with pytest.raises(StateError, match="none of the 2 training states is usable"):
        load_latest(tmp_path)
    assert "does not match its SHA-256" in caplog.text


def test_no_state_yet_and_leftover_temporary_dirs(tmp_path, learner):
    assert load_latest(tmp_path / "none") is None
    (tmp_path / ".tmp-step-00000009-1").mkdir(parents=True)  # a writer killed mid-write
    save_state(tmp_path, 1, learner, {}, keep=2)
    assert not list(tmp_path.glob(".tmp-*")) and load_latest(tmp_path).step == 1


@pytest.mark.parametrize("name,options", [("uniform", {}), ("prioritized", {"ema": 0.5}),
                                          ("curriculum", {"start_fraction": 0.5, "ramp_steps": 3})])
def test_sampler_state_restores_the_exact_draws(name, options):
    rows = [{"id": str(i), "difficulty": i % 5} for i in range(30)]
    a = make_sampler(name, rows, seed=3, **options)
    for _ in range(4):
        ids = a.sample(7)
        a.update([str(i) for i in ids], [i % 2 == 0 for i in ids])
    state = a.state_dict()
    want = [a.sample(7) for _ in range(5)]
    b = make_sampler(name, rows, seed=99, **options)
    b.load_state_dict(state)
    assert [b.sample(7) for _ in range(5)] == want
    with pytest.raises(ValueError, match="the training data changed"):
        make_sampler(name, rows[:10], **options).load_state_dict(state)


def test_only_safe_keys_may_change_on_resume():
    from longcot.config import to_dict

    saved = to_dict(load_recipe(None, ["rl.steps=10"]))
    assert unsafe_changes(saved, load_recipe(None, ["rl.steps=20", "threads=1", "name=moved", "eval.every=5"])) == []
    layout = ["trainer.strategy=fsdp", "trainer.ranks=8", "cluster.trainer_gpus=8", "cluster.address=auto"]
    assert unsafe_changes(saved, load_recipe(None, ["rl.steps=10", *layout])) == []  # where it runs, not what
    assert unsafe_changes(saved, load_recipe(None, ["rl.steps=10", "cluster.rollout_workers=2"])) == []
    assert [k for k, _, _ in unsafe_changes(saved, load_recipe(None, ["trainer.precision=bf16-mixed",
                                                                     "cluster.prompts_per_call=4"]))] == \
        ["cluster.prompts_per_call", "trainer.precision"]
    new = load_recipe(None, ["rl.lr=0.5", "rl.loss={name: ppo_clip, options: {clip_high: 0.3}}"])
    changes = unsafe_changes(saved, new)
    assert ("rl.lr", 0.001, 0.5) in changes and ("rl.loss.options.clip_high", "<unset>", 0.3) in changes


def test_resumed_trainer_continues_dynamic_sampling_and_curriculum_exactly(tmp_path):
    """In-process with the HF engine: 4 steps straight vs 2 steps, a state, a fresh trainer and engine restored
    from it, 2 more steps. Dynamic sampling's refill rounds and the curriculum's position carry over exactly."""
    from longcot.data import build_task
    from longcot.data.prompts import PromptSource
    from longcot.rewards.registry import RewardSpec
    from longcot.rl.trainer import RLTrainer
    from longcot.rollout.hf import HFEngine
    from longcot.run import RunDir
    from longcot.run.checkpoint import restore_training_state, save_training_state

    path = build_tiny_moe(tmp_path / "m")
    tok = load_tokenizer(path)
    recipe = load_recipe(None, ["rollout.n=4", "rollout.max_tokens=8", "rl.prompts_per_step=3", "rl.lr=0.02",
                                "rl.dynamic_sampling=true", "data.num_train=60", "data.num_heldout=8",
                                "eval.num_problems=8", "data.sampler=curriculum",
                                "data.sampler_options={ramp_steps: 3}"])
    recipe.rewards = [RewardSpec("k15_length")]  # lengths differ within a group: informative groups exist
    task = build_task(recipe.data)

    def fresh():
        prompts = PromptSource(recipe, task, tok)
        model = load_policy(path)
        return RLTrainer(model, tok, HFEngine.from_module(model, tok, share=False), recipe, prompts.next_prompts,
                         prompts.on_results), prompts

    straight, _ = fresh()
    want = [straight.step(k)[0] for k in range(4)]
    first, prompts = fresh()
    rows = [first.step(k)[0] for k in range(2)]
    run = RunDir(tmp_path / "run")
    save_training_state(first, prompts, run, 2, keep=1)
    second, prompts2 = fresh()
    assert restore_training_state(second, prompts2, run, load_latest(run.states)) == 2
    rows += [second.step(k)[0] for k in range(2, 4)]
    keys = ("reward_mean", "grad_norm", "response_tokens", "dynamic/rounds", "dynamic/kept_fraction")
    assert [{k: r.get(k) for k in keys} for r in rows] == [{k: r.get(k) for k in keys} for r in want]
    a, b = straight.learner.unwrapped().state_dict(), second.learner.unwrapped().state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
