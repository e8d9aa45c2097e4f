"""The training prompts of a run: the recipe's sampler over the task's rows, rendered by its template."""

from __future__ import annotations

from typing import Any

from longcot.data import Task
from longcot.data.samplers import make_sampler
from longcot.record import Trajectory
from longcot.rollout.base import Prompt


class PromptSource:
    """What the trainer draws prompts from (``next_prompts``) and reports outcomes to (``on_results``), and
    the state a resumed run restores (the sampler's order, statistics and generator)."""

    def __init__(self, recipe: Any, task: Task, tokenizer: Any) -> None:
        self.task, self.tokenizer = task, tokenizer
        self.sampler = make_sampler(recipe.data.sampler, task.train, seed=recipe.seed, **recipe.data.sampler_options)

    def next_prompts(self, step: int, k: int) -> list[Prompt]:
        return [self.task.prompt(self.task.train[i], self.tokenizer) for i in self.sampler.sample(k)]

    def on_results(self, trajs: list[Trajectory]) -> None:
        """Per-sample success (the ``math`` component when scored, else reward > 0) for adaptive samplers."""
        self.sampler.update([t.prompt_id for t in trajs], [t.rewards.get("math", t.reward) > 0 for t in trajs])

    def state_dict(self) -> dict:
        return {"sampler": self.sampler.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.sampler.load_state_dict(state["sampler"])
