"""Rollout corrections and mismatch metrics (longcot.rl.rollout_correction) against hand-computed values, and
the learner applying them: dropped tokens leave the loss and its denominator."""

import math

import pytest
import torch

from longcot.config import ConfigError, load_recipe
from longcot.policies.build import build_tokenizer, tiny_moe_config
from longcot.record import Trajectory
from longcot.rl.learner import Learner
from longcot.rl.rollout_correction import mismatch_metrics, rejection_mask

# log rho = old - rollout = [[0, -0.8, 0.9, (pad)], [-0.05, 0.1, (pad), (pad)]]
OLD = torch.tensor([[0.0, -1.0, -2.0, 0.0], [-0.5, -0.5, 0.0, 0.0]])
ROLLOUT = torch.tensor([[0.0, -0.2, -2.9, 7.0], [-0.45, -0.6, 3.0, 0.0]])
MASK = torch.tensor([[1.0, 1.0, 1.0, 0.0], [1.0, 1.0, 0.0, 0.0]])


def test_token_masked_is_by_hand():
    # bounds [0.5, 2]: log in [-0.693, 0.693]; -0.8 and 0.9 leave it -> 2 of 5 live tokens dropped
    keep, m = rejection_mask(OLD, ROLLOUT, MASK, "token", 2.0)
    assert (keep * MASK).tolist() == [[1, 0, 0, 0], [1, 1, 0, 0]]  # padding (mask 0) is the caller's business
    assert m["rollout_rs/masked_frac"] == pytest.approx(0.4) and m["rollout_rs/masked_seq_frac"] == 0.0
    keep, _ = rejection_mask(OLD, ROLLOUT, MASK, "token", 2.5, lower=0.3)  # log bounds [-1.204, 0.916]
    assert (keep * MASK).tolist() == MASK.tolist()


def test_sequence_geometric_mask_by_hand():
    # mean log rho: seq0 (0 - 0.8 + 0.9) / 3 = 0.0333 > log 1.03 = 0.0296 -> dropped; seq1 0.025 -> kept
    keep, m = rejection_mask(OLD, ROLLOUT, MASK, "geometric", 1.03)
    assert (keep * MASK).tolist() == [[0, 0, 0, 0], [1, 1, 0, 0]]
    assert m["rollout_rs/masked_frac"] == pytest.approx(0.6) and m["rollout_rs/masked_seq_frac"] == 0.5
    keep, _ = rejection_mask(OLD, ROLLOUT, MASK, "geometric", 1.04)  # 0.0392: both kept
    assert (keep * MASK).tolist() == MASK.tolist()


def test_bad_bounds_and_modes_are_errors():
    with pytest.raises(ValueError, match="lower <= 1 <= upper"):
        rejection_mask(OLD, ROLLOUT, MASK, "token", 0.9)
    with pytest.raises(ValueError, match="'token' or 'geometric'"):
        rejection_mask(OLD, ROLLOUT, MASK, "sequence", 2.0)
    with pytest.raises(ConfigError, match="needs rollout_rs_threshold"):
        load_recipe(None, ["rl.rollout_correction.rollout_rs=token"])
    with pytest.raises(ConfigError, match="moved: rl.rollout_correction"):
        load_recipe(None, ["rl.tis_cap=2.0"])


def test_mismatch_metrics_by_hand():
    # gap = train - rollout = [0, -0.8, 0.9]
    m = mismatch_metrics(torch.tensor([0.0, -1.0, -2.0]), torch.tensor([0.0, -0.2, -2.9]))
    k3 = ((math.exp(-0.8) - 1 + 0.8) + (math.exp(0.9) - 1 - 0.9)) / 3
    assert m["logprob_gap"] == pytest.approx(1.7 / 3)
    assert m["mismatch/gap_max"] == pytest.approx(0.9)
    assert m["mismatch/kl_k3"] == pytest.approx(k3)
    assert m["mismatch/frac_gap_gt_0.1"] == pytest.approx(2 / 3)
    assert mismatch_metrics(torch.zeros(0), torch.zeros(0)) == {}


@pytest.fixture(scope="module")
def tiny():
    from transformers import AutoModelForCausalLM

    tok = build_tokenizer()
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(tiny_moe_config(len(tok)), dtype=torch.float32), tok


def test_learner_drops_rejected_tokens_from_loss_and_denominator(tiny):
    """The engine log-probs are the trainer's own shifted by hand: two tokens leave [0.5, 2] and are dropped,
    every metric of the step counts them, and the update equals one over the kept tokens only."""
    import copy

    model, tok = tiny
    trajs = [Trajectory("a", "g", [5, 6, 7], [8, 9, 10], [], advantage=1.0),
             Trajectory("b", "g", [5, 6, 7], [11, 12], [], advantage=-1.0)]
    recipe = load_recipe(None, ["rl.rollout_correction.rollout_rs=token",
                                "rl.rollout_correction.rollout_rs_threshold=2", "rl.lr=0.01"])
    learner = Learner(copy.deepcopy(model), tok, recipe)
    own = learner.policy_logprobs(trajs)
    shift = [[0.0, 1.0, 0.0], [-1.0, 0.0]]  # log rho = -shift: tokens a1 (rho e^-1) and b0 (rho e) leave
    for t, lp, s in zip(trajs, own, shift, strict=True):
        t.rollout_logprobs = [x + d for x, d in zip(lp, s, strict=True)]
    m = learner.update(trajs)
    assert m["rollout_rs/masked_frac"] == pytest.approx(2 / 5)
    assert m["logprob_gap"] == pytest.approx(2 / 5, abs=1e-5)  # measured before the mask: |gap| 1 on 2 of 5
    assert m["mismatch/frac_gap_gt_0.1"] == pytest.approx(2 / 5)

    # the same step on the kept tokens alone (loss masks), no correction: identical weights after the update
    kept = [Trajectory("a", "g", [5, 6, 7], [8, 9, 10], [], advantage=1.0, loss_mask=[1, 0, 1]),
            Trajectory("b", "g", [5, 6, 7], [11, 12], [], advantage=-1.0, loss_mask=[0, 1])]
    ref = Learner(copy.deepcopy(model), tok, load_recipe(None, ["rl.lr=0.01"]))
    ref.update(kept)
    for (name, a), (_, b) in zip(learner.named_parameters(), ref.named_parameters(), strict=True):
        assert torch.allclose(a, b, atol=1e-6), name
