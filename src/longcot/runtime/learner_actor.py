"""The trainer side of the Ray runtime: a :class:`~longcot.rl.learner.Learner` in an actor, and its driver proxy.

:class:`LearnerRank` is the actor's body: it loads the policy, builds the Learner (model, optimizer, reference)
and runs ``update`` on the scored batches the driver sends, then publishes the new weights through the
configured transport (:mod:`longcot.runtime.weights`). It knows no engine, prompt or reward.

:class:`TrainerGroup` is what the driver holds. Today it drives one rank. It is the seam for multi-rank
strategies (``trainer.strategy: ddp | fsdp``): a group of ``LearnerRank`` actors, each given its shard of the
batch and its rank in a process group (the launcher-agnostic rank protocol), with rank 0 publishing the
weights. Callers see the same methods either way: ``update``, ``publish``, ``policy_logprobs``,
``reference_logprobs``, ``state_dict``, ``load_state_dict``, ``save_pretrained``, ``version``.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from longcot.errors import RunStoppedError
from longcot.rl.timing import StepTimer
from longcot.rollout.weight_sync import clean_name
from longcot.runtime.weights import ObjectStoreTransport, PublishedWeights, make_transport

log = logging.getLogger(__name__)


@dataclass
class UpdateReply:
    """One update as the driver sees it: the learner's metrics, its phase times, and the published weights
    (None when the update was skipped: nothing to train on, no new version)."""

    metrics: dict[str, float]
    busy_s: float
    version: int
    published: PublishedWeights | None


class LearnerRank:
    """The body of a trainer actor: one Learner on this actor's devices."""

    def __init__(self, recipe: Any, policy_path: str, threads: int, rank: int = 0) -> None:
        from longcot.policies.load import load_policy, load_tokenizer
        from longcot.rl.remote import make_learner

        torch.set_num_threads(max(1, threads))
        self.rank, self.recipe = rank, recipe
        tokenizer = load_tokenizer(policy_path)
        # trainer.strategy ddp/fsdp: the actor starts trainer.ranks processes on its node (docs/training.md)
        self.learner = make_learner(load_policy(policy_path, recipe.model.dtype), tokenizer, recipe)
        self.transport = make_transport(recipe.cluster.weight_transport)

    def ready(self) -> dict:
        import ray

        return {"rank": self.rank, "pid": os.getpid(), "node": ray.get_runtime_context().get_node_id(),
                "version": self.learner.version, "threads": torch.get_num_threads()}

    def update(self, trajs: list, check: tuple | None = None) -> UpdateReply:
        """``Learner.update``, then one publish of the new version; ``check`` (prompt ids, response ids) also
        returns the new policy's log-probs of those responses, which the workers compare with their own."""
        t0 = time.perf_counter()
        timer = StepTimer()
        metrics = self.learner.update(trajs, timer)
        published = None
        if not metrics.get("skipped_update"):
            with timer.phase("publish"):
                published = self.publish()
            if check is not None:
                with timer.phase("sync_check"):
                    published.check_pairs, published.check_logprobs = check, self._logprobs(*check)
        for k, v in timer.parts.items():
            metrics[f"trainer/time/{k}"] = v
        return UpdateReply(metrics, time.perf_counter() - t0, self.learner.version, published)

    def publish(self) -> PublishedWeights:
        return self.transport.publish(self.learner.named_parameters(), self.learner.version)

    def host_weights(self) -> list:
        """``[ref]``: a CPU copy of the current weights in the object store (in a list, so the driver gets the
        reference, not the tensors)."""
        return [ObjectStoreTransport().publish(self.learner.named_parameters(), self.learner.version).ref]

    def connect_nccl(self, workers: list, world_size: int) -> None:
        """Open the NCCL group with the workers; this actor's node hosts the rendezvous (a free port on it)."""
        import socket

        import ray

        with socket.socket() as s:
            s.bind(("", 0))
            port = s.getsockname()[1]
        self.transport.connect(self.learner.unwrapped(), workers, world_size, ray.util.get_node_ip_address(), port)

    def _logprobs(self, prompt_ids: list[list[int]], response_ids: list[list[int]]) -> list[list[float]]:
        from longcot.record import Trajectory

        trajs = [Trajectory(prompt_id=str(i), group_id=str(i), prompt_ids=p, response_ids=r, rollout_logprobs=[])
                 for i, (p, r) in enumerate(zip(prompt_ids, response_ids, strict=True))]
        return self.learner.policy_logprobs(trajs, free_routing=True)  # as the workers' compute_logprobs routes

    def policy_logprobs(self, trajs: list, free_routing: bool = False) -> list[list[float]]:
        return self.learner.policy_logprobs(trajs, free_routing)

    def reference_logprobs(self, trajs: list) -> list[list[float]]:
        return self.learner.reference_logprobs(trajs)

    def state_dict(self) -> dict:
        return self.learner.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.learner.load_state_dict(state)

    def load_weights(self, path: str) -> None:
        """HF weights of a training state (resume): ``path`` must be readable on this actor's node (a run directory
        on storage the cluster shares, or a single-node cluster)."""
        self.learner.load_weights(path)

    def close(self) -> None:
        if hasattr(self.learner, "close"):
            self.learner.close()

    def version(self) -> int:
        return self.learner.version


