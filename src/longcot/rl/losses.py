"""Policy losses as registered pure functions, and the aggregation of per-token losses.

A loss gets a :class:`LossBatch` (current, old, reference and rollout log-probs, advantages and the
token mask, all [B, T]) plus its own keyword options from the recipe, and returns a per-token loss
[B, T] and a dict of scalar metrics. :func:`policy_loss` adds the KL and entropy terms and aggregates;
the trainer only ever calls :func:`policy_loss`, so it knows nothing about which loss it runs.

Registered: ppo_clip (GRPO/DAPO), gspo, cispo, k15, k25. Formulas: docs/algorithms.md. Attributes a loss may
carry for the trainer: ``reset_optimizer`` (k15/k25: clear the optimizer state each iteration; see
:func:`resets_optimizer`), ``recommended_agg`` (the aggregation its paper uses; informational) and
``zero_at_zero_advantage`` (its per-token loss and gradient are 0 wherever the advantage is 0, so the trainer may
leave samples of advantage 0 out of the forward/backward: ``rl.skip_zero_advantage``; not k15/k25, whose
(tau/2) log-ratio^2 term does not scale with A).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from longcot.registry import Registry, check_options
from longcot.rl.kl import kl

if TYPE_CHECKING:
    from longcot.config.schema import RLConfig

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


# |log(pi / pi_old)| is clamped here before exp(), as verl does: an off-policy token (async rollouts, partial
# rollouts, a routing flip in an MoE) can have a log-ratio of hundreds, whose exp overflows to inf and turns
# the loss and every gradient into NaN. Clipped losses lose no signal: such a ratio is far outside any clip range.
MAX_LOG_RATIO = 20.0


def log_ratio(b: LossBatch) -> torch.Tensor:
    """log(pi_theta / pi_old) per token, clamped to [-MAX_LOG_RATIO, MAX_LOG_RATIO]."""
    return (b.logprobs - b.old_logprobs).clamp(-MAX_LOG_RATIO, MAX_LOG_RATIO)


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


@LOSSES.register("ppo_clip", recommended_agg="token-mean", zero_at_zero_advantage=True)
def ppo_clip(b: LossBatch, clip_low: float = 0.2, clip_high: float = 0.2, dual_clip: float | None = None):
    """PPO/GRPO clipped surrogate: -min(r A, clip(r, 1-clip_low, 1+clip_high) A), r = pi_theta / pi_old.

    ``clip_high > clip_low`` is DAPO's clip-higher (0.2 / 0.28). ``dual_clip`` (c > 1) bounds the loss of
    negative-advantage tokens at -c A (Ye et al. 2020), so a huge ratio cannot blow up the update.
    """
    if dual_clip is not None and dual_clip <= 1:
        raise ValueError(f"ppo_clip: dual_clip must be > 1 (got {dual_clip})")
    ratio = torch.exp(log_ratio(b))
    surr1 = ratio * b.advantages
    surr2 = torch.clamp(ratio, 1 - clip_low, 1 + clip_high) * b.advantages
    loss = -torch.minimum(surr1, surr2)
    if dual_clip is not None:
        loss = torch.where(b.advantages < 0, torch.minimum(loss, -dual_clip * b.advantages), loss)
    clipped = ((surr2 < surr1) & (b.mask > 0)).float()
    return loss, {"clip_frac": float(masked_mean(clipped, b.mask))}


def _seq_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per-sequence masked mean, [B, T] -> [B]; 0 for a sequence whose tokens are all masked."""
    m = mask.to(x.dtype)
    return (x * m).sum(-1) / m.sum(-1).clamp(min=1.0)


@LOSSES.register("gspo", recommended_agg="seq-mean-token-mean", zero_at_zero_advantage=True)
def gspo(b: LossBatch, clip_low: float = 3e-4, clip_high: float = 4e-4, variant: str = "sequence"):
    """GSPO (Zheng et al. 2025): a sequence-level ratio s_i = exp(mean_t log r_{i,t}) in the clipped surrogate,
    -min(s_i A_i, clip(s_i, 1-clip_low, 1+clip_high) A_i). Recommended for MoE: one ratio per sequence is
    robust to the per-token noise that expert routing changes cause.

    ``variant="sequence"``: the sequence loss is broadcast to every live token (aggregate with
    seq-mean-token-mean to get the paper's mean over sequences); A_i is the mean of the token advantages.
    ``variant="token"`` (GSPO-token): s_{i,t} = sg(s_i) * pi(y_t) / sg(pi(y_t)) with per-token advantages;
    same value and, for a constant A_i, the same gradient as the sequence variant.
    """
    if variant not in ("sequence", "token"):
        raise ValueError(f"gspo: variant must be 'sequence' or 'token' (got '{variant}')")
    seq_log_ratio = _seq_mean(log_ratio(b), b.mask)  # [B]
    s = torch.exp(seq_log_ratio)
    if variant == "sequence":
        adv = _seq_mean(b.advantages, b.mask)
        ratio, adv = s.unsqueeze(-1).expand_as(b.logprobs), adv.unsqueeze(-1).expand_as(b.logprobs)
    else:
        ratio = s.detach().unsqueeze(-1) * torch.exp(b.logprobs - b.logprobs.detach())
        adv = b.advantages
    surr1 = ratio * adv
    surr2 = torch.clamp(ratio, 1 - clip_low, 1 + clip_high) * adv
    loss = -torch.minimum(surr1, surr2)
    live = (b.mask.sum(-1) > 0).to(s.dtype)
    clipped = ((surr2 < surr1).to(s.dtype) * b.mask).amax(-1) * live
    metrics = {"clip_frac": float(clipped.sum() / live.sum().clamp(min=1.0)),
               "seq_ratio_mean": float((s.detach() * live).sum() / live.sum().clamp(min=1.0))}
    return loss, metrics


