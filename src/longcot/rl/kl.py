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
