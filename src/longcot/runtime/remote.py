"""Driver-side engines over rollout-worker actors: the Engine protocol, so every wrapper runs unchanged.

- :class:`WorkerEngine`: one worker. A producer thread wraps it in the recipe's engine stack (agents, partial
  rollouts) exactly as the local runtime wraps its in-process engine. ``sync_weights`` *pins* a published version:
  every call of the stack's next ``generate`` carries that version, so one sample never mixes policies (partial
  rollouts record a new segment per version, as in-process).
- :class:`PoolEngine`: all workers, for evaluation: a ``generate`` splits its prompts over the workers and brings
  each to the newest published version first. Per-sample seeds derive from (seed, prompt id), so the split does
  not change what is sampled.
- :class:`RemoteBackend`: the partial-rollout backend of one worker (requests with their own seeds and draw
  offsets run on the worker's engine; the buffer of unfinished samples stays in the driver).

A worker that dies surfaces as :class:`WorkerLost`; :meth:`WorkerEngine.wait_alive` waits for Ray to restart it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

from longcot.record import Trajectory
from longcot.rl.sync_check import WeightSyncError, gap_row, token_gaps
from longcot.rollout.base import Prompt, SamplingConfig
from longcot.rollout.common import check_inputs
from longcot.runtime.weights import PublishedWeights

log = logging.getLogger(__name__)


class WorkerLost(RuntimeError):
    """A call failed because its worker died (Ray restarts it unless its restarts are used up)."""

    def __init__(self, index: int, cause: BaseException) -> None:
        super().__init__(f"rollout worker {index} died: {type(cause).__name__}: {str(cause).splitlines()[0]}")
        self.index = index


class WorkerGone(RuntimeError):
    """A worker that died more often than ``cluster.max_worker_restarts``: Ray will not bring it back."""


def _actor_errors() -> tuple[type[BaseException], ...]:
    import ray

    return (ray.exceptions.RayActorError, ray.exceptions.ActorUnavailableError)


class WorkerEngine:
    """An :class:`~longcot.rollout.base.Engine` for one rollout-worker actor (see the module doc)."""

    def __init__(self, handle: Any, index: int, tokenizer: Any, max_model_len: int | None, version: int = 0,
                 sync_check_max_gap: float = 0.1, role: str = "policy") -> None:
        self.handle, self.index, self.tokenizer, self.max_model_len = handle, index, tokenizer, max_model_len
        self.role = role
        self.captures_routing = False  # set by the runtime from the engine's options (rl/trainer.py: wants_routing)
        self.loaded = version  # the version the actor holds (-1: unknown, after a restart)
        self.pinned: PublishedWeights | None = None
        self.max_gap = sync_check_max_gap
        self.lock = threading.Lock()
        self.busy_s = 0.0  # seconds the actor spent in calls (its busy fraction)
        self.calls = self.restarts = 0
        self.checks: list[dict[str, float]] = []  # weight-sync canary results not yet reported

    @property
    def version(self) -> int:
        return self.pinned.version if self.pinned is not None else max(self.loaded, 0)

    # ---- Engine protocol -----------------------------------------------------------------------------------------
    def generate(self, prompts: list[Prompt], sampling: SamplingConfig, group_tag: str = "") -> list[Trajectory]:
        check_inputs(prompts, sampling, self.max_model_len)
        if not prompts:
            return []
        return self.call("generate", prompts, sampling, group_tag, self.role, weights=self.pinned)

    def sync_weights(self, named_params: Iterable | PublishedWeights, version: int) -> None:
        """Pin ``named_params``, a :class:`PublishedWeights` (the Ray runtime never passes tensors): the next
        calls carry it and the worker loads it before generating."""
        if not isinstance(named_params, PublishedWeights):
            raise TypeError("WorkerEngine.sync_weights takes the PublishedWeights of a version, not tensors")
        self.pinned = named_params

    def compute_logprobs(self, prompt_ids: list[list[int]], response_ids: list[list[int]]) -> list[list[float]]:
        return self.call("compute_logprobs", prompt_ids, response_ids, weights=self.pinned, check=False)

    def partial_backend(self, exact_resume: bool) -> RemoteBackend:
        """``rollout/partial.py`` asks its engine for a backend; this one runs the requests on the worker."""
        return RemoteBackend(self, exact_resume)

    # ---- calls ---------------------------------------------------------------------------------------------------
    def call(self, method: str, *args: Any, weights: PublishedWeights | None = None, check: bool = True) -> Any:
        """``method`` on the actor, with ``weights`` attached when the actor holds an older version."""
        import ray

        with self.lock:
            attach = weights if weights is not None and weights.version > self.loaded else None
            extra: dict[str, Any] = {}
            if attach is not None:
                extra = {"weights": attach.ref, "version": attach.version}
                if check and attach.check_pairs is not None:
                    extra["check"] = attach.check_pairs
            ref = getattr(self.handle, method).remote(*args, **extra)
            if attach is not None:
                self.loaded = attach.version
        try:
            reply = ray.get(ref)
        except _actor_errors() as e:
            with self.lock:
                self.loaded = -1  # a restarted actor holds the checkpoint it was built from
            raise WorkerLost(self.index, e) from e
        with self.lock:
            self.busy_s += reply.busy_s
            self.calls += 1
        if reply.check is not None and attach is not None:
            self._record_check(attach, reply.check)
        return reply.output

    def _record_check(self, pub: PublishedWeights, engine_lp: list[list[float]]) -> None:
        """The weight-sync canary on this worker: its log-probs after loading ``pub`` vs the trainer's."""
        # every response token: the trainer actor scores the check pairs unmasked (observations too), as the engine
        gaps = token_gaps(engine_lp, pub.check_logprobs)
        if not gaps:
            return
        row = gap_row(gaps)
        self.checks.append(row)
        if row["sync_check/gap_mean"] > self.max_gap:
            raise WeightSyncError(
                f"weight sync check failed on rollout worker {self.index} at policy version {pub.version}: its "
                f"log-probs differ from the trainer's by {row['sync_check/gap_mean']:.3g} on average (max "
                f"{row['sync_check/gap_max']:.3g}), above rollout.sync_check_max_gap={self.max_gap}. The worker is "
                "not sampling from the policy being trained; see docs/rollout.md 'Weight sync'.")

    def wait_alive(self, stop: threading.Event | None = None, poll_s: float = 0.5) -> bool:
        """Block until Ray has restarted the actor (True), or ``stop`` is set (False). Raises :class:`WorkerGone`
        when the actor will not come back."""
        import ray

        while stop is None or not stop.is_set():
            try:
                info = ray.get(self.handle.ready.remote(), timeout=60)
            except ray.exceptions.ActorUnavailableError:
                time.sleep(poll_s)
                continue
            except ray.exceptions.GetTimeoutError:
                continue
            except ray.exceptions.RayActorError as e:
                raise WorkerGone(f"rollout worker {self.index} died and cluster.max_worker_restarts is used up") from e
            with self.lock:
                self.loaded = info["version"]
                self.restarts += 1
            log.warning("rollout worker %d is back (pid %s) after a restart", self.index, info["pid"])
            return True
        return False


