"""long2short RL (k1.5): a second RL phase from the long model, with the length penalty from step 0 and a smaller
maximum rollout length, so that a long answer loses reward even when it would have been right.

It is ``longcot train`` itself (``longcot.pipeline.train``: the same trainer, rewards and evals): this module
only checks that the recipe asks for what the method is, points the run at the long model, skips the SFT
stage, and labels the run's summary. Nothing is changed silently: a recipe that does not fit is an error.
"""

from __future__ import annotations

import dataclasses

from longcot.config import Recipe


def check_rl_recipe(recipe: Recipe) -> None:
    """Raise ``ValueError`` naming the key to change when the recipe is not a long2short RL phase."""
    cfg, rl = recipe.long2short, recipe.rl
    problems = []
    if recipe.model.path and recipe.model.path != cfg.long_model:
        problems.append(f"model.path ({recipe.model.path!r}) differs from long2short.long_model "
                        f"({cfg.long_model!r}): leave model.path empty, the phase starts from the long model")
    if rl.steps < 1:
        problems.append("rl.steps must be >= 1")
    weights = {s.name: s.weight for s in recipe.rewards}
    if weights.get(rl.length_penalty_reward, 0.0) <= 0.0:
        problems.append(f"rewards must include the length reward '{rl.length_penalty_reward}' "
                        f"(rl.length_penalty_reward) with a weight > 0, e.g. {{name: k15_length, weight: 0.5}}")
    if rl.length_penalty_warmup != 0:
        problems.append(f"rl.length_penalty_warmup must be 0: long2short applies the length penalty from step 0 "
                        f"(got {rl.length_penalty_warmup})")
    if recipe.rollout.max_tokens >= recipe.eval.max_tokens:
        problems.append(f"rollout.max_tokens ({recipe.rollout.max_tokens}) must be below eval.max_tokens "
                        f"({recipe.eval.max_tokens}, the long model's budget): long2short RL reduces the maximum "
                        "rollout length")
    if problems:
        raise ValueError("long2short rl: " + "; ".join(problems))


def rl_recipe(recipe: Recipe) -> Recipe:
    """The ``longcot train`` recipe of the phase: from the long model, no SFT stage, RL on."""
    check_rl_recipe(recipe)
    return dataclasses.replace(
        recipe,
        model=dataclasses.replace(recipe.model, path=recipe.long2short.long_model),
        sft=dataclasses.replace(recipe.sft, enabled=False),
        rl=dataclasses.replace(recipe.rl, enabled=True),
    )

