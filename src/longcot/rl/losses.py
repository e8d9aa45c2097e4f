"""Policy losses as registered pure functions, and the aggregation of per-token losses.

A loss gets a :class:`LossBatch` (current, old, reference and rollout log-probs, advantages and the
token mask, all [B, T]) plus its own keyword options from the recipe, and returns a per-token loss
[B, T] and a dict of scalar metrics. :func:`policy_loss` adds the KL and entropy terms and aggregates;
the trainer only ever calls :func:`policy_loss`, so it knows nothing about which loss it runs.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from longcot.registry import Registry
from longcot.rl.kl import kl

LOSSES: Registry = Registry("policy loss")
AGGREGATIONS = ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm")


@dataclass
class LossBatch:
    logprobs: torch.Tensor  # log pi_theta(o_t), with grad
    old_logprobs: torch.Tensor  # log pi_old(o_t): the policy that sampled (or recomputed), detached
    advantages: torch.Tensor  # per token (a sequence's advantage broadcast over its tokens)
    mask: torch.Tensor  # 1.0 for tokens that receive gradient
    ref_logprobs: torch.Tensor | None = None
    rollout_logprobs: torch.Tensor | None = None  # engine log-probs, for truncated importance sampling
    entropy: torch.Tensor | None = None
    # Denominators for the whole optimizer step (micro-batches must not change the loss scale).
    total_tokens: float | None = None
    total_seqs: float | None = None


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return (x * mask).sum() / mask.sum().clamp(min=1.0)


def aggregate(per_token: torch.Tensor, mask: torch.Tensor, mode: str, *, max_len: int | None = None,
              total_tokens: float | None = None, total_seqs: float | None = None) -> torch.Tensor:
    """Reduce a [B, T] per-token loss to a scalar.

    token-mean: sum over all tokens / number of tokens (DAPO). seq-mean-token-mean: mean over sequences of
    each sequence's token mean (GRPO paper). seq-mean-token-sum: mean over sequences of token sums.
    seq-mean-token-sum-norm: token sums divided by a constant ``max_len`` (Dr.GRPO), then mean over sequences.
    ``total_tokens``/``total_seqs`` replace the local denominators when a step is split into micro-batches.
    Sequences whose tokens are all masked contribute 0 and do not count as sequences.
    """
    mask = mask.to(per_token.dtype)
    x = per_token * mask
    tok_per_seq = mask.sum(-1)
    live = (tok_per_seq > 0).to(per_token.dtype)
    n_seqs = total_seqs if total_seqs is not None else live.sum().clamp(min=1.0)
    if mode == "token-mean":
        n_tok = total_tokens if total_tokens is not None else mask.sum().clamp(min=1.0)
        return x.sum() / n_tok
    if mode == "seq-mean-token-mean":
        return (x.sum(-1) / tok_per_seq.clamp(min=1.0)).sum() / n_seqs
    if mode == "seq-mean-token-sum":
        return x.sum(-1).sum() / n_seqs
    if mode == "seq-mean-token-sum-norm":
        if not max_len:
            raise ValueError("seq-mean-token-sum-norm needs max_len (the constant Dr.GRPO divides by)")
        return (x.sum(-1) / max_len).sum() / n_seqs
    raise ValueError(f"unknown loss aggregation '{mode}'; expected one of {AGGREGATIONS}")


@LOSSES.register("ppo_clip")
def ppo_clip(b: LossBatch, clip_low: float = 0.2, clip_high: float = 0.2, dual_clip: float | None = None):
    """PPO/GRPO clipped surrogate: -min(r A, clip(r, 1-clip_low, 1+clip_high) A).

    ``clip_high > clip_low`` is DAPO's clip-higher. ``dual_clip`` (c > 1) bounds the loss of negative-advantage
    tokens at -c A (Ye et al. 2020), so a huge ratio cannot blow up the update.
    """
    log_ratio = b.logprobs - b.old_logprobs
    ratio = torch.exp(log_ratio)
    surr1 = ratio * b.advantages
    surr2 = torch.clamp(ratio, 1 - clip_low, 1 + clip_high) * b.advantages
    loss = -torch.minimum(surr1, surr2)
    if dual_clip is not None:
        loss = torch.where(b.advantages < 0, torch.minimum(loss, -dual_clip * b.advantages), loss)
    clipped = ((surr2 < surr1) & (b.mask > 0)).float()
    return loss, {"clip_frac": float(masked_mean(clipped, b.mask))}


def policy_loss(b: LossBatch, name: str = "ppo_clip", options: dict | None = None, *, agg: str = "token-mean",
                max_len: int | None = None, kl_coef: float = 0.0, kl_estimator: str = "k3",
                entropy_coef: float = 0.0, tis_cap: float | None = None) -> tuple[torch.Tensor, dict]:
    """The full per-step objective: named loss (+ beta * KL to reference) (- entropy bonus), aggregated.

    ``tis_cap``: truncated importance sampling. Tokens are reweighted by min(pi_old / pi_rollout, cap) to
    correct for the engine's sampling distribution differing from the trainer's (Yao et al. 2025).
    """
    per_token, metrics = LOSSES.get(name)(b, **(options or {}))
    if tis_cap is not None and b.rollout_logprobs is not None:
        w = torch.exp(b.old_logprobs - b.rollout_logprobs).clamp(max=tis_cap).detach()
        per_token = per_token * w
        metrics["tis_weight_mean"] = float(masked_mean(w, b.mask))
    if kl_coef and b.ref_logprobs is not None:
        k = kl(kl_estimator, b.logprobs, b.ref_logprobs)
        per_token = per_token + kl_coef * k
        metrics["kl"] = float(masked_mean(k.detach(), b.mask))
    if entropy_coef and b.entropy is not None:
        per_token = per_token - entropy_coef * b.entropy
    loss = aggregate(per_token, b.mask, agg, max_len=max_len, total_tokens=b.total_tokens, total_seqs=b.total_seqs)
    return loss, metrics
