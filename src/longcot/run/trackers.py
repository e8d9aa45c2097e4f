"""Experiment trackers (TensorBoard, Weights & Biases, MLflow) through accelerate's tracker classes.

Every row :meth:`RunDir.log_metrics` writes to ``metrics.jsonl`` goes to the tracker too, at its RL step, with
the same keys; every ``tracking.samples_every`` steps a small table of sample completions (prompt, response,
reward) follows. accelerate's trackers (``accelerate.tracking``) already wrap each library's writer, so this
module only picks one, points it at the run directory, and adds the sample table each library shows best.
Offline: TensorBoard writes event files; MLflow a file store under the tracking directory (unless
``MLFLOW_TRACKING_URI`` says otherwise); W&B runs offline with ``tracking.offline`` (or ``WANDB_MODE=offline``).
"""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

# tracker name -> (importable module it needs, pip package to install)
NEEDS = {"tensorboard": ("tensorboard", "tensorboard"), "wandb": ("wandb", "wandb"), "mlflow": ("mlflow", "mlflow")}


class TrackerError(RuntimeError):
    """A tracker that cannot start (its library is not installed)."""


def check_available(name: str) -> None:
    """Fail before any work when the selected tracker's library is missing (a clear install line, no traceback)."""
    module, package = NEEDS[name]
    if importlib.util.find_spec(module) is None:
        extra = " (longcot's 'trackers' extra)" if name == "tensorboard" else ""
        raise TrackerError(f"tracking.log_with={name} needs the '{package}' package, which is not installed: "
                           f"pip install {package}{extra}, or set tracking.log_with=none (or tensorboard)")


def _numeric(row: dict) -> dict[str, float]:
    return {k: float(v) for k, v in row.items() if isinstance(v, int | float) and not isinstance(v, bool)}


class Trackers:
    """One accelerate tracker for a run: scalars per step and sample tables."""

    def __init__(self, cfg, run_name: str, run_root: Path, config: dict | None = None):
        from accelerate import tracking

        check_available(cfg.log_with)
        self.name, self.cfg = cfg.log_with, cfg
        self.dir = Path(cfg.dir) if cfg.dir else Path(run_root) / "tracking"
        self.dir.mkdir(parents=True, exist_ok=True)
        if self.name == "tensorboard":
            self.tracker = tracking.TensorBoardTracker(run_name, self.dir)
        elif self.name == "wandb":
            mode = "offline" if cfg.offline else os.environ.get("WANDB_MODE")
            self.tracker = tracking.WandBTracker(cfg.project, name=run_name, dir=str(self.dir), mode=mode)
        else:
            os.environ.setdefault("MLFLOW_TRACKING_URI", self.dir.resolve().as_uri())
            self.tracker = tracking.MLflowTracker(cfg.project, logging_dir=str(self.dir), run_name=run_name)
        self.tracker.start()
        if config is not None and self.name != "tensorboard":  # tensorboard's hparams need flat scalars
            self.tracker.store_init_configuration(_flatten(config))

    def log(self, row: dict) -> None:
        """The numeric values of a metrics row at its step (``row["step"]``)."""
        values = _numeric(row)
        step = int(values.pop("step", 0))
        self.tracker.log(values, step=step)

    def wants_samples(self, step: int) -> bool:
        every = self.cfg.samples_every
        return bool(every) and (step + 1) % every == 0

    def log_samples(self, step: int, trajs) -> None:
        """A table of the first ``tracking.num_samples`` completions of a step: prompt, response, reward."""
        rows = [[t.prompt_text, t.response_text, float(t.reward)]
                for t in trajs[: self.cfg.num_samples]]
        columns = ["prompt", "response", "reward"]
        if self.name == "wandb":
            self.tracker.log_table("samples", columns=columns, data=rows, step=step)
        elif self.name == "mlflow":
            import mlflow

            mlflow.log_table({c: [r[i] for r in rows] for i, c in enumerate(columns)},
                             artifact_file=f"samples/step_{step:06d}.json")
        else:
            self.tracker.writer.add_text("samples", _markdown(columns, rows), global_step=step)

    def finish(self) -> None:
        self.tracker.finish()


def _markdown(columns: list[str], rows: list[list]) -> str:
    """A markdown table (TensorBoard's text plugin renders it); cells keep their line breaks as <br>."""
    def cell(v) -> str:
        return (f"{v:.3f}" if isinstance(v, float) else str(v)).replace("|", "\\|").replace("\n", "<br>")

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(v) for v in r) + " |" for r in rows]
    return "\n".join(lines)


def _flatten(config: dict, prefix: str = "") -> dict:
    """A nested recipe as flat ``a.b: value`` pairs of plain types (what trackers store as parameters)."""
    out = {}
    for k, v in config.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v if isinstance(v, int | float | str | bool) or v is None else json.dumps(v)
    return out
