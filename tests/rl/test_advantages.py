"""Advantage estimators against values worked out by hand from the formulas (DESIGN.md section 4)."""

import math

import pytest
import torch

from longcot.record import Trajectory
from longcot.rl.advantages import ADVANTAGES, assign_advantages

R = torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64)


def close(a, b, tol=1e-6):
    assert torch.allclose(torch.as_tensor(a, dtype=torch.float64), torch.tensor(b, dtype=torch.float64), atol=tol), a


def test_grpo_by_hand():
    # mean 2, population std sqrt(((-1)^2 + 0 + 1^2) / 3) = sqrt(2/3) = 0.816497; A = (R - 2) / 0.816497
    s = math.sqrt(2 / 3)
    close(ADVANTAGES.get("grpo")(R, eps=0.0), [-1 / s, 0.0, 1 / s])


def test_dr_grpo_by_hand():
    # R - mean = [1-2, 2-2, 3-2]; no std
    close(ADVANTAGES.get("dr_grpo")(R), [-1.0, 0.0, 1.0])


def test_rloo_by_hand():
    # A_1 = 1 - (2+3)/2 = -1.5; A_2 = 2 - (1+3)/2 = 0; A_3 = 3 - (1+2)/2 = 1.5
    close(ADVANTAGES.get("rloo")(R), [-1.5, 0.0, 1.5])


def test_k15_mean_baseline_by_hand():
    # r_bar = (1+0+0+0)/4 = 0.25 -> [0.75, -0.25, -0.25, -0.25]
    close(ADVANTAGES.get("k15")(torch.tensor([1.0, 0.0, 0.0, 0.0])), [0.75, -0.25, -0.25, -0.25])


def test_reinforce_pp_group_stage_by_hand():
    close(ADVANTAGES.get("reinforce_pp")(R), [-1.0, 0.0, 1.0])


@pytest.mark.parametrize("name", ["grpo", "dr_grpo", "rloo", "k15", "reinforce_pp"])
def test_equal_rewards_give_zero(name):
    close(ADVANTAGES.get(name)(torch.tensor([0.7, 0.7, 0.7, 0.7])), [0.0] * 4)


@pytest.mark.parametrize("name", ["grpo", "dr_grpo", "rloo", "k15", "reinforce_pp"])
def test_single_sample_group_gives_zero(name):
    close(ADVANTAGES.get(name)(torch.tensor([1.0])), [0.0])


def _trajs(groups_rewards):
    out = []
    for g, rewards in enumerate(groups_rewards):
        for i, r in enumerate(rewards):
            out.append(Trajectory(prompt_id=f"p{g}", group_id=f"g{g}", prompt_ids=[1], response_ids=[2, 3],
                                  rollout_logprobs=[-1.0, -1.0], reward=r, meta={"i": i}))
    return out


def test_reinforce_pp_batch_normalisation_by_hand():
    # group-centred: g0 [1,0] -> [0.5, -0.5]; g1 [1,1,1,0] (mean 0.75) -> [0.25, 0.25, 0.25, -0.75]
    # every response has 2 tokens: token-weighted = sample-weighted here. batch mean = 0,
    # var = (0.25 + 0.25 + 3 * 0.0625 + 0.5625) / 6 = 1.25 / 6; std = 0.4564355
    trajs = _trajs([[1.0, 0.0], [1.0, 1.0, 1.0, 0.0]])
    assign_advantages(trajs, "reinforce_pp", eps=0.0)
    std = math.sqrt(1.25 / 6)
    close([t.advantage for t in trajs], [0.5 / std, -0.5 / std, 0.25 / std, 0.25 / std, 0.25 / std, -0.75 / std])


def test_reinforce_pp_whitens_over_tokens_not_samples():
    # group [1, 0] centred -> [0.5, -0.5]; the first response has 3 tokens, the second 1 (OpenRLHF/verl: every
    # token carries its sequence's advantage and the batch is whitened over tokens).
    # token mean = (3 * 0.5 - 0.5) / 4 = 0.25; token var = (3 * 0.0625 + 0.5625) / 4 = 0.1875
    trajs = _trajs([[1.0, 0.0]])
    trajs[0].response_ids, trajs[0].rollout_logprobs = [2, 3, 4], [-1.0] * 3
    trajs[1].response_ids, trajs[1].rollout_logprobs = [2], [-1.0]
    assign_advantages(trajs, "reinforce_pp", eps=0.0)
    std = math.sqrt(0.1875)
    close([t.advantage for t in trajs], [0.25 / std, -0.75 / std])
    tokens = [t.advantage for t in trajs for _ in t.response_ids]
    assert abs(sum(tokens) / 4) < 1e-12  # token-level mean 0 ...
    assert abs(sum(a * a for a in tokens) / 4 - 1.0) < 1e-12  # ... and unit variance


def test_assign_advantages_groups_independently():
    # g0: rloo of [1, 0] = [1 - 0, 0 - 1] = [1, -1]; g1 all equal -> 0
    trajs = _trajs([[1.0, 0.0], [0.5, 0.5]])
    assign_advantages(trajs, "rloo")
    assert [t.advantage for t in trajs] == [1.0, -1.0, 0.0, 0.0]


def test_assign_advantages_unknown_option_names_key():
    with pytest.raises(KeyError, match=r"unknown option 'esp'.*did you mean 'eps'"):
        assign_advantages(_trajs([[1.0, 0.0]]), "grpo", esp=1e-3)
    with pytest.raises(KeyError, match="unknown option 'eps'"):
        assign_advantages(_trajs([[1.0, 0.0]]), "rloo", eps=1e-3)


def test_unknown_estimator_suggests_name():
    with pytest.raises(KeyError, match="did you mean 'rloo'"):
        ADVANTAGES.get("rlo")
