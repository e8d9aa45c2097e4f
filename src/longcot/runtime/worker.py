"""A rollout worker: one Ray actor that owns one engine (vLLM or HF) and generates what the driver asks for.

The actor is deliberately thin: the engine classes of :mod:`longcot.rollout` run in it unchanged (the in-process
``VLLMEngine`` with ``VLLM_ENABLE_V1_MULTIPROCESSING=0``, passed through the actor's ``runtime_env``). Everything
that decides *what* to generate (prompts, sampling, partial-rollout buffers, agent turns) stays in the driver.

Weights arrive with a call: a method takes ``weights`` (the new state, which Ray fetched from its object store
before the call started) and ``version``; the worker loads them *before* generating, so a new policy is picked
up between engine calls, never in the middle of one. Every reply says which version generated it and how long
the worker was busy (the driver's busy fractions).
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from typing import Any

import torch

log = logging.getLogger(__name__)


@dataclass
class EngineSpec:
    """How to build a worker's engine: ``build_engine(kind, model_path, tokenizer, **options)``."""

    kind: str
    model_path: str
    tokenizer_path: str
    options: dict[str, Any] = field(default_factory=dict)
    version: int = 0  # the policy version the checkpoint at model_path holds
    # the engine of the frozen sub-agent roles (agents.subagents.<role>.policy: frozen), which never gets weights
    frozen_kind: str | None = None
    frozen_path: str | None = None


@dataclass
class WorkerReply:
    """What a worker call returns: its output, the policy version that produced it, and where the time went."""

    output: Any
    version: int
    busy_s: float  # seconds inside the call (load + generate)
    load_s: float = 0.0  # of which: loading new weights
    check: list[list[float]] | None = None  # the engine's log-probs of the sync-check pairs, after loading


class RolloutWorker:
    """The body of a rollout-worker actor (``ray.remote(RolloutWorker)`` in :mod:`longcot.runtime.ray`)."""

    def __init__(self, worker_id: int, spec: EngineSpec, threads: int) -> None:
        from longcot.policies.load import load_tokenizer
        from longcot.rollout import build_engine

        t0 = time.perf_counter()
        torch.set_num_threads(max(1, threads))
        self.worker_id, self.spec = worker_id, spec
        self.tokenizer = load_tokenizer(spec.tokenizer_path)
        self.engine = build_engine(spec.kind, spec.model_path, self.tokenizer, **spec.options)
        self.frozen = None
        if spec.frozen_kind:
            options = {"max_model_len": spec.options["max_model_len"]} if "max_model_len" in spec.options else {}
            self.frozen = build_engine(spec.frozen_kind, spec.frozen_path, self.tokenizer, **options)
        self.version = spec.version
        self.engine.version = spec.version
        self._partial_backends: dict[bool, Any] = {}
        self.start_s = time.perf_counter() - t0

    def ready(self) -> dict:
        """Identity and start-up cost (the driver waits on this before the first call)."""
        import ray

        return {"worker": self.worker_id, "pid": os.getpid(), "node": ray.get_runtime_context().get_node_id(),
                "start_s": self.start_s, "version": self.version, "threads": torch.get_num_threads()}

    # ---- calls that generate -------------------------------------------------------------------------------
    def generate(self, prompts: list, sampling: Any, group_tag: str, role: str = "policy", weights: dict | None = None,
                 version: int | None = None, check: tuple | None = None) -> WorkerReply:
        """``engine.generate`` (or the frozen sub-agent engine's, ``role="frozen"``) after loading ``weights``."""
        t0 = time.perf_counter()
        load_s, checked = self._load(weights, version, check)
        engine = self.frozen if role == "frozen" else self.engine
        if engine is None:
            raise ValueError(f"worker {self.worker_id} has no {role!r} engine")
        trajs = engine.generate(prompts, sampling, group_tag=group_tag)
        for t in trajs:
            t.meta["worker"] = self.worker_id
        return WorkerReply(trajs, self.version, time.perf_counter() - t0, load_s, checked)

    def run_partial(self, requests: list, sampling: Any, exact_resume: bool, weights: dict | None = None,
                    version: int | None = None, check: tuple | None = None) -> WorkerReply:
        """One batch of partial-rollout requests through this engine's backend (``rollout/partial.py``): the
        buffer of unfinished samples lives in the driver, the requests carry their own seeds and draw offsets."""
        from longcot.rollout.partial import make_backend

        t0 = time.perf_counter()
        load_s, checked = self._load(weights, version, check)
        backend = self._partial_backends.get(exact_resume)
        if backend is None:
            backend = self._partial_backends.setdefault(exact_resume, make_backend(self.engine, exact_resume))
        out = backend.run(requests, sampling)
        return WorkerReply(out, self.version, time.perf_counter() - t0, load_s, checked)

    def compute_logprobs(self, prompt_ids: list[list[int]], response_ids: list[list[int]],
                         weights: dict | None = None, version: int | None = None) -> WorkerReply:
        t0 = time.perf_counter()
        load_s, _ = self._load(weights, version, None)
        out = self.engine.compute_logprobs(prompt_ids, response_ids)
        return WorkerReply(out, self.version, time.perf_counter() - t0, load_s)

    def _load(self, weights: dict | None, version: int | None, check: tuple | None) -> tuple[float, Any]:
        """Load a newer policy (older or equal versions are ignored: a retried call may carry one)."""
        if weights is None or version is None or version <= self.version:
            return 0.0, None
        t0 = time.perf_counter()
        self.engine.sync_weights(weights.items(), version)
        self.version = version
        load_s = time.perf_counter() - t0
        checked = self.engine.compute_logprobs(*check) if check is not None else None
        return load_s, checked

    # ---- vLLM's NCCL weight transfer (GPU; the client side of longcot.runtime.weights.NCCLTransport) --------------
    def init_weight_transfer_engine(self, request: Any) -> None:
        self.engine.llm.collective_rpc("init_weight_transfer_engine", args=(request.init_info,))

    def start_weight_update(self) -> None:
        self.engine.llm.collective_rpc("start_weight_update")

    def update_weights(self, request: Any) -> None:
        self.engine.llm.collective_rpc("update_weights", args=(request.update_info,))

    def finish_weight_update(self) -> None:
        from longcot.rollout.vllm import _repack_on_worker

        self.engine.llm.collective_rpc("finish_weight_update")
        if getattr(self.engine, "repack_moe_after_sync", False):
            self.engine.llm.collective_rpc(_repack_on_worker)
        self.engine.llm.reset_prefix_cache()

    def update_weight_version(self, version: str | int) -> None:
        self.version = self.engine.version = int(version)

    def shutdown(self) -> None:
        for engine in (self.engine, self.frozen):
            if engine is not None and hasattr(engine, "shutdown"):
                engine.shutdown()
