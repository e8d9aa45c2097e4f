"""Helpers shared by the Ray-runtime tests: a tiny Ray-mode recipe, reading a run, watching processes."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[2]
RECIPE = ROOT / "recipes/tiny/arith-moe.yaml"
PROMPTS, N = 4, 4
# The demo recipe at toy size in Ray mode, one step off-policy. An entropy bonus moves the weights on every step
# even when no sample is correct yet, so staleness, the IS weights and the weight-sync canary all see real changes.
RAY_ARGS = ["threads=1", "sft.enabled=false", f"rl.prompts_per_step={PROMPTS}", f"rollout.n={N}",
            "eval.num_problems=8", "eval.n=1", "data.num_train=400", "data.num_heldout=16", "rollout.max_tokens=32",
            "eval.max_tokens=32", "rl.entropy_coef=0.01", "rollout.sync_check_every=1", "cluster.backend=ray",
            "rl.max_off_policy_steps=1", "rl.rollout_correction.rollout_is=token"]


def env() -> dict[str, str]:
    src = str(ROOT / "src")
    path = os.environ.get("PYTHONPATH", "")
    return {**os.environ, "PYTHONPATH": f"{src}:{path}" if path else src, "LONGCOT_NO_PROGRESS": "1",
            "VLLM_ENABLE_V1_MULTIPROCESSING": "0", "VLLM_CPU_KVCACHE_SPACE": "1", "OMP_NUM_THREADS": "1",
            "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"}


def rows(run: Path) -> list[dict]:
    path = run / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []


class ProcessWatch:
    """Every process descending from ``proc`` while it runs (Ray's GCS, raylet, workers, actors...), so a test can
    check that none outlives the run."""

    def __init__(self, proc: subprocess.Popen) -> None:
        self.root = psutil.Process(proc.pid)
        self.seen: dict[int, float] = {}

    def poll(self) -> None:
        try:
            for p in self.root.children(recursive=True):
                try:
                    self.seen.setdefault(p.pid, p.create_time())
                except psutil.NoSuchProcess:
                    pass
        except psutil.NoSuchProcess:
            pass

    def survivors(self, grace_s: float = 20.0) -> list[str]:
        """The watched processes still alive after ``grace_s`` (the same pid and start time: not a reused pid)."""
        deadline = time.monotonic() + grace_s
        while True:
            alive = []
            for pid, created in self.seen.items():
                try:
                    p = psutil.Process(pid)
                    if p.create_time() == created and p.status() != psutil.STATUS_ZOMBIE:
                        alive.append(f"{pid} {' '.join(p.cmdline())[:120]}")
                except psutil.NoSuchProcess:
                    pass
            if not alive or time.monotonic() > deadline:
                return alive
            time.sleep(0.5)


def start_train(out_dir: Path, name: str, extra: list[str], home: Path | None = None) -> subprocess.Popen:
    """``longcot train`` of the tiny Ray-mode recipe in a subprocess (``home``: its $HOME)."""
    cmd = [sys.executable, "-m", "longcot.cli", "train", str(RECIPE), f"out_dir={out_dir}", f"name={name}",
           *RAY_ARGS, *extra]
    environ = env()
    if home is not None:
        environ["HOME"] = str(home)
        for key in ("RAY_AUTH_MODE", "VLLM_CACHE_ROOT", "MPLCONFIGDIR", "XDG_CACHE_HOME", "XDG_CONFIG_HOME"):
            environ.pop(key, None)  # the run's own defaults must keep it out of $HOME
    return subprocess.Popen(cmd, env=environ, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def watch(proc: subprocess.Popen, until=lambda: False, timeout_s: float = 600.0) -> ProcessWatch:
    """Poll ``proc``'s descendants until it exits or ``until()`` holds."""
    w = ProcessWatch(proc)
    deadline = time.monotonic() + timeout_s
    while proc.poll() is None and not until() and time.monotonic() < deadline:
        w.poll()
        time.sleep(0.2)
    return w


@contextlib.contextmanager
def local_ray(prefix: str) -> Iterator[None]:
    """A 2-CPU Ray instance for a test module; its session files (under /tmp/<prefix>*) are removed at the end, as
    the runtime does for the runs it starts."""
    import ray

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    temp = tempfile.mkdtemp(prefix=prefix, dir="/tmp")
    ray.init(num_cpus=2, include_dashboard=False, _temp_dir=temp, log_to_driver=False)
    try:
        yield
    finally:
        ray.shutdown()
        shutil.rmtree(temp, ignore_errors=True)
