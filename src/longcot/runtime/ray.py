"""``cluster.backend: ray``: rollout workers and the trainer as Ray actors, rollouts overlapping training.

Layout (docs/cluster.md)::

    driver (longcot train)                          Ray actors (placed by cluster.* resources)
      sampler, prompt queue, producers  -------->     RolloutWorker x N: one engine each (vLLM | HF)
      rewards (reward pools), advantages <--------    trajectories tagged with policy version(s) and worker
      admission (staleness <= k), metrics ------->    LearnerRank (the trainer): Learner.update, publish
      evaluation through the workers    <--------     one object-store put per version -> every worker

The driver keeps the data, the sampler, the buffer, the rewards, the advantages and the metrics; workers
only generate and the trainer only trains. The same recipe runs here and in the local runtime.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from longcot.config import Recipe
from longcot.runtime.async_loop import AsyncRL
from longcot.runtime.learner_actor import LearnerRank, TrainerGroup
from longcot.runtime.remote import PoolEngine, WorkerEngine
from longcot.runtime.session import READY_TIMEOUT_S, RaySession
from longcot.runtime.stack import rl_engine
from longcot.runtime.worker import EngineSpec, RolloutWorker

log = logging.getLogger(__name__)


def actor_env(threads: int) -> dict[str, str]:
    """Environment of every actor: in-process vLLM on CPU, quiet logs, the actor's own thread count, and the
    driver's CPU priority (Ray starts worker processes 15 nice levels below their raylet unless
    ``RAY_worker_niceness`` says otherwise: on a shared machine that starves the run's own rollouts and updates)."""
    import os

    env = {"VLLM_ENABLE_V1_MULTIPROCESSING": "0", "OMP_NUM_THREADS": str(threads), "TOKENIZERS_PARALLELISM": "false",
           "RAY_worker_niceness": "0",
           "VLLM_LOGGING_LEVEL": os.environ.get("VLLM_LOGGING_LEVEL", "WARNING"), "TQDM_DISABLE": "1",
           "VLLM_CPU_KVCACHE_SPACE": os.environ.get("VLLM_CPU_KVCACHE_SPACE", "1")}
    for key in ("HF_HUB_OFFLINE", "HF_HOME", "RAY_AUTH_MODE", "VLLM_CACHE_ROOT", "VLLM_NO_USAGE_STATS", "MPLCONFIGDIR"):
        if key in os.environ:
            env[key] = os.environ[key]
    return env


def _threads(cpus: float) -> int:
    return max(1, int(cpus))


class PausingEngine:
    """The evaluation engine: pauses the producers for the whole call, so an evaluation (an agent rollout of many
    engine calls included) runs on idle workers at one policy version."""

    def __init__(self, inner: Any, runtime: RayRuntime) -> None:
        self._wrapped, self.runtime = inner, runtime

    def _pause(self):
        loop = self.runtime.loop
        if loop is None:
            from contextlib import nullcontext

            return nullcontext()
        return loop.paused()

    def generate(self, prompts, sampling, group_tag: str = ""):
        with self._pause():
            return self._wrapped.generate(prompts, sampling, group_tag=group_tag)

    def compute_logprobs(self, prompt_ids, response_ids):
        with self._pause():
            return self._wrapped.compute_logprobs(prompt_ids, response_ids)

    @property
    def last_metrics(self) -> dict:
        return getattr(self._wrapped, "last_metrics", {})

    @property
    def max_model_len(self) -> int | None:
        return getattr(self._wrapped, "max_model_len", None)

    @property
    def version(self) -> int:
        return getattr(self._wrapped, "version", 0)


