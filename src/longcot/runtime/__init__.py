"""Runtimes: where the RL loop runs (``cluster.backend``, docs/cluster.md).

- ``local`` (:mod:`longcot.runtime.local`): one process, the engine beside the trainer; today's loop.
- ``ray`` (:mod:`longcot.runtime.ray`): rollout workers and the trainer as Ray actors, rollouts overlapping
  training within ``rl.max_off_policy_steps``.

Both give the pipeline the same two things: ``engine`` (evaluation) and ``rl_trainer(model, next_prompts,
on_results)`` (an object with ``step(step) -> (row, trajs)``, ``engine`` and ``learner``), and ``shutdown()``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from longcot.config import Recipe
from longcot.runtime.stack import rl_engine


def make_runtime(recipe: Recipe, run_root: Path, policy_path: str, tokenizer: Any, max_model_len: int,
                 engine_options: dict[str, Any] | None = None) -> Any:
    """The runtime ``recipe.cluster.backend`` names, with its engine(s) started. ``engine_options``: the rollout
    engine's keyword options (default ``rollout.engine_options``; the pipeline adds MoE routing capture)."""
    options = dict(recipe.rollout.engine_options if engine_options is None else engine_options)
    if recipe.cluster.backend == "ray":
        from longcot.runtime.ray import RayRuntime

        return RayRuntime(recipe, run_root, policy_path, tokenizer, max_model_len, options)
    from longcot.runtime.local import LocalRuntime

    return LocalRuntime(recipe, run_root, policy_path, tokenizer, max_model_len, options)


__all__ = ["make_runtime", "rl_engine"]
