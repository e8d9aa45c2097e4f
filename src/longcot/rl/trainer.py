"""The RL loop: sample prompts -> rollouts -> rewards -> advantages -> learner update -> weight sync.

The loop knows nothing about which algorithm it runs: the advantage estimator and the policy loss are
looked up by name (``rl.advantage.name``, ``rl.loss.name``) and called through ``assign_advantages`` and
the :class:`~longcot.rl.learner.Learner` (or its remote handle). Each step writes one row of metrics,
including a time breakdown whose parts add up to the step time.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import replace

from longcot.config import Recipe
from longcot.record import Trajectory
from longcot.rewards.registry import RewardSpec, compute_rewards, prepare_rewards
from longcot.rl.advantages import assign_advantages
from longcot.rl.dynamic_sampling import dynamic_sample
from longcot.rl.kl import apply_kl_to_rewards
from longcot.rl.length_penalty import length_penalty_weight
from longcot.rl.remote import make_learner
from longcot.rl.sync_check import check_weight_sync
from longcot.rl.timing import StepTimer
from longcot.rollout.base import Engine, Prompt, SamplingConfig
from longcot.rollout.colocate import engine_memory_released

log = logging.getLogger(__name__)

__all__ = ["RLTrainer", "StepTimer", "rollout_metrics", "sampling_from", "wants_rollout_logprobs"]


def sampling_from(recipe: Recipe, seed: int | None = None, logprobs: bool = True,
                  routed_experts: bool = False) -> SamplingConfig:
    r = recipe.rollout
    return SamplingConfig(n=r.n, temperature=r.temperature, top_p=r.top_p, top_k=r.top_k,
                          max_tokens=r.max_tokens, stop=list(r.stop), seed=seed, logprobs=logprobs,
                          routed_experts=routed_experts)


def wants_rollout_logprobs(recipe: Recipe, step: int) -> bool:
    """Whether step ``step`` asks the engine for log-probs: always when a rollout correction, KL-in-reward, pi_old
    from the engine or off-policy rollouts read them, else every ``rollout.logprobs_every`` steps, for the
    mismatch metrics only."""
    rl, every = recipe.rl, recipe.rollout.logprobs_every
    if rl.rollout_correction.active or (rl.kl_coef and rl.kl_in == "reward") or rl.old_logprobs == "engine" \
            or rl.max_off_policy_steps:
        return True
    return every > 0 and step % every == 0


def wants_routing(recipe: Recipe, step: int, engine: Engine) -> bool:
    """Whether step ``step`` asks the engine for each token's experts: every step for R3, and with the engine's
    log-probs (the routing agreement metric) when the engine captures them."""
    if recipe.rl.routing_replay == "r3":
        return True
    return bool(getattr(engine, "captures_routing", False)) and wants_rollout_logprobs(recipe, step)


def step_seed(recipe: Recipe, step: int, round_: int = 0) -> int:
    """The sampling seed of one generation round: a function of the run seed and the step only, so a resumed
    run samples exactly what the uninterrupted one would have."""
    return recipe.seed * 100003 + step * 101 + round_


class RLTrainer:
    """Drives an :class:`Engine` and a :class:`Learner` through RL steps (the local, synchronous runtime)."""

    def __init__(self, model, tokenizer, engine: Engine, recipe: Recipe,
                 next_prompts: Callable[[int, int], list[Prompt]],
                 on_results: Callable[[list[Trajectory]], None] | None = None):
        self.recipe, self.rl = recipe, recipe.rl
        self.tokenizer, self.engine = tokenizer, engine
        self.next_prompts, self.on_results = next_prompts, on_results
        self.learner = make_learner(model, tokenizer, recipe)  # in this process, or the trainer ranks' (ddp/fsdp)
        prepare_rewards(recipe.rewards)

    # The policy side, for callers that save or inspect it.
    @property
    def model(self):
        return self.learner.model

    @property
    def version(self) -> int:
        return self.learner.version

    def step(self, step: int) -> tuple[dict, list[Trajectory]]:
        """One RL iteration. Returns (metrics row, the trajectories trained on)."""
        timer = StepTimer()
        metrics: dict[str, float] = {}
        scored: list[Trajectory] = []  # every scored sample of the step, refill rounds included
        if self.rl.dynamic_sampling:
            rounds = iter(range(self.rl.dynamic_max_extra_rounds + 1))
            trajs, dyn = dynamic_sample(lambda n: self._rollout(step, n, next(rounds), timer, metrics, scored),
                                        self.rl.prompts_per_step, self.rl.dynamic_max_extra_rounds)
            metrics.update(dyn)
        else:
            trajs = self._rollout(step, self.rl.prompts_per_step, 0, timer, metrics, scored)
        with timer.phase("reward"):
            if self.rl.kl_coef and self.rl.kl_in == "reward":
                live = [t for t in trajs if t.response_ids]
                apply_kl_to_rewards(live, self.learner.reference_logprobs(live), self.rl.kl_coef,
                                    self.rl.kl_estimator)
            assign_advantages(trajs, self.rl.advantage.name, **self.rl.advantage.options)
        metrics.update(self.train_on(trajs, step, timer))
        if self.on_results:
            self.on_results(scored)  # the sampler hears every scored group, also the ones dynamic sampling dropped
        metrics.update(reward_means(scored))
        metrics.update(rollout_metrics(trajs, self.recipe))
        metrics.update(getattr(self.engine, "last_metrics", {}))  # engine wrappers' own (partial/*)
        metrics.update(timer.finish())
        metrics["tokens_per_s"] = metrics["response_tokens"] / max(metrics["step_seconds"], 1e-9)
        metrics["step"] = step
        metrics["policy_version"] = float(self.learner.version)
        return metrics, trajs

    def train_on(self, trajs: list[Trajectory], step: int, timer: StepTimer) -> dict:
        """Update the policy on a scored batch, then publish the new weights to the engine. A skipped update
        (nothing to train on) changes no weights: no new version, no sync, no warm-up step."""
        with engine_memory_released(self.engine):  # vLLM sleep mode on a shared GPU; a no-op on CPU
            metrics = self.learner.update(trajs, timer)
        if metrics.get("skipped_update"):
            return metrics
        with timer.phase("weight_sync"):
            self.engine.sync_weights(self.learner.named_parameters(), self.learner.version)
        every = self.recipe.rollout.sync_check_every
        if every and step % every == 0:
            with timer.phase("sync_check"):
                metrics.update(check_weight_sync(self.engine, self.learner, trajs,
                                                 self.recipe.rollout.sync_check_max_gap))
        return metrics

    def _rollout(self, step: int, n_prompts: int, round_: int, timer: StepTimer, metrics: dict,
                 scored: list[Trajectory]) -> list[Trajectory]:
        """Generate ``rollout.n`` samples for each of ``n_prompts`` new prompts and score them."""
        with timer.phase("generate"):
            prompts = self.next_prompts(step, n_prompts)
            tag = f"@{step}" if round_ == 0 else f"@{step}.{round_}"
            sampling = sampling_from(self.recipe, seed=step_seed(self.recipe, step, round_),
                                     logprobs=wants_rollout_logprobs(self.recipe, step),
                                     routed_experts=wants_routing(self.recipe, step, self.engine))
            trajs = self.engine.generate(prompts, sampling, group_tag=tag)
        with timer.phase("reward"):
            counters = compute_rewards(trajs, self._reward_specs(step))
        for k, v in counters.items():
            if k.startswith("reward_errors/"):  # counts add up over refill rounds; means are taken at the end
                metrics[k] = metrics.get(k, 0.0) + v
        scored.extend(trajs)
        return trajs

    def _reward_specs(self, step: int) -> list[RewardSpec]:
        """The recipe's rewards, with the length penalty's weight following its warm-up schedule (k1.5)."""
        rl = self.rl
        return [replace(s, weight=length_penalty_weight(step, rl.length_penalty_warmup, s.weight))
                if s.name == rl.length_penalty_reward else s for s in self.recipe.rewards]


def reward_means(trajs: list[Trajectory]) -> dict[str, float]:
    """``reward_mean/<component>`` over every scored sample of the step (all dynamic-sampling rounds)."""
    out = {}
    for k in sorted({k for t in trajs for k in t.rewards}):
        vals = [t.rewards[k] for t in trajs if k in t.rewards]
        out[f"reward_mean/{k}"] = sum(vals) / len(vals)
    return out


def rollout_metrics(trajs: list[Trajectory], recipe: Recipe) -> dict:
    """Per-step statistics of the trained batch: every reward component, accuracy, lengths, finish reasons."""
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
