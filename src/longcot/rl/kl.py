"""KL estimators between the policy and a reference, per token (Schulman, "Approximating KL divergence").

With log-ratio d = log pi_theta - log pi_ref:
  k1 = d                  (unbiased, high variance, can be negative)
  k2 = d^2 / 2            (biased, low variance)
  k3 = exp(-d) - 1 + d    (unbiased, non-negative, low variance; GRPO's choice)
"""

from __future__ import annotations

import torch

from longcot.registry import Registry

KL_ESTIMATORS: Registry = Registry("KL estimator")


@KL_ESTIMATORS.register("k1")
def kl_k1(logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
    return logprobs - ref_logprobs


@KL_ESTIMATORS.register("k2")
def kl_k2(logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
    return 0.5 * (logprobs - ref_logprobs) ** 2


@KL_ESTIMATORS.register("k3")
def kl_k3(logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
    d = logprobs - ref_logprobs
    return torch.exp(-d) - 1 + d


def kl(name: str, logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
    return KL_ESTIMATORS.get(name)(logprobs, ref_logprobs)


def _masked_kl(name: str, logprobs: torch.Tensor, ref_logprobs: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return kl(name, logprobs, ref_logprobs) * mask.to(logprobs.dtype)


def kl_reward_penalty(rewards: torch.Tensor, logprobs: torch.Tensor, ref_logprobs: torch.Tensor, mask: torch.Tensor,
                      beta: float, estimator: str = "k1", per_token: bool = False) -> torch.Tensor:
    """KL "in the reward" (InstructGPT/PPO-RLHF style), as opposed to KL "in the loss" (``policy_loss(kl_coef=...)``).

    The penalty is computed without gradient (from the sampling policy's log-probs) and becomes part of the
    return, so the advantage estimator sees it and the loss needs no reference model.

    * ``per_token=False``: returns [B] shaped rewards ``R_i - beta * sum_t kl_{i,t}`` (masked tokens skipped).
      Use this with the group estimators (grpo, rloo, ...): they take one scalar reward per sample.
    * ``per_token=True``: returns [B, T] token rewards: ``-beta * kl_t`` on every live token, plus ``R_i`` on
      the last live token; summed over t it equals the ``per_token=False`` value. For token-level returns.

    k1 is the default: its sum over tokens is an unbiased estimate of the sequence KL, which is what a
    reward penalty wants (k3's non-negativity matters in a loss, not here).
    """
    with torch.no_grad():
        k = _masked_kl(estimator, logprobs, ref_logprobs, mask)
        if not per_token:
            return rewards - beta * k.sum(-1)
        out = -beta * k
        live = mask.to(logprobs.dtype)
        positions = torch.arange(mask.shape[-1], device=mask.device).expand_as(live)
        last = torch.where(live > 0, positions, torch.full_like(positions, -1)).max(-1).values
        has = last >= 0
        rows = torch.arange(mask.shape[0], device=mask.device)[has]
        out[rows, last[has]] += rewards[has].to(out.dtype)
        return out


def apply_kl_to_rewards(trajs: list, ref_logprobs: list[list[float]], beta: float, estimator: str = "k1") -> None:
    """Trajectory-level KL in the reward: ``t.reward -= beta * sum_t kl_t`` before advantages are assigned.

    The policy side is each trajectory's ``rollout_logprobs`` (the sampler, as in PPO-RLHF); ``ref_logprobs``
    are the reference model's log-probs of the same response tokens. The penalty is also recorded in
    ``t.rewards["kl_penalty"]`` so it is logged next to the other components.
    """
    if len(ref_logprobs) != len(trajs):
        raise ValueError(f"apply_kl_to_rewards: {len(ref_logprobs)} ref log-prob rows for {len(trajs)} trajectories")
    for i, (t, ref) in enumerate(zip(trajs, ref_logprobs, strict=True)):
        if t.response_ids and not t.rollout_logprobs:
            raise ValueError(f"apply_kl_to_rewards: trajectory {i} ({t.prompt_id}) has no rollout log-probs "
                             "(generated with SamplingConfig.logprobs=False)")
        if len(ref) != len(t.rollout_logprobs):
            raise ValueError(f"apply_kl_to_rewards: trajectory {i} ({t.prompt_id}) has {len(t.rollout_logprobs)} "
                             f"rollout log-probs but {len(ref)} reference log-probs")
        lp = torch.tensor([t.rollout_logprobs], dtype=torch.float64)
        rf = torch.tensor([ref], dtype=torch.float64)
        m = torch.tensor([t.mask()], dtype=torch.float64)
        penalty = beta * float(_masked_kl(estimator, lp, rf, m).sum())
        t.rewards["kl_penalty"] = -penalty
        t.reward -= penalty
