"""Recipes: typed schema (schema.py) and the YAML loader with inheritance and overrides (loader.py)."""

from __future__ import annotations

from pathlib import Path

from longcot.config.loader import ConfigError, build, load, to_dict
from longcot.config.schema import (
    AlgoRef,
    DataConfig,
    EvalConfig,
    ModelConfig,
    Recipe,
    RLConfig,
    RolloutConfig,
    SFTConfig,
)


def load_recipe(path: str | Path | None, overrides: list[str] | tuple = ()) -> Recipe:
    """Load and validate a training recipe; raises :class:`ConfigError` naming file, line and key."""
    return load(Recipe, path, overrides)


__all__ = [
    "AlgoRef", "ConfigError", "DataConfig", "EvalConfig", "ModelConfig", "RLConfig", "Recipe", "RolloutConfig",
    "SFTConfig", "build", "load", "load_recipe", "to_dict",
]
