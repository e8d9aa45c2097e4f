"""``runs/<name>/``: what a run writes as it goes, so a crash loses at most the work since its last state."""

from __future__ import annotations

import json
import os
from pathlib import Path

import yaml

from longcot.config import Recipe, to_dict


class RunDir:
    """``runs/<name>/``: config.yaml, metrics.jsonl, states/, checkpoints/, eval/, curves.png, summary.json."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.metrics_path = self.root / "metrics.jsonl"
        self.states = self.root / "states"
        self.summary: dict = {}
        self.trackers = None  # longcot.run.trackers.Trackers when the recipe sets tracking.log_with

    def write_json(self, name: str, data: dict) -> None:
        (self.root / name).write_text(json.dumps(data, indent=2))

    def reset(self) -> None:
        """A new run in this directory: no metrics rows or summary from an earlier one."""
        for path in (self.metrics_path, self.root / "summary.json"):
            path.unlink(missing_ok=True)
        self.summary = {}

    def write_config(self, recipe: Recipe) -> None:
        (self.root / "config.yaml").write_text(yaml.safe_dump(to_dict(recipe), sort_keys=False))

    def log_metrics(self, row: dict) -> None:
        with open(self.metrics_path, "a") as f:
            f.write(json.dumps(row) + "\n")
            f.flush()
            os.fsync(f.fileno())  # a training state counts these rows: they must be on disk before it is
        if self.trackers is not None:
            self.trackers.log(row)

    def metrics_rows(self) -> int:
        if not self.metrics_path.is_file():
            return 0
        with open(self.metrics_path, "rb") as f:
            return sum(1 for _ in f)

    def truncate_metrics(self, rows: int) -> int:
        """Keep the first ``rows`` rows (those a training state covers): the steps after it are run again, so
        every step appears exactly once. Returns how many rows were dropped."""
        if not self.metrics_path.is_file():
            return 0
        lines = self.metrics_path.read_bytes().splitlines(keepends=True)
        if len(lines) < rows:
            raise RuntimeError(f"{self.metrics_path} has {len(lines)} rows but the training state covers {rows}: the "
                               "metrics file was edited or lost")
        self.metrics_path.write_bytes(b"".join(lines[:rows]))
        return len(lines) - rows

    def load_summary(self) -> None:
        path = self.root / "summary.json"
        self.summary = json.loads(path.read_text()) if path.is_file() else {}

    def update_summary(self, **parts) -> None:
        for k, v in parts.items():
            if isinstance(v, dict) and isinstance(self.summary.get(k), dict):
                self.summary[k].update(v)
            else:
                self.summary[k] = v
        (self.root / "summary.json").write_text(json.dumps(self.summary, indent=2))

    def checkpoint(self, name: str) -> Path:
        return self.root / "checkpoints" / name
