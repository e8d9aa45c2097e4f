"""Parallel-agent rollouts (Kimi K2.5 PARL): an orchestrator spawns sub-agents that run as one engine batch.

:class:`AgentEngine` wraps any :class:`~longcot.rollout.base.Engine` and is itself an Engine, so the RL trainer
and the evaluator use it unchanged. One ``generate`` call runs all orchestrator samples in lock step:

1. every active orchestrator generates one turn (one engine call), stopping at ``[wait]`` or EOS;
2. the directives of each turn are parsed and checked (agents.protocol): its role must exist (agents.roles) and
   the task's budget must cover it (agents.budget); rejected ones become ``[error: ...]``;
3. the accepted sub-agents of *all* orchestrators run wave by wave: a wave holds every sub-agent whose
   dependencies have answered, and goes to each role's engine as one batch (``vote_k`` samples each); each
   sub-agent's task is checked against the problem's parts (agents.fidelity);
4. the answers are appended to each orchestrator's response as observation tokens (``loss_mask`` 0,
   logprob 0), and the next round starts, up to ``max_rounds``; then one last turn to answer.

The orchestrator record's ``response_ids`` are exactly the token sequence each turn was conditioned on, so
the trainer's forward pass over ``prompt_ids + response_ids`` reproduces the rollout context. Sub-agent
records are kept (``last_subagents``) and returned for training only with ``train_subagents``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch

from longcot.agents import records
from longcot.agents.budget import Budget
from longcot.agents.fidelity import FidelityTracker, get_check
from longcot.agents.protocol import (
    WAIT,
    Problem,
    Spawn,
    extract_answer,
    format_results,
    majority,
    parse_turn,
    round_notes,
    substitute,
    validate,
    waves,
)
from longcot.agents.roles import Role, build_frozen, make_roles, resolve
from longcot.agents.state import Orchestrator, SubAgent
from longcot.record import Segment, Trajectory
from longcot.rollout.base import Engine, Prompt, SamplingConfig
from longcot.rollout.common import prompt_seed

log = logging.getLogger(__name__)
SCRIPTED = "orchestrator_turn"  # Prompt.meta key: a scripted first orchestrator turn


class AgentEngine:
    """An :class:`Engine` whose samples are orchestrators running sub-agents (``recipe.agents``, docs/agents.md).

    ``cfg.subagents`` maps roles to policies: a shared role is answered by ``engine`` (the current policy), a frozen
    one by its engine in ``frozen`` (role -> engine; ``wrap_engine`` builds them); only ``engine`` receives
    ``sync_weights``. ``trace_dir`` gets one JSONL file of agent trees per call (``longcot report RUN --sample ID``
    renders them) and a metrics row.
    """

    def __init__(self, engine: Engine, tokenizer: Any, cfg: Any, frozen: dict[str, Engine] | None = None,
                 trace_dir: str | Path | None = None) -> None:
        self.engine, self.tokenizer, self.cfg = engine, tokenizer, cfg
        self.roles: dict[str, Role] = make_roles(cfg, engine, frozen)
        self.check = get_check(cfg.fidelity)
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
        states = [self._new_state(p, f"{tag}/{p.prompt_id}{group_tag}#{i}", f"{p.prompt_id}#{i}")
                  for p in prompts for i in range(sampling.n)]
        rnd = 0
        while active := [s for s in states if not s.done]:
            self._orchestrator_turn(active, sampling, rnd)
            waiting = [s for s in active if not s.done]
            if waiting:
                self._run_round(waiting, sampling, rnd)
            rnd += 1
        trained = {r.name for r in self.roles.values() if r.shared} if self.cfg.train_subagents else set()
        orch = [records.orchestrator_record(s, group_tag) for s in states]
        subs = [t for s, o in zip(states, orch, strict=True) for t in records.subagent_records(s, o, trained)]
        self.last_subagents = subs
        self.last_metrics = records.batch_metrics(states, self.batch_sizes, list(self.roles))
        if self.trace_dir is not None:
            records.write_trace(self.trace_dir, tag, states, self.last_metrics)
        return orch + [t for t in subs if t.meta["agents"]["role"] in trained]

    def sync_weights(self, named_params: Iterable[tuple[str, torch.Tensor]], version: int) -> None:
        self.engine.sync_weights(named_params, version)

    def compute_logprobs(self, prompt_ids: list[list[int]], response_ids: list[list[int]]) -> list[list[float]]:
        return self.engine.compute_logprobs(prompt_ids, response_ids)

    def state_dict(self) -> dict:
        """Agent rollouts carry nothing across steps but the call counter that names evaluation traces
        (``eval-003``): a resumed run (``longcot train --resume``) keeps naming them where it stopped."""
        return {"calls": self.calls}

    def load_state_dict(self, state: dict) -> None:
        self.calls = int(state["calls"])

    def shutdown(self) -> None:
        engines = {id(self.engine): self.engine, **{id(r.engine): r.engine for r in self.roles.values()}}
        for e in engines.values():
            if hasattr(e, "shutdown"):
                e.shutdown()

    def _new_state(self, prompt: Prompt, sample_id: str, key: str) -> Orchestrator:
        budget = self.cfg.budget
        return Orchestrator(prompt, sample_id, key, budget=Budget(budget.max_subagents, budget.max_subagent_tokens),
                            fidelity=FidelityTracker(self.check, prompt.meta))

    # ---- one orchestrator turn for every active sample ----------------------------------------------------
    def _encode(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False).input_ids

    def _orchestrator_turn(self, active: list[Orchestrator], sampling: SamplingConfig, rnd: int) -> None:
        """Generate one turn per active orchestrator (one engine call), parse it, mark who is done.

        A prompt with ``meta["orchestrator_turn"]`` has that text as its scripted first turn (a demo or a
        test drives the protocol through a real engine this way); scripted tokens get no gradient.
        """
        room = self._turn_room(active, sampling)
        runnable = []
        for s in active:
            scripted = s.prompt.meta.get(SCRIPTED) if rnd == 0 else None
            if scripted:
                ids = self._encode(scripted)
                self._after_turn(s, "scripted", scripted, ids, [0.0] * len(ids), "stop", 0, rnd)
            elif room[s.key] <= 0:
                s.done, s.finish = True, "length"
            else:
                runnable.append(s)
        if not runnable:
            return
        turn_sampling = SamplingConfig(n=1, temperature=sampling.temperature, top_p=sampling.top_p,
                                       top_k=sampling.top_k, max_tokens=max(room[s.key] for s in runnable),
                                       stop=[*sampling.stop, WAIT], logprobs=sampling.logprobs,
                                       seed=None if sampling.seed is None else sampling.seed + 7919 * rnd)
        prompts = [Prompt(f"{s.key}/t{rnd}", s.prompt.prompt_ids + s.ids, meta={}) for s in runnable]
        outs = self.engine.generate(prompts, turn_sampling)
        for s, t in zip(runnable, outs, strict=True):
            ids, lps, text, finish = t.response_ids, t.rollout_logprobs, t.response_text, t.finish
            if len(ids) > room[s.key]:  # one call serves all: cut each to its own room
                ids, lps, finish = ids[:room[s.key]], lps[:room[s.key]], "length"
                text = self.tokenizer.decode(ids, skip_special_tokens=True)
            version = t.segments[0].policy_version if t.segments else 0
            self._after_turn(s, "gen", text, ids, lps, finish, version, rnd)

    def _after_turn(self, s: Orchestrator, kind: str, text: str, ids: list[int], logprobs: list[float], finish: str,
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
        accepted, rejected = validate(turn.spawns, set(s.subagents), self.cfg.max_subagents_per_round,
                                      admit=lambda spawn: self._admit(s, spawn))
        s.pending, s.turn_problems = accepted, turn.problems + rejected

    def _admit(self, s: Orchestrator, spawn: Spawn) -> Problem | None:
        """The role must exist and the task's budget must cover the most the sub-agent can use."""
        role = resolve(self.roles, spawn.role, self.cfg.default, spawn.name)
        if isinstance(role, Problem):
            return role
        spawn.role = role.name
        return s.budget.admit(spawn.name, role.max_tokens * self.cfg.vote_k)

    def _turn_room(self, active: list[Orchestrator], sampling: SamplingConfig) -> dict[str, int]:
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
    def _run_round(self, waiting: list[Orchestrator], sampling: SamplingConfig, rnd: int) -> None:
        """Run every accepted spawn wave by wave (all orchestrators' wave w in one batch), then append results."""
        plans = {s.key: waves(s.pending, set(s.subagents), self.cfg.schedule == "sequential") for s in waiting}
        for s in waiting:
            s.rounds += 1
            for spawn in s.pending:
                role = self.roles[spawn.role]
                s.subagents[spawn.name] = SubAgent(spawn.name, spawn.task, spawn.deps, rnd, role.name, spawn.task,
                                                   role.max_tokens * self.cfg.vote_k)
        for w in range(max((len(p) for p in plans.values()), default=0)):
            batch = [(s, s.subagents[sp.name]) for s in waiting if w < len(plans[s.key])
                     for sp in plans[s.key][w]]
            self._run_wave(batch, sampling, rnd, w)
        for s in waiting:
            results = [(sp.name, s.subagents[sp.name].answer) for sp in s.pending
                       if s.subagents[sp.name].trajs]
            problems = s.turn_problems + [Problem("task_too_long", f"the task of '{sp.name}' is too long to run")
                                          for sp in s.pending if not s.subagents[sp.name].trajs]
            for sp in s.pending:  # a sub-agent that never ran cannot be a dependency later, nor costs budget
                if not s.subagents[sp.name].trajs:
                    s.budget.release(s.subagents.pop(sp.name).reserved)
            s.problems.update(p.kind for p in problems)
            problems += round_notes(s.rounds, self.cfg.max_rounds)
            text = format_results(results, problems)
            s.append("obs", text, self._encode(text), None, rnd)
            s.pending, s.turn_problems = [], []

    def _run_wave(self, batch: list[tuple[Orchestrator, SubAgent]], sampling: SamplingConfig, rnd: int, w: int) -> None:
        """One engine call per role for every sub-agent of this wave (``vote_k`` samples each); answers recorded,
        fidelity judged, budgets settled."""
        by_role: dict[str, list[tuple[Orchestrator, SubAgent]]] = {}
        for s, sub in batch:
            answers = {d: s.subagents[d].answer for d in sub.deps if d in s.subagents}
            sub.task, sub.wave = substitute(sub.task, answers), w
            by_role.setdefault(sub.role, []).append((s, sub))
        for name, members in by_role.items():
            self._run_role(self.roles[name], members, sampling, rnd, w)
        for s in {id(s): s for s, sub in batch if sub.trajs}.values():
            s.sub_steps += 1
            s.sub_path_tokens += max(sub.tokens for o, sub in batch if o is s)

    def _run_role(self, role: Role, members: list[tuple[Orchestrator, SubAgent]], sampling: SamplingConfig, rnd: int,
                  w: int) -> None:
        """One batch on the role's engine, with its template, token limit and temperature. A task too long for
        the engine is skipped here and reported by the round as ``task_too_long``."""
        cfg = self.cfg
        limit = getattr(role.engine, "max_model_len", None)
        prompts, owners = [], []
        for s, sub in members:
            text = role.template.format(task=sub.task)
            ids = self._encode(text)
            if not ids or (limit and len(ids) >= limit - 1):
                continue
            prompts.append(Prompt(f"{s.key}/r{rnd}/{sub.name}", ids, text, meta=dict(s.prompt.meta)))
            owners.append((s, sub))
        if not prompts:
            return
        temp = sampling.temperature if role.temperature is None else role.temperature
        sub_sampling = SamplingConfig(n=cfg.vote_k, temperature=temp, top_p=sampling.top_p, top_k=sampling.top_k,
                                      max_tokens=role.max_tokens, seed=prompt_seed(sampling.seed, f"w{w}"),
                                      logprobs=sampling.logprobs)
        self.batch_sizes.append(len(prompts))
        outs = role.engine.generate(prompts, sub_sampling)
        for k, (s, sub) in enumerate(owners):
            sub.trajs = outs[k * cfg.vote_k:(k + 1) * cfg.vote_k]
            sub.votes = [extract_answer(t.response_text, cfg.max_answer_chars) for t in sub.trajs]
            sub.answer = majority(sub.votes)
            sub.finished = bool(sub.answer) and any(t.finish == "stop" for t in sub.trajs)
            sub.temperature = temp
            sub.faithful = s.fidelity.judge(sub.directive, sub.task)
            s.budget.settle(sub.reserved, sum(len(t.response_ids) for t in sub.trajs))
            sub.reserved = 0


def wrap_engine(engine: Engine, recipe: Any, tokenizer: Any, trace_dir: str | Path, policy_path: str) -> Engine:
    """``engine`` itself, or an :class:`AgentEngine` around it when ``recipe.agents.enabled``.

    Each frozen role (``agents.subagents.<role>.policy: frozen``) gets an engine on its checkpoint (``path``, its
    ``recipe``'s final checkpoint, or by default ``policy_path``, the policy RL starts from); roles on the same
    checkpoint share one. None of them receives weight updates.
    """
    cfg = recipe.agents
    if not cfg.enabled:
        return engine
    from longcot.rollout import build_engine

    frozen = build_frozen(cfg, tokenizer, policy_path, recipe.out_dir, getattr(engine, "max_model_len", None),
                          build_engine)
    return AgentEngine(engine, tokenizer, cfg, frozen=frozen, trace_dir=trace_dir)
