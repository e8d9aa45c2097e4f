"""Opening a run directory: a new run, a resumed one (``--resume``), or a refused one.

A directory that holds a finished stage (a training state, or a summary with SFT or an evaluation) is never
wiped by accident: without ``--resume`` the command stops and says what to do; ``--overwrite`` deletes it
explicitly. A resumed run must use the recipe it was started with, except keys that cannot change what it
computes (:data:`SAFE_ON_RESUME`); every other difference is listed, with its old and new value, before any
work starts.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import yaml

from longcot.config import ConfigError, Recipe, to_dict
from longcot.run.rundir import RunDir
from longcot.run.state import TrainingState, load_latest

# Keys a resumed run may change: how long it runs, how often it saves or evaluates, threads, where it logs, where
# the run directory is (a run moved or copied elsewhere is the same run), and how the trainer is laid out over
# processes and machines (a state saved by one strategy loads into another: the optimizer state is the full one,
# keyed by parameter name; docs/training.md), and the number of rollout workers (buffered partial rollouts are dealt
# to the new ones). Not trainer.device or trainer.precision (other numbers). A key names itself and its subkeys.
SAFE_ON_RESUME = ("rl.steps", "threads", "rl.checkpoint_every", "rl.keep_checkpoints", "sft.checkpoint_every",
                  "eval.every", "name", "out_dir", "trainer.strategy", "trainer.ranks", "trainer.timeout_minutes",
                  "cluster.address", "cluster.rollout_workers", "cluster.worker_cpus", "cluster.worker_gpus",
                  "cluster.worker_resources", "cluster.trainer_cpus", "cluster.trainer_gpus",
                  "cluster.trainer_resources", "cluster.max_worker_restarts")


def _safe(key: str) -> bool:
    return any(key == s or key.startswith(s + ".") for s in SAFE_ON_RESUME)


def flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    """``{"rl": {"lr": 1}}`` -> ``{"rl.lr": 1}``; lists and leaves stay values."""
    if not isinstance(d, dict):
        return {prefix: d}
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}.{k}" if prefix else str(k)
        out.update(flatten(v, key) if isinstance(v, dict) and v else {key: v})
    return out


def unsafe_changes(saved: dict, recipe: Recipe) -> list[tuple[str, Any, Any]]:
    """(key, old, new) for every resolved key that differs and is not safe to change on resume."""
    old, new = flatten(saved), flatten(to_dict(recipe))
    keys = sorted(set(old) | set(new))
    return [(k, old.get(k, "<unset>"), new.get(k, "<unset>")) for k in keys
            if old.get(k, "<unset>") != new.get(k, "<unset>") and not _safe(k)]


def has_finished_stage(root: Path) -> bool:
    """Whether ``root`` holds work worth keeping: a training state, an SFT checkpoint, or a summary of a finished
    stage."""
    if any((root / "states").glob("step-*")) or any((root / "checkpoints/sft/trl").glob("checkpoint-*")):
        return True
    summary = root / "summary.json"
    if summary.is_file():
        try:
            data = json.loads(summary.read_text())
        except ValueError:
            return True
        return bool(data.get("sft") or data.get("eval"))
    return False


def open_run(recipe: Recipe, resume: bool, overwrite: bool) -> tuple[RunDir, TrainingState | None]:
    """The run directory for ``recipe`` and, with ``resume``, the training state to continue from (None when the
    run stopped before its first state; its finished stages are still kept through ``summary.json``)."""
    if resume and overwrite:
        raise ConfigError("--resume and --overwrite exclude each other")
    root = Path(recipe.out_dir) / recipe.name
    if overwrite and root.exists():
        shutil.rmtree(root)
    if not resume:
        if has_finished_stage(root):
            raise ConfigError(f"{root} already holds a run (a training state or finished stages): pass --resume "
                              "to continue it, --overwrite to delete it, or choose another name= "
                              f"(e.g. name={recipe.name}-2)")
        run = RunDir(root)
        run.reset()
        return run, None
    saved = root / "config.yaml"
    if not saved.is_file():
        raise ConfigError(f"--resume: {root} holds no run to resume (no config.yaml); drop --resume to start it")
    changes = unsafe_changes(yaml.safe_load(saved.read_text()) or {}, recipe)
    if changes:
        lines = "\n".join(f"  {k}: {old!r} -> {new!r}" for k, old, new in changes)
        raise ConfigError(f"--resume: the recipe differs from the one {root} was started with in keys that change what "
                          f"it computes:\n{lines}\nonly these may change on resume: {', '.join(SAFE_ON_RESUME)}; "
                          "restore the old values, or start a new run with another name=")
    run = RunDir(root)
    run.load_summary()
    return run, load_latest(run.states)
