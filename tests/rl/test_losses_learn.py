"""Every estimator + loss pair actually improves a tiny policy (catches sign and masking errors end to end).

The policy is a table of logits over 4 tokens at each of 3 positions; the reward is the fraction of positions
where the sampled token is the target (so groups have varied rewards). Each step: sample 8 groups of 8 from
pi_old, score, assign advantages, take 4 updates on that batch (the later ones off-policy). Expected reward
starts at 0.25; every pair reaches 0.98-0.999 in 25 steps over seeds 0-2, the test asks for > 0.6.
"""

import pytest
import torch

from longcot.record import Trajectory
from longcot.rl.advantages import assign_advantages
from longcot.rl.losses import LossBatch, policy_loss, resets_optimizer

TARGET = torch.tensor([2, 0, 3])


def expected_reward(logits: torch.Tensor) -> float:
    return float(torch.softmax(logits, -1)[torch.arange(3), TARGET].mean())


def run(adv_name: str, loss_name: str, opts: dict, agg: str, steps: int = 25, seed: int = 0) -> tuple[float, float]:
    g = torch.Generator().manual_seed(seed)
    logits = torch.zeros(3, 4, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.Adam([logits], lr=0.1)
    start = expected_reward(logits.detach())
    for _ in range(steps):
        with torch.no_grad():
            probs = torch.softmax(logits, -1)
            seqs = torch.stack([torch.multinomial(probs, 1, generator=g).squeeze(-1) for _ in range(64)])  # [64, 3]
            old = torch.log_softmax(logits, -1)[torch.arange(3), seqs]
        trajs = [Trajectory(prompt_id="p", group_id=f"g{i // 8}", prompt_ids=[0], response_ids=s.tolist(),
                            rollout_logprobs=o.tolist(), reward=float((s == TARGET).float().mean()))
                 for i, (s, o) in enumerate(zip(seqs, old, strict=True))]
        assign_advantages(trajs, adv_name)
        adv = torch.tensor([t.advantage for t in trajs], dtype=torch.float64).unsqueeze(-1).expand(-1, 3)
        if resets_optimizer(loss_name):
            opt = torch.optim.Adam([logits], lr=0.1)
        for _ in range(4):
            lp = torch.log_softmax(logits, -1)[torch.arange(3), seqs]
            b = LossBatch(logprobs=lp, old_logprobs=old, advantages=adv, mask=torch.ones_like(lp))
            loss, _ = policy_loss(b, loss_name, opts, agg=agg, max_len=3)
            opt.zero_grad()
            loss.backward()
            opt.step()
    return start, expected_reward(logits.detach())


@pytest.mark.parametrize("adv,loss,opts,agg", [
    ("grpo", "ppo_clip", {}, "seq-mean-token-mean"),
    ("grpo", "ppo_clip", {"clip_high": 0.28, "dual_clip": 3.0}, "token-mean"),
    ("dr_grpo", "ppo_clip", {}, "seq-mean-token-sum-norm"),
    ("rloo", "gspo", {}, "seq-mean-token-mean"),
    ("reinforce_pp", "gspo", {"variant": "token"}, "seq-mean-token-mean"),
    ("grpo", "cispo", {}, "token-mean"),
    ("k15", "k15", {"tau": 0.1}, "seq-mean-token-sum"),
    ("k15", "k15", {"tau": 0.1, "level": "token"}, "seq-mean-token-sum"),
    ("k15", "k25", {"tau": 0.1}, "seq-mean-token-sum"),
])
def test_policy_improves(adv, loss, opts, agg):
    start, end = run(adv, loss, opts, agg)
    assert start == pytest.approx(0.25)
    assert end > 0.6, f"{adv}+{loss}: expected reward {start:.3f} -> {end:.3f}"
