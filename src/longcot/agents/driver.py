"""Parallel-agent rollouts (Kimi K2.5 PARL): an orchestrator spawns sub-agents that run as one engine batch.

:class:`AgentEngine` wraps any :class:`~longcot.rollout.base.Engine` and is itself an Engine, so the RL trainer
and the evaluator use it unchanged. One ``generate`` call runs all orchestrator samples in lock step:

1. every active orchestrator generates one turn (one engine call), stopping at ``[wait]`` or EOS;
2. the directives of each turn are parsed and checked (agents.protocol); rejected ones become ``[error: ...]``;
3. the accepted sub-agents of *all* orchestrators run wave by wave: a wave holds every sub-agent whose
   dependencies have answered, and goes to the engine as one batch (``vote_k`` samples each);
4. the answers are appended to each orchestrator's response as observation tokens (``loss_mask`` 0,
   logprob 0), and the next round starts, up to ``max_rounds``; then one last turn to answer.

The orchestrator record's ``response_ids`` are exactly the token sequence each turn was conditioned on, so
the trainer's forward pass over ``prompt_ids + response_ids`` reproduces the rollout context. Sub-agent
records are kept (``last_subagents``) and returned for training only with ``train_subagents``.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from longcot.agents.protocol import (
    PROBLEM_KINDS,
    WAIT,
    Problem,
    Spawn,
    extract_answer,
    format_results,
    majority,
    parse_turn,
    substitute,
    validate,
    waves,
)
from longcot.record import AgentInfo, Segment, Trajectory
from longcot.rollout.base import Engine, Prompt, SamplingConfig
from longcot.rollout.common import prompt_seed

log = logging.getLogger(__name__)
SCRIPTED = "orchestrator_turn"  # Prompt.meta key: a scripted first orchestrator turn


@dataclass
class SubAgent:
    """One spawned sub-agent: its task (after substitution), where it ran, and what it answered."""

    name: str
    task: str
    deps: list[str]
    round: int
    wave: int = 0
    answer: str = ""
    votes: list[str] = field(default_factory=list)
    trajs: list[Trajectory] = field(default_factory=list)
    finished: bool = False

    @property
    def tokens(self) -> int:
        """Tokens on the critical path: the longest of its (parallel) voting samples."""
        return max((len(t.response_ids) for t in self.trajs), default=0)


@dataclass
class _Orch:
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

    def append(self, kind: str, text: str, ids: list[int], logprobs: list[float] | None, rnd: int) -> None:
        start = len(self.ids)
        self.ids += ids
        self.logprobs += logprobs if logprobs is not None else [0.0] * len(ids)
        self.mask += [1 if kind == "gen" else 0] * len(ids)  # observations and scripted text: no gradient
        self.pieces.append({"kind": kind, "text": text, "start": start, "end": len(self.ids), "round": rnd})

    @property
    def generated_tokens(self) -> int:
        return sum(self.mask)


class AgentEngine:
    """An :class:`Engine` whose samples are orchestrators running sub-agents (``recipe.agents``, docs/agents.md).

    ``sub_engine`` answers the sub-agents: ``None`` shares ``engine`` (the current policy), or pass a second
    engine holding a frozen checkpoint; only ``engine`` receives ``sync_weights``. ``trace_dir`` gets one
    JSONL file of agent trees per call (``longcot report RUN --sample ID`` renders them) and a metrics row.
    """

    def __init__(self, engine: Engine, tokenizer: Any, cfg: Any, sub_engine: Engine | None = None,
                 trace_dir: str | Path | None = None) -> None:
        self.engine, self.tokenizer, self.cfg = engine, tokenizer, cfg
        self.sub_engine = sub_engine if sub_engine is not None else engine
        self.trace_dir = Path(trace_dir) if trace_dir else None
        self.last_metrics: dict[str, float] = {}
        self.last_subagents: list[Trajectory] = []
        self.batch_sizes: list[int] = []  # sub-agent prompts per engine call, this generate() call
        self.calls = 0

    @property
    def max_model_len(self) -> int | None:
        return getattr(self.engine, "max_model_len", None)

    # ---- Engine protocol ---------------------------------------------------------------------------------
    def generate(self, prompts: list[Prompt], sampling: SamplingConfig, group_tag: str = "") -> list[Trajectory]:
        """``sampling.n`` orchestrator trajectories per prompt (and sub-agent ones with ``train_subagents``)."""
        self.batch_sizes = []
        tag = f"step{group_tag[1:]}" if group_tag.startswith("@") else (group_tag or f"eval-{self.calls:03d}")
        self.calls += 1
        states = [_Orch(p, f"{tag}/{p.prompt_id}{group_tag}#{i}", f"{p.prompt_id}#{i}")
                  for p in prompts for i in range(sampling.n)]
        rnd = 0
        while active := [s for s in states if not s.done]:
            self._orchestrator_turn(active, sampling, rnd)
            waiting = [s for s in active if not s.done]
            if waiting:
                self._run_round(waiting, sampling, rnd)
            rnd += 1
        orch = [self._record(s, group_tag) for s in states]
        subs = [t for s, o in zip(states, orch, strict=True) for t in self._sub_records(s, o)]
        self.last_subagents = subs
        self.last_metrics = self._metrics(states)
        self._trace(tag, states)
        return orch + subs if self.cfg.train_subagents else orch

    def sync_weights(self, named_params: Iterable[tuple[str, torch.Tensor]], version: int) -> None:
        self.engine.sync_weights(named_params, version)

    def compute_logprobs(self, prompt_ids: list[list[int]], response_ids: list[list[int]]) -> list[list[float]]:
        return self.engine.compute_logprobs(prompt_ids, response_ids)

    def shutdown(self) -> None:
        for e in {id(self.engine): self.engine, id(self.sub_engine): self.sub_engine}.values():
            if hasattr(e, "shutdown"):
                e.shutdown()

    # ---- one orchestrator turn for every active sample ----------------------------------------------------
    def _encode(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False).input_ids

    def _orchestrator_turn(self, active: list[_Orch], sampling: SamplingConfig, rnd: int) -> None:
        """Generate one turn per active orchestrator (one engine call), parse it, mark who is done.

        A prompt with ``meta["orchestrator_turn"]`` has that text as its scripted first turn (a demo or a
        test drives the protocol through a real engine this way); scripted tokens get no gradient.
        """
        budget = self._turn_budget(active, sampling)
        runnable = []
        for s in active:
            scripted = s.prompt.meta.get(SCRIPTED) if rnd == 0 else None
            if scripted:
                ids = self._encode(scripted)
                self._after_turn(s, "scripted", scripted, ids, [0.0] * len(ids), "stop", 0, rnd)
            elif budget[s.key] <= 0:
                s.done, s.finish = True, "length"
            else:
                runnable.append(s)
        if not runnable:
            return
        turn_sampling = SamplingConfig(n=1, temperature=sampling.temperature, top_p=sampling.top_p,
                                       top_k=sampling.top_k, max_tokens=max(budget[s.key] for s in runnable),
                                       stop=[*sampling.stop, WAIT],
                                       seed=None if sampling.seed is None else sampling.seed + 7919 * rnd)
        prompts = [Prompt(f"{s.key}/t{rnd}", s.prompt.prompt_ids + s.ids, meta={}) for s in runnable]
        outs = self.engine.generate(prompts, turn_sampling)
        for s, t in zip(runnable, outs, strict=True):
            ids, lps, text, finish = t.response_ids, t.rollout_logprobs, t.response_text, t.finish
            if len(ids) > budget[s.key]:  # one call serves all: cut each to its own budget
                ids, lps, finish = ids[:budget[s.key]], lps[:budget[s.key]], "length"
                text = self.tokenizer.decode(ids, skip_special_tokens=True)
            version = t.segments[0].policy_version if t.segments else 0
            self._after_turn(s, "gen", text, ids, lps, finish, version, rnd)

    def _after_turn(self, s: _Orch, kind: str, text: str, ids: list[int], logprobs: list[float], finish: str,
                    version: int, rnd: int) -> None:
        """Append a turn; either the sample is done, or its accepted spawns wait for this round."""
        start = len(s.ids)
        s.append(kind, text, ids, logprobs, rnd)
        if kind == "gen":
            s.segments.append(Segment(start, len(s.ids), version))
        s.turns += 1
        turn = parse_turn(text)
        final = s.rounds >= self.cfg.max_rounds
        if finish != "stop" or not turn.waited or final:
            s.done, s.finish = True, finish
            if turn.spawns and finish == "stop" and not turn.waited:
                s.problems["unwaited"] += 1  # spawned, then answered without [wait]: never run
            if final and turn.waited:
                s.problems["round_cap"] += 1
            s.problems.update(p.kind for p in turn.problems)
            return
        accepted, rejected = validate(turn.spawns, set(s.subagents), self.cfg.max_subagents_per_round)
        s.pending, s.turn_problems = accepted, turn.problems + rejected

    def _turn_budget(self, active: list[_Orch], sampling: SamplingConfig) -> dict[str, int]:
        """Tokens each orchestrator may still generate: per turn, in total, and within max_model_len."""
        out = {}
        for s in active:
            b = sampling.max_tokens
            if self.cfg.max_total_tokens:
                b = min(b, self.cfg.max_total_tokens - len(s.ids))
            if self.max_model_len:
                b = min(b, self.max_model_len - len(s.prompt.prompt_ids) - len(s.ids) - 1)
            out[s.key] = b
        return out

    # ---- one round of sub-agents for every waiting orchestrator -------------------------------------------
    def _run_round(self, waiting: list[_Orch], sampling: SamplingConfig, rnd: int) -> None:
        """Run every accepted spawn wave by wave (all orchestrators' wave w in one batch), then append results."""
        plans = {s.key: waves(s.pending, set(s.subagents), self.cfg.schedule == "sequential") for s in waiting}
        for s in waiting:
            s.rounds += 1
            for spawn in s.pending:
                s.subagents[spawn.name] = SubAgent(spawn.name, spawn.task, spawn.deps, rnd)
        for w in range(max((len(p) for p in plans.values()), default=0)):
            batch = [(s, s.subagents[sp.name]) for s in waiting if w < len(plans[s.key])
                     for sp in plans[s.key][w]]
            self._run_wave(batch, sampling, rnd, w)
        for s in waiting:
            results = [(sp.name, s.subagents[sp.name].answer) for sp in s.pending
                       if s.subagents[sp.name].trajs]
            problems = s.turn_problems + [Problem("task_too_long", f"the task of '{sp.name}' is too long to run")
                                          for sp in s.pending if not s.subagents[sp.name].trajs]
            for sp in s.pending:  # a sub-agent that never ran cannot be a dependency later
                if not s.subagents[sp.name].trajs:
                    del s.subagents[sp.name]
            s.problems.update(p.kind for p in problems)
            if s.rounds >= self.cfg.max_rounds:
                problems.append(Problem("round_cap", f"round limit reached ({self.cfg.max_rounds}): "
                                                     "no more sub-agents; give the final answer"))
            text = format_results(results, problems)
            s.append("obs", text, self._encode(text), None, rnd)
            s.pending, s.turn_problems = [], []

    def _run_wave(self, batch: list[tuple[_Orch, SubAgent]], sampling: SamplingConfig, rnd: int, w: int) -> None:
        """One engine call for every sub-agent of this wave (``vote_k`` samples each), answers recorded."""
        cfg = self.cfg
        limit = getattr(self.sub_engine, "max_model_len", None)
        prompts, owners = [], []
        for s, sub in batch:
            answers = {d: s.subagents[d].answer for d in sub.deps if d in s.subagents}
            sub.task, sub.wave = substitute(sub.task, answers), w
            text = cfg.subagent_template.format(task=sub.task)
            ids = self._encode(text)
            if not ids or (limit and len(ids) >= limit - 1):
                continue
            prompts.append(Prompt(f"{s.key}/r{rnd}/{sub.name}", ids, text, meta=dict(s.prompt.meta)))
            owners.append((s, sub))
        if not prompts:
            return
        temp = sampling.temperature if cfg.subagent_temperature is None else cfg.subagent_temperature
        sub_sampling = SamplingConfig(n=cfg.vote_k, temperature=temp, top_p=sampling.top_p, top_k=sampling.top_k,
                                      max_tokens=cfg.subagent_max_tokens, seed=prompt_seed(sampling.seed, f"w{w}"))
        self.batch_sizes.append(len(prompts))
        outs = self.sub_engine.generate(prompts, sub_sampling)
        for k, (_, sub) in enumerate(owners):
            sub.trajs = outs[k * cfg.vote_k:(k + 1) * cfg.vote_k]
            sub.votes = [extract_answer(t.response_text, cfg.max_answer_chars) for t in sub.trajs]
            sub.answer = majority(sub.votes)
            sub.finished = bool(sub.answer) and any(t.finish == "stop" for t in sub.trajs)
        for s in {id(s): s for s, _ in owners}.values():
            s.sub_steps += 1
            s.sub_path_tokens += max(sub.tokens for o, sub in owners if o is s)

    # ---- records, metrics, traces -------------------------------------------------------------------------
    def _summary(self, s: _Orch) -> dict:
        subs = list(s.subagents.values())
        sub_tokens = sum(len(t.response_ids) for sub in subs for t in sub.trajs)
        return {
            "sample_id": s.sample_id, "subagents": len(subs), "rounds": s.rounds, "turns": s.turns,
            "finished_subagents": sum(sub.finished for sub in subs),
            "critical_steps": s.turns + s.sub_steps,
            "orchestrator_tokens": s.generated_tokens,
            "critical_path_tokens": s.generated_tokens + s.sub_path_tokens,
            "total_tokens": s.generated_tokens + sub_tokens,
            "problems": dict(s.problems),
        }

    def _record(self, s: _Orch, group_tag: str) -> Trajectory:
        summary = self._summary(s)
        return Trajectory(
            prompt_id=s.prompt.prompt_id, group_id=s.prompt.prompt_id + group_tag, prompt_ids=list(s.prompt.prompt_ids),
            response_ids=list(s.ids), rollout_logprobs=list(s.logprobs), finish=s.finish,
            response_text="".join(p["text"] for p in s.pieces), prompt_text=s.prompt.prompt_text,
            segments=list(s.segments), loss_mask=list(s.mask),
            agent=AgentInfo("orchestrator", None, 0, summary["critical_steps"]),
            meta={**s.prompt.meta,
                  "agents": {**summary, "spans": [(p["kind"], p["start"], p["end"]) for p in s.pieces]}},
        )

    def _sub_records(self, s: _Orch, orch: Trajectory) -> list[Trajectory]:
        """Sub-agent records: parent, depth 1, their wave's critical step; gradient only if configured."""
        out = []
        for sub in s.subagents.values():
            for t in sub.trajs:
                t.prompt_id, t.group_id = orch.prompt_id, orch.group_id + "/sub"
                t.agent = AgentInfo("subagent", s.sample_id, 1, sub.round)
                t.loss_mask = [int(self.cfg.train_subagents)] * len(t.response_ids)
                t.meta = {**t.meta, "agents": {"parent": s.sample_id, "name": sub.name},
                          "parent_response": orch.response_text, "parent_finish": orch.finish}
                out.append(t)
        return out

    def _metrics(self, states: list[_Orch]) -> dict[str, float]:
        n = max(len(states), 1)
        sums = [self._summary(s) for s in states]
        spawned = sum(x["subagents"] for x in sums)
        out = {
            "agents/subagents_mean": spawned / n,
            "agents/multi_agent_frac": sum(x["subagents"] >= 2 for x in sums) / n,
            "agents/rounds_mean": sum(x["rounds"] for x in sums) / n,
            "agents/finish_rate": sum(x["finished_subagents"] for x in sums) / spawned if spawned else 0.0,
            "agents/critical_steps_mean": sum(x["critical_steps"] for x in sums) / n,
            "agents/critical_path_tokens_mean": sum(x["critical_path_tokens"] for x in sums) / n,
            "agents/orchestrator_tokens_mean": sum(x["orchestrator_tokens"] for x in sums) / n,
            "agents/total_tokens_mean": sum(x["total_tokens"] for x in sums) / n,
            "agents/subagent_engine_calls": float(len(self.batch_sizes)),
            "agents/subagent_batch_max": float(max(self.batch_sizes, default=0)),
        }
        for kind in PROBLEM_KINDS:
            out[f"agents/problems/{kind}"] = float(sum(s.problems[kind] for s in states))
        return out

    def _trace(self, tag: str, states: list[_Orch]) -> None:
        """``trace_dir/<tag>.jsonl``: one agent tree per orchestrator; ``trace_dir/metrics.jsonl``: one row."""
        if self.trace_dir is None:
            return
        self.trace_dir.mkdir(parents=True, exist_ok=True)
        with open(self.trace_dir / f"{tag}.jsonl", "w") as f:
            for s in states:
                f.write(json.dumps(tree(s, self._summary(s))) + "\n")
        with open(self.trace_dir / "metrics.jsonl", "a") as f:
            f.write(json.dumps({"tag": tag, **self.last_metrics}) + "\n")


def tree(s: _Orch, summary: dict) -> dict:
    """A JSON-able agent tree: the orchestrator's turns and observations, and every sub-agent it spawned."""
    return {
        "sample_id": s.sample_id, "prompt": s.prompt.prompt_text, "answer": s.prompt.meta.get("answer"),
        "finish": s.finish, "summary": summary,
        "pieces": [{**p, "tokens": p["end"] - p["start"]} for p in s.pieces],
        "subagents": [{"name": sub.name, "task": sub.task, "deps": sub.deps, "round": sub.round, "wave": sub.wave,
                       "answer": sub.answer, "votes": sub.votes, "finished": sub.finished, "tokens": sub.tokens,
                       "responses": [t.response_text for t in sub.trajs],
                       "finish": [t.finish for t in sub.trajs]} for sub in s.subagents.values()],
    }


def wrap_engine(engine: Engine, recipe: Any, tokenizer: Any, trace_dir: str | Path, policy_path: str) -> Engine:
    """``engine`` itself, or an :class:`AgentEngine` around it when ``recipe.agents.enabled``.

    Frozen sub-agents (``agents.subagent_policy: frozen``) get their own engine on ``agents.frozen_path`` (default:
    ``policy_path``, the policy RL starts from); it never receives weight updates.
    """
    cfg = recipe.agents
    if not cfg.enabled:
        return engine
    sub = None
    if cfg.subagent_policy == "frozen":
        from longcot.rollout import build_engine

        options = {"max_model_len": engine.max_model_len} if getattr(engine, "max_model_len", None) else {}
        sub = build_engine(cfg.frozen_engine, cfg.frozen_path or policy_path, tokenizer, **options)
    return AgentEngine(engine, tokenizer, cfg, sub_engine=sub, trace_dir=trace_dir)
