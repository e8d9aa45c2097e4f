"""Partial rollouts (Kimi k1.5): a per-iteration token budget; unfinished trajectories carry over.

With long chains of thought a few very long samples hold every iteration hostage: the batch waits for its
longest member. :class:`PartialRollouts` wraps any :class:`~longcot.rollout.base.Engine` and is itself one
(``generate`` + ``sync_weights``), so the trainer does not know it is there. Each ``generate`` call

1. applies the staleness cap to buffered, unfinished trajectories (``drop`` their group, or ``restart`` them);
2. starts ``n`` samples for every new prompt;
3. lets every unfinished sample, old and new, generate at most ``token_budget`` more tokens, continuing
   token-exactly: the engine gets ``prompt_ids + response_ids_so_far`` as token ids (never re-tokenised);
4. returns the groups whose members have all finished, so a group's advantage only ever sees complete
   samples; everything else stays in the buffer for the next iteration.

Each trajectory records which policy version produced which tokens (``Segment(start, end, version)``) and
keeps the engine logprobs (and, for MoE routing replay, the expert ids) of every segment.
``train_segments="current"`` masks tokens of older versions out
of the loss (``loss_mask``); ``"all"`` trains on them, corrected by the trainer's truncated importance weight
``min(pi_current / pi_rollout, threshold)`` (``rl.rollout_correction``) against those stored logprobs.

Exactness of a continued sample (docs/partial_rollouts.md): greedy continuations always equal an
uninterrupted generation. Sampled ones do on vLLM/CPU with ``exact_resume``: vLLM seeds a fresh generator
per request, and its CPU sampler draws one number per generated token, so the continuation request's
generator is advanced by the number of tokens already generated (a hook in the worker). Other engines get a
deterministic per-segment seed instead: reproducible, but not the uninterrupted sample.
"""

from __future__ import annotations

import copy
import logging
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from longcot.config.schema import PartialConfig
from longcot.record import Finish, Segment, Trajectory
from longcot.rollout.base import Prompt, SamplingConfig
from longcot.rollout.common import check_inputs, prompt_seed
from longcot.rollout.repetition import LoopDetector

log = logging.getLogger(__name__)


@dataclass
class Request:
    """One generation call for one sample: continue ``prompt_ids`` (prompt + response so far)."""

    group_id: str
    index: int  # sample index in the group
    prompt_len: int  # prompt_ids[prompt_len:] is the response so far
    prompt_ids: list[int]
    max_tokens: int
    seed: int | None  # the sample's own seed, the same for all its segments
    draws: int  # tokens the sample generated before: random draws to skip for an exact resume

    @property
    def key(self) -> str:
        """Stable id of the sample and position (names errors, seeds the generic backend)."""
        return f"{self.group_id}#{self.index}@{self.draws}"


@dataclass
class Completion:
    ids: list[int]
    logprobs: list[float]
    finish: str  # "stop" (EOS or stop string) | "length" (hit this request's max_tokens)
    # MoE routing rows of the request's whole sequence (prompt_ids + ids, minus the last token), when asked
    routed_experts: np.ndarray | None = None


@dataclass
class _Sample:
    traj: Trajectory
    index: int  # position in its group
    seed: int | None
    born: int  # policy version of its first token (staleness)
    done: bool = False


