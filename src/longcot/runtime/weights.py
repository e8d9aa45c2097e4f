"""Weight transport: how a new policy version travels from the trainer into the rollout engines.

Three paths, one per runtime and hardware:

- **in-process** (``cluster.backend: local``): the engine lives in the trainer's process;
  ``RLTrainer.train_on`` hands ``learner.named_parameters()`` to ``engine.sync_weights``, which reads the
  trainer's tensors directly (no copy beyond the one into vLLM's parameters). Nothing in this module runs.
- **object store** (:class:`ObjectStoreTransport`, ``cluster.weight_transport: object_store``, the default and the
  CPU path): after each update the trainer puts one CPU copy of the weights into Ray's object store (one
  ``ray.put`` per version); the driver passes that reference with the next call to each worker, Ray moves the
  bytes once per node, and the worker loads them with the same ``engine.sync_weights`` as in-process (vLLM's
  ``reload_weights`` plus the MoE repack). Measured on the tiny MoE: 66-91 ms per version on 2 CPU cores.
- **NCCL** (:class:`NCCLTransport`, ``cluster.weight_transport: nccl``, GPUs only): vLLM's weight-transfer API
  (``vllm.distributed.weight_transfer``, vLLM 0.32). The trainer rank 0 and every worker's vLLM engine form one
  NCCL group at start-up; each version is broadcast GPU to GPU, packed in buffers, with no host copy. Workers
  must be built with ``rollout.engine_options.weight_transfer_config: {backend: nccl}``. It is designed in and
  documented (docs/cluster.md) but has not run: no GPU was available to this project when it was written, and
  on a CPU it refuses to start with a message saying so.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import torch

from longcot.rollout.weight_sync import checkpoint_named_params

log = logging.getLogger(__name__)


@dataclass
class PublishedWeights:
    """One policy version as the driver sees it: the version, and the object-store reference of its weights
    (None for NCCL, where the broadcast already put them into the engines). ``check`` holds the trainer's
    log-probs of a few responses under this version, for the weight-sync canary on the workers."""

    version: int
    ref: Any = None
    check_pairs: tuple[list[list[int]], list[list[int]]] | None = None
    check_logprobs: list[list[float]] | None = None


def cpu_state(named_params: Any) -> dict[str, torch.Tensor]:
    """A detached CPU copy of the weights, keyed by checkpoint names (what ``engine.sync_weights`` takes)."""
    return {name: t.to("cpu", copy=True).contiguous() for name, t in checkpoint_named_params(named_params)}


class ObjectStoreTransport:
    """Trainer side of the object-store path: one ``ray.put`` of a CPU copy per version."""

    name = "object_store"

    def publish(self, named_params: Any, version: int) -> PublishedWeights:
        import ray

        return PublishedWeights(version=version, ref=ray.put(cpu_state(named_params)))


class NCCLTransport:
    """Trainer side of vLLM's NCCL weight transfer (GPU only; not run on this project's CPU machines).

    ``connect`` is called once on the trainer rank with the worker actors' handles: the trainer opens an NCCL
    group of ``1 + sum(worker world sizes)`` ranks (itself rank 0) through
    ``WeightTransferTrainerFactory.trainer_init``; vLLM drives each worker's side through the actor methods of
    :class:`~longcot.runtime.worker.RolloutWorker` (``init_weight_transfer_engine``, ``start_weight_update``,
    ``update_weights``, ``finish_weight_update``, ``update_weight_version``), which is the
    ``VLLMWeightSyncClient`` protocol that ``RayVLLMWeightSyncClient`` speaks. ``publish`` then broadcasts the
    current parameters (``ModuleSource``: FSDP shards are gathered per parameter) and returns a
    :class:`PublishedWeights` without a reference: the engines already hold the version.

    Ordering: a worker runs one call at a time, so the broadcast waits until every worker has finished the
    engine call it is in; the trainer blocks for that long after each update (the object-store path does not).
    """

    name = "nccl"

    def __init__(self) -> None:
        if not torch.cuda.is_available():
            raise RuntimeError("cluster.weight_transport=nccl needs CUDA GPUs on the trainer and on every rollout "
                               "worker (vLLM's NCCL weight transfer); this machine has none: use "
                               "cluster.weight_transport=object_store")
        self.engine: Any = None
        self.workers: list[Any] = []

    def connect(self, model: torch.nn.Module, workers: list[Any], world_size: int, master_address: str,
                master_port: int) -> None:
        from vllm.distributed.weight_transfer.base import ModuleSource
        from vllm.distributed.weight_transfer.clients import RayVLLMWeightSyncClient
        from vllm.distributed.weight_transfer.factory import WeightTransferTrainerFactory
        from vllm.distributed.weight_transfer.nccl_engine import NCCLTrainerInitInfo

        self.workers = list(workers)
        info = NCCLTrainerInitInfo(master_address=master_address, master_port=master_port, world_size=world_size,
                                   rank=0)
        self.engine = WeightTransferTrainerFactory.trainer_init(info, client=RayVLLMWeightSyncClient(workers),
                                                                source=ModuleSource(model))

    def publish(self, named_params: Any, version: int) -> PublishedWeights:
        if self.engine is None:
            raise RuntimeError("NCCLTransport.publish before connect()")
        import ray

        self.engine.send_weights()  # start_weight_update, the packed broadcast, finish_weight_update on every worker
        ray.get([w.update_weight_version.remote(version) for w in self.workers])
        return PublishedWeights(version=version, ref=None)


def make_transport(name: str) -> ObjectStoreTransport | NCCLTransport:
    if name == "object_store":
        return ObjectStoreTransport()
    if name == "nccl":
        return NCCLTransport()
    raise ValueError(f"unknown cluster.weight_transport {name!r}; expected 'object_store' or 'nccl'")
