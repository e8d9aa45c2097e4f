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
from dataclasses import replace

import torch
from accelerate import Accelerator

from longcot.config import Recipe
from longcot.record import Trajectory
from longcot.rewards.registry import RewardSpec, compute_rewards, prepare_rewards
from longcot.rl.advantages import assign_advantages
from longcot.rl.batch import TokenBatch, can_pack, collate, micro_batches, response_logprobs
from longcot.rl.dynamic_sampling import dynamic_sample
from longcot.rl.kl import apply_kl_to_rewards
from longcot.rl.length_penalty import length_penalty_weight
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


def sampling_from(recipe: Recipe, seed: int | None = None, logprobs: bool = True) -> SamplingConfig:
    r = recipe.rollout
    return SamplingConfig(n=r.n, temperature=r.temperature, top_p=r.top_p, top_k=r.top_k,
                          max_tokens=r.max_tokens, stop=list(r.stop), seed=seed, logprobs=logprobs)


def wants_rollout_logprobs(recipe: Recipe, step: int) -> bool:
    """Whether step ``step`` asks the engine for log-probs: always when TIS or KL-in-reward reads them, else
    every ``rollout.logprobs_every`` steps, for the ``logprob_gap`` metric only."""
    rl, every = recipe.rl, recipe.rollout.logprobs_every
    if rl.tis_cap is not None or (rl.kl_coef and rl.kl_in == "reward"):
        return True
    return every > 0 and step % every == 0