class PartialRollouts:
    """An Engine that generates with a per-iteration token budget and buffers unfinished groups."""

    def __init__(self, engine: Any, cfg: PartialConfig | None = None, *, backend: Any = None) -> None:
        self.inner = engine
        self.cfg = cfg if cfg is not None else PartialConfig(enabled=True)
        self.backend = backend if backend is not None else make_backend(engine, self.cfg.exact_resume)
        self.version = int(getattr(engine, "version", 0))
        self.max_model_len = getattr(engine, "max_model_len", None)
        rep = self.cfg.repetition
        self.detector = LoopDetector(rep.max_period, rep.min_repeats, rep.min_span) if rep.enabled else None
        self.buffer: dict[str, list[_Sample]] = {}  # group_id -> members, oldest group first
        self.last_metrics: dict[str, float] = {}

    # ---- Engine protocol --------------------------------------------------------------------------------
    def generate(self, prompts: list[Prompt], sampling: SamplingConfig, group_tag: str = "") -> list[Trajectory]:
        """Finished groups (buffered ones first), each with all ``sampling.n`` members; see the module doc."""
        check_inputs(prompts, sampling, self.max_model_len)
        stats: Counter = Counter()
        self._enforce_staleness(stats)
        self._admit(prompts, sampling, group_tag)
        self._run(sampling, stats)
        out = self._pop_finished()
        self.last_metrics = self._metrics(out, stats)
        return out

    def sync_weights(self, named_params: Iterable[tuple[str, torch.Tensor]], version: int) -> None:
        self.inner.sync_weights(named_params, version)
        self.version = version

    @property
    def captures_routing(self) -> bool:
        """Whether the wrapped engine can return each token's experts (MoE routing replay)."""
        return bool(getattr(self.inner, "captures_routing", False))

    def compute_logprobs(self, prompt_ids: list[list[int]], response_ids: list[list[int]]) -> list[list[float]]:
        return self.inner.compute_logprobs(prompt_ids, response_ids)

    def state_dict(self) -> dict:
        """The buffer of unfinished (and waiting) samples with their segments and seeds: a resumed run continues
        them exactly where they stopped."""
        inner = self.inner.state_dict() if hasattr(self.inner, "state_dict") else None
        return {"buffer": copy.deepcopy(self.buffer), "inner": inner}

    def load_state_dict(self, state: dict) -> None:
        self.buffer = copy.deepcopy(state["buffer"])
        if state.get("inner") is not None:
            self.inner.load_state_dict(state["inner"])

    def shutdown(self) -> None:
        if hasattr(self.inner, "shutdown"):
            self.inner.shutdown()

    # ---- one iteration ----------------------------------------------------------------------------------
    def _enforce_staleness(self, stats: Counter) -> None:
        """Unfinished samples older than ``max_staleness`` versions: drop their group or restart them."""
        cap = self.cfg.max_staleness
        if cap is None:
            return
        for gid in list(self.buffer):
            stale = [s for s in self.buffer[gid] if not s.done and self.version - s.born > cap]
            if not stale:
                continue
            if self.cfg.on_stale == "drop":
                stats["tokens_wasted"] += sum(len(s.traj.response_ids) for s in self.buffer.pop(gid))
                stats["dropped_groups"] += 1
                continue
            for s in stale:
                stats["tokens_wasted"] += len(s.traj.response_ids)
                stats["restarted"] += 1
                s.traj.response_ids, s.traj.rollout_logprobs, s.traj.segments = [], [], []
                s.traj.routed_experts = None
                s.born = self.version

    def _admit(self, prompts: list[Prompt], sampling: SamplingConfig, group_tag: str) -> None:
        """``n`` new samples per prompt; sample ``i`` gets the seed vLLM would give it (prompt seed + i)."""
        for p in prompts:
            gid = p.prompt_id + group_tag
            if gid in self.buffer:
                raise ValueError(f"group {gid!r} is still buffered from an earlier iteration: pass a different "
                                 "group_tag each iteration (the trainer passes '@<step>')")
            base = prompt_seed(sampling.seed, p.prompt_id)
            self.buffer[gid] = [
                _Sample(Trajectory(prompt_id=p.prompt_id, group_id=gid, prompt_ids=list(p.prompt_ids), response_ids=[],
                                   rollout_logprobs=[], finish="budget", prompt_text=p.prompt_text,
                                   meta=dict(p.meta), temperature=sampling.temperature),
                        index=i, seed=None if base is None else base + i, born=self.version)
                for i in range(sampling.n)
            ]

    def _run(self, sampling: SamplingConfig, stats: Counter) -> None:
        """Generate up to the budget for every unfinished sample, in chunks when the loop check asks for it."""
        budget = self.cfg.token_budget if self.cfg.enabled else sampling.max_tokens
        chunk = self.cfg.repetition.chunk_tokens or budget
        active = [s for group in self.buffer.values() for s in group if not s.done]
        stats["continued"] = sum(1 for s in active if s.traj.response_ids)
        left = budget
        while active and left > 0:
            size = min(chunk, left)
            reqs = [self._request(s, size, sampling) for s in active]
            comps = self.backend.run(reqs, sampling)
            stats["generate_calls"] += 1
            for s, c in zip(active, comps, strict=True):
                self._append(s, c, sampling, stats)
            left -= size
            active = [s for s in active if not s.done]

    def _room(self, s: _Sample, sampling: SamplingConfig) -> int:
        """Tokens this sample may still generate in total (max_tokens, and prompt + response < max_model_len)."""
        room = sampling.max_tokens - len(s.traj.response_ids)
        if self.max_model_len is not None:
            room = min(room, self.max_model_len - len(s.traj.prompt_ids) - len(s.traj.response_ids))
        return room

    def _request(self, s: _Sample, size: int, sampling: SamplingConfig) -> Request:
        t = s.traj
        n = len(t.response_ids)
        return Request(t.group_id, s.index, len(t.prompt_ids), t.prompt_ids + t.response_ids,
                       max_tokens=max(1, min(size, self._room(s, sampling))), seed=s.seed, draws=n)

    def _append(self, s: _Sample, c: Completion, sampling: SamplingConfig, stats: Counter) -> None:
        """Add one chunk's tokens (a new segment, or the current one extended) and decide whether it ended."""
        t = s.traj
        start = len(t.response_ids)
        t.response_ids.extend(c.ids)
        t.rollout_logprobs.extend(float(x) for x in c.logprobs)
        _append_routing(t, c.routed_experts)
        stats["generated_tokens"] += len(c.ids)
        if t.segments and t.segments[-1].policy_version == self.version and t.segments[-1].end == start:
            t.segments[-1].end = len(t.response_ids)
        elif c.ids:
            t.segments.append(Segment(start, len(t.response_ids), self.version))
        finish: Finish | None = "stop" if c.finish == "stop" else "length" if self._room(s, sampling) <= 0 else None
        cut = self._stop_across_boundary(t, start, sampling.stop)
        if cut is not None:
            finish = "stop"
        if self.detector is not None:
            k = self.detector.find(t.response_ids, start)
            if k is not None and (cut is None or k < cut):
                cut, finish = k, "repeat"
                stats["repeat_cut"] += 1
        if cut is not None:
            stats["tokens_wasted"] += len(t.response_ids) - cut
            _truncate(t, cut)
        if finish is not None:
            t.finish, s.done = finish, True

    def _stop_across_boundary(self, t: Trajectory, start: int, stops: list[str]) -> int | None:
        """A stop string that begins in an earlier segment and ends in this one (the engine cannot see it)."""
        if not stops or start == 0 or self.backend.decode([]) is None:
            return None
        lo = max(0, start - max(len(x) for x in stops))
        for k in range(start + 1, len(t.response_ids) + 1):
            text = self.backend.decode(t.response_ids[lo:k])
            if any(x in text for x in stops):
                return k
        return None

    def _pop_finished(self) -> list[Trajectory]:
        """Remove and finalise the groups whose members all finished (oldest group first)."""
        out: list[Trajectory] = []
        for gid in [g for g, members in self.buffer.items() if all(s.done for s in members)]:
            for s in self.buffer.pop(gid):
                t = s.traj
                text = self.backend.decode(t.response_ids)
                t.response_text = text if text is not None else t.response_text
                if self.cfg.train_segments == "current":
                    t.loss_mask = segment_mask(t, self.version)
                out.append(t)
        return out

    def _metrics(self, out: list[Trajectory], stats: Counter) -> dict[str, float]:
        buffered = [s for g in self.buffer.values() for s in g]
        n = max(len(out), 1)
        stale = [self.version - min((seg.policy_version for seg in t.segments), default=self.version) for t in out]
        tokens = sum(len(t.response_ids) for t in out)
        old = sum(seg.end - seg.start for t in out for seg in t.segments if seg.policy_version < self.version)
        m = {
            "partial/buffered": float(sum(not s.done for s in buffered)),
            "partial/waiting": float(sum(s.done for s in buffered)),
            "partial/buffered_groups": float(len(self.buffer)),
            "partial/returned": float(len(out)),
            "partial/segments_per_traj": sum(len(t.segments) for t in out) / n,
            "partial/staleness_mean": sum(stale) / n,
            "partial/staleness_max": float(max(stale, default=0)),
            "partial/old_token_frac": old / max(tokens, 1),
            "partial/trained_token_frac": sum(sum(t.mask()) for t in out) / max(tokens, 1),
        }
        for key in ("generated_tokens", "tokens_wasted", "repeat_cut", "dropped_groups", "restarted", "continued",
                    "generate_calls"):
            m[f"partial/{key}"] = float(stats.get(key, 0))
        return m


