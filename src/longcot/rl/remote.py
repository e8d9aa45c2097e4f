"""The learner in its own processes: what the driver holds when ``trainer.strategy`` is ddp or fsdp.

``longcot train`` starts the trainer's N ranks as processes (:class:`~longcot.rl.ranks.LocalLauncher`) and keeps
the engine, data, rewards and the RL loop. :class:`RemoteLearner` has the :class:`~longcot.rl.learner.Learner`
API; each call travels to rank 0 over a pair of ``torch.multiprocessing`` queues, rank 0 runs it with its
followers (the rank protocol of :mod:`longcot.rl.ranks`) and answers. Why rank 0 is not the driver: the
in-process vLLM engine owns torch.distributed's default process group there (ranks module doc).

Tensors cross through shared memory (CPU) or CUDA IPC (GPU), not through a pipe: the initial weights (the
driver's model moves to shared CPU memory and rank 0 trains on those very tensors), the optimizer state, and
the published parameters, which the driver pulls one at a time so that no more than one gathered parameter is
ever in flight (:meth:`RemoteLearner.named_parameters`).

Every rank process, whoever launched it, runs :func:`rank_main` with a :class:`RankSpec`.
"""

from __future__ import annotations

import copy
import logging
import queue
import traceback
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from longcot.config import Recipe
from longcot.record import Trajectory
from longcot.rl.learner import Learner
from longcot.rl.ranks import LocalLauncher, RankGroup, init_rank_group
from longcot.rl.strategy import resolve_device
from longcot.rl.timing import StepTimer

log = logging.getLogger(__name__)
POLL_SECONDS = 1.0  # how often the driver checks that the ranks are alive while it waits for an answer


def make_learner(model: torch.nn.Module, tokenizer: Any, recipe: Recipe) -> Learner | RemoteLearner:
    """The policy's learner for the local runtime: in this process for ``trainer.strategy=single``, else in
    ``trainer.ranks`` processes started here."""
    if recipe.trainer.strategy == "single":
        return Learner(model, tokenizer, recipe)
    return RemoteLearner(model, tokenizer, recipe)


class RemoteLearner:
    """The driver's handle on trainer ranks running in other processes (module doc)."""

    def __init__(self, model: torch.nn.Module, tokenizer: Any, recipe: Recipe):
        self.recipe, self.tokenizer = recipe, tokenizer
        self.version = self.updates = 0
        ctx = torch.multiprocessing.get_context("spawn")
        self.requests, self.replies = ctx.Queue(), ctx.Queue()
        spec = RankSpec.of(model, recipe)
        weights = {k: v.detach().to("cpu").share_memory_() for k, v in model.state_dict().items()}
        self.launcher: LocalLauncher | None = LocalLauncher(recipe.trainer.ranks, rank_main,
                                                            (spec, None, (self.requests, self.replies)))
        try:
            self._call("init", weights)  # answered once every rank has built its part of the policy
        except BaseException:
            self.close()
            raise
        log.info("trainer ranks up: %s (%d processes: %s)", recipe.trainer.strategy, recipe.trainer.ranks,
                 self.launcher.pids)

    # ---- the Learner API ------------------------------------------------------------------------------------
    @property
    def model(self) -> torch.nn.Module:
        raise AttributeError("the policy lives in the trainer ranks' processes (trainer.strategy="
                             f"{self.recipe.trainer.strategy}): use named_parameters() or save_pretrained()")

    def unwrapped(self) -> torch.nn.Module:
        return self.model

    def update(self, trajs: list[Trajectory], timer: StepTimer | None = None) -> dict:
        metrics, parts = self._call("update", trajs)
        if timer is not None:  # rank 0's phases (forward_backward, optimizer, ...) into the driver's step time
            for k, v in parts.items():
                timer.parts[k] = timer.parts.get(k, 0.0) + v
        return metrics

    def reference_logprobs(self, trajs: list[Trajectory]) -> list[list[float]]:
        return self._call("reference_logprobs", trajs)

    def policy_logprobs(self, trajs: list[Trajectory], free_routing: bool = False) -> list[list[float]]:
        return self._call("policy_logprobs", (trajs, free_routing))

    def named_parameters(self) -> Iterator[tuple[str, torch.Tensor]]:
        """``(HF name, full tensor)`` pulled one at a time from rank 0 (which gathers each from the shards)."""
        self.requests.put(("named_parameters", None))
        done = False
        try:
            while True:
                item = self._answer()
                if item is None:
                    done = True
                    return
                yield item
                self.requests.put(("next", None))
        finally:
            if not done:  # the consumer stopped early: rank 0 still finishes the gathers with its followers
                self.requests.put(("close", None))
                while self._answer() is not None:
                    pass

    def save_pretrained(self, path: str | Path) -> None:
        self._call("save_pretrained", str(path))
        if self.tokenizer is not None:
            self.tokenizer.save_pretrained(path)

    def state_dict(self) -> dict:
        return self._call("state_dict", None)

    def load_state_dict(self, state: dict) -> None:
        self._call("load_state_dict", state)

    def load_weights(self, path: str | Path) -> None:
        self._call("load_weights", str(path))

    def close(self) -> None:
        """Stop the ranks (a "stop" request, then signals for whatever does not exit). Safe to call twice."""
        if self.launcher is None:
            return
        stopped = False
        if self.launcher.error() is None and any(p.is_alive() for p in self.launcher.context.processes):
            try:
                self.requests.put(("stop", None))
                self._answer(timeout_s=60.0)
                stopped = True
            except Exception as e:  # noqa: BLE001 (a rank that fails while stopping is stopped by signal below)
                log.warning("trainer ranks did not stop cleanly: %s", e)
        # after "stop" the ranks exit on their own; after a failure the survivors wait for commands: signal them
        self.launcher.close(timeout=30.0 if stopped else 0.0)
        self.launcher = None

    # ---- the channel ----------------------------------------------------------------------------------------
    def _call(self, method: str, payload: Any) -> Any:
        self.requests.put((method, payload))
        return self._answer()

    def _answer(self, timeout_s: float | None = None) -> Any:
        """Rank 0's next answer; raises with the failing rank's traceback if one died meanwhile."""
        waited = 0.0
        while True:
            try:
                status, value, counters = self.replies.get(timeout=POLL_SECONDS)
                break
            except queue.Empty:
                waited += POLL_SECONDS
                failure = self.launcher.error() if self.launcher is not None else "the ranks were closed"
                if failure is not None:
                    raise RuntimeError(f"a trainer rank failed:\n{failure}") from None
                if timeout_s is not None and waited >= timeout_s:
                    raise TimeoutError(f"trainer rank 0 did not answer within {timeout_s:.0f}s") from None
        if status == "error":
            raise RuntimeError(f"trainer rank 0 failed:\n{value}")
        self.version, self.updates = counters
        return value


