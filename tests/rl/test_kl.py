"""KL estimators and KL-in-the-reward against hand arithmetic."""

import math

import pytest
import torch

from longcot.record import Trajectory
from longcot.rl.kl import KL_ESTIMATORS, apply_kl_to_rewards, kl, kl_reward_penalty


def t(x):
    return torch.tensor(x, dtype=torch.float64)


@pytest.mark.parametrize("name,expected", [
    # d = logp - ref = [0.5, -0.5, 0]
    ("k1", [0.5, -0.5, 0.0]),                                               # d
    ("k2", [0.125, 0.125, 0.0]),                                            # d^2 / 2
    ("k3", [math.exp(-0.5) - 0.5, math.exp(0.5) - 1.5, 0.0]),              # e^-d - 1 + d = 0.106531, 0.148721, 0
])
def test_estimators_by_hand(name, expected):
    out = kl(name, t([-1.0, -1.5, -2.0]), t([-1.5, -1.0, -2.0]))
    assert torch.allclose(out, t(expected), atol=1e-9)


def test_k3_is_non_negative_and_k1_is_not():
    d = torch.linspace(-3, 3, 13, dtype=torch.float64)
    assert (KL_ESTIMATORS.get("k3")(d, torch.zeros_like(d)) >= 0).all()
    assert (KL_ESTIMATORS.get("k1")(d, torch.zeros_like(d)) < 0).any()


def test_unknown_estimator():
    with pytest.raises(KeyError, match="did you mean 'k3'"):
        kl("k4", t([0.0]), t([0.0]))


# rewards [1, 2, 3]; row 1: d = [0.5, 0], row 2: d = [0, -1] with the 2nd token masked, row 3: all masked
LP = t([[-1.0, -1.0], [-1.0, -2.0], [-1.0, -1.0]])
REF = t([[-1.5, -1.0], [-1.0, -1.0], [-3.0, -3.0]])
MASK = t([[1.0, 1.0], [1.0, 0.0], [0.0, 0.0]])
R = t([1.0, 2.0, 3.0])


def test_kl_in_reward_summed_by_hand():
    # row 1: 1 - 0.1 * (0.5 + 0) = 0.95; row 2: masked -1 ignored -> 2; row 3: all masked -> 3
    out = kl_reward_penalty(R, LP, REF, MASK, beta=0.1, estimator="k1")
    assert torch.allclose(out, t([0.95, 2.0, 3.0]))
    # k2: row 1 penalty 0.1 * 0.125
    assert torch.allclose(kl_reward_penalty(R, LP, REF, MASK, beta=0.1, estimator="k2"), t([1 - 0.0125, 2.0, 3.0]))


def test_kl_in_reward_per_token_by_hand():
    # row 1: [-0.1 * 0.5, -0.1 * 0 + R=1]; row 2: last live token is index 0: [0 + 2, 0]; row 3: no live token
    out = kl_reward_penalty(R, LP, REF, MASK, beta=0.1, per_token=True)
    assert torch.allclose(out, t([[-0.05, 1.0], [2.0, 0.0], [0.0, 0.0]]))
    # per-token sums equal the summed form wherever the row has a live token
    assert torch.allclose(out.sum(-1)[:2], kl_reward_penalty(R, LP, REF, MASK, beta=0.1)[:2])


def test_kl_in_reward_has_no_gradient():
    lp = LP.clone().requires_grad_(True)
    assert not kl_reward_penalty(R, lp, REF, MASK, beta=0.1).requires_grad


def test_apply_kl_to_rewards_on_trajectories():
    # rollout logprobs [-1, -1], ref [-1.5, -0.5] -> k1 sum = 0.5 - 0.5 = 0; k3 = (e^-0.5 - 0.5) + (e^0.5 - 1.5)
    tr = Trajectory(prompt_id="p", group_id="g", prompt_ids=[1], response_ids=[5, 6], rollout_logprobs=[-1.0, -1.0],
                    reward=1.0)
    apply_kl_to_rewards([tr], [[-1.5, -0.5]], beta=0.1, estimator="k1")
    assert tr.reward == pytest.approx(1.0) and tr.rewards["kl_penalty"] == pytest.approx(0.0)
    apply_kl_to_rewards([tr], [[-1.5, -0.5]], beta=0.1, estimator="k3")
    pen = 0.1 * (math.exp(-0.5) - 0.5 + math.exp(0.5) - 1.5)
    assert tr.reward == pytest.approx(1.0 - pen) and tr.rewards["kl_penalty"] == pytest.approx(-pen)
    with pytest.raises(ValueError, match="trajectory 0 .* 2 rollout log-probs but 1 reference"):
        apply_kl_to_rewards([tr], [[-1.0]], beta=0.1)
