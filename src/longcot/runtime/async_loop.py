"""The driver's RL loop in the Ray runtime: what :class:`~longcot.rl.trainer.RLTrainer` is for the local one.

Rollout workers generate continuously (:mod:`longcot.runtime.rollouts`); this loop, in the driver's main thread,
scores what they deliver with the recipe's rewards (the existing reward pools), keeps the scored units in a
buffer, and per step

1. admits ``rl.prompts_per_step`` units from the buffer, oldest first, dropping (and counting) the ones more than
   ``rl.max_off_policy_steps`` versions behind the trainer, and with dynamic sampling the uninformative ones;
   it never trains on a short batch: it waits for more deliveries instead;
2. computes advantages (and KL-in-reward through the trainer's reference);
3. sends the batch to the trainer actor and, while it trains, keeps scoring deliveries;
4. makes the new version the one producers pin next (the trainer published it: one object-store put).

``step(step) -> (metrics row, trajectories)``, ``engine`` (evaluation) and ``learner`` (checkpoints) are the
interface ``pipeline.rl_loop`` uses, as with ``RLTrainer``. Metrics add ``async/*``: staleness, dropped
samples, queue depth, and the busy fraction of each worker and of the trainer over the step's wall time.
"""

from __future__ import annotations

import logging
import math
import queue
import threading
import time
from collections import deque
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import replace
from itertools import zip_longest
from typing import Any

from longcot.config import Recipe
from longcot.record import Trajectory
from longcot.rewards.registry import RewardSpec, compute_rewards, prepare_rewards
from longcot.rl.advantages import assign_advantages
from longcot.rl.dynamic_sampling import is_uninformative
from longcot.rl.kl import apply_kl_to_rewards
from longcot.rl.length_penalty import length_penalty_weight
from longcot.rl.timing import StepTimer
from longcot.rl.trainer import (
    reward_means,
    rollout_metrics,
    sampling_from,
    step_seed,
    wants_rollout_logprobs,
    wants_routing,
)
from longcot.runtime.admission import Admission, Unit, admit, split_units, staleness_metrics
from longcot.runtime.learner_actor import TrainerGroup
from longcot.runtime.remote import WorkerEngine
from longcot.runtime.rollouts import Delivery, Failure, Producer, PromptQueue

log = logging.getLogger(__name__)
SYNC_CHECK_SAMPLES = 4


# Engine-wrapper metrics that count things per call (partial/*, agents/problems/*): summed over a step's
# deliveries; every other one (means, fractions, gauges) is averaged weighted by the samples each call returned.
_COUNTS = ("generated_tokens", "tokens_wasted", "repeat_cut", "dropped_groups", "restarted", "continued",
           "generate_calls", "returned", "subagent_engine_calls")


def merge_engine_metrics(deliveries: list[tuple[dict[str, float], int]],
                         trained: list[tuple[dict[str, float], int]] | None = None) -> dict[str, float]:
    """One row's ``partial/*`` and ``agents/*`` from the wrappers' ``last_metrics``: counts summed over
    ``deliveries`` (every call since the previous row), the other metrics averaged over ``trained`` (the calls
    that delivered this step's batch; default: the same list), weighted by the samples each returned."""
    trained = deliveries if trained is None else trained
    out: dict[str, float] = {}
    for key in sorted({k for m, _ in deliveries + trained for k in m}):
        if key.rsplit("/", 1)[-1] in _COUNTS or key.startswith("agents/problems/"):
            out[key] = float(sum(m[key] for m, _ in deliveries if key in m))
            continue
        have = [(m[key], n) for m, n in trained if key in m]
        if sum(n for _, n in have) > 0:
            out[key] = sum(v * n for v, n in have) / sum(n for _, n in have)
    return out


def deal_partial_buffers(saved: list[dict | None], workers: int) -> list[dict | None]:
    """The partial-rollout buffers of a state (one per rollout worker when it was saved) for ``workers`` workers:
    as saved when the count is the same; else every buffered group, oldest first by position, dealt round-robin
    (a resumed run may have more or fewer workers; any engine can continue a buffered sample)."""
    if len(saved) == workers:
        return saved
    if all(b is None for b in saved):
        return [None] * workers
    groups = [item for items in zip_longest(*(list((b or {}).items()) for b in saved)) for item in items if item]
    out: list[dict | None] = [{} for _ in range(workers)]
    for i, (gid, members) in enumerate(groups):
        out[i % workers][gid] = members
    return out


def _add(timer: StepTimer, phase: str, seconds: float) -> None:
    """Charge ``seconds`` to ``phase`` (for phases measured by hand, interleaved in one wait)."""
    timer.parts[phase] = timer.parts.get(phase, 0.0) + max(seconds, 0.0)


