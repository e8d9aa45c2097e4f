"""Trainer ranks: the process group, the command channel from rank 0 to the followers, and the local launcher.

Rank 0 leads; ranks 1..N-1 are followers that hold their part of the policy and run what rank 0 asks, step by
step:

    rank 0 (Learner.update etc.)                 follower (Learner.serve, started by rank_main)
    send(op, one payload per rank)  ---------->  receive() -> (op, its payload)
    run the op (collectives inside)  <-------->  run the op (the same collectives, in the same order)
    gather(results)                 <----------  gather(its result)

Commands travel on their own gloo group (``control``) with a long timeout, because a follower waits there
through every rollout phase; the compute collectives (DDP all-reduce, FSDP all-gather/reduce-scatter) use the
default group: gloo on CPU, NCCL on GPU.

The protocol does not care who started the processes. ``longcot train`` starts all N ranks itself
(:class:`LocalLauncher`: ``torch.multiprocessing`` spawn; they die with the driver) and talks to rank 0 through a
queue (longcot.rl.remote). Rank 0 cannot be the driver process itself: the in-process vLLM engine owns
torch.distributed's default process group there (its own world of one), a process joins one default group
only, and FSDP2's device mesh and DDP need the trainer's world to be that default group. The Ray runtime can run
``rank_main(rank, world_size, init_method, spec)`` (longcot.rl.remote) in N-1 follower actors and build rank
0's ``Learner(model, tokenizer, recipe, group=init_rank_group(0, world_size, init_method, ...))`` in the
trainer actor, with a ``tcp://host:port`` init method.
"""

from __future__ import annotations

import atexit
import ctypes
import datetime
import logging
import os
import shutil
import signal
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

log = logging.getLogger(__name__)


@dataclass
class RankGroup:
    """This process's place among the trainer ranks, and the channel rank 0 leads it by."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    control: Any = None  # the gloo process group commands travel on (None: a single rank without a group)
    owns_process_group: bool = False  # init_rank_group created torch.distributed's group (close destroys it)

    def send(self, op: str, payloads: list[Any]) -> Any:
        """Rank 0: give follower r ``(op, payloads[r])``; returns rank 0's own payload."""
        if len(payloads) != self.world_size:
            raise ValueError(f"send({op!r}): {len(payloads)} payloads for {self.world_size} ranks")
        out: list[Any] = [None]
        dist.scatter_object_list(out, [(op, p) for p in payloads], src=0, group=self.control)
        return out[0][1]

    def receive(self) -> tuple[str, Any]:
        """A follower: wait for rank 0's next ``(op, payload)``."""
        out: list[Any] = [None]
        dist.scatter_object_list(out, None, src=0, group=self.control)
        return out[0]

    def gather(self, value: Any) -> list[Any] | None:
        """Every rank's ``value`` on rank 0 (in rank order); None on the followers."""
        out = [None] * self.world_size if self.rank == 0 else None
        dist.gather_object(value, out, dst=0, group=self.control)
        return out

    def close(self) -> None:
        """Leave the process group if this object joined it."""
        if self.owns_process_group and dist.is_initialized():
            dist.destroy_process_group()
        self.owns_process_group = False


def init_rank_group(rank: int, world_size: int, init_method: str, device_type: str = "cpu",
                    local_rank: int | None = None, timeout_minutes: float = 360.0) -> RankGroup:
    """Join the trainer's process group (every rank calls this; it returns when all have joined).

    ``device_type`` picks the compute backend (nccl for cuda, gloo for cpu). ``timeout_minutes`` bounds how long
    a rank waits for a command, i.e. the longest rollout phase (DESIGN.md: rollouts run between updates).
    """
    local_rank = rank if local_rank is None else local_rank
    if device_type == "cuda":
        torch.cuda.set_device(local_rank % torch.cuda.device_count())
    backend = "nccl" if device_type == "cuda" else "gloo"
    dist.init_process_group(backend, init_method=init_method, rank=rank, world_size=world_size)
    control = dist.new_group(backend="gloo", timeout=datetime.timedelta(minutes=timeout_minutes))
    return RankGroup(rank, world_size, local_rank, control, owns_process_group=True)


class LocalLauncher:
    """The trainer's ranks as processes on this machine (``torch.multiprocessing`` spawn), each running
    ``target(rank, world_size, init_method, *args)``.

    They never outlive the driver: they ask the kernel for SIGKILL when their parent dies (Linux
    ``PR_SET_PDEATHSIG``), they are daemonic (multiprocessing terminates them at interpreter exit), and
    :meth:`close` (also registered with ``atexit``) stops the ones still running. They ignore Ctrl-C: the
    driver gets it and stops them, so one Ctrl-C gives one traceback, not N.
    """

    def __init__(self, world_size: int, target: Callable, args: tuple):
        import torch.multiprocessing as mp

        self.tmpdir = tempfile.mkdtemp(prefix="longcot-ranks-")
        self.init_method = f"file://{self.tmpdir}/rendezvous"
        self.context = mp.start_processes(_rank_entry, args=(target, world_size, self.init_method, os.getpid(), args),
                                          nprocs=world_size, join=False, daemon=True, start_method="spawn")
        self._closed = False
        # at exit without close() (Ctrl-C, a script that never closed its learner) no "stop" went out: the ranks
        # wait for a command that will not come, so waiting for them to exit on their own only delays the exit
        atexit.register(self.close, timeout=0.0)

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.context.processes]

    def error(self) -> str | None:
        """The first failed rank's traceback (None while all run or exited cleanly)."""
        try:
            self.context.join(timeout=0)
        except Exception as e:  # ProcessRaisedException / ProcessExitedException carry the follower's story
            return str(e)
        return None

    def close(self, timeout: float = 30.0) -> None:
        """Wait up to ``timeout`` s in all for the ranks to exit (they do after a "stop" command), then SIGTERM,
        then SIGKILL what is left."""
        if self._closed:
            return
        self._closed = True
        procs = self.context.processes
        deadline = time.monotonic() + timeout
        for p in procs:
            p.join(max(0.0, deadline - time.monotonic()))
        for p in procs:
            if p.is_alive():
                p.terminate()
        for p in procs:
            p.join(5)
            if p.is_alive():
                p.kill()
                p.join(5)
        shutil.rmtree(self.tmpdir, ignore_errors=True)


def _rank_entry(rank: int, target: Callable, world_size: int, init_method: str, parent_pid: int,
                args: tuple) -> None:
    """What a spawned rank runs: die with the driver, ignore Ctrl-C, then ``target`` as ``rank``."""
    _die_with_parent(parent_pid)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    target(rank, world_size, init_method, *args)


def _die_with_parent(parent_pid: int) -> None:
    """Ask Linux to SIGKILL this process when its parent exits (however it exits: error, Ctrl-C, kill -9)."""
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except OSError:  # not Linux: the daemon flag and close() still stop the followers on a normal exit
        return
    if os.getppid() != parent_pid:  # the parent died before prctl took effect
        os._exit(1)
