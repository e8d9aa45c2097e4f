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
    tis = make_trainer(policy, ["rollout.logprobs_every=0", "rl.rollout_correction.rollout_is=token"],
                       [RewardSpec("test_half_constant")])
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
        load_recipe(None, ["rl.dynamic_sampling=true", "partial.enabled=true",
                           "rl.rollout_correction.rollout_is=token"])


def test_skipped_update_changes_no_version_sync_or_warmup(policy):
    """When dynamic sampling keeps no group, nothing is trained: the policy version, the engine's version and
    the learning-rate warm-up position stay where they were."""
    if "test_constant" not in REWARDS:
        reward("test_constant")(lambda sample: 1.0)
    trainer = make_trainer(policy, ["rl.dynamic_sampling=true", "rl.dynamic_max_extra_rounds=1",
                                    "rl.warmup_steps=4"], [RewardSpec("test_constant")])
    row, trajs = trainer.step(0)
    assert row["skipped_update"] == 1.0 and trajs == []
    assert row["policy_version"] == 0 and trainer.learner.updates == 0 and trainer.engine.version == 0
    assert "time/weight_sync" not in row


def test_reward_means_and_sampler_cover_every_round(policy):
    """Refill rounds: reward means are means over every scored sample (not summed per round), and the sampler
    hears about every scored group, also the uninformative ones that were dropped."""
    heard = []
    trainer = make_trainer(policy, ["rl.dynamic_sampling=true", "rl.dynamic_max_extra_rounds=3"],
                           [RewardSpec("test_half_constant")])
    trainer.on_results = heard.extend
    row, trajs = trainer.step(0)
    assert row["dynamic/rounds"] >= 2
    assert len(heard) == row["dynamic/groups_generated"] * 4 > len(trajs)
    assert any(int(t.prompt_id) % 2 == 0 for t in heard)  # dropped (always-1) groups reach the sampler
    assert row["reward_mean/test_half_constant"] == pytest.approx(
        sum(t.rewards["test_half_constant"] for t in heard) / len(heard))


class StaleHFEngine(HFEngine):
    """A real engine whose weight sync silently does nothing: the failure the canary exists for."""

    def sync_weights(self, named_params, version):
        self.version = version


def test_weight_sync_canary_logs_the_gap_and_stops_a_broken_sync(policy):
    path, tok = policy
    good = make_trainer(policy, ["rollout.sync_check_every=1", "rl.lr=0.05"], [RewardSpec("test_half_constant")])
    good.engine = HFEngine.from_module(good.learner.unwrapped(), tok, share=False)
    rows = [good.step(k)[0] for k in range(2)]
    assert all(r["sync_check/gap_mean"] < 1e-4 for r in rows)
    from longcot.rl.sync_check import WeightSyncError

    bad = make_trainer(policy, ["rollout.sync_check_every=1", "rl.lr=0.05"], [RewardSpec("test_half_constant")])
    bad.engine = StaleHFEngine.from_module(bad.learner.unwrapped(), tok, share=False)
    with pytest.raises(WeightSyncError, match="rollout.sync_check_max_gap"):
        for k in range(3):
            bad.step(k)


def test_partial_rollout_segments_get_fresh_seeds_without_exact_resume():
    """Off the CPU sampler (no exact resume), reusing the sample's seed would replay the first segment's random
    numbers in every later segment; each segment gets its own seed instead."""
    from longcot.rollout.partial import Request, VLLMBackend

    backend = VLLMBackend.__new__(VLLMBackend)
    req = lambda draws: Request("g", 0, 3, [1, 2, 3], 8, seed=77, draws=draws)
    backend.exact_resume = True
    assert {backend._seed(req(d)) for d in (0, 8, 16)} == {77}
    backend.exact_resume = False
    assert backend._seed(req(0)) == 77 and len({backend._seed(req(d)) for d in (0, 8, 16)}) == 3
