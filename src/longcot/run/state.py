"""The training state a run resumes from: written atomically, verified on load, pruned to the newest few.

One state is a directory ``runs/<name>/states/step-00000008/``:

- ``policy/``: the policy weights and tokenizer in HF format (loadable by vLLM, transformers, ``longcot eval``);
- ``learner.pt``: optimizer state, policy version, optimizer steps taken (the learning-rate schedule position);
- ``loop.pkl``: the step to run next, the prompt sampler's state, the engine wrappers' state (the partial-rollout
  buffer with its segment versions), Python/NumPy/torch RNG states, the summary so far and the number of
  ``metrics.jsonl`` rows it covers;
- ``manifest.json``: every file above with its size and SHA-256, written last.

Why this order of writes: the directory is built under a temporary name, every file and directory is fsync-ed,
then it is renamed into place, and only then does ``states/latest`` move (itself replaced atomically). A kill at
any moment leaves either the previous state as latest or the new one complete; a state whose files do not match
its manifest (a torn copy, a truncated file on a full disk) is skipped with a warning naming the file, and the
one before it is used. The reference model (KL) is not stored: it is the policy RL started from, rebuilt from
that checkpoint on resume.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import pickle
import random
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

log = logging.getLogger(__name__)
FORMAT = 1
LATEST = "latest"


class StateError(RuntimeError):
    """No usable training state, or one that does not fit this run."""


@dataclass
class TrainingState:
    """A state read back from disk (verified against its manifest)."""

    path: Path
    step: int  # the next RL step to run
    learner: dict
    loop: dict

    @property
    def policy_path(self) -> Path:
        return self.path / "policy"


def rng_state() -> dict:
    """Every global generator a step may draw from."""
    return {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _fsync_tree(root: Path) -> None:
    """Flush every file and directory under ``root`` to disk (a rename is only as durable as what it names)."""
    for dirpath, _, files in os.walk(root):
        for name in files:
            fd = os.open(os.path.join(dirpath, name), os.O_RDONLY)
            os.fsync(fd)
            os.close(fd)
        _fsync_dir(Path(dirpath))


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_manifest(root: Path, step: int) -> None:
    files = sorted(p for p in root.rglob("*") if p.is_file())
    entries = {str(p.relative_to(root)): {"size": p.stat().st_size, "sha256": _sha256(p)} for p in files}
    manifest = {"format": FORMAT, "step": step, "written": time.strftime("%Y-%m-%dT%H:%M:%S"), "files": entries}
    (root / "manifest.json").write_text(json.dumps(manifest, indent=1))


def _write_files(tmp: Path, learner: Any, loop: dict) -> None:
    """The state's payload (everything but the manifest)."""
    learner.save_pretrained(tmp / "policy")
    torch.save(learner.state_dict(), tmp / "learner.pt")
    with open(tmp / "loop.pkl", "wb") as f:
        pickle.dump(loop, f, protocol=pickle.HIGHEST_PROTOCOL)


def save_state(states_dir: Path, step: int, learner: Any, loop: dict, keep: int) -> Path:
    """Write the state before RL step ``step`` (the next to run) and make it the latest; keep the newest ``keep``
    states (0: all). Returns the state's directory."""
    states_dir.mkdir(parents=True, exist_ok=True)
    final = states_dir / f"step-{step:08d}"
    tmp = states_dir / f".tmp-{final.name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    _write_files(tmp, learner, {**loop, "format": FORMAT, "step": step})
    _write_manifest(tmp, step)
    _fsync_tree(tmp)
    if final.exists():  # the same step saved again (a resumed run re-saving its starting point)
        shutil.rmtree(final)
    os.rename(tmp, final)
    _fsync_dir(states_dir)
    pointer = states_dir / f".{LATEST}.tmp"
    pointer.write_text(final.name + "\n")
    os.replace(pointer, states_dir / LATEST)
    _fsync_dir(states_dir)
    _prune(states_dir, keep)
    return final


def _prune(states_dir: Path, keep: int) -> None:
    """Delete all but the newest ``keep`` states and any temporary directory a killed writer left."""
    for tmp in states_dir.glob(".tmp-*"):
        if not tmp.name.endswith(f"-{os.getpid()}"):
            shutil.rmtree(tmp, ignore_errors=True)
    if keep > 0:
        for old in sorted(states_dir.glob("step-*"))[:-keep]:
            shutil.rmtree(old, ignore_errors=True)


def verify(path: Path) -> str | None:
    """Why the state at ``path`` cannot be used (naming the file), or None if every file matches its manifest."""
    manifest_path = path / "manifest.json"
    try:
        manifest = json.loads(manifest_path.read_text())
    except (OSError, ValueError) as e:
        return f"{manifest_path}: unreadable manifest ({e})"
    if manifest.get("format") != FORMAT:
        return f"{manifest_path}: state format {manifest.get('format')}, this longcot reads {FORMAT}"
    for rel, entry in manifest["files"].items():
        f = path / rel
        if not f.is_file():
            return f"{f}: missing"
        if f.stat().st_size != entry["size"]:
            return f"{f}: {f.stat().st_size} bytes, the manifest says {entry['size']} (truncated or torn write)"
        if _sha256(f) != entry["sha256"]:
            return f"{f}: content does not match its SHA-256 in the manifest"
    return None


def candidates(states_dir: Path) -> list[Path]:
    """States to try, best first: the one ``latest`` names, then the others from the newest step down."""
    found = sorted(states_dir.glob("step-*"), reverse=True)
    pointer = states_dir / LATEST
    named = states_dir / pointer.read_text().strip() if pointer.is_file() else None
    if named is not None and named in found:
        found.remove(named)
        found.insert(0, named)
    return found


def load_latest(states_dir: Path) -> TrainingState | None:
    """The newest state whose files match its manifest (a warning for each one skipped), or None if the run has
    never written one. Raises :class:`StateError` when states exist but none is usable."""
    tried = candidates(states_dir)
    for path in tried:
        problem = verify(path)
        if problem is not None:
            log.warning("training state %s is not usable: %s; trying the one before it", path.name, problem)
            continue
        learner = torch.load(path / "learner.pt", map_location="cpu", weights_only=False)
        with open(path / "loop.pkl", "rb") as f:
            loop = pickle.load(f)  # our own file, written by save_state: the run directory is the user's
        return TrainingState(path, int(loop["step"]), learner, loop)
    if tried:
        raise StateError(f"{states_dir}: none of the {len(tried)} training states is usable (see the warnings "
                         "above); start a new run with another name= or --overwrite")
    return None
