"""The one record that flows rollout -> rewards -> rl -> eval.

A :class:`Trajectory` is one sampled response to one prompt. The ``n`` samples of a prompt share a
``group_id``; group-relative advantages are computed over them. Engines create trajectories, reward
functions fill ``rewards``/``reward``, advantage estimators fill ``advantage``, and the trainer turns a
list of them into tensors. Nothing else is passed between the stages.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:  # the sandboxed code reward imports this module under a system Python without numpy
    import numpy as np

Finish = Literal["stop", "length", "budget", "repeat"]


@dataclass
class Segment:
    """A contiguous run of response tokens produced by one policy version (partial rollouts)."""

    start: int  # index into response_ids
    end: int  # exclusive
    policy_version: int


@dataclass
class AgentInfo:
    """Where this trajectory sits in a parallel-agent rollout (orchestrator or sub-agent)."""

    role: Literal["orchestrator", "subagent"]
    parent: str | None = None
    depth: int = 0
    critical_step: int = 0


@dataclass
class Trajectory:
    prompt_id: str
    group_id: str
    prompt_ids: list[int]
    response_ids: list[int]
    # the engine's log-prob of each response token; empty when the step did not ask for them
    # (SamplingConfig.logprobs=False, see rollout.logprobs_every)
    rollout_logprobs: list[float]
    finish: Finish = "stop"
    response_text: str = ""
    prompt_text: str = ""
    segments: list[Segment] = field(default_factory=list)
    agent: AgentInfo | None = None
    # 1 where the token receives gradient, 0 for observation/tool tokens; empty means "all 1".
    loss_mask: list[int] = field(default_factory=list)
    rewards: dict[str, float] = field(default_factory=dict)
    reward_errors: dict[str, str] = field(default_factory=dict)  # reward name -> "Type: message" of a failure
    reward: float = 0.0
    advantage: float | list[float] = 0.0
    meta: dict[str, Any] = field(default_factory=dict)
    # The temperature the response was sampled at; the trainer divides its logits by it, so the gradient goes
    # through the distribution that was sampled (sub-agents may sample at another temperature than the
    # orchestrator). None: the recipe's rollout.temperature. 0 (greedy) is trained at temperature 1.
    temperature: float | None = None
    # MoE routing replay (R3): the top-k expert ids the engine routed each token to, [P + R - 1, moe_layers, k]
    # (row i: the token at position i of prompt + response; the last response token is never fed to the model,
    # so it has none). Compact integers (uint8 up to 256 experts, else int16): a float32 copy would be 4x the
    # size, and a long rollout of a large MoE stores tokens x layers x k of them. Rows of a partial rollout come
    # from the segment that first computed each position. None: the step did not ask (SamplingConfig).
    routed_experts: np.ndarray | None = None

    @property
    def num_response_tokens(self) -> int:
        return len(self.response_ids)

    def mask(self) -> list[int]:
        """The per-token loss mask, defaulting to all ones."""
        return self.loss_mask if self.loss_mask else [1] * len(self.response_ids)


def carries_signal(t: Trajectory) -> bool:
    """Whether a trained token of ``t`` has a non-zero advantage (a group of equal rewards has exactly 0)."""
    mask, a = t.mask(), t.advantage
    if isinstance(a, list):
        return any(m and x != 0 for m, x in zip(mask, a, strict=False))
    return a != 0 and any(mask)


def groups(trajs: list[Trajectory]) -> dict[str, list[Trajectory]]:
    """Trajectories by ``group_id``, in first-seen order."""
    out: dict[str, list[Trajectory]] = {}
    for t in trajs:
        out.setdefault(t.group_id, []).append(t)
    return out