@LOSSES.register("cispo", recommended_agg="token-mean", zero_at_zero_advantage=True)
def cispo(b: LossBatch, clip_low: float = 1.0, clip_high: float = 0.28):
    """CISPO (MiniMax-M1, 2025): -sg(clip(r, 1-clip_low, 1+clip_high)) * A * log pi_theta, token-mean.

    Clips the importance weight, not the update: every token keeps a gradient (PPO's clip zeroes the
    gradient of tokens outside the trust region, often the rare "wait"/"recheck" tokens that matter for
    long CoT). ``clip_low=1.0`` means no lower bound (weight >= 0), as in the paper.
    """
    ratio = torch.exp(log_ratio(b)).detach()
    w = torch.clamp(ratio, min=1 - clip_low, max=1 + clip_high)
    loss = -w * b.advantages * b.logprobs
    truncated = ((ratio > 1 + clip_high) | (ratio < 1 - clip_low)).float()
    return loss, {"clip_frac": float(masked_mean(truncated, b.mask)), "is_weight_mean": float(masked_mean(w, b.mask))}


def _mirror_descent(b: LossBatch, tau: float, level: str, logprobs: torch.Tensor) -> tuple[torch.Tensor, dict]:
    """Shared k1.5 / K2.5 term. ``logprobs`` may have some tokens detached (K2.5's gradient mask)."""
    if level not in ("sequence", "token"):
        raise ValueError(f"k15/k25: level must be 'sequence' or 'token' (got '{level}')")
    m = b.mask.to(logprobs.dtype)
    d = (logprobs - b.old_logprobs) * m  # per-token log(pi / pi_old)
    pg = -b.advantages * logprobs
    if level == "sequence":
        # (tau/2) D_i * d_t summed over t is (tau/2) D_i^2, D_i = log pi(y_i)/pi_old(y_i): same value, same gradient.
        seq_d = d.sum(-1, keepdim=True)
        reg = 0.5 * tau * seq_d * d
        sq = seq_d.squeeze(-1) ** 2
    else:
        reg = 0.5 * tau * d**2
        sq = (d**2).sum(-1)
    live = (m.sum(-1) > 0).to(m.dtype)
    metrics = {"log_ratio_sq": float((sq.detach() * live).sum() / live.sum().clamp(min=1.0)),
               "log_ratio_mean": float(masked_mean(d.detach(), m))}
    return pg + reg, metrics


@LOSSES.register("k15", reset_optimizer=True, recommended_agg="seq-mean-token-sum")
def k15(b: LossBatch, tau: float = 0.1, level: str = "sequence"):
    """Kimi k1.5 online mirror descent. Per sample: -(r - r_bar) log pi(y) + (tau/2) (log pi(y)/pi_old(y))^2,
    whose gradient, averaged over the k samples of a group (aggregation seq-mean-token-sum), is the paper's
    (1/k) sum_j [grad log pi(y_j)(r_j - r_bar) - (tau/2) grad (log pi(y_j)/pi_old(y_j))^2], negated.

    pi_old is ``b.old_logprobs``: the policy at the start of the iteration (the mirror-descent reference,
    which moves every iteration). Advantages must be r - r_bar (the ``k15`` estimator). ``level="sequence"``
    squares the sequence log-ratio (the paper); ``"token"`` sums squared per-token log-ratios (K2-style).
    The ``reset_optimizer`` attribute tells the trainer to clear the optimizer state each iteration (k1.5).
    With one update per iteration pi = pi_old and the squared term vanishes: use ``rl.updates_per_step > 1``.
    """
    return _mirror_descent(b, tau, level, b.logprobs)


@LOSSES.register("k25", reset_optimizer=True, recommended_agg="seq-mean-token-sum")
def k25(b: LossBatch, tau: float = 0.1, alpha: float = -math.log(2.0), beta: float = math.log(2.0),
        level: str = "token"):
    """Kimi K2.5: k15 plus a gradient mask: tokens whose log-ratio log(pi/pi_old) leaves [alpha, beta] get no
    gradient (neither the policy-gradient nor the squared term), so stale or mismatched tokens cannot
    dominate an off-policy update. Default range: ratio in [0.5, 2] (our choice; tune per run)."""
    if not alpha < beta:
        raise ValueError(f"k25: need alpha < beta (got alpha={alpha}, beta={beta})")
    d = (b.logprobs - b.old_logprobs).detach()
    keep = (d >= alpha) & (d <= beta)
    logprobs = torch.where(keep, b.logprobs, b.logprobs.detach())
    loss, metrics = _mirror_descent(b, tau, level, logprobs)
    metrics["grad_masked_frac"] = float(masked_mean((~keep).float(), b.mask))
    return loss, metrics


