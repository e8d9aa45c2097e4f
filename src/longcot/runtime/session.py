"""Starting, joining and leaving Ray, so that a run leaves nothing behind.

- ``cluster.address: null``: a fresh local Ray instance for this run, sized to the job (CPUs: at least what the
  actors ask for; custom resources the recipe names are declared on it), its session files under a temporary
  directory in /tmp that is removed at the end (and, by the next run, if a kill left it behind).
- ``auto`` or ``host:port``: join a running cluster (``ray start --head`` / ``ray start --address=...``); the run
  checks that the cluster has the resources its actors ask for before creating any, and on leaving kills only
  the actors it created.
- Nothing is written under $HOME (:func:`keep_out_of_home`): Ray 2.60 writes an auth token there unless
  ``RAY_AUTH_MODE=disabled``, which is set unless the environment says otherwise (a cluster started with token auth
  needs the user's own setting); usage statistics are off; vLLM's and matplotlib's caches go to
  ``/tmp/longcot-cache-<uid>``.
- The end: :meth:`RaySession.close` runs from the pipeline's ``finally`` (errors, Ctrl-C, SIGTERM: ``ray.init``
  installs a SIGTERM handler that raises ``SystemExit``; a handler the process had installed before, e.g. for
  preemption, is put back) and from ``atexit``, and stops every process the local instance started
  (``ray.shutdown``).
"""

from __future__ import annotations

import atexit
import logging
import math
import os
import shutil
import signal
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from longcot.config.schema import ClusterConfig
from longcot.errors import InputError

log = logging.getLogger(__name__)
READY_TIMEOUT_S = 900.0  # a vLLM worker starts in ~12 s on an idle CPU; minutes on a loaded one


class ClusterNotFoundError(InputError):
    """``cluster.address`` names a Ray cluster that is not running (or not reachable from here)."""


def _check_reachable(address: str, timeout_s: float = 5.0) -> None:
    """Raise ``ConnectionError`` at once when ``host:port`` (or ``ray://host:port``) takes no TCP connection: Ray
    itself retries an unreachable head for minutes (measured: over 3 min for a wrong port) before it gives up."""
    import socket

    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        return  # "auto", or a form Ray resolves itself
    try:
        socket.create_connection((host, int(port)), timeout=timeout_s).close()
    except OSError as e:
        raise ConnectionError(f"nothing accepts connections at {host}:{port}: {e}") from e


def keep_out_of_home() -> None:
    """Environment defaults so that a Ray-mode run writes nothing under $HOME: Ray's auth token and usage stats
    off, vLLM's and matplotlib's caches (model info, compile cache; font list) in a per-user directory in /tmp
    that later runs reuse. A value the user set wins. Actors inherit these (``runtime/ray.py``)."""
    cache = Path(tempfile.gettempdir()) / f"longcot-cache-{os.getuid()}"
    for key, value in (("RAY_AUTH_MODE", "disabled"), ("RAY_USAGE_STATS_ENABLED", "0"),
                       ("VLLM_NO_USAGE_STATS", "1"), ("VLLM_CACHE_ROOT", str(cache / "vllm")),
                       ("MPLCONFIGDIR", str(cache / "matplotlib"))):
        os.environ.setdefault(key, value)


def remove_stale_sessions(root: Path, min_age_s: float = 600.0) -> list[Path]:
    """Delete the session directories (``root/lcray-*``) that earlier runs' local Ray instances left behind.

    A run removes its own at the end, but one killed with SIGKILL (the out-of-memory killer, a preempted node)
    cannot, and a long run's logs there can be large. A directory is stale when no live process names it on its
    command line (Ray's GCS, raylet and agents all do while they run) and it is older than ``min_age_s`` (a run
    that has just made its directory and not yet started Ray is left alone). Returns what was removed."""
    import psutil

    candidates = [d for d in root.glob("lcray-*") if d.is_dir() and d.stat().st_uid == os.getuid()
                  and time.time() - d.stat().st_mtime > min_age_s]
    if not candidates:
        return []
    live = set()
    for proc in psutil.process_iter(["cmdline"]):
        for arg in proc.info["cmdline"] or ():
            live.update(d for d in candidates if str(d) in arg)
    stale = [d for d in candidates if d not in live]
    for d in stale:
        shutil.rmtree(d, ignore_errors=True)
    if stale:
        log.info("removed %d Ray session directories left by killed runs (%s)", len(stale),
                 ", ".join(d.name for d in stale))
    return stale


