"""The engine a training step samples from: the recipe's wrappers around a base engine, the same in every runtime."""

from __future__ import annotations

from typing import Any

from longcot.config import Recipe


def rl_engine(engine: Any, recipe: Recipe) -> Any:
    """``engine`` wrapped for partial rollouts / loop cutting when the recipe asks (``rollout/partial.py``)."""
    if not (recipe.partial.enabled or recipe.partial.repetition.enabled):
        return engine
    from longcot.rollout.partial import PartialRollouts

    return PartialRollouts(engine, recipe.partial)
