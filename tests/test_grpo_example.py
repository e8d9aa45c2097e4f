"""The GRPO objective as the trainer composes it, on a hand-computed example.

Group of 4 with rewards [1, 0, 0, 1]: mean 0.5, population std 0.5, so A = [+1, -1, -1, +1].
Two tokens per response. Per-token log-ratios log(pi/pi_old) chosen so the clip (eps = 0.2) bites:
  sample 0 (A=+1): ratios [1.5, 1.0] -> min(rA, clip(r)A) = [1.2, 1.0]
  sample 1 (A=-1): ratios [0.5, 1.0] -> min(-0.5, -0.8) = -0.8 ; min(-1, -1) = -1
  sample 2 (A=-1): ratios [1.1, 0.9] -> [-1.1, -0.9]
  sample 3 (A=+1): ratios [1.0, 1.0] -> [1.0, 1.0]
Loss = -mean of those 8 values (token-mean) = -(1.2 + 1.0 - 0.8 - 1.0 - 1.1 - 0.9 + 1.0 + 1.0) / 8 = -0.05.
Clipped tokens (clipped term chosen): sample 0 token 0 and sample 1 token 0 -> clip_frac = 2/8.
With a k3 KL term (beta = 0.1) against a reference equal to pi_old: k3(d) = exp(-d) - 1 + d per token.
"""

import math

import torch

from longcot.record import Trajectory
from longcot.rl.advantages import assign_advantages
from longcot.rl.batch import collate
from longcot.rl.losses import LossBatch, policy_loss

RATIOS = [[1.5, 1.0], [0.5, 1.0], [1.1, 0.9], [1.0, 1.0]]


def make_batch():
    trajs = [Trajectory(f"p{i}", "g", [1, 2], [3, 4], [-1.0, -1.0], reward=r) for i, r in enumerate([1, 0, 0, 1])]
    assign_advantages(trajs, "grpo", eps=0.0)
    assert [t.advantage for t in trajs] == [1.0, -1.0, -1.0, 1.0]
    b = collate(trajs, pad_id=0)
    old = torch.full((4, 2), -1.0)
    logp = (old + torch.log(torch.tensor(RATIOS))).requires_grad_(True)
    return b, old, logp


def test_grpo_clipped_loss_by_hand():
    b, old, logp = make_batch()
    loss, m = policy_loss(LossBatch(logp, old, b.advantages, b.mask), "ppo_clip", {"clip_low": 0.2, "clip_high": 0.2})
    assert math.isclose(loss.item(), -0.05, abs_tol=1e-6)
    assert math.isclose(m["clip_frac"], 2 / 8)
    loss.backward()
    # d(-rA)/d logp = -rA / 8 where unclipped; 0 where the clipped term is active.
    want = torch.tensor([[0.0, -1.0], [0.0, 1.0], [1.1, 0.9], [-1.0, -1.0]]) / 8
    torch.testing.assert_close(logp.grad, want)


def test_grpo_with_k3_kl_by_hand():
    b, old, logp = make_batch()
    loss, m = policy_loss(LossBatch(logp, old, b.advantages, b.mask, ref_logprobs=old), "ppo_clip",
                          kl_coef=0.1, kl_estimator="k3")
    d = torch.log(torch.tensor(RATIOS))
    k3 = (torch.exp(-d) - 1 + d).mean().item()
    assert math.isclose(loss.item(), -0.05 + 0.1 * k3, abs_tol=1e-6)
    assert math.isclose(m["kl"], k3, rel_tol=1e-5)