class TrainerDiedError(RunStoppedError):
    """The trainer actor is gone: the run cannot continue (its last training state can be resumed)."""


class TrainerGroup:
    """The driver's handle on the trainer ranks (one today). ``model`` is the driver's own copy of the policy
    (the pipeline loads it for SFT): checkpoints are written from it after pulling the newest published weights,
    so the run directory needs no filesystem shared with the trainer's node."""

    def __init__(self, ranks: list[Any], model: torch.nn.Module, tokenizer: Any) -> None:
        self.ranks, self.model, self.tokenizer = ranks, model, tokenizer
        self.version = 0
        self.published: PublishedWeights | None = None

    @property
    def lead(self) -> Any:
        return self.ranks[0]

    def call(self, method: str, *args: Any) -> Any:
        """A blocking call on rank 0; a dead trainer becomes :class:`TrainerDiedError`."""
        return self.get(getattr(self.lead, method).remote(*args), method)

    def get(self, ref: Any, what: str) -> Any:
        import ray

        try:
            return ray.get(ref)
        except ray.exceptions.RayActorError as e:
            raise TrainerDiedError(
                f"the trainer actor died during '{what}' at policy version {self.version}: the run stops here "
                f"({type(e).__name__}: {str(e).splitlines()[0]}). Its last training state is in the run directory; "
                "`longcot train RECIPE --resume` continues from it.") from e

    def update_async(self, trajs: list, check: tuple | None) -> Any:
        return self.lead.update.remote(trajs, check)

    def finish_update(self, ref: Any) -> UpdateReply:
        reply: UpdateReply = self.get(ref, "update")
        self.version = reply.version
        if reply.published is not None:
            self.published = reply.published
        return reply

    def publish(self) -> PublishedWeights:
        self.published = self.call("publish")
        self.version = self.published.version
        return self.published

    # ---- the Learner's interface, for the driver's callers (sync canary, KL in the reward, resume) ---------------
    def policy_logprobs(self, trajs: list, free_routing: bool = False) -> list[list[float]]:
        return self.call("policy_logprobs", trajs, free_routing)

    def reference_logprobs(self, trajs: list) -> list[list[float]]:
        return self.call("reference_logprobs", trajs)

    def state_dict(self) -> dict:
        return self.call("state_dict")

    def load_state_dict(self, state: dict) -> None:
        self.call("load_state_dict", state)
        self.publish()

    def load_weights(self, path: str | Path) -> None:
        self.call("load_weights", str(path))

    def close(self) -> None:
        """Stop the trainer ranks the actor started (trainer.ranks > 1); the actor itself ends with the session."""
        import contextlib

        with contextlib.suppress(Exception):  # a dead trainer: nothing to close
            self.call("close")

    def pull_weights(self) -> torch.nn.Module:
        """Load the trainer's current weights into the driver's copy of the policy (and return it)."""
        import ray

        if self.published is not None and self.published.ref is not None and self.published.version == self.version:
            ref = self.published.ref
        else:  # nothing published yet, or NCCL (no host copy): one CPU copy through the object store
            ref = self.call("host_weights")[0]
        state = ray.get(ref)
        with torch.no_grad():
            for name, param in self.model.named_parameters():
                param.copy_(state[clean_name(name)])
        return self.model

    def save_pretrained(self, path: str | Path) -> None:
        """HF-format weights of the trainer's current version + tokenizer, written by the driver."""
        self.pull_weights().save_pretrained(path)
        self.tokenizer.save_pretrained(path)
