"""RLTrainer options wired to the algorithm pieces: DAPO dynamic sampling, KL in the reward, length warm-up.

Driven directly with the HF engine and the untrained tiny MoE (seconds, no vLLM start).
"""

import random

import pytest
import torch

from longcot.config import load_recipe
from longcot.policies.build import build_tiny_moe
from longcot.policies.load import load_policy, load_tokenizer
from longcot.rewards.registry import REWARDS, RewardSpec, reward
from longcot.rl.trainer import RLTrainer
from longcot.rollout.base import Prompt
from longcot.rollout.hf import HFEngine

if "test_half_constant" not in REWARDS:

    @reward("test_half_constant")
    def half_constant(sample, seed: int = 0) -> float:
        """Even prompts: always 1 (an uninformative group). Odd prompts: a coin flip per sample."""
        if int(sample.prompt_id) % 2 == 0:
            return 1.0
        return float(random.Random(f"{seed}-{sample.group_id}-{sample.response_ids}").random() < 0.5)


@pytest.fixture(scope="module")
def policy(tmp_path_factory):
    path = build_tiny_moe(tmp_path_factory.mktemp("m"))
    return path, load_tokenizer(path)


def make_trainer(policy, overrides, rewards):
    path, tok = policy
    torch.manual_seed(0)
    recipe = load_recipe(None, ["rollout.n=4", "rollout.max_tokens=6", "rl.prompts_per_step=4", *overrides])
    recipe.rewards = rewards
    model = load_policy(path)
    engine = HFEngine.from_module(model, tok, share=True)
    counter = iter(range(10_000))

    def next_prompts(step, k):
        return [Prompt(str(i), tok(f"Q: {i}\n").input_ids, meta={"answer": "0"}) for i in
                (next(counter) for _ in range(k))]

    return RLTrainer(model, tok, engine, recipe, next_prompts)


def test_dynamic_sampling_keeps_only_informative_groups(policy):
    trainer = make_trainer(policy, ["rl.dynamic_sampling=true", "rl.dynamic_max_extra_rounds=3"],
                           [RewardSpec("test_half_constant")])
    row, trajs = trainer.step(0)
    assert 0.3 <= row["dynamic/kept_fraction"] <= 0.7
    assert row["dynamic/rounds"] >= 2  # half the groups are dropped, so at least one refill round
    assert len({t.group_id for t in trajs}) == 4 - row["dynamic/groups_short"]
    assert all(int(t.prompt_id) % 2 == 1 for t in trajs)
    assert any(t.group_id.endswith(".1") for t in trajs)  # refill rounds get their own group tags


def test_kl_in_reward_penalises_drift_from_reference(policy):
    trainer = make_trainer(policy, ["rl.kl_coef=0.5", "rl.kl_in=reward", "rl.lr=0.05"],
                           [RewardSpec("test_half_constant")])
    _, first = trainer.step(0)
    assert all(abs(t.rewards["kl_penalty"]) < 1e-4 for t in first)  # policy == reference at step 0
    _, second = trainer.step(1)
    assert min(t.rewards["kl_penalty"] for t in second) < -1e-3
    for t in second:
        assert t.reward == pytest.approx(t.rewards["test_half_constant"] + t.rewards["kl_penalty"])


def test_engine_logprobs_every_k_steps_unless_the_loss_needs_them(policy):
    trainer = make_trainer(policy, ["rollout.logprobs_every=2"], [RewardSpec("test_half_constant")])
    rows = [trainer.step(k) for k in range(3)]
    assert [bool(trajs[0].rollout_logprobs) for _, trajs in rows] == [True, False, True]
    assert [("logprob_gap" in row) for row, _ in rows] == [True, False, True]
    assert rows[0][0]["logprob_gap"] < 1e-4  # on-policy: engine and trainer agree
    tis = make_trainer(policy, ["rollout.logprobs_every=0", "rl.tis_cap=2.0"], [RewardSpec("test_half_constant")])
    rows = [tis.step(k) for k in range(2)]
    assert all(t.rollout_logprobs for _, trajs in rows for t in trajs if t.response_ids)
    assert all("rollout_logprob_gap" in row for row, _ in rows)


def test_length_penalty_weight_follows_warmup(policy):
    trainer = make_trainer(policy, ["rl.length_penalty_warmup=2"],
                           [RewardSpec("math"), RewardSpec("k15_length", weight=0.5)])
    weights = [[s.weight for s in trainer._reward_specs(step)] for step in range(4)]
    assert weights == [[1.0, 0.0], [1.0, 0.0], [1.0, 0.5], [1.0, 0.5]]


def test_dynamic_sampling_with_partial_rollouts_is_rejected():
    from longcot.config import ConfigError

    with pytest.raises(ConfigError, match="cannot be combined"):
        load_recipe(None, ["rl.dynamic_sampling=true", "partial.enabled=true", "rl.tis_cap=2"])