def segment_mask(t: Trajectory, version: int) -> list[int]:
    """1 for tokens produced by policy ``version``, 0 for older segments (``train_segments: current``)."""
    mask = [0] * len(t.response_ids)
    for seg in t.segments:
        if seg.policy_version == version:
            mask[seg.start : seg.end] = [1] * (seg.end - seg.start)
    return mask


def _truncate(t: Trajectory, n: int) -> None:
    """Keep the first ``n`` response tokens (and their logprobs, segments and routing rows)."""
    del t.response_ids[n:], t.rollout_logprobs[n:]
    t.segments = [Segment(g.start, min(g.end, n), g.policy_version) for g in t.segments if g.start < n]
    if t.routed_experts is not None:
        t.routed_experts = t.routed_experts[: len(t.prompt_ids) + n - 1]


def _append_routing(t: Trajectory, rows: np.ndarray | None) -> None:
    """Routing rows per segment: a continuation recomputes the whole prefix, but each position keeps the rows of
    the segment that first computed it (the routing its next token was sampled with); only the new positions'
    rows are added."""
    if rows is None:
        return
    have = 0 if t.routed_experts is None else len(t.routed_experts)
    t.routed_experts = rows.copy() if have == 0 else np.concatenate([t.routed_experts, rows[have:]])


