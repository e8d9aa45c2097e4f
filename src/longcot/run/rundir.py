"""``runs/<name>/``: what a run writes as it goes, so a crash loses at most the current step."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from longcot.config import Recipe, to_dict


class RunDir:
    """``runs/<name>/``: config.yaml, metrics.jsonl, checkpoints/, eval/, curves.png, summary.json."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.metrics_path = self.root / "metrics.jsonl"
        self.summary: dict = {}
        self.trackers = None  # longcot.run.trackers.Trackers when the recipe sets tracking.log_with

    def write_json(self, name: str, data: dict) -> None:
        (self.root / name).write_text(json.dumps(data, indent=2))

    def write_config(self, recipe: Recipe) -> None:
        (self.root / "config.yaml").write_text(yaml.safe_dump(to_dict(recipe), sort_keys=False))

    def log_metrics(self, row: dict) -> None:
        with open(self.metrics_path, "a") as f:
            f.write(json.dumps(row) + "\n")
        if self.trackers is not None:
            self.trackers.log(row)

    def update_summary(self, **parts) -> None:
        for k, v in parts.items():
            if isinstance(v, dict) and isinstance(self.summary.get(k), dict):
                self.summary[k].update(v)
            else:
                self.summary[k] = v
        (self.root / "summary.json").write_text(json.dumps(self.summary, indent=2))

    def checkpoint(self, name: str) -> Path:
        return self.root / "checkpoints" / name
