"""What every rollout engine provides: generate trajectories, and take new weights after an update."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch

from longcot.record import Trajectory


@dataclass
class SamplingConfig:
    n: int = 8  # samples per prompt (the group size)
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = -1
    max_tokens: int = 256
    stop: list[str] = field(default_factory=list)
    seed: int | None = None
    # Return the sampled tokens' log-probs (Trajectory.rollout_logprobs). False lets an engine skip them and
    # leave rollout_logprobs empty: on vLLM they are ~10% of a decode step on the tiny MoE (the log-softmax,
    # the rank of each sampled token and a Python float per token), and nothing needs them on most steps.
    logprobs: bool = True
    # Return the experts the engine routed each token to (Trajectory.routed_experts, MoE routing replay): an
    # engine that cannot must raise, never return trajectories without them.
    routed_experts: bool = False


@dataclass
class Prompt:
    """One prompt to sample from: token ids plus whatever the rewards need (answer, tests...)."""

    prompt_id: str
    prompt_ids: list[int]
    prompt_text: str = ""
    meta: dict[str, Any] = field(default_factory=dict)


class Engine(Protocol):
    def generate(self, prompts: list[Prompt], sampling: SamplingConfig, group_tag: str = "") -> list[Trajectory]:
        """``sampling.n`` trajectories per prompt, grouped by ``group_id = prompt_id + group_tag``."""

    def sync_weights(self, named_params: Iterable[tuple[str, torch.Tensor]], version: int) -> None:
        """Load the trainer's current weights; later generations use policy ``version``."""