class AsyncRL:
    """Asynchronous RL steps over rollout workers and a trainer actor (see the module doc)."""

    def __init__(self, recipe: Recipe, trainer: TrainerGroup, workers: list[WorkerEngine], stacks: list[Any],
                 eval_engine: Any, next_prompts: Callable, on_results: Callable | None = None) -> None:
        self.recipe, self.rl = recipe, recipe.rl
        self.learner, self.engine, self.workers, self.stacks = trainer, eval_engine, workers, stacks
        self.on_results = on_results
        prepare_rewards(recipe.rewards)
        P, n = self.rl.prompts_per_step, len(workers)
        chunk = min(recipe.cluster.prompts_per_call or math.ceil(P / n), P)
        self.sampler_lock = threading.Lock()
        self.prompts = PromptQueue(next_prompts, P, self.rl.max_off_policy_steps, chunk, self.rl.steps * P,
                                   self.sampler_lock)
        self.deliveries: queue.Queue = queue.Queue()
        self.buffer: deque[Unit] = deque()
        self.stop_event = threading.Event()
        keeps = recipe.partial.enabled or recipe.partial.repetition.enabled
        self._pause_depth = 0
        self.producers = [Producer(w, s, self.prompts, self.deliveries, lambda: self.learner.published,
                                   self._sampling, self.stop_event, keeps)
                          for w, s in zip(workers, stacks, strict=True)]
        self.started = False
        self.step_index = 0
        self.consumed = 0  # units trained on over the run (a resumed run may have a new rl.steps)
        self.kept = self.examined = 0  # dynamic sampling, over the run
        self.totals = {"dropped_samples": 0.0}
        self._reset_step_stats()
        self.mark = time.perf_counter()
        self.busy_mark = [0.0] * n
        self.wait_mark = [0.0] * n

    @property
    def remaining(self) -> int:
        """Units still to train on in this run: what the prompt queue may still draw for."""
        return self.rl.steps * self.rl.prompts_per_step - self.consumed

    # ---- what producers call ----------------------------------------------------------------------------------
    def _sampling(self, seq: int):
        # the experts each token was routed to: every step for R3 (rl.routing_replay=r3), and with the log-probs (the
        # routing agreement metric) when the workers' engines capture them, as in the local runtime
        return sampling_from(self.recipe, seed=step_seed(self.recipe, seq), logprobs=wants_rollout_logprobs(
            self.recipe, seq), routed_experts=wants_routing(self.recipe, seq, self.workers[0]))

    def start(self) -> None:
        if not self.started:
            self.started = True
            for p in self.producers:
                p.start()

    @contextmanager
    def paused(self):
        """No engine call runs on any worker inside the block (evaluation, a consistent state snapshot).
        Re-entrant: a training state pauses once around its whole snapshot, which calls :meth:`state_dict`."""
        if not self.started or self._pause_depth:
            self._pause_depth += 1
            try:
                yield
            finally:
                self._pause_depth -= 1
            return
        self.prompts.pause()
        self._pause_depth = 1
        try:
            yield
        finally:
            self._pause_depth = 0
            self.prompts.resume()

    # ---- one step ------------------------------------------------------------------------------------------------
    def step(self, step: int) -> tuple[dict, list[Trajectory]]:
        if self.remaining <= 0:  # no producer would ever draw another prompt: fail instead of waiting forever
            raise RuntimeError(f"RL step {step}: the {self.consumed} prompts of rl.steps={self.rl.steps} x "
                               f"rl.prompts_per_step={self.rl.prompts_per_step} are all trained on already")
        self.start()
        timer = StepTimer()
        self.step_index = step
        version = self.learner.version
        adm = self._collect(version, timer)
        trajs = [t for u in adm.units for t in u.trajs]
        t0 = time.perf_counter()
        if self.rl.kl_coef and self.rl.kl_in == "reward":
            live = [t for t in trajs if t.response_ids]
            apply_kl_to_rewards(live, self.learner.reference_logprobs(live), self.rl.kl_coef, self.rl.kl_estimator)
        assign_advantages(trajs, self.rl.advantage.name, **self.rl.advantage.options)
        _add(timer, "reward", time.perf_counter() - t0)
        metrics = self._train(trajs, step, timer)
        metrics.update(self._step_metrics(adm, trajs, version))
        metrics.update(timer.finish())
        metrics["tokens_per_s"] = metrics["response_tokens"] / max(metrics["step_seconds"], 1e-9)
        metrics["step"] = step
        metrics["policy_version"] = float(self.learner.version)
        metrics.update(self._busy(metrics["step_seconds"], metrics.pop("trainer/busy_s")))
        if self.remaining <= 0:
            self.prompts.stop()  # the last batch is taken: no more generation
        return metrics, trajs

    def _collect(self, version: int, timer: StepTimer) -> Admission:
        """Admit ``P`` units (waiting for deliveries as needed); dynamic sampling stops at the local runtime's cap."""
        P, k = self.rl.prompts_per_step, self.rl.max_off_policy_steps
        informative = (lambda u: not is_uninformative(u.main)) if self.rl.dynamic_sampling else None
        cap = P * (1 + 4 * self.rl.dynamic_max_extra_rounds) if self.rl.dynamic_sampling else None
        adm = Admission()
        t0, r0 = time.perf_counter(), self.reward_s
        while True:
            before = len(adm.units) + len(adm.stale) + len(adm.uninformative)
            admit(self.buffer, P, version, k, informative, into=adm)
            seen = len(adm.units) + len(adm.uninformative)
            done = len(adm.units) >= P or (cap is not None and seen >= cap)
            # a complete batch goes to the trainer next: the run-ahead budget shrinks with the consumption
            self.prompts.consumed(len(adm.units) + len(adm.stale) + len(adm.uninformative) - before, done)
            if done:
                break
            self._pump(timeout=0.5)
        _add(timer, "reward", self.reward_s - r0)
        _add(timer, "wait_rollouts", time.perf_counter() - t0 - (self.reward_s - r0))
        self.consumed += len(adm.units)
        if informative is not None:
            self.kept += len(adm.units)
            self.examined += len(adm.units) + len(adm.uninformative)
        overdraw = min(4.0, self.examined / max(self.kept, 1)) if self.kept else 1.0
        self.prompts.update(remaining=max(self.remaining, 0), overdraw=overdraw)
        return adm

    def _train(self, trajs: list[Trajectory], step: int, timer: StepTimer) -> dict:
        """The update on the trainer actor; deliveries are scored while it runs."""
        import ray

        every = self.recipe.rollout.sync_check_every
        live = [t for t in trajs if t.response_ids and t.prompt_ids][:SYNC_CHECK_SAMPLES]
        check = ([t.prompt_ids for t in live], [t.response_ids for t in live]) if every and step % every == 0 \
            and live else None
        self.prompts.update(update_in_flight=True)
        t0, r0 = time.perf_counter(), self.reward_s
        ref = self.learner.update_async(trajs, check)
        while not ray.wait([ref], timeout=0.02)[0]:
            self._pump(timeout=0.02)
        reply = self.learner.finish_update(ref)
        self.prompts.update(update_in_flight=False)
        _add(timer, "reward", self.reward_s - r0)
        _add(timer, "train", time.perf_counter() - t0 - (self.reward_s - r0))
        return {**reply.metrics, "trainer/busy_s": reply.busy_s}

    # ---- deliveries ----------------------------------------------------------------------------------------------
    def _pump(self, timeout: float) -> None:
        """Score one delivery (waiting up to ``timeout``); re-raise a producer's failure."""
        try:
            item = self.deliveries.get(timeout=timeout)
        except queue.Empty:
            if self.started and not any(p.is_alive() for p in self.producers) and self.deliveries.empty():
                raise RuntimeError("every rollout producer has stopped and the batch is not complete") from None
            return
        if isinstance(item, Failure):
            raise RuntimeError(f"rollout worker {item.worker} failed: {item.error}") from item.error
        self._score(item)

    def _score(self, item: Delivery) -> None:
        t0 = time.perf_counter()
        counters = compute_rewards(item.trajs, self._reward_specs())
        if self.on_results:
            with self.sampler_lock:
                self.on_results(item.trajs)  # the sampler hears every scored sample, dropped ones included
        for key, value in counters.items():
            if key.startswith("reward_errors/"):
                self.step_stats[key] = self.step_stats.get(key, 0.0) + value
        delivery = (item.engine_metrics, len(item.trajs))
        self.engine_metrics.append(delivery)
        for unit in split_units(item.trajs, item.version, item.worker):
            unit.delivery = delivery
            self.buffer.append(unit)
        dropped = int(item.engine_metrics.get("partial/dropped_groups", 0))
        if dropped:
            self.prompts.consumed(dropped)
        self.reward_s += time.perf_counter() - t0

    def _reward_specs(self) -> list[RewardSpec]:
        rl = self.rl
        return [replace(s, weight=length_penalty_weight(self.step_index, rl.length_penalty_warmup, s.weight))
                if s.name == rl.length_penalty_reward else s for s in self.recipe.rewards]

    # ---- metrics -------------------------------------------------------------------------------------------------
    def _reset_step_stats(self) -> None:
        self.step_stats: dict[str, float] = {}
        self.engine_metrics: list[tuple[dict[str, float], int]] = []
        self.reward_s = 0.0

    def _step_metrics(self, adm: Admission, trajs: list[Trajectory], version: int) -> dict:
        out = dict(self.step_stats)
        scored = [t for u in adm.units + adm.uninformative for t in u.trajs]
        out.update(reward_means(scored))
        out.update(rollout_metrics(trajs, self.recipe))
        calls = {id(u.delivery): u.delivery for u in adm.units + adm.uninformative if u.delivery is not None}
        out.update(merge_engine_metrics(self.engine_metrics, list(calls.values())))
        out.update(staleness_metrics(adm.units, version))
        self.totals["dropped_samples"] += adm.dropped_samples
        out["async/batch_samples"] = float(len(trajs))
        out["async/dropped_samples"] = float(adm.dropped_samples)
        out["async/dropped_samples_total"] = self.totals["dropped_samples"]
        out["async/queue_units"] = float(len(self.buffer))
        out["async/inflight_units"] = float(max(self.prompts.ahead - len(self.buffer), 0))
        out["async/requeued_chunks_total"] = float(self.prompts.requeued_total)
        out["async/worker_restarts_total"] = float(sum(w.restarts for w in self.workers))
        if self.rl.dynamic_sampling:
            seen = len(adm.units) + len(adm.uninformative)
            out.update({"dynamic/kept_fraction": len(adm.units) / seen if seen else 0.0,
                        "dynamic/groups_generated": float(seen),
                        "dynamic/groups_short": float(self.rl.prompts_per_step - len(adm.units))})
        checks = [c for w in self.workers for c in w.checks]
        for w in self.workers:
            w.checks.clear()
        if checks:
            out["sync_check/gap_mean"] = max(c["sync_check/gap_mean"] for c in checks)
            out["sync_check/gap_max"] = max(c["sync_check/gap_max"] for c in checks)
        self._reset_step_stats()
        return out

    def _busy(self, step_seconds: float, trainer_busy_s: float) -> dict[str, float]:
        """Busy fractions over the wall time since the previous row: each worker (inside engine calls), its
        producer's wait for the run-ahead budget, and the trainer (inside updates)."""
        now = time.perf_counter()
        wall = max(now - self.mark, 1e-9)
        out = {"async/busy/trainer": min(trainer_busy_s / wall, 1.0)}
        for i, (w, p) in enumerate(zip(self.workers, self.producers, strict=True)):
            out[f"async/busy/worker{i}"] = min((w.busy_s - self.busy_mark[i]) / wall, 1.0)
            out[f"async/wait_budget/worker{i}"] = min((p.wait_s - self.wait_mark[i]) / wall, 1.0)
            self.busy_mark[i], self.wait_mark[i] = w.busy_s, p.wait_s
        self.mark = now
        return out

    # ---- state for resume, and the end ---------------------------------------------------------------------------
    def state_dict(self) -> dict:
        """The driver side of the async loop, taken with every worker idle: scored units waiting in the buffer,
        re-queued chunks, partial-rollout buffers, counters. Deliveries in flight are scored into the buffer
        first, so nothing generated is lost. (The sampler's state belongs to the prompt source; the learner's to
        :attr:`learner`.)"""
        with self.paused():
            while not self.deliveries.empty():
                self._pump(timeout=0)
            return {"buffer": list(self.buffer), "requeued": list(self.prompts.requeued), "seq": self.prompts.seq,
                    "remaining": self.remaining, "consumed": self.consumed, "kept": self.kept,
                    "examined": self.examined, "totals": dict(self.totals),
                    "partial": [getattr(s, "buffer", None) for s in self.stacks]}

    def load_state_dict(self, state: dict) -> None:
        """Restore :meth:`state_dict` before the first step."""
        if self.started:
            raise RuntimeError("AsyncRL.load_state_dict must run before the first step")
        self.buffer = deque(state["buffer"])
        # what is left follows the resumed run's rl.steps (extending a finished run must draw new prompts); a state
        # saved before "consumed" existed keeps its own count
        self.consumed = state.get("consumed", self.rl.steps * self.rl.prompts_per_step - state["remaining"])
        self.kept, self.examined = state["kept"], state["examined"]
        self.totals = dict(state["totals"])
        ahead = len(self.buffer) + sum(len(c.prompts) for c in state["requeued"])
        for stack, buf in zip(self.stacks, deal_partial_buffers(state["partial"], len(self.stacks)), strict=True):
            if buf is not None:
                stack.buffer = buf
                ahead += len(buf)
        self.prompts.requeued.extend(state["requeued"])
        self.prompts.update(seq=state["seq"], ahead=ahead, remaining=self.remaining)

    def shutdown(self) -> None:
        self.stop_event.set()
        self.prompts.stop()
        for p in self.producers:
            if p.is_alive():
                p.join(timeout=5)