class RayRuntime:
    """Starts (or joins) Ray and the rollout workers; ``rl_trainer`` adds the trainer actor and the async loop."""

    def __init__(self, recipe: Recipe, run_root: Path, policy_path: str, tokenizer: Any, max_model_len: int,
                 engine_options: dict[str, Any] | None = None, initial_version: int = 0) -> None:
        self.recipe, self.run_root, self.policy_path, self.tokenizer = recipe, Path(run_root), policy_path, tokenizer
        self.max_model_len = max_model_len
        self.engine_options = dict(recipe.rollout.engine_options if engine_options is None else engine_options)
        self.loop: AsyncRL | None = None
        self.trainer: TrainerGroup | None = None
        self.session = RaySession(recipe.cluster)
        try:
            # the trainer starts while the workers do (it loads the policy; they build engines)
            self.rank = self._start_trainer() if recipe.rl.enabled and recipe.rl.steps > 0 else None
            frozen = self._frozen_checkpoint()
            self.frozen_roles = frozen[0]
            self.workers, self.frozen = self._start_workers(initial_version, frozen)
            latest = lambda: self.trainer.published if self.trainer is not None else None  # noqa: E731
            pool: Any = PoolEngine(self.workers, latest)
            if recipe.agents.enabled:
                from longcot.agents import AgentEngine

                # frozen roles: every worker's second engine, on the checkpoint, never sent weights
                served = PoolEngine(self.frozen, lambda: None) if self.frozen else None
                roles = {name: served for name in self.frozen_roles} if served is not None else None
                pool = AgentEngine(pool, tokenizer, recipe.agents, frozen=roles, trace_dir=self.run_root / "agents")
            self.engine = PausingEngine(pool, self)
        except BaseException:
            self.shutdown()
            raise

    def _frozen_checkpoint(self) -> tuple[list[str], tuple[str, str] | None]:
        """The frozen sub-agent roles and the one (engine kind, checkpoint) serving them, or ``([], None)``. One:
        Recipe refuses frozen roles on several (engine, path, recipe) in Ray mode, so they all resolve alike."""
        if not self.recipe.agents.enabled:
            return [], None
        from longcot.agents.roles import frozen_checkpoints

        roles = frozen_checkpoints(self.recipe.agents, self.policy_path, self.recipe.out_dir)
        return sorted(roles), next(iter(roles.values()), None)

    def _start_workers(self, version: int, frozen: tuple[list[str], tuple[str, str] | None]
                       ) -> tuple[list[WorkerEngine], list[WorkerEngine]]:
        import ray

        c, r = self.recipe.cluster, self.recipe
        threads = _threads(c.worker_cpus)
        kind, path = frozen[1] or (None, None)
        spec = EngineSpec(r.rollout.engine, self.policy_path, str(self.policy_path),
                          {"max_model_len": self.max_model_len, "seed": r.seed, **self.engine_options}, version,
                          frozen_kind=kind, frozen_path=path)
        actor = ray.remote(RolloutWorker).options(
            num_cpus=c.worker_cpus, num_gpus=c.worker_gpus, resources=c.worker_resources or None,
            max_restarts=c.max_worker_restarts, max_task_retries=0, runtime_env={"env_vars": actor_env(threads)})
        handles = [self.session.track(actor.remote(i, spec, threads)) for i in range(c.rollout_workers)]
        info = self._wait_ready(handles, "rollout worker")
        self._describe(workers=info)
        for i in info:
            log.info("rollout worker %d up in %.1fs (pid %s, node %s, %d threads)", i["worker"], i["start_s"], i["pid"],
                     i["node"][:8], i["threads"])
        gap = r.rollout.sync_check_max_gap
        workers = [WorkerEngine(h, i, self.tokenizer, self.max_model_len, version, gap) for i, h in enumerate(handles)]
        for w in workers:  # the worker's vLLM engine records each token's experts (MoE routing replay, its metrics)
            w.captures_routing = bool(spec.options.get("routing_capture"))
        frozen_engines = [WorkerEngine(h, i, self.tokenizer, self.max_model_len, version, gap, role="frozen")
                          for i, h in enumerate(handles)] if kind else []
        return workers, frozen_engines

    def _describe(self, **parts: Any) -> None:
        """``cluster.json`` in the run directory: where each actor runs (node, pid) and the Ray session's files."""
        import json

        path = self.run_root / "cluster.json"
        data = json.loads(path.read_text()) if path.is_file() and "workers" not in parts else {}
        data.update(parts, session_dir=self.session.temp_dir, address=self.recipe.cluster.address)
        self.run_root.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(data, indent=1) + "\n")

    def _wait_ready(self, handles: list[Any], what: str) -> list[dict]:
        import ray

        refs = [h.ready.remote() for h in handles]
        done, pending = ray.wait(refs, num_returns=len(refs), timeout=READY_TIMEOUT_S)
        if pending:
            raise RuntimeError(f"{len(pending)} {what}(s) did not start within {READY_TIMEOUT_S:.0f} s (Ray could not "
                               "place them, or their start-up failed: see the Ray logs)")
        return ray.get(refs)

    def _start_trainer(self) -> Any:
        """The trainer actor (one rank; a group of ranks with trainer.strategy, see learner_actor.py); not waited
        for here."""
        import ray

        c = self.recipe.cluster
        threads = _threads(c.trainer_cpus)
        actor = ray.remote(LearnerRank).options(
            num_cpus=c.trainer_cpus, num_gpus=c.trainer_gpus, resources=c.trainer_resources or None, max_restarts=0,
            runtime_env={"env_vars": actor_env(threads)})
        return self.session.track(actor.remote(self.recipe, self.policy_path, threads))

    def rl_trainer(self, model: Any, next_prompts: Any, on_results: Any = None) -> AsyncRL:
        """The trainer actor and the asynchronous RL loop over the workers."""
        c = self.recipe.cluster
        rank = self.rank if self.rank is not None else self._start_trainer()
        info = self._wait_ready([rank], "trainer")[0]
        self._describe(trainer=info)
        log.info("trainer up (pid %s, node %s, %d threads)", info["pid"], info["node"][:8], info["threads"])
        self.trainer = TrainerGroup([rank], model, self.tokenizer)
        self.trainer.version = info["version"]
        if c.weight_transport == "nccl":
            self._connect_nccl(rank)
        stacks = [rl_engine(self._agent_stack(w, i), self.recipe) for i, w in enumerate(self.workers)]
        self.loop = AsyncRL(self.recipe, self.trainer, self.workers, stacks, self.engine, next_prompts, on_results)
        return self.loop

    def _agent_stack(self, worker: WorkerEngine, i: int) -> Any:
        if not self.recipe.agents.enabled:
            return worker
        from longcot.agents import AgentEngine

        # a worker's frozen roles go to the frozen engine in the same actor
        frozen = {name: self.frozen[i] for name in self.frozen_roles} if self.frozen else None
        return AgentEngine(worker, self.tokenizer, self.recipe.agents, frozen=frozen,
                           trace_dir=self.run_root / "agents" / f"worker{i}")

    def _connect_nccl(self, rank: Any) -> None:
        """vLLM's NCCL weight transfer between the trainer (rank 0) and every worker (GPU only; see weights.py)."""
        import ray

        ray.get(rank.connect_nccl.remote([w.handle for w in self.workers], 1 + len(self.workers)))

    def shutdown(self) -> None:
        """Stop the producers, the actors and (if this run started it) Ray itself."""
        import ray

        if self.loop is not None:
            self.loop.shutdown()
        workers = getattr(self, "workers", [])
        if workers and ray.is_initialized():
            try:
                ray.get([w.handle.shutdown.remote() for w in workers], timeout=30)
            except Exception:  # noqa: BLE001 - a dead worker: it is killed below
                pass
        self.session.close()