class RLTrainer:
    """Owns the policy, its optimizer and (optionally) a frozen reference; drives an :class:`Engine`."""

    def __init__(self, model, tokenizer, engine: Engine, recipe: Recipe,
                 next_prompts: Callable[[int, int], list[Prompt]],
                 on_results: Callable[[list[Trajectory]], None] | None = None):
        self.recipe, self.rl = recipe, recipe.rl
        self.tokenizer, self.engine = tokenizer, engine
        self.next_prompts, self.on_results = next_prompts, on_results
        self.accelerator = Accelerator(cpu=not torch.cuda.is_available())
        self.loss_fn = LOSSES.get(self.rl.loss.name)
        self.ref_model = None
        if self.rl.kl_coef:
            self.ref_model = copy.deepcopy(model).eval().requires_grad_(False).to(self.accelerator.device)
        self.model, self.optimizer = self.accelerator.prepare(model, self._new_optimizer(model))
        self.version = 0
        self.temperature = recipe.rollout.temperature
        prepare_rewards(recipe.rewards)

    def _new_optimizer(self, model) -> torch.optim.Optimizer:
        # fused: one kernel for all parameters instead of a Python loop over them (same update; 2-4x faster
        # on the tiny MoE on CPU, where the per-parameter loop was most of the optimizer's time)
        params = list(model.parameters())
        fused = all(p.device.type in ("cpu", "cuda") and p.is_floating_point() for p in params)
        return torch.optim.AdamW(params, lr=self.rl.lr, betas=tuple(self.rl.betas),
                                 weight_decay=self.rl.weight_decay, fused=fused)

    def _lr_scale(self, step: int) -> float:
        return min(1.0, (step + 1) / self.rl.warmup_steps) if self.rl.warmup_steps else 1.0

    def step(self, step: int) -> tuple[dict, list[Trajectory]]:
        """One RL iteration. Returns (metrics row, trajectories)."""
        timer = StepTimer()
        metrics: dict[str, float] = {}
        if self.rl.dynamic_sampling:
            rounds = iter(range(self.rl.dynamic_max_extra_rounds + 1))
            trajs, dyn = dynamic_sample(lambda n: self._rollout(step, n, next(rounds), timer, metrics),
                                        self.rl.prompts_per_step, self.rl.dynamic_max_extra_rounds)
            metrics.update(dyn)
        else:
            trajs = self._rollout(step, self.rl.prompts_per_step, 0, timer, metrics)
        with timer.phase("reward"):
            if self.rl.kl_coef and self.rl.kl_in == "reward":
                self._kl_into_rewards(trajs)
            assign_advantages(trajs, self.rl.advantage.name, **self.rl.advantage.options)
        metrics.update(self._update(trajs, timer))
        with timer.phase("weight_sync"):
            self.version += 1
            self.engine.sync_weights(self.accelerator.unwrap_model(self.model).named_parameters(), self.version)
        if self.on_results:
            self.on_results(trajs)
        metrics.update(rollout_metrics(trajs, self.recipe))
        metrics.update(getattr(self.engine, "last_metrics", {}))  # engine wrappers' own (partial/*)
        metrics.update(timer.finish())
        metrics["tokens_per_s"] = metrics["response_tokens"] / max(metrics["step_seconds"], 1e-9)
        metrics["step"] = step
        return metrics, trajs

    def _rollout(self, step: int, n_prompts: int, round_: int, timer: StepTimer, metrics: dict) -> list[Trajectory]:
        """Generate ``rollout.n`` samples for each of ``n_prompts`` new prompts and score them."""
        with timer.phase("generate"):
            prompts = self.next_prompts(step, n_prompts)
            seed = self.recipe.seed * 100003 + step * 101 + round_
            tag = f"@{step}" if round_ == 0 else f"@{step}.{round_}"
            sampling = sampling_from(self.recipe, seed=seed, logprobs=wants_rollout_logprobs(self.recipe, step))
            trajs = self.engine.generate(prompts, sampling, group_tag=tag)
        with timer.phase("reward"):
            for k, v in compute_rewards(trajs, self._reward_specs(step)).items():
                metrics[k] = metrics.get(k, 0.0) + v
        return trajs

    def _reward_specs(self, step: int) -> list[RewardSpec]:
        """The recipe's rewards, with the length penalty's weight following its warm-up schedule (k1.5)."""
        rl = self.rl
        return [replace(s, weight=length_penalty_weight(step, rl.length_penalty_warmup, s.weight))
                if s.name == rl.length_penalty_reward else s for s in self.recipe.rewards]

    def _kl_into_rewards(self, trajs: list[Trajectory]) -> None:
        """KL to the reference subtracted from each trajectory's reward (instead of a loss term)."""
        live = [t for t in trajs if t.response_ids]
        ref: dict[int, list[float]] = {}
        with torch.no_grad():
            for chunk, batch in self._batches(self.ref_model, live):
                lp = response_logprobs(self.ref_model, batch, temperature=self.temperature)[0]
                for t, row in zip(chunk, lp.tolist(), strict=True):
                    ref[id(t)] = row[: len(t.response_ids)]
        apply_kl_to_rewards(live, [ref[id(t)] for t in live], self.rl.kl_coef, self.rl.kl_estimator)

    def _batches(self, model, trajs: list[Trajectory]) -> list[tuple[list[Trajectory], TokenBatch]]:
        """Micro-batches for ``model`` as (trajectories, tensors on its device); the packed layout (index tensors
        and per-response masks) is built only when ``model`` can use it."""
        pack = can_pack(model)
        return [(chunk, collate(chunk, self.tokenizer.pad_token_id, pack=pack).to(self.accelerator.device))
                for chunk in micro_batches(model, trajs, self.rl.micro_batch_size)]

    def _update(self, trajs: list[Trajectory], timer: StepTimer) -> dict:
        """``updates_per_step`` optimizer steps over the batch. On-policy with one update, pi_old is the
        current policy, so its log-probs come from the same forward pass (no recompute)."""
        rl = self.rl
        live = [t for t in trajs if t.response_ids]
        if not live:  # nothing finished this step (partial rollouts) or nothing kept (dynamic sampling)
            return {"skipped_update": 1.0}
        chunks = [batch for _, batch in self._batches(self.model, live)]
        total_tokens = float(sum(c.mask.sum() for c in chunks))
        total_seqs = float(sum((c.mask.sum(-1) > 0).sum() for c in chunks))
        kl_in_loss = self.ref_model is not None and rl.kl_in == "loss"
        if rl.updates_per_step > 1 or kl_in_loss:
            with timer.phase("logprob_recompute"), torch.no_grad():
                for c in chunks:
                    if rl.updates_per_step > 1:
                        c.old_logprobs = response_logprobs(self.model, c, temperature=self.temperature)[0]
                    if kl_in_loss:
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
        logp, entropy = response_logprobs(self.model, c, with_entropy=True, temperature=self.temperature,
                                          entropy_grad=bool(rl.entropy_coef))
        old = c.old_logprobs if c.old_logprobs is not None else logp.detach()
        batch = LossBatch(logprobs=logp, old_logprobs=old, advantages=c.advantages, mask=c.mask,
                          ref_logprobs=c.ref_logprobs, rollout_logprobs=c.rollout_logprobs,
                          entropy=entropy if rl.entropy_coef else None,
                          total_tokens=total_tokens, total_seqs=total_seqs)
        loss, m = policy_loss(batch, rl.loss.name, rl.loss.options, agg=rl.aggregation,
                              max_len=self.recipe.rollout.max_tokens,
                              kl_coef=rl.kl_coef if rl.kl_in == "loss" else 0.0,
                              kl_estimator=rl.kl_estimator, entropy_coef=rl.entropy_coef, tis_cap=rl.tis_cap)
        self.accelerator.backward(loss)
        mask = c.mask
        n = mask.sum().clamp(min=1.0)
        m["entropy"] = float((entropy.detach() * mask).sum() / n)
        if first and c.rollout_logprobs is not None:  # the policy that sampled == the policy before the first update
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
