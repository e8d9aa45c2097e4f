"""``rl.old_logprobs``: pi_old in the policy ratio from the trainer (default) or from the engine's log-probs
(behaviour-policy PPO, one of the two off-policy corrections of ``rl.max_off_policy_steps``)."""

import pytest
import torch

from longcot.config import load_recipe
from longcot.policies.build import build_tiny_moe
from longcot.policies.load import load_policy, load_tokenizer
from longcot.record import Trajectory
from longcot.rl.learner import Learner
from longcot.rl.trainer import wants_rollout_logprobs


@pytest.fixture(scope="module")
def policy(tmp_path_factory):
    path = build_tiny_moe(tmp_path_factory.mktemp("m"))
    return path, load_tokenizer(path)


def batch(learner: Learner, shift: float) -> list[Trajectory]:
    """Two samples with advantage +1, their engine log-probs = the trainer's own minus ``shift``."""
    trajs = [Trajectory(prompt_id=str(i), group_id=str(i), prompt_ids=[1, 40 + i], response_ids=list(range(10, 20)),
                        rollout_logprobs=[], advantage=1.0) for i in range(2)]
    for t, lp in zip(trajs, learner.policy_logprobs(trajs), strict=True):
        t.rollout_logprobs = [x - shift for x in lp]
    return trajs


def weights(learner: Learner) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in learner.model.parameters()])


@pytest.mark.parametrize("old", ["trainer", "engine"])
def test_pi_old_source(policy, old):
    path, tok = policy
    torch.manual_seed(0)
    recipe = load_recipe(None, [f"rl.old_logprobs={old}", "rl.lr=1e-2", "rollout.temperature=1.0"])
    learner = Learner(load_policy(path), tok, recipe)
    before = weights(learner)
    m = learner.update(batch(learner, shift=1.0))  # engine log-probs 1 nat below: ratio e^1 against the engine
    moved = (weights(learner) - before).abs().max().item()
    if old == "trainer":  # on-policy ratio 1: nothing clipped, the update moves the weights
        assert m["clip_frac"] == 0.0 and moved > 1e-4
    else:  # ratio e^1 > 1 + 0.2 with A > 0: every token clipped, no gradient
        assert m["clip_frac"] == 1.0 and moved == 0.0


def test_engine_pi_old_needs_engine_logprobs_on_every_step(policy):
    path, tok = policy
    recipe = load_recipe(None, ["rl.old_logprobs=engine", "rollout.logprobs_every=10"])
    assert all(wants_rollout_logprobs(recipe, s) for s in range(3))
    off = load_recipe(None, ["rl.max_off_policy_steps=1", "rl.rollout_correction.rollout_is=token",
                             "rollout.logprobs_every=0"])
    assert wants_rollout_logprobs(off, 1)
    learner = Learner(load_policy(path), tok, recipe)
    trajs = batch(learner, 0.0)
    for t in trajs:
        t.rollout_logprobs = []
    with pytest.raises(ValueError, match="engine log-probs"):
        learner.update(trajs)