def resets_optimizer(name: str) -> bool:
    """Whether this loss asks the trainer to reset the optimizer state at the start of each iteration (the
    loss's ``reset_optimizer`` attribute; k15/k25). The recipe's ``rl.reset_optimizer`` forces it for any loss."""
    return bool(getattr(LOSSES.get(name), "reset_optimizer", False))


def zero_advantage_skip_blocker(rl: RLConfig) -> str | None:
    """Why samples of advantage 0 may not leave the forward/backward (``rl.skip_zero_advantage``), or None when
    they may: the loss must be 0 with no gradient at A = 0 (its ``zero_at_zero_advantage``), and no other term of
    the step may read those samples (KL to the reference in the loss, entropy bonus, router aux loss) or recount
    the denominators from the trained tokens (a rollout rejection mask)."""
    if not rl.skip_zero_advantage:
        return "rl.skip_zero_advantage=false"
    if not getattr(LOSSES.get(rl.loss.name), "zero_at_zero_advantage", False):
        return f"loss {rl.loss.name} is not registered as zero at A = 0"
    for reason, on in (("KL in the loss", rl.kl_coef and rl.kl_in == "loss"), ("entropy bonus", rl.entropy_coef),
                       ("router aux loss", rl.router_aux_coef),
                       ("rollout rejection", rl.rollout_correction.rollout_rs is not None)):
        if on:
            return reason
    return None


def _tis(b: LossBatch, per_token: torch.Tensor, cap: float, metrics: dict) -> torch.Tensor:
    """Truncated importance sampling: weight min(pi_old / pi_rollout, cap), detached (Yao et al. 2025)."""
    if b.rollout_logprobs is None:
        raise ValueError("tis_cap is set but the batch has no rollout_logprobs (the engine's log-probs)")
    w = torch.exp((b.old_logprobs - b.rollout_logprobs).clamp(max=MAX_LOG_RATIO)).clamp(max=cap).detach()
    metrics["tis_weight_mean"] = float(masked_mean(w, b.mask))
    metrics["tis_capped_frac"] = float(masked_mean((w >= cap).float(), b.mask))
    return per_token * w


def policy_loss(b: LossBatch, name: str = "ppo_clip", options: dict | None = None, *, agg: str = "token-mean",
                max_len: int | None = None, kl_coef: float = 0.0, kl_estimator: str = "k3",
                entropy_coef: float = 0.0, tis_cap: float | None = None) -> tuple[torch.Tensor, dict]:
    """The full per-step objective: named loss (+ kl_coef * KL to reference) (- entropy bonus), aggregated.

    ``options`` are the loss's keyword options from the recipe; an unknown key fails with the closest valid
    one. ``tis_cap``: truncated importance sampling, tokens reweighted by min(pi_old / pi_rollout, cap) to
    correct for the engine's sampling distribution differing from the trainer's. The train-vs-rollout
    log-prob gap is logged whenever rollout log-probs are present. The KL here is "in the loss"; for KL
    "in the reward" see :func:`longcot.rl.kl.apply_kl_to_rewards`.
    """
    if agg not in AGGREGATIONS:
        raise ValueError(f"unknown loss aggregation '{agg}'; expected one of {AGGREGATIONS}")
    fn = LOSSES.get(name)
    options = options or {}
    check_options(fn, options, where=f"loss[{name}]")
    per_token, metrics = fn(b, **options)
    if b.rollout_logprobs is not None:
        metrics["rollout_logprob_gap"] = float(masked_mean((b.old_logprobs - b.rollout_logprobs).abs(), b.mask))
    if tis_cap is not None:
        per_token = _tis(b, per_token, tis_cap, metrics)
    if kl_coef:
        if b.ref_logprobs is None:
            raise ValueError(f"kl_coef={kl_coef} but the batch has no ref_logprobs (set a reference model)")
        k = kl(kl_estimator, b.logprobs, b.ref_logprobs)
        per_token = per_token + kl_coef * k
        metrics["kl"] = float(masked_mean(k.detach(), b.mask))
    if entropy_coef:
        if b.entropy is None:
            raise ValueError(f"entropy_coef={entropy_coef} but the batch has no entropy")
        per_token = per_token - entropy_coef * b.entropy
        metrics["entropy"] = float(masked_mean(b.entropy.detach(), b.mask))
    loss = aggregate(per_token, b.mask, agg, max_len=max_len, total_tokens=b.total_tokens, total_seqs=b.total_seqs)
    return loss, metrics