def requested_resources(cfg: ClusterConfig) -> dict[str, float]:
    """Everything the run's actors ask Ray for, summed (``CPU``, ``GPU`` and custom resources)."""
    n = cfg.rollout_workers
    need = {"CPU": n * cfg.worker_cpus + cfg.trainer_cpus, "GPU": n * cfg.worker_gpus + cfg.trainer_gpus}
    for name, amount in cfg.worker_resources.items():
        need[name] = need.get(name, 0.0) + n * amount
    for name, amount in cfg.trainer_resources.items():
        need[name] = need.get(name, 0.0) + amount
    return {k: v for k, v in need.items() if v > 0}


class RaySession:
    """This run's connection to Ray (see the module doc). ``owned``: the run started the instance itself."""

    def __init__(self, cfg: ClusterConfig) -> None:
        keep_out_of_home()
        import ray

        self.cfg = cfg
        self.owned = self.connected = False
        self.temp_dir: str | None = None
        self.actors: list[Any] = []
        need = requested_resources(cfg)
        on_main = threading.current_thread() is threading.main_thread()
        sigterm = signal.getsignal(signal.SIGTERM) if on_main else None
        if ray.is_initialized():  # a caller (a test, a notebook) already holds a Ray instance: use it, leave it up
            log.info("using the Ray instance this process is already connected to")
        elif cfg.address is None:
            self._start_local(need)
        else:
            try:
                _check_reachable(cfg.address)
                ray.init(address=cfg.address, include_dashboard=False, log_to_driver=True)
            except ConnectionError as e:
                raise ClusterNotFoundError(
                    f"cluster.address={cfg.address}: no Ray cluster answered ({str(e).splitlines()[0]}). Start one "
                    "first (`ray start --head` on this node, `ray start --address=HEAD:6379` on the others; "
                    "docs/cluster.md), or leave cluster.address empty to start a local instance for this run. "
                    "Finished stages are kept: `longcot train ... --resume` continues once it is up") from e
            self.connected = True
            log.info("joined the Ray cluster at %s", cfg.address)
        if callable(sigterm):  # ray.init replaced the process's own SIGTERM handler: the process's wins
            signal.signal(signal.SIGTERM, sigterm)
        atexit.register(self.close)
        self._check(need)

    def _start_local(self, need: dict[str, float]) -> None:
        import ray

        cpus = os.cpu_count() or 1
        if need.get("CPU", 0) > cpus:
            log.warning("the actors ask for %.1f CPUs, this machine has %d: they will share cores", need["CPU"], cpus)
        custom = {k: v for k, v in need.items() if k not in ("CPU", "GPU")}
        remove_stale_sessions(Path("/tmp"))
        self.temp_dir = tempfile.mkdtemp(prefix="lcray-", dir="/tmp")  # short: Ray's socket paths must fit 107 chars
        ray.init(num_cpus=max(cpus, math.ceil(need.get("CPU", 0))), resources=custom or None,
                 include_dashboard=False, _temp_dir=self.temp_dir, log_to_driver=True)
        self.owned = self.connected = True
        log.info("started a local Ray instance (session files under %s)", self.temp_dir)

    def _check(self, need: dict[str, float]) -> None:
        """Refuse to create actors the cluster cannot place (they would wait forever)."""
        import ray

        have = ray.cluster_resources()
        short = {k: (v, have.get(k, 0.0)) for k, v in need.items() if have.get(k, 0.0) + 1e-9 < v}
        if short:
            lines = ", ".join(f"{k}: the run asks for {v:g}, the cluster has {h:g}" for k, (v, h) in short.items())
            self.close()
            raise RuntimeError(f"the Ray cluster cannot place this run's actors ({lines}); lower "
                               "cluster.rollout_workers or cluster.*_cpus/_gpus/_resources, or add nodes "
                               "(docs/cluster.md)")

    def track(self, handle: Any) -> Any:
        self.actors.append(handle)
        return handle

    def close(self) -> None:
        """Kill this run's actors; stop the local instance (every Ray process it started) if the run owns it."""
        import ray

        for handle in self.actors:
            try:
                ray.kill(handle, no_restart=True)
            except Exception:  # noqa: BLE001 - already dead, or Ray already down
                pass
        self.actors = []
        if self.connected and ray.is_initialized():
            ray.shutdown()
        self.connected = False
        if self.temp_dir:
            shutil.rmtree(self.temp_dir, ignore_errors=True)
            self.temp_dir = None
        atexit.unregister(self.close)