class RemoteBackend:
    """``rollout/partial.py``'s backend interface (``run``, ``decode``) over one worker."""

    def __init__(self, engine: WorkerEngine, exact_resume: bool) -> None:
        self.engine, self.exact_resume = engine, exact_resume

    def decode(self, ids: list[int]) -> str:
        return self.engine.tokenizer.decode(ids, skip_special_tokens=True)

    def run(self, requests: list, sampling: SamplingConfig) -> list:
        if not requests:
            return []
        return self.engine.call("run_partial", requests, sampling, self.exact_resume, weights=self.engine.pinned)


class PoolEngine:
    """All rollout workers as one engine for evaluation, always at the newest published version."""

    def __init__(self, workers: list[WorkerEngine], latest: Callable[[], PublishedWeights | None]) -> None:
        self.workers, self.latest = workers, latest
        self.tokenizer = workers[0].tokenizer
        self.max_model_len = workers[0].max_model_len

    @property
    def version(self) -> int:
        pub = self.latest()
        return pub.version if pub is not None else self.workers[0].version

    def generate(self, prompts: list[Prompt], sampling: SamplingConfig, group_tag: str = "") -> list[Trajectory]:
        check_inputs(prompts, sampling, self.max_model_len)
        if not prompts:
            return []
        n = len(self.workers)
        size = -(-len(prompts) // n)
        slices = [(w, prompts[i * size:(i + 1) * size]) for i, w in enumerate(self.workers)]
        results: list[list[Trajectory]] = [[] for _ in slices]
        errors: list[BaseException] = []

        def run(i: int, worker: WorkerEngine, part: list[Prompt]) -> None:
            try:
                results[i] = self._call_until_done(worker, "generate", part, sampling, group_tag, worker.role)
            except BaseException as e:  # noqa: BLE001 - re-raised in the caller's thread
                errors.append(e)

        threads = [threading.Thread(target=run, args=(i, w, part), daemon=True)
                   for i, (w, part) in enumerate(slices) if part]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if errors:
            raise errors[0]
        return [t for part in results for t in part]

    def compute_logprobs(self, prompt_ids: list[list[int]], response_ids: list[list[int]]) -> list[list[float]]:
        return self._call_until_done(self.workers[0], "compute_logprobs", prompt_ids, response_ids)

    def sync_weights(self, named_params: Any, version: int) -> None:
        """Nothing to do: every call brings its worker to the newest published version."""

    def _call_until_done(self, worker: WorkerEngine, method: str, *args: Any) -> Any:
        while True:
            try:
                return worker.call(method, *args, weights=self.latest(), check=False)
            except WorkerLost:
                worker.wait_alive()
