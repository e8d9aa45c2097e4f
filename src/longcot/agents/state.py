"""What the driver keeps per orchestrator sample between turns, and per sub-agent it spawned."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from longcot.agents.budget import Budget
from longcot.agents.fidelity import FidelityTracker
from longcot.agents.protocol import Problem, Spawn
from longcot.record import Segment, Trajectory
from longcot.rollout.base import Prompt


@dataclass
class SubAgent:
    """One spawned sub-agent: its task (as written, and after substitution), role, where it ran, what it answered."""

    name: str
    task: str
    deps: list[str]
    round: int
    role: str = ""
    directive: str = ""  # the task as the orchestrator wrote it (before {name} substitution)
    reserved: int = 0  # budget tokens held until it has run
    wave: int = 0
    answer: str = ""
    votes: list[str] = field(default_factory=list)
    trajs: list[Trajectory] = field(default_factory=list)
    finished: bool = False
    faithful: bool | None = None  # its task is one of the problem's parts (None: the task cannot say)
    temperature: float = 0.0  # what its tokens were sampled at

    @property
    def tokens(self) -> int:
        """Tokens on the critical path: the longest of its (parallel) voting samples."""
        return max((len(t.response_ids) for t in self.trajs), default=0)


@dataclass
class Orchestrator:
    """The state of one orchestrator sample between turns."""

    prompt: Prompt
    sample_id: str
    key: str  # unique prompt id for engine calls
    ids: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    mask: list[int] = field(default_factory=list)
    pieces: list[dict] = field(default_factory=list)  # {"kind": gen|obs|scripted, "text", "start", "end", "round"}
    segments: list[Segment] = field(default_factory=list)
    subagents: dict[str, SubAgent] = field(default_factory=dict)
    problems: Counter = field(default_factory=Counter)
    pending: list[Spawn] = field(default_factory=list)
    turn_problems: list[Problem] = field(default_factory=list)
    finish: str = "stop"
    done: bool = False
    turns: int = 0
    rounds: int = 0
    sub_steps: int = 0  # critical steps spent in sub-agent waves
    sub_path_tokens: int = 0  # per wave, the longest sub-agent
    budget: Budget = field(default_factory=Budget)
    fidelity: FidelityTracker | None = None
    logprobs_missing: bool = False  # a turn came without engine log-probs: the record carries none

    def append(self, kind: str, text: str, ids: list[int], logprobs: list[float] | None, rnd: int) -> None:
        """Add a piece; ``logprobs`` None for text the policy did not sample (logprob 0), [] when the engine was
        not asked for them (the record then has none: ``rollout.logprobs_every``)."""
        start = len(self.ids)
        self.ids += ids
        if kind == "gen" and ids and not logprobs:
            self.logprobs_missing = True
        self.logprobs += logprobs if logprobs else [0.0] * len(ids)
        self.mask += [1 if kind == "gen" else 0] * len(ids)  # observations and scripted text: no gradient
        self.pieces.append({"kind": kind, "text": text, "start": start, "end": len(self.ids), "round": rnd})

    @property
    def generated_tokens(self) -> int:
        return sum(self.mask)

