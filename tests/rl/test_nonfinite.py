"""A NaN or infinite gradient never reaches the weights: the optimizer step is dropped and counted, and a run whose
updates keep producing them stops with a message instead of training a NaN policy."""

import math

import pytest
import torch

from longcot.config import load_recipe
from longcot.policies.build import build_tiny_moe
from longcot.policies.load import load_policy, load_tokenizer
from longcot.record import Trajectory
from longcot.rl.learner import NONFINITE_LIMIT, Learner, NonFiniteGradientError


@pytest.fixture(scope="module")
def policy(tmp_path_factory):
    path = build_tiny_moe(tmp_path_factory.mktemp("m"))
    return path, load_tokenizer(path)


def batch(advantage: float) -> list[Trajectory]:
    return [Trajectory(prompt_id=str(i), group_id=str(i), prompt_ids=[1, 40 + i], response_ids=list(range(10, 20)),
                       rollout_logprobs=[], advantage=advantage) for i in range(2)]


def weights(learner: Learner) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in learner.model.parameters()])


def test_a_nan_gradient_is_dropped_and_a_streak_stops_the_run(policy):
    path, tok = policy
    learner = Learner(load_policy(path), tok, load_recipe(None, ["rl.lr=1e-2"]))
    before = weights(learner)
    m = learner.update(batch(float("nan")))
    assert m["nonfinite_grad_skips"] == 1.0 and math.isnan(m["grad_norm"])
    assert torch.equal(weights(learner), before) and learner.updates == 0  # untouched, no warm-up step counted
    assert all(torch.isfinite(v).all() for s in learner.optimizer.state.values() for v in s.values()
               if torch.is_tensor(v))
    m = learner.update(batch(1.0))  # a finite batch trains as usual and ends the streak
    assert m["nonfinite_grad_skips"] == 0.0 and learner.updates == 1
    assert torch.isfinite(weights(learner)).all() and not torch.equal(weights(learner), before)
    for _ in range(NONFINITE_LIMIT - 1):
        learner.update(batch(float("inf")))
    with pytest.raises(NonFiniteGradientError, match="3 updates in a row had non-finite gradients"):
        learner.update(batch(float("nan")))
    assert torch.isfinite(weights(learner)).all()