# ---- a rank's life ----------------------------------------------------------------------------------------------
@dataclass
class RankSpec:
    """What a rank needs to build its learner (sent once, at launch): the recipe and the architecture.
    Followers get rank 0's weights by broadcast, so no rank needs a checkpoint on disk."""

    recipe: Recipe
    config: Any  # the policy's transformers config
    attn_implementation: str

    @classmethod
    def of(cls, model: torch.nn.Module, recipe: Recipe) -> RankSpec:
        cfg = copy.deepcopy(model.config)
        attn = cfg._attn_implementation
        return cls(recipe, cfg, "sdpa" if attn == "longcot_packed" else attn)

    def build_model(self, weights: dict[str, torch.Tensor] | None = None) -> torch.nn.Module:
        """The policy with parameters on the meta device (no memory, no initialisation; buffers such as the
        rotary frequencies are computed), or with ``weights`` as its parameters (no copy)."""
        from accelerate import init_empty_weights
        from transformers import AutoModelForCausalLM

        with init_empty_weights(include_buffers=False):
            model = AutoModelForCausalLM.from_config(self.config, dtype=torch.float32,
                                                     attn_implementation=self.attn_implementation)
        if weights is not None:
            model.load_state_dict(weights, assign=True)
            model.tie_weights()  # assign gave tied keys (embeddings / LM head) separate parameters
        return model


def rank_main(rank: int, world_size: int, init_method: str, spec: RankSpec, local_rank: int | None = None,
              driver: Any = None) -> None:
    """A rank's whole life, whoever launched it: join the group, build the policy, then serve. Followers build
    it on the meta device and get rank 0's weights by broadcast, then run rank 0's ops until it says stop.
    Rank 0 with a ``driver`` channel (local mode, :func:`serve_driver`) gets its weights and requests from it."""
    cfg = spec.recipe.trainer
    if spec.recipe.threads:
        torch.set_num_threads(spec.recipe.threads)
    device_type = resolve_device(cfg.device, rank if local_rank is None else local_rank).type
    group = init_rank_group(rank, world_size, init_method, device_type, local_rank, cfg.timeout_minutes)
    try:
        if rank == 0 and driver is not None:
            serve_driver(spec, group, driver)
        else:
            Learner(spec.build_model(), None, spec.recipe, group=group).serve()
    finally:
        group.close()


def serve_driver(spec: RankSpec, group: RankGroup, driver: tuple) -> None:
    """Rank 0 in local mode: build the learner from the driver's weights, then answer its requests until
    "stop". An error is sent to the driver and ends this rank (its followers are stopped by the launcher)."""
    requests, replies = driver
    learner: Learner | None = None
    try:
        method, weights = requests.get()
        if method != "init":
            raise RuntimeError(f"rank 0 expected the initial weights, got {method!r}")
        learner = Learner(spec.build_model(weights), None, spec.recipe, group=group)
        del weights
        replies.put(("ok", None, (learner.version, learner.updates)))
        while True:
            method, payload = requests.get()
            if method == "stop":
                learner.close()
                replies.put(("ok", None, (learner.version, learner.updates)))
                return
            result = _stream_parameters(learner, requests, replies) if method == "named_parameters" else \
                _HANDLERS[method](learner, payload)
            replies.put(("ok", result, (learner.version, learner.updates)))
    except Exception:
        replies.put(("error", traceback.format_exc(), (0, 0)))
        raise


def _update(learner: Learner, trajs: list[Trajectory]) -> tuple[dict, dict]:
    timer = StepTimer()
    metrics = learner.update(trajs, timer)
    return metrics, timer.parts


_HANDLERS = {
    "update": _update,
    "reference_logprobs": Learner.reference_logprobs,
    "policy_logprobs": lambda learner, payload: learner.policy_logprobs(*payload),  # (trajs, free_routing)
    "save_pretrained": Learner.save_pretrained,
    "state_dict": lambda learner, _: learner.state_dict(),
    "load_state_dict": Learner.load_state_dict,
    "load_weights": Learner.load_weights,
}


def _stream_parameters(learner: Learner, requests, replies) -> None:
    """One ``(name, tensor)`` answer per driver "next"; the final answer (None) follows the last parameter."""
    params = learner.named_parameters()
    try:
        for name, tensor in params:
            replies.put(("ok", (name, tensor), (learner.version, learner.updates)))
            method, _ = requests.get()  # keeps ``tensor`` alive until the driver has taken it
            if method == "close":
                break
    finally:
        params.close()  # the learner's generator finishes the followers' gathers
    return None