# ---- backends: how requests reach an engine ------------------------------------------------------------------
def make_backend(engine: Any, exact_resume: bool = True) -> Any:
    """The vLLM backend for a :class:`~longcot.rollout.vllm.VLLMEngine` (per-request seeds and limits in one
    batched call), else the generic one that goes through ``engine.generate``. An engine that brings its own
    (``partial_backend``: a Ray rollout worker, which runs the vLLM backend on its side) is asked for it."""
    if hasattr(engine, "partial_backend"):
        return engine.partial_backend(exact_resume)
    if hasattr(engine, "llm"):
        return VLLMBackend(engine, exact_resume)
    return EngineBackend(engine)


class VLLMBackend:
    """All requests in one ``llm.generate`` call, each with its own ``max_tokens``, seed and draw offset."""

    def __init__(self, engine: Any, exact_resume: bool = True) -> None:
        self.engine = engine
        self.llm = engine.llm
        self.tokenizer = self.llm.get_tokenizer()
        from vllm.platforms import current_platform

        sched = self.llm.llm_engine.vllm_config.scheduler_config
        if current_platform.is_cpu() and getattr(sched, "enable_chunked_prefill", False):
            # Continuations are long prompts, so their prefills do get chunked, and the trainer always seeds.
            raise ValueError(
                "partial rollouts on vLLM/CPU need chunked prefill off: vLLM 0.32 rewinds a seeded request's "
                "generator after a partial prefill, which CPU generators reject. Set "
                "rollout.engine_options.enable_chunked_prefill: false (recipes/tiny/arith-moe-partial.yaml does)")
        self.exact_resume = exact_resume and _install_draw_replay(self.llm)

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def _seed(self, r: Request) -> int | None:
        """The request's seed. With exact resume the sample's own seed, its generator advanced past the draws
        already made; without it (other samplers than vLLM's CPU one) a seed of its own per segment: reusing
        the sample's seed would replay the first segment's random numbers in every later segment."""
        if r.seed is None or self.exact_resume or r.draws == 0:
            return r.seed
        return (r.seed * 1_000_003 + r.draws) % (2**31 - 1)

    def run(self, reqs: list[Request], sampling: SamplingConfig) -> list[Completion]:
        from vllm import SamplingParams

        if not reqs:
            return []
        params = [
            SamplingParams(
                n=1, temperature=sampling.temperature, top_p=sampling.top_p,
                top_k=0 if sampling.top_k in (-1, 0) else sampling.top_k, max_tokens=r.max_tokens,
                stop=list(sampling.stop) or None, seed=self._seed(r), logprobs=0, include_stop_str_in_output=True,
                extra_args={_DRAWS_KEY: r.draws} if self.exact_resume and r.draws and r.seed is not None else None,
            )
            for r in reqs
        ]
        outs, captured = self.engine.routed_generate([{"prompt_token_ids": r.prompt_ids} for r in reqs], params,
                                                     sampling.routed_experts)
        result = []
        for r, out in zip(reqs, outs, strict=True):
            comp = out.outputs[0]
            if comp.finish_reason not in ("stop", "length"):
                raise RuntimeError(f"vLLM finished request {r.key!r} with {comp.finish_reason!r}")
            ids = list(comp.token_ids)
            lps = [step[tok].logprob for step, tok in zip(comp.logprobs, ids, strict=True)]
            rows = self.engine.routing_rows(captured, out, comp, r.prompt_ids + ids) \
                if sampling.routed_experts else None
            result.append(Completion(ids, lps, comp.finish_reason, rows))
        return result


