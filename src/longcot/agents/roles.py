"""Sub-agent roles: ``agents.subagents`` maps a role name to the policy that answers it.

An orchestrator names the role in its directive (``[b@calc: 9*2-4]``; no ``@role``: ``agents.default_role``).
A role is served by

* ``policy: shared``: the policy being trained (the rollout engine; it receives every weight sync), or
* ``policy: frozen``: a fixed checkpoint in its own engine that never receives weights: ``path``, or the final
  checkpoint of ``recipe`` (a specialist trained first by its own recipe, docs/agents.md), or by default the
  policy RL starts from (K2.5 trains the orchestrator against frozen sub-agents).

Each role may set its own prompt template, token limit and temperature. Roles on the same frozen checkpoint and
engine share one engine.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from longcot.agents.protocol import Problem
from longcot.registry import did_you_mean
from longcot.rollout.base import Engine

log = logging.getLogger(__name__)


@dataclass
class Role:
    """A resolved role: the engine that answers it and how it samples."""

    name: str
    engine: Engine
    shared: bool  # the trained policy: its sub-agents may be trained (agents.train_subagents)
    template: str
    max_tokens: int
    temperature: float | None  # None: the orchestrator's rollout temperature


def make_roles(cfg: Any, engine: Engine, frozen: dict[str, Engine] | None = None) -> dict[str, Role]:
    """Resolve ``cfg.subagents`` (an AgentsConfig): shared roles get ``engine``, frozen ones ``frozen[name]``."""
    frozen = frozen or {}
    roles = {}
    for name, spec in cfg.subagents.items():
        if spec.policy == "frozen" and name not in frozen:
            raise ValueError(f"sub-agent role '{name}' is frozen but no engine was given for it (wrap_engine builds "
                             f"one from agents.subagents.{name}.path or .recipe)")
        roles[name] = Role(name, engine if spec.policy == "shared" else frozen[name], spec.policy == "shared",
                           spec.template or cfg.subagent_template, spec.max_tokens or cfg.subagent_max_tokens,
                           spec.temperature if spec.temperature is not None else cfg.subagent_temperature)
    return roles


def resolve(roles: dict[str, Role], name: str | None, default: str, sub_name: str) -> Role | Problem:
    """The role a directive asked for (``None``: the default), or the Problem that goes back to the orchestrator."""
    role = roles.get(name or default)
    if role is not None:
        return role
    return Problem("unknown_role", f"no sub-agent role '{name}'{did_you_mean(name, roles)}; roles: "
                                   f"{', '.join(roles)}; '{sub_name}' was not run")


def specialist_path(recipe_path: str, out_dir: str | Path) -> Path:
    """Where the specialist that ``recipe_path`` trains leaves its final checkpoint (``out_dir/<its name>``)."""
    from longcot.config import Recipe, load

    recipe = load(Recipe, recipe_path, [f"out_dir={out_dir}"])
    return Path(out_dir) / recipe.name / "checkpoints" / "final"


def train_specialists(recipe: Any) -> list[Path]:
    """Train every specialist a recipe's frozen roles name by ``recipe:`` whose checkpoint is missing.

    The pipeline calls this first, before it seeds itself and builds its own engine, so a recipe that trains a
    specialist and then an orchestrator over it is one command, and the orchestrator run is the same whether its
    specialist was trained now or earlier; a finished specialist run is reused.
    """
    from longcot.config import Recipe, load
    from longcot.pipeline import train

    done = []
    for name, spec in recipe.agents.subagents.items():
        if spec.policy != "frozen" or not spec.recipe or spec.path:
            continue
        final = specialist_path(spec.recipe, recipe.out_dir)
        if not (final / "config.json").is_file():
            sub = load(Recipe, spec.recipe, [f"out_dir={recipe.out_dir}"])
            if not (sub.rl.enabled and sub.rl.steps > 0) and not sub.sft.enabled:
                raise ValueError(f"{spec.recipe}: the specialist of role '{name}' trains nothing (sft and rl off)")
            # a specialist run that was interrupted continues from where it stopped (finished stages are kept)
            resume = (Path(recipe.out_dir) / sub.name / "config.yaml").is_file()
            log.info("role %s: %s specialist %s (%s) first", name, "resuming" if resume else "training", sub.name,
                     spec.recipe)
            train(sub, resume=resume)
        done.append(final)
    return done


def frozen_checkpoints(cfg: Any, policy_path: str, out_dir: str | Path) -> dict[str, tuple[str, str]]:
    """Role -> (engine kind, checkpoint) for each frozen role of ``cfg`` (an AgentsConfig): its ``path``, its
    ``recipe``'s final checkpoint (which must exist by now), or the policy RL starts from."""
    out = {}
    for name, spec in cfg.subagents.items():
        if spec.policy != "frozen":
            continue
        path = spec.path or (specialist_path(spec.recipe, out_dir) if spec.recipe else policy_path)
        if spec.recipe and not spec.path and not (Path(path) / "config.json").is_file():
            raise FileNotFoundError(f"role '{name}': no specialist checkpoint at {path}; run its recipe "
                                    f"({spec.recipe}) first (longcot train does, via train_specialists)")
        out[name] = (spec.engine, str(path))
    return out


def build_frozen(cfg: Any, tokenizer: Any, policy_path: str, out_dir: str | Path, max_model_len: int | None,
                 build_engine) -> dict[str, Engine]:
    """One engine per distinct (engine kind, checkpoint) among the frozen roles of ``cfg`` (an AgentsConfig)."""
    engines: dict[tuple[str, str], Engine] = {}
    out = {}
    for name, key in frozen_checkpoints(cfg, policy_path, out_dir).items():
        if key not in engines:
            options = {"max_model_len": max_model_len} if max_model_len else {}
            engines[key] = build_engine(key[0], key[1], tokenizer, **options)
        out[name] = engines[key]
    return out
