"""The RL loop: sample prompts -> rollouts -> rewards -> advantages -> policy loss -> optimizer -> weight sync.

The loop knows nothing about which algorithm it runs: the advantage estimator and the policy loss are
looked up by name (``rl.advantage.name``, ``rl.loss.name``) and called through ``assign_advantages`` and
``policy_loss``. Each step writes one row of metrics, including a time breakdown whose parts add up to
the step time.
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Callable
from contextlib import contextmanager

import torch
from accelerate import Accelerator

from longcot.config import Recipe
from longcot.record import Trajectory
from longcot.rewards.registry import compute_rewards
from longcot.rl.advantages import assign_advantages
from longcot.rl.batch import TokenBatch, collate, length_sorted_chunks, response_logprobs
from longcot.rl.losses import LOSSES, LossBatch, policy_loss
from longcot.rollout.base import Engine, Prompt, SamplingConfig

log = logging.getLogger(__name__)


class StepTimer:
    """Wall time per phase of a step; ``other`` is what no phase claimed, so the parts sum to the total."""

    def __init__(self) -> None:
        self.start = time.perf_counter()
        self.parts: dict[str, float] = {}

    @contextmanager
    def phase(self, name: str):
        t = time.perf_counter()
        try:
            yield
        finally:
            self.parts[name] = self.parts.get(name, 0.0) + time.perf_counter() - t

    def finish(self) -> dict[str, float]:
        total = time.perf_counter() - self.start
        out = {f"time/{k}": v for k, v in self.parts.items()}
        out["time/other"] = max(total - sum(self.parts.values()), 0.0)
        out["step_seconds"] = total
        return out


def sampling_from(recipe: Recipe, seed: int | None = None) -> SamplingConfig:
    r = recipe.rollout
    return SamplingConfig(n=r.n, temperature=r.temperature, top_p=r.top_p, top_k=r.top_k,
                          max_tokens=r.max_tokens, stop=list(r.stop), seed=seed)


class RLTrainer:
    """Owns the policy, its optimizer and (optionally) a frozen reference; drives an :class:`Engine`."""

    def __init__(self, model, tokenizer, engine: Engine, recipe: Recipe, next_prompts: Callable[[int], list[Prompt]],
                 on_results: Callable[[list[Trajectory]], None] | None = None):
        self.recipe, self.rl = recipe, recipe.rl
        self.tokenizer, self.engine = tokenizer, engine
        self.next_prompts, self.on_results = next_prompts, on_results
        self.accelerator = Accelerator(cpu=not torch.cuda.is_available())
        self.loss_fn = LOSSES.get(self.rl.loss.name)
        self.ref_model = None
        if self.rl.kl_coef:
            self.ref_model = copy.deepcopy(model).eval().requires_grad_(False)
        self.model, self.optimizer = self.accelerator.prepare(model, self._new_optimizer(model))
        self.version = 0
        self.temperature = recipe.rollout.temperature

    def _new_optimizer(self, model) -> torch.optim.Optimizer:
        return torch.optim.AdamW(model.parameters(), lr=self.rl.lr, betas=tuple(self.rl.betas),
                                 weight_decay=self.rl.weight_decay)

    def _lr_scale(self, step: int) -> float:
        return min(1.0, (step + 1) / self.rl.warmup_steps) if self.rl.warmup_steps else 1.0

    def step(self, step: int) -> tuple[dict, list[Trajectory]]:
        """One RL iteration. Returns (metrics row, trajectories)."""
        timer = StepTimer()
        with timer.phase("generate"):
            prompts = self.next_prompts(step)
            trajs = self.engine.generate(prompts, sampling_from(self.recipe, seed=self.recipe.seed * 100003 + step),
                                         group_tag=f"@{step}")
        with timer.phase("reward"):
            err = compute_rewards(trajs, self.recipe.rewards)
            assign_advantages(trajs, self.rl.advantage.name, **self.rl.advantage.options)
        metrics = self._update(trajs, timer)
        with timer.phase("weight_sync"):
            self.version += 1
            self.engine.sync_weights(self.accelerator.unwrap_model(self.model).named_parameters(), self.version)
        if self.on_results:
            self.on_results(trajs)
        metrics.update(err)
        metrics.update(rollout_metrics(trajs, self.recipe))
        metrics.update(getattr(self.engine, "last_metrics", {}))  # engine wrappers' own (partial/*)
        metrics.update(timer.finish())
        metrics["tokens_per_s"] = metrics["response_tokens"] / max(metrics["step_seconds"], 1e-9)
        metrics["step"] = step
        return metrics, trajs

    def _update(self, trajs: list[Trajectory], timer: StepTimer) -> dict:
        """``updates_per_step`` optimizer steps over the batch. On-policy with one update, pi_old is the
        current policy, so its log-probs come from the same forward pass (no recompute)."""
        rl = self.rl
        live = [t for t in trajs if t.response_ids]
        chunks = [collate(c, self.tokenizer.pad_token_id) for c in length_sorted_chunks(live, rl.micro_batch_size)]
        total_tokens = float(sum(c.mask.sum() for c in chunks))
        total_seqs = float(sum((c.mask.sum(-1) > 0).sum() for c in chunks))
        if rl.updates_per_step > 1 or self.ref_model is not None:
            with timer.phase("logprob_recompute"), torch.no_grad():
                for c in chunks:
                    if rl.updates_per_step > 1:
                        c.old_logprobs = response_logprobs(self.model, c, temperature=self.temperature)[0]
                    if self.ref_model is not None:
                        c.ref_logprobs = response_logprobs(self.ref_model, c, temperature=self.temperature)[0]
        if getattr(self.loss_fn, "reset_optimizer", False) or rl.reset_optimizer:
            self.optimizer.state.clear()  # k1.5: each iteration is a fresh mirror-descent problem
        sums: dict[str, float] = {}
        for update in range(rl.updates_per_step):
            with timer.phase("forward_backward"):
                for c in chunks:
                    m = self._micro_step(c, total_tokens, total_seqs, first=update == 0)
                    w = float(c.mask.sum()) / max(total_tokens, 1.0)
                    for k, v in m.items():
                        sums[k] = sums.get(k, 0.0) + v * w / rl.updates_per_step
            with timer.phase("optimizer"):
                grad_norm = self.accelerator.clip_grad_norm_(self.model.parameters(), rl.grad_clip)
                for g in self.optimizer.param_groups:
                    g["lr"] = rl.lr * self._lr_scale(self.version)
                self.optimizer.step()
                self.optimizer.zero_grad(set_to_none=True)
        sums["grad_norm"] = float(grad_norm)
        return sums

    def _micro_step(self, c: TokenBatch, total_tokens: float, total_seqs: float, first: bool) -> dict:
        rl = self.rl
        logp, entropy = response_logprobs(self.model, c, with_entropy=True, temperature=self.temperature)
        old = c.old_logprobs if c.old_logprobs is not None else logp.detach()
        batch = LossBatch(logprobs=logp, old_logprobs=old, advantages=c.advantages, mask=c.mask,
                          ref_logprobs=c.ref_logprobs, rollout_logprobs=c.rollout_logprobs,
                          entropy=entropy if rl.entropy_coef else None,
                          total_tokens=total_tokens, total_seqs=total_seqs)
        loss, m = policy_loss(batch, rl.loss.name, rl.loss.options, agg=rl.aggregation,
                              max_len=self.recipe.rollout.max_tokens, kl_coef=rl.kl_coef,
                              kl_estimator=rl.kl_estimator, entropy_coef=rl.entropy_coef, tis_cap=rl.tis_cap)
        self.accelerator.backward(loss)
        mask = c.mask
        n = mask.sum().clamp(min=1.0)
        m["entropy"] = float((entropy.detach() * mask).sum() / n)
        if first:  # the policy that sampled == the policy before the first update
            m["logprob_gap"] = float(((logp.detach() - c.rollout_logprobs).abs() * mask).sum() / n)
        return m


def rollout_metrics(trajs: list[Trajectory], recipe: Recipe) -> dict:
    """Per-step statistics of the rollouts: every reward component, accuracy, lengths, finish reasons."""
    n = max(len(trajs), 1)
    lengths = [len(t.response_ids) for t in trajs] or [0]
    out = {"reward_mean": sum(t.reward for t in trajs) / n,
           "response_len_mean": sum(lengths) / n, "response_len_max": max(lengths),
           "response_tokens": float(sum(lengths)),
           "truncated_frac": sum(t.finish == "length" for t in trajs) / n}
    for name in sorted({k for t in trajs for k in t.rewards}):
        out[f"rewards/{name}"] = sum(t.rewards.get(name, 0.0) for t in trajs) / n
    correct_key = "math" if any("math" in t.rewards for t in trajs) else None
    out["accuracy"] = (sum(t.rewards.get(correct_key, 0.0) > 0 for t in trajs) / n) if correct_key else \
        sum(t.reward > 0 for t in trajs) / n
    return out
