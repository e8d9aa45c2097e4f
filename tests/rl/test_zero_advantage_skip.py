"""``rl.skip_zero_advantage``: samples of advantage 0 leave the forward/backward and the update stays the same."""

import pytest
import torch

from longcot.config import load_recipe
from longcot.policies.build import build_tiny_moe
from longcot.policies.load import load_policy, load_tokenizer
from longcot.record import Trajectory, carries_signal
from longcot.rl.advantages import assign_advantages
from longcot.rl.learner import Learner
from longcot.rl.losses import zero_advantage_skip_blocker


@pytest.fixture(scope="module")
def policy(tmp_path_factory):
    path = build_tiny_moe(tmp_path_factory.mktemp("m"))
    return path, load_tokenizer(path)


def batch(advantages: list[float]) -> list[Trajectory]:
    """One sample per advantage, of different lengths (so micro-batches and denominators differ)."""
    return [Trajectory(prompt_id=str(i), group_id=str(i), prompt_ids=[1, 40 + i],
                       response_ids=list(range(10, 14 + 2 * i)), rollout_logprobs=[], advantage=a)
            for i, a in enumerate(advantages)]


def updated(policy, advantages: list[float], *overrides: str) -> tuple[torch.Tensor, dict, Learner]:
    """(the gradient the optimizer step saw, the update's metrics, the learner). The gradient, not the weights:
    Adam turns a 1e-12 rounding difference in a parameter's near-zero gradient into a step of up to lr."""
    path, tok = policy
    torch.manual_seed(0)
    recipe = load_recipe(None, ["rl.micro_batch_size=2", *overrides])
    learner = Learner(load_policy(path), tok, recipe)
    seen = []
    learner.optimizer.register_step_pre_hook(lambda opt, *_: seen.append(torch.cat(
        [p.grad.flatten() if p.grad is not None else torch.zeros(p.numel()) for g in opt.param_groups
         for p in g["params"]])))
    m = learner.update(batch(advantages))
    return seen[0], m, learner


@pytest.mark.parametrize("aggregation", ["token-mean", "seq-mean-token-mean"])
def test_skipping_zero_advantage_samples_gives_the_same_update(policy, aggregation):
    advantages = [1.0, 0.0, -1.0, 0.0, 0.0, 0.5]
    skip, m_skip, learner = updated(policy, advantages, f"rl.aggregation={aggregation}")
    full, m_full, _ = updated(policy, advantages, f"rl.aggregation={aggregation}", "rl.skip_zero_advantage=false")
    assert learner.skips_zero_advantage
    assert m_skip["zero_advantage_skipped_frac"] == pytest.approx(0.5) and m_full["zero_advantage_skipped_frac"] == 0
    assert full.abs().max() > 1e-3  # a real gradient
    torch.testing.assert_close(skip, full, rtol=0, atol=1e-5 * full.abs().max().item())  # float32 summation order
    assert m_skip["loss"] == pytest.approx(m_full["loss"], abs=1e-7)
    assert m_skip["grad_norm"] == pytest.approx(m_full["grad_norm"], rel=1e-5)
    assert 0 < m_skip["entropy"] < 10  # a mean over the trained tokens, not shrunk by the skipped share


def test_a_batch_without_signal_still_takes_its_optimizer_step(policy):
    grad, m, learner = updated(policy, [0.0, 0.0, 0.0])
    assert m["zero_advantage_skipped_frac"] == 0.0 and learner.updates == 1 and not grad.any()


@pytest.mark.parametrize(("overrides", "reason"), [
    (["rl.loss.name=k15", "rl.updates_per_step=2"], "loss k15 is not registered as zero at A = 0"),
    (["rl.kl_coef=0.1"], "KL in the loss"), (["rl.entropy_coef=0.01"], "entropy bonus"),
    (["rl.skip_zero_advantage=false"], "rl.skip_zero_advantage=false")])
def test_no_skipping_where_a_zero_advantage_sample_still_has_a_gradient(policy, overrides, reason):
    """k15's (tau/2) log-ratio^2 term, KL to the reference and the entropy bonus do not scale with A."""
    _, m, learner = updated(policy, [1.0, 0.0], *overrides)
    assert not learner.skips_zero_advantage and m["zero_advantage_skipped_frac"] == 0.0
    assert zero_advantage_skip_blocker(learner.rl) == reason
    assert zero_advantage_skip_blocker(load_recipe(None, ["rl.kl_coef=0.1", "rl.kl_in=reward"]).rl) is None


@pytest.mark.parametrize("estimator", ["grpo", "dr_grpo", "rloo", "k15"])
def test_a_group_of_equal_rewards_gets_exactly_zero(estimator):
    def sample(group: str, reward: float) -> Trajectory:
        return Trajectory(prompt_id=group, group_id=group, prompt_ids=[1], response_ids=[2], rollout_logprobs=[],
                          reward=reward)

    trajs = [sample("g", 0.1) for _ in range(8)] + [sample("h", 0.1), sample("h", 0.7)]
    assign_advantages(trajs, estimator)
    assert [t.advantage for t in trajs[:8]] == [0.0] * 8 and not any(carries_signal(t) for t in trajs[:8])
    assert all(carries_signal(t) for t in trajs[8:])


def test_carries_signal_reads_per_token_advantages_under_the_mask():
    t = Trajectory(prompt_id="p", group_id="g", prompt_ids=[1], response_ids=[2, 3, 4], rollout_logprobs=[],
                   advantage=[0.0, 0.3, 0.0], loss_mask=[1, 0, 1])
    assert not carries_signal(t)
    t.loss_mask = [1, 1, 1]
    assert carries_signal(t)
