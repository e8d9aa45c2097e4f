"""A warm pool of worker processes with a hard per-job time limit.

Why processes: a grader (sympy via math-verify, a sandbox supervisor) can hang in C code where no signal
reaches it, or crash. The only limit that always holds is killing the process that runs the job. Workers are
started once (imports paid once), kept warm, and replaced when one is killed or dies; a replacement's start-up
time is not charged to any job. Workers are ``spawn``-ed so they never inherit the trainer's memory or threads.

A job is ``(target, args)`` where ``target`` is ``"package.module:function"``; the result comes back as
``("ok", value)``, ``("error", message)`` or ``("timeout", seconds)``.
"""

from __future__ import annotations

import atexit
import logging
import multiprocessing as mp
import os
import signal
import threading
import time
from multiprocessing.connection import Connection, wait

from longcot.registry import import_object

log = logging.getLogger(__name__)
Result = tuple[str, object]


def _serve(conn: Connection, preload: tuple[str, ...]) -> None:
    """Worker main loop: import once, then run jobs until the pipe closes."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is for the trainer; it kills us explicitly
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    for module in preload:
        __import__(module)
    conn.send("ready")
    cache: dict[str, object] = {}
    while True:
        try:
            target, args = conn.recv()
        except (EOFError, OSError):
            return
        try:
            fn = cache.get(target) or cache.setdefault(target, import_object(target))
            conn.send(("ok", fn(*args)))
        except BaseException as e:  # noqa: BLE001 - report everything, the parent decides
            conn.send(("error", f"{type(e).__name__}: {e}"))


class _Worker:
    def __init__(self, ctx, preload: tuple[str, ...]):
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=_serve, args=(child, preload), daemon=True)
        self.proc.start()
        child.close()
        self.ready = False
        self.job: int | None = None
        self.deadline = 0.0

    def kill(self) -> None:
        self.proc.kill()
        self.proc.join(5)
        self.conn.close()

    def stop(self, grace_s: float = 5.0) -> None:
        """Close the pipe and let the worker exit by itself, so that it can stop and reap what it started (a
        sandbox server); killed only if it does not exit within ``grace_s``."""
        self.conn.close()
        self.proc.join(grace_s)
        if self.proc.is_alive():
            self.proc.kill()
            self.proc.join(5)


class WorkerPool:
    """``size`` warm processes; :meth:`map` runs jobs on them with a hard wall-clock limit per job."""

    def __init__(self, size: int, preload: tuple[str, ...] = (), start_timeout: float = 120.0):
        self.size = max(1, size)
        self.preload = preload
        self.start_timeout = start_timeout
        self._ctx = mp.get_context("spawn")
        self._workers: list[_Worker] = []
        self._lock = threading.Lock()
        self.killed = 0  # jobs that hit the hard limit (for metrics)

    def _ensure(self) -> None:
        self._workers = [w for w in self._workers if w.proc.is_alive() or w.job is not None]
        while len(self._workers) < self.size:
            self._workers.append(_Worker(self._ctx, self.preload))

    def _replace(self, w: _Worker) -> None:
        w.kill()
        self._workers.remove(w)
        self._ensure()

    def start(self) -> WorkerPool:
        """Spawn the workers now and return at once; they import in the background and the first ``map``
        waits only for what is left. Why: a pool first needed mid-run (say the first answer that is not a
        plain integer) otherwise charges its ~1 s start to one training step."""
        with self._lock:
            self._ensure()
        return self

    def map(self, target: str, jobs: list[tuple], timeout: float) -> list[Result]:
        """Run ``target(*args)`` for every ``args`` in ``jobs``; each job gets at most ``timeout`` seconds."""
        with self._lock:
            return self._map(target, jobs, timeout)

    def _map(self, target: str, jobs: list[tuple], timeout: float) -> list[Result]:
        results: list[Result | None] = [None] * len(jobs)
        todo = list(range(len(jobs)))[::-1]
        self._ensure()
        started = time.monotonic()
        while todo or any(w.job is not None for w in self._workers):
            for w in self._workers:
                if w.ready and w.job is None and todo:
                    w.job = todo.pop()
                    w.deadline = time.monotonic() + timeout
                    w.conn.send((target, jobs[w.job]))
            now = time.monotonic()
            if not any(w.ready for w in self._workers) and now - started > self.start_timeout:
                raise RuntimeError(f"reward workers did not start within {self.start_timeout:.0f} s")
            busy = [w.deadline - now for w in self._workers if w.job is not None]
            ready = wait([w.conn for w in self._workers], timeout=max(0.0, min(busy, default=1.0)))
            for w in list(self._workers):
                if w.conn in ready:
                    self._receive(w, results)
                elif w.job is not None and time.monotonic() > w.deadline:
                    results[w.job] = ("timeout", timeout)
                    self.killed += 1
                    log.warning("reward job %d killed after %.1f s (%s)", w.job, timeout, target)
                    w.job = None
                    self._replace(w)
        return results  # type: ignore[return-value]

    def _receive(self, w: _Worker, results: list) -> None:
        try:
            msg = w.conn.recv()
        except (EOFError, OSError):  # the worker died (segfault, OOM killer ...)
            if w.job is not None:
                w.proc.join(timeout=5)  # the pipe closes before the process is reaped: wait for its exit code
                results[w.job] = ("error", f"worker died (exit code {w.proc.exitcode})")
                w.job = None
            self._replace(w)
            return
        if msg == "ready":
            w.ready = True
        elif w.job is not None:
            results[w.job] = msg
            w.job = None

    def close(self) -> None:
        for w in self._workers:
            w.stop() if w.job is None else w.kill()
        self._workers = []


_POOLS: dict[str, WorkerPool] = {}


def default_workers() -> int:
    """``LONGCOT_REWARD_WORKERS`` or the number of CPUs (at most 8)."""
    return int(os.environ.get("LONGCOT_REWARD_WORKERS", min(8, os.cpu_count() or 1)))


def get_pool(name: str, preload: tuple[str, ...] = (), size: int | None = None) -> WorkerPool:
    """The process-wide pool called ``name`` (created on first use, closed at exit)."""
    pool = _POOLS.get(name)
    if pool is None or (size is not None and pool.size != size):
        if pool is not None:
            pool.close()
        pool = _POOLS[name] = WorkerPool(size or default_workers(), preload)
    return pool


@atexit.register
def close_pools() -> None:
    for pool in _POOLS.values():
        pool.close()
    _POOLS.clear()
