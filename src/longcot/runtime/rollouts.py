"""Continuous generation: a shared prompt queue and one producer thread per rollout worker.

Each producer loops: take the next chunk of prompts from the :class:`PromptQueue` (which draws from the sampler
only within the run-ahead budget, :mod:`longcot.runtime.admission`), bring its engine stack to the newest
published policy version, generate, and hand the trajectories to the driver's main thread (which scores them).
A worker is therefore busy as long as the budget allows, independently of the trainer.

Threads, not processes: a producer spends its time waiting on its actor (``ray.get``), so the driver's one
Python interpreter is enough, and the sampler, the partial-rollout buffers and the agent drivers stay plain
objects in the driver. The sampler is touched under one lock (drawing here, success updates in the main thread).

A worker that dies mid-call (:class:`~longcot.runtime.remote.WorkerLost`) puts its chunk back at the front of the
queue (another producer, or this one once Ray has restarted the actor, generates it again); with partial
rollouts the chunk's prompts already sit in the producer's buffer and simply continue.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from longcot.record import Trajectory
from longcot.rollout.base import Prompt, SamplingConfig
from longcot.runtime.admission import run_ahead_room
from longcot.runtime.remote import WorkerEngine, WorkerLost
from longcot.runtime.weights import PublishedWeights

log = logging.getLogger(__name__)


@dataclass
class Chunk:
    """Prompts for one engine call; ``seq`` numbers chunks in draw order (the group tag and sampling seed)."""

    seq: int
    prompts: list[Prompt]

    @property
    def tag(self) -> str:
        return f"@c{self.seq}"


@dataclass
class Delivery:
    """What one producer call hands to the driver."""

    trajs: list[Trajectory]
    worker: int
    version: int  # the policy version the stack was pinned to
    seconds: float
    engine_metrics: dict[str, float] = field(default_factory=dict)


@dataclass
class Failure:
    """A producer that cannot go on: the main thread re-raises ``error``."""

    worker: int
    error: BaseException


class PromptQueue:
    """The shared queue of prompt chunks, drawn from the sampler on demand within the run-ahead budget.

    ``ahead`` counts units (prompts) dispatched and not yet consumed by a batch (in flight, delivered, buffered);
    the main thread lowers it as batches consume units and tells the queue when an update is in flight.
    """

    def __init__(self, next_prompts: Callable[[int, int], list[Prompt]], prompts_per_step: int, k: int,
                 chunk_size: int, remaining: int, sampler_lock: threading.Lock) -> None:
        self.next_prompts, self.P, self.k, self.chunk_size = next_prompts, prompts_per_step, k, chunk_size
        self.sampler_lock = sampler_lock
        self.cond = threading.Condition()
        self.requeued: deque[Chunk] = deque()
        self.seq = 0
        self.ahead = 0
        self.remaining = remaining  # units the run still needs in its batches
        self.overdraw = 1.0  # dynamic sampling: units drawn per unit kept (estimated)
        self.update_in_flight = False
        self.stopped = self.paused = False
        self.active = 0  # producers inside an engine call
        self.requeued_total = 0

    def acquire(self, can_continue: bool = False) -> Chunk | None:
        """The next chunk (re-queued ones first); an empty chunk when ``can_continue`` (a partial-rollout buffer
        holds unfinished samples) and the budget allows no new prompts; None once stopped. Blocks otherwise."""
        with self.cond:
            while True:
                if self.stopped:
                    return None
                if not self.paused:
                    chunk = self._next_chunk(can_continue)
                    if chunk is not None:
                        self.active += 1
                        return chunk
                self.cond.wait(timeout=1.0)

    def _next_chunk(self, can_continue: bool) -> Chunk | None:
        if self.requeued:
            return self.requeued.popleft()
        need = max(0, int(self.remaining * self.overdraw + 0.999) - self.ahead)
        room = run_ahead_room(self.P, self.k, self.update_in_flight, self.ahead, self.ahead + need)
        size = min(self.chunk_size, room)
        if size > 0 and size >= min(self.chunk_size, need):
            with self.sampler_lock:
                prompts = self.next_prompts(self.seq, size)
            chunk = Chunk(self.seq, prompts)
            self.seq += 1
            self.ahead += size
            return chunk
        if can_continue and self.remaining > 0:
            return Chunk(-1, [])
        return None

    def release(self) -> None:
        with self.cond:
            self.active -= 1
            self.cond.notify_all()

    def requeue(self, chunk: Chunk) -> None:
        with self.cond:
            self.requeued.append(chunk)
            self.requeued_total += 1
            self.cond.notify_all()

    def update(self, **changes: Any) -> None:
        """Change ``ahead``/``remaining``/``overdraw``/``update_in_flight`` from the main thread and wake producers."""
        with self.cond:
            for key, value in changes.items():
                setattr(self, key, value)
            self.cond.notify_all()

    def consumed(self, units: int, update_next: bool = False) -> None:
        """A batch took ``units``. ``update_next``: the batch is complete and its update starts now; the budget
        shrinks in the same step, else a producer woken here could draw a chunk at the current version that
        would train two versions later and be dropped (one whole batch of wasted generation)."""
        with self.cond:
            self.ahead = max(0, self.ahead - units)
            if update_next:
                self.update_in_flight = True
            self.cond.notify_all()

    def pause(self, timeout_s: float = 600.0) -> None:
        """No new engine calls; returns once every producer has finished the call it was in."""
        with self.cond:
            self.paused = True
            deadline = time.monotonic() + timeout_s
            while self.active > 0:
                if not self.cond.wait(timeout=max(0.0, deadline - time.monotonic())):
                    raise TimeoutError(f"rollout producers did not finish their calls within {timeout_s:.0f} s")

    def resume(self) -> None:
        with self.cond:
            self.paused = False
            self.cond.notify_all()

    def stop(self) -> None:
        with self.cond:
            self.stopped = True
            self.cond.notify_all()


class Producer(threading.Thread):
    """Generates chunks on one worker through the recipe's engine stack until the queue stops."""

    def __init__(self, worker: WorkerEngine, stack: Any, prompts: PromptQueue, out: queue.Queue,
                 latest: Callable[[], PublishedWeights | None], sampling_for: Callable[[int], SamplingConfig],
                 stop: threading.Event, keeps_unfinished: bool) -> None:
        super().__init__(name=f"longcot-rollouts-{worker.index}", daemon=True)
        self.worker, self.stack, self.prompts, self.out = worker, stack, prompts, out
        self.latest, self.sampling_for, self.stop_event = latest, sampling_for, stop
        self.keeps_unfinished = keeps_unfinished  # partial rollouts: the stack buffers unfinished samples
        self.pinned = -1
        self.wait_s = 0.0  # seconds blocked on the queue (budget or pause): the worker's idle time

    def backlog(self) -> bool:
        buffer = getattr(self.stack, "buffer", None)
        return bool(self.keeps_unfinished and buffer)

    def run(self) -> None:
        try:
            while not self.stop_event.is_set():
                t0 = time.perf_counter()
                chunk = self.prompts.acquire(self.backlog())
                self.wait_s += time.perf_counter() - t0
                if chunk is None:
                    return
                try:
                    self._generate(chunk)
                finally:
                    self.prompts.release()
        except BaseException as e:  # noqa: BLE001 - the main thread re-raises it
            self.out.put(Failure(self.worker.index, e))

    def _generate(self, chunk: Chunk) -> None:
        pub = self.latest()
        if pub is not None and pub.version > self.pinned:
            self.stack.sync_weights(pub, pub.version)
            self.pinned = pub.version
        t0 = time.perf_counter()
        try:
            trajs = self.stack.generate(chunk.prompts, self.sampling_for(max(chunk.seq, 0)), group_tag=chunk.tag)
        except WorkerLost as e:
            log.warning("%s; %s", e, "its chunk is re-queued" if chunk.prompts and not self.keeps_unfinished
                        else "its unfinished samples stay buffered")
            if chunk.prompts and not self.keeps_unfinished:
                self.prompts.requeue(chunk)
            self.pinned = -1
            self.worker.wait_alive(self.stop_event)
            return
        for t in trajs:  # the worker tags what it generates; records built in the driver (partial, agents) too
            t.meta.setdefault("worker", self.worker.index)
        metrics = dict(getattr(self.stack, "last_metrics", {}) or {})
        self.out.put(Delivery(trajs, self.worker.index, self.worker.version, time.perf_counter() - t0, metrics))
