"""How the policy is laid out over the trainer's ranks: ``single``, ``ddp`` or ``fsdp`` (``trainer.strategy``).

- single: one process, the whole model and optimizer on one device.
- ddp: every rank holds the whole model; gradients are summed over ranks after the last micro-batch
  (``torch.nn.parallel.DistributedDataParallel``).
- fsdp: FSDP2 (``torch.distributed.fsdp.fully_shard``): each decoder layer is one unit whose parameters,
  gradients and optimizer state are sharded over the ranks; a layer's full weights exist only while it runs.
  The root unit (embeddings, final norm, LM head) is gathered for the forward and stays gathered until its
  backward, so the chunked LM head (:mod:`longcot.rl.logprobs`) reads it inside the root's forward.

All three use PyTorch directly, not accelerate: with one rank the learner lives in the driver process (engine,
data, rewards); with more, every rank (rank 0 included) is a process this package starts (longcot.rl.ranks), or a
Ray actor, with a process group that already exists; accelerate's state is a process-wide singleton configured by
``accelerate launch`` environment variables, which fits neither.
The state-dict helpers of ``torch.distributed.checkpoint`` give one optimizer-state format for every strategy
(parameter names as keys), so a run saved with one strategy resumes with another.

Precision (``trainer.precision``): master weights and optimizer state are always float32. ``bf16-mixed`` computes
in bfloat16: ``torch.autocast`` for single/ddp, FSDP2's ``MixedPrecisionPolicy`` (bf16 parameters in the
forward, gradients reduced in float32) for fsdp. Gradients of a step are summed over ranks, never averaged: the
loss already divides by the whole step's token (or sequence) count (``LossBatch.total_tokens``).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

import torch
import torch.distributed as dist
from torch import nn

from longcot.rl.ranks import RankGroup

log = logging.getLogger(__name__)

PRECISIONS = ("fp32", "bf16-mixed")


def resolve_device(setting: str, local_rank: int) -> torch.device:
    """``trainer.device``: auto is the local GPU of this rank when CUDA is available, else the CPU."""
    if setting == "auto":
        setting = "cuda" if torch.cuda.is_available() else "cpu"
    if setting == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError("trainer.device=cuda but torch sees no CUDA device")
        return torch.device("cuda", local_rank % torch.cuda.device_count())
    return torch.device("cpu")


def resolve_precision(setting: str, device: torch.device) -> str:
    """``trainer.precision``: auto is bf16-mixed on a GPU and fp32 on a CPU (CPU bf16 matmuls are slow here)."""
    if setting == "auto":
        return "bf16-mixed" if device.type == "cuda" else "fp32"
    return setting


class SingleStrategy:
    """One rank; also the base of the others (what every strategy does the same way)."""

    name = "single"
    gathers_parameters = False  # whether full parameters need a collective (rank 0 cannot read them alone)

    def __init__(self, group: RankGroup, device: torch.device, precision: str):
        if precision not in PRECISIONS:
            raise ValueError(f"trainer.precision must be one of {PRECISIONS} (or auto), got {precision!r}")
        self.group, self.device, self.precision = group, device, precision

    # ---- placement ------------------------------------------------------------------------------------------
    def wrap(self, scorer: nn.Module, frozen: bool = False) -> nn.Module:
        """The module this rank trains (or, ``frozen``, only evaluates), with rank 0's weights."""
        return scorer.to(self.device)

    def autocast(self) -> contextlib.AbstractContextManager:
        """The compute-precision context of a forward (backward runs outside it)."""
        if self.precision == "bf16-mixed":
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def grad_sync(self, model: nn.Module, sync: bool) -> contextlib.AbstractContextManager:
        """Around a micro-batch's forward and backward; ``sync`` on the last one of a step."""
        return contextlib.nullcontext()

    def after_forward_only(self, model: nn.Module) -> None:
        """After forwards without a backward (log-probs for a sync check or a KL reference): nothing to undo."""

    # ---- optimizer step -------------------------------------------------------------------------------------
    def clip_grad_norm(self, model: nn.Module, max_norm: float) -> float:
        norm = torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)
        full = getattr(norm, "full_tensor", None)  # FSDP: a DTensor whose value is the global norm
        return float(full() if full is not None else norm)

    # ---- weights and state out ------------------------------------------------------------------------------
    def full_parameters(self, lm: nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
        """``(HF name, full tensor)`` one parameter at a time (a collective per parameter for fsdp)."""
        for name, p in lm.named_parameters():
            yield name, p.detach()

    def model_state_dict(self, scorer: nn.Module) -> dict[str, torch.Tensor]:
        """The full HF state dict on rank 0 (empty elsewhere), for ``save_pretrained``."""
        return scorer.lm.state_dict()

    def load_model_state_dict(self, scorer: nn.Module, state: dict[str, torch.Tensor] | None) -> None:
        """Rank 0's full HF state dict (``state``; None on the other ranks) into every rank's policy, in place
        (collective with several ranks)."""
        if self.group.rank == 0:
            scorer.lm.load_state_dict(state, strict=True)
        _broadcast_tensors(scorer, self.group, params=True)

    def optimizer_state_dict(self, scorer: nn.Module, optimizer: torch.optim.Optimizer) -> dict | None:
        """The full optimizer state keyed by parameter name, on rank 0 (collective); None before the first step
        (the helper would initialise the state by taking a zero step, moving Adam's step count)."""
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

        if not optimizer.state:
            return None
        opts = StateDictOptions(full_state_dict=True, cpu_offload=self.group.world_size > 1)
        return get_optimizer_state_dict(scorer, optimizer, options=opts)

    def load_optimizer_state_dict(self, scorer: nn.Module, optimizer: torch.optim.Optimizer,
                                  state: dict | None) -> None:
        """Load what :meth:`optimizer_state_dict` returned (collective; only rank 0 needs to pass it)."""
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

        multi = self.group.world_size > 1
        if multi:  # every rank must agree whether there is a state to load
            flag = [state is not None]
            dist.broadcast_object_list(flag, src=0, group=self.group.control)
            has_state = flag[0]
        else:
            has_state = state is not None
        if not has_state:
            optimizer.state.clear()
            return
        opts = StateDictOptions(full_state_dict=True, broadcast_from_rank0=multi)
        set_optimizer_state_dict(scorer, optimizer, optim_state_dict=state if state is not None else {}, options=opts)


class DDPStrategy(SingleStrategy):
    """Whole model per rank, gradients summed over ranks once per step (``no_sync`` on earlier micro-batches)."""

    name = "ddp"

    def wrap(self, scorer: nn.Module, frozen: bool = False) -> nn.Module:
        scorer = _materialise(scorer, self.device)
        if frozen:  # no gradients to reduce: a plain replica of rank 0's weights
            _broadcast_tensors(scorer, self.group, params=True)
            return scorer
        from torch.nn.parallel import DistributedDataParallel

        # init_sync broadcasts rank 0's parameters and buffers (followers start from empty meta-built ones)
        ddp = DistributedDataParallel(scorer, device_ids=None, init_sync=True, forward_sync_buffers=False)
        ddp.register_comm_hook(None, _sum_allreduce_hook)
        return ddp

    def grad_sync(self, model: nn.Module, sync: bool) -> contextlib.AbstractContextManager:
        return contextlib.nullcontext() if sync else model.no_sync()


class FSDPStrategy(SingleStrategy):
    """FSDP2: decoder layers and the root sharded over the ranks (module doc)."""

    name = "fsdp"
    gathers_parameters = True

    def wrap(self, scorer: nn.Module, frozen: bool = False) -> nn.Module:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict
        from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard

        rank0 = self.group.rank == 0
        full = scorer.state_dict() if rank0 else {}  # rank 0's weights, broadcast below one tensor at a time
        mp = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32, cast_forward_inputs=False) \
            if self.precision == "bf16-mixed" else MixedPrecisionPolicy(cast_forward_inputs=False)
        mesh = _mesh(self.device, self.group.world_size)
        for layer in _decoder_layers(scorer.lm):
            fully_shard(layer, mesh=mesh, mp_policy=mp)
        fully_shard(scorer, mesh=mesh, mp_policy=mp)
        if any(p.is_meta for p in scorer.parameters()) or any(b.is_meta for b in scorer.buffers()):
            scorer.to_empty(device=self.device)
        set_model_state_dict(scorer, full, options=StateDictOptions(full_state_dict=True, broadcast_from_rank0=True))
        del full
        _broadcast_tensors(scorer, self.group, params=False)  # buffers, also non-persistent ones (rotary)
        for module in scorer.modules():
            if isinstance(module, FSDPModule):  # sum, not average, over ranks (module doc); gloo has no PREMUL_SUM
                module.set_gradient_divide_factor(1.0)
                module.set_force_sum_reduction_for_comms(True)
        if frozen:
            scorer.requires_grad_(False)
        return scorer

    def autocast(self) -> contextlib.AbstractContextManager:
        return contextlib.nullcontext()  # the mixed-precision policy casts parameters itself

    def after_forward_only(self, model: nn.Module) -> None:
        """Reshard: the root unit stays gathered after a forward until its backward (module doc), and without one
        the module holds plain full tensors instead of the sharded parameters the optimizer steps, so the
        state-dict helpers no longer find the optimizer's parameters in it (``KeyError`` in
        ``get_optimizer_state_dict``: a Ray run checkpointing after a weight-sync check)."""
        _reshard(model)

    def full_parameters(self, lm: nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
        for name, p in lm.named_parameters():
            full = getattr(p, "full_tensor", None)
            yield name, (full() if full is not None else p).detach()

    def model_state_dict(self, scorer: nn.Module) -> dict[str, torch.Tensor]:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        sd = get_model_state_dict(scorer, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        return {k.removeprefix("lm."): v for k, v in sd.items()}

    def load_model_state_dict(self, scorer: nn.Module, state: dict[str, torch.Tensor] | None) -> None:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

        _reshard(scorer)  # sharded parameters: what the broadcast loader fills
        full = {f"lm.{k}": v for k, v in state.items()} if self.group.rank == 0 else {}  # scorer's names, as in wrap
        set_model_state_dict(scorer, full, options=StateDictOptions(full_state_dict=True, broadcast_from_rank0=True))

    def optimizer_state_dict(self, scorer: nn.Module, optimizer: torch.optim.Optimizer) -> dict | None:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

        flag = [bool(optimizer.state)]  # the same answer on every rank (the state is sharded, never partial)
        dist.broadcast_object_list(flag, src=0, group=self.group.control)
        if not flag[0]:
            return None
        return get_optimizer_state_dict(scorer, optimizer,
                                        options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def _reshard(model: nn.Module) -> None:
    """Every FSDP unit of ``model`` back to its sharded parameters (a no-op for units already sharded)."""
    from torch.distributed.fsdp import FSDPModule

    for module in model.modules():
        if isinstance(module, FSDPModule):
            module.reshard()


STRATEGIES = {"single": SingleStrategy, "ddp": DDPStrategy, "fsdp": FSDPStrategy}


def make_strategy(name: str, group: RankGroup, device: torch.device, precision: str) -> SingleStrategy:
    if name not in STRATEGIES:
        raise ValueError(f"unknown trainer.strategy {name!r}; expected one of {sorted(STRATEGIES)}")
    return STRATEGIES[name](group, device, precision)


def _decoder_layers(lm: nn.Module) -> list[nn.Module]:
    """The repeated blocks FSDP shards one by one (``model.layers`` of HF decoder models); none: one unit."""
    body = lm.get_decoder() if hasattr(lm, "get_decoder") else None
    layers = getattr(body, "layers", None)
    if layers is None:
        log.warning("fsdp: %s has no decoder layers list; the whole model is one FSDP unit", type(lm).__name__)
        return []
    return list(layers)


def _mesh(device: torch.device, world_size: int):
    from torch.distributed.device_mesh import init_device_mesh

    return init_device_mesh(device.type, (world_size,))


def _materialise(module: nn.Module, device: torch.device) -> nn.Module:
    """Followers build the model on the meta device (no memory, no init); give it real, empty storage."""
    if any(t.is_meta for t in [*module.parameters(), *module.buffers()]):
        return module.to_empty(device=device)
    return module.to(device)


def _broadcast_tensors(module: nn.Module, group: RankGroup, params: bool) -> None:
    """Rank 0's buffers (and parameters) into every rank's copy, in name order."""
    if group.world_size == 1:
        return
    tensors = [b for _, b in sorted(module.named_buffers())]
    if params:
        tensors += [p.data for _, p in sorted(module.named_parameters())]
    with torch.no_grad():
        for t in tensors:
            dist.broadcast(t, src=0)


def _sum_allreduce_hook(state, bucket):  # no annotations: DDP compares them with dist.GradBucket at runtime
    """DDP communication hook: sum the gradients over ranks (the default one averages)."""
    fut = dist.all_reduce(bucket.buffer(), async_op=True).get_future()
    return fut.then(lambda f: f.value()[0])
