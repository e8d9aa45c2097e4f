"""Rollout/trainer mismatch: the metrics that show it and the corrections that bound it (names as in verl).

The engine that sampled a response (pi_rollout: vLLM, maybe bf16) and the trainer that scores it (pi_old: the
same weights in fp32, another kernel, for an MoE maybe another expert) disagree per token. The policy gradient
is taken as if the trainer had sampled, so every token carries an unaccounted importance ratio
rho_t = pi_old(y_t) / pi_rollout(y_t). verl's rollout correction names the remedies, and ``rl.rollout_correction``
uses those names:

* token-level truncated IS (``rollout_is: token``): each token's loss is weighted by min(rho_t, threshold)
  (Yao et al. 2025, "TIS"); bias traded for bounded variance.
* token-level masked IS (``rollout_rs: token``, IcePop): tokens whose rho_t leaves [lower, upper] are dropped
  from the loss and from its denominator.
* sequence-level geometric-mean masking (``rollout_rs: geometric``): a sequence is dropped when its geometric
  mean ratio exp(mean_t log rho_t) leaves [lower, upper]; the per-token mean makes the bound length-free
  (so it is tight: 1.001-ish), unlike the product of ratios.

Every function is pure over [B, T] tensors; the learner applies the masks before its loss denominators are
counted (a dropped token must not dilute the others' gradient).
"""

from __future__ import annotations

import math

import torch

# Same bound as the losses' log-ratio clamp: exp() of a larger log-ratio overflows.
MAX_LOG_RATIO = 20.0
GAP_THRESHOLD = 0.1  # |log pi_train - log pi_rollout| above which a token counts as mismatched


def _log_ratio(old: torch.Tensor, rollout: torch.Tensor) -> torch.Tensor:
    return (old - rollout).clamp(-MAX_LOG_RATIO, MAX_LOG_RATIO)


def rejection_mask(old: torch.Tensor, rollout: torch.Tensor, mask: torch.Tensor, mode: str, upper: float,
                   lower: float | None = None) -> tuple[torch.Tensor, dict[str, float]]:
    """The rejection mask [B, T] (1 keep, 0 drop) of ``mode`` "token" (masked IS) or "geometric" (sequence-level
    geometric-mean masking), for ratios rho = pi_old / pi_rollout outside [lower, upper] (lower: 1 / upper when
    None), and the fractions of live tokens and sequences it drops."""
    lower = 1.0 / upper if lower is None else lower
    if not 0 < lower <= 1 <= upper:
        raise ValueError(f"rollout rejection bounds must satisfy 0 < lower <= 1 <= upper, got [{lower}, {upper}]")
    lo, hi = math.log(lower), math.log(upper)
    log_r = _log_ratio(old, rollout)
    m = (mask > 0).to(old.dtype)
    if mode == "token":
        keep = ((log_r >= lo) & (log_r <= hi)).to(old.dtype)
    elif mode == "geometric":
        seq = (log_r * m).sum(-1) / m.sum(-1).clamp(min=1.0)
        keep = ((seq >= lo) & (seq <= hi)).to(old.dtype).unsqueeze(-1).expand_as(old)
    else:
        raise ValueError(f"rollout_rs must be 'token' or 'geometric', got {mode!r}")
    live = m.sum(-1) > 0
    dropped_tokens = float(((1 - keep) * m).sum() / m.sum().clamp(min=1.0))
    dropped_seqs = ((keep * m).sum(-1) == 0) & live
    metrics = {"rollout_rs/masked_frac": dropped_tokens,
               "rollout_rs/masked_seq_frac": float(dropped_seqs.sum() / live.sum().clamp(min=1))}
    return keep, metrics


def mismatch_metrics(train: torch.Tensor, rollout: torch.Tensor) -> dict[str, float]:
    """Mismatch over the (flattened) trained tokens, from the trainer's and the engine's log-probs of the same
    sampled tokens: ``logprob_gap`` (mean |gap|), ``mismatch/gap_max`` (max |gap|), ``mismatch/kl_k3`` (the k3
    estimate of KL(pi_rollout || pi_train) with samples from the rollout: mean of rho - 1 - log rho,
    rho = pi_train / pi_rollout) and ``mismatch/frac_gap_gt_0.1`` (tokens with |gap| > 0.1)."""
    if train.numel() == 0:
        return {}
    gap = (train.double() - rollout.double()).clamp(-MAX_LOG_RATIO, MAX_LOG_RATIO)
    return {"logprob_gap": float(gap.abs().mean()),
            "mismatch/gap_max": float(gap.abs().max()),
            "mismatch/kl_k3": float((torch.exp(gap) - 1 - gap).mean()),
            "mismatch/frac_gap_gt_0.1": float((gap.abs() > GAP_THRESHOLD).double().mean())}