class EngineBackend:
    """Any Engine: one ``generate`` call with ``n=1`` per request, responses cut to each request's limit.

    Seeds: ``sampling.seed`` combined with the request key (sample and position), so runs are reproducible;
    a sampled continuation is not the uninterrupted sample (greedy ones are).
    """

    def __init__(self, engine: Any) -> None:
        self.engine = engine
        tok = getattr(engine, "tokenizer", None)
        self.tokenizer = tok if hasattr(tok, "decode") else None

    def decode(self, ids: list[int]) -> str | None:
        """The response text, or None when the engine has no tokenizer object."""
        return None if self.tokenizer is None else self.tokenizer.decode(ids, skip_special_tokens=True)

    def run(self, reqs: list[Request], sampling: SamplingConfig) -> list[Completion]:
        if not reqs:
            return []
        prompts = [Prompt(r.key, r.prompt_ids) for r in reqs]
        limit = max(r.max_tokens for r in reqs)
        call = SamplingConfig(n=1, temperature=sampling.temperature, top_p=sampling.top_p, top_k=sampling.top_k,
                              max_tokens=limit, stop=list(sampling.stop), seed=sampling.seed,
                              routed_experts=sampling.routed_experts)
        trajs = self.engine.generate(prompts, call)
        result = []
        for r, t in zip(reqs, trajs, strict=True):
            ids, lps = t.response_ids[: r.max_tokens], t.rollout_logprobs[: r.max_tokens]
            finish = "stop" if t.finish == "stop" and len(t.response_ids) <= r.max_tokens else "length"
            rows = None if t.routed_experts is None else t.routed_experts[: len(r.prompt_ids) + len(ids) - 1]
            result.append(Completion(list(ids), list(lps), finish, rows))
        return result


# ---- exact resume in vLLM on CPU -------------------------------------------------------------------------------
_DRAWS_KEY = "longcot_resume_draws"


def _install_draw_replay(llm: Any) -> bool:
    """Make a request with ``extra_args[_DRAWS_KEY] = k`` start its seeded generator ``k`` draws in.

    vLLM 0.32 creates a request's ``torch.Generator`` from its seed when the request is first scheduled
    (``GPUModelRunner._update_states``), and the CPU sampler draws one ``randint`` per generated token. After
    the original ``_update_states`` we advance the new requests' generators by the tokens their sample
    already generated, so token ``k`` of a continuation uses the same random number as in one long request.
    Returns False (with a warning) where the sampler is not the CPU one (other platforms draw differently).
    """
    return all(llm.collective_rpc(_patch_runner))


def _patch_runner(worker: Any) -> bool:
    runner = worker.model_runner
    if getattr(runner, "_longcot_draw_replay", False):
        return True
    if runner.device.type != "cpu":
        log.warning("partial rollouts: exact sampled resume is implemented for vLLM's CPU sampler only; "
                    "continuations on %s get their own seeds (greedy stays exact)", runner.device)
        return False
    original = runner._update_states

    def update_states(scheduler_output: Any, *args: Any, **kwargs: Any) -> Any:
        out = original(scheduler_output, *args, **kwargs)
        for new in scheduler_output.scheduled_new_reqs:
            extra = getattr(new.sampling_params, "extra_args", None) or {}
            draws = extra.get(_DRAWS_KEY, 0)
            state = runner.requests.get(new.req_id)
            if draws and state is not None and state.generator is not None:
                torch.randint(0, 2**31, (draws,), generator=state.generator, dtype=torch.long)
        return out

    runner._update_states = update_states
    runner._longcot_draw_replay = True
    return True
