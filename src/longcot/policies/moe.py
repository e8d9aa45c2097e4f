"""MoE routing on the trainer side: routing replay (R3, R2), router statistics and the load-balancing loss.

Everything goes through one forward hook on each MoE layer's router (the ``mlp.gate`` module of an HF MoE
model). The hook sees the router's output (logits, gate weights, chosen expert ids) and may replace it:

* **replay** (``rl.routing_replay``): the layer dispatches each token to the given expert ids instead of its own
  top-k. The gate weights are the trainer's router probabilities gathered at those ids, renormalised exactly as
  the model renormalises its own top-k, so the router still gets a gradient through them. ``r3``: the ids the
  rollout engine used (``Trajectory.routed_experts``, captured in ``longcot.rollout.routing``). ``r2``: the ids of
  the trainer's own first pass over the batch, reused by the later passes when ``rl.updates_per_step > 1``.
  A row of -1 (a token the engine never fed through the model: the last response token) keeps the trainer's
  own choice; it changes no log-prob.
* **statistics**: on the first pass over a batch, per layer, how often the trainer's own top-k set equals the
  engine's (routing agreement) and how evenly the dispatched tokens spread over the experts (expert load).
* **load-balancing loss** (``rl.router_aux_coef``): the Switch-Transformer auxiliary loss on the same router
  outputs, over real tokens only, so it works in the packed layout (transformers' own needs
  ``output_router_logits`` and a 2D mask, which the packed layout does not have).

Model families register how their routers are found and overridden in :data:`ROUTERS`, keyed by
``config.model_type``; ``qwen3_moe`` and ``qwen2_moe`` (softmax top-k routers) are built in.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, fields

import numpy as np
import torch
import torch.nn.functional as F

from longcot.record import Trajectory
from longcot.registry import Registry

REPLAY_MODES = ("none", "r3", "r2")


# ---- model families ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class RouterSpec:
    """How one model family's routers are found and forced to given experts."""

    gates: Callable[[torch.nn.Module], list[torch.nn.Module]]  # one router module per MoE layer, in layer order
    num_experts: Callable[[object], int]  # from the model config
    # (router module, its output, ids [N, k]) -> the output that dispatches to ``ids``, with gradient to the router
    forced: Callable[[torch.nn.Module, tuple, torch.Tensor], tuple]


ROUTERS: Registry[RouterSpec] = Registry("MoE router family")


def _decoder_layers(model: torch.nn.Module) -> list[torch.nn.Module]:
    base = getattr(model, "module", model)
    return list(base.model.layers)


def _softmax_topk_gates(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The ``mlp.gate`` of every layer whose MLP is a sparse MoE block (dense layers have no ``gate`` router)."""
    gates = []
    for layer in _decoder_layers(model):
        gate = getattr(layer.mlp, "gate", None)
        if gate is not None and hasattr(gate, "top_k") and hasattr(gate, "num_experts"):
            gates.append(gate)
    return gates


def _softmax_topk_forced(gate: torch.nn.Module, output: tuple, ids: torch.Tensor) -> tuple:
    """Qwen2/3-MoE: weights = softmax(logits) at ``ids``, divided by their sum when ``norm_topk_prob``."""
    logits = output[0]
    probs = F.softmax(logits, dtype=torch.float, dim=-1)
    weights = probs.gather(-1, ids)
    if gate.norm_topk_prob:
        weights = weights / weights.sum(dim=-1, keepdim=True)
    return logits, weights.to(logits.dtype), ids


SOFTMAX_TOPK = RouterSpec(gates=_softmax_topk_gates, num_experts=lambda cfg: cfg.num_experts,
                          forced=_softmax_topk_forced)
ROUTERS.register("qwen3_moe")(SOFTMAX_TOPK)
ROUTERS.register("qwen2_moe")(SOFTMAX_TOPK)


def is_moe(model: torch.nn.Module) -> bool:
    """Whether ``model`` is a registered MoE family with at least one router."""
    cfg = getattr(getattr(model, "module", model), "config", None)
    spec_name = getattr(cfg, "model_type", None)
    return spec_name in ROUTERS and bool(ROUTERS.get(spec_name).gates(model))


# ---- where each token sits in a forward ---------------------------------------------------------------------------
@dataclass
class RoutingLayout:
    """Rows of one forward's flattened input (the router sees [N, hidden]) for each token of a micro-batch.

    ``replay``: the engine's expert ids per row [N, layers, k] (-1: none), or None when the batch carries no engine
    routing. ``response_rows`` [B, T]: the row of response token t of sequence b (-1 past its end): statistics are
    taken over response tokens, so they do not depend on the layout (the packed layout holds a prompt once).
    ``valid`` [N]: real tokens (not padding), for the auxiliary loss.
    """

    replay: torch.Tensor | None
    response_rows: torch.Tensor
    valid: torch.Tensor
    r2: torch.Tensor | None = None  # [N, layers, k] the trainer's own first-pass ids (rl.routing_replay=r2)

    def to(self, device: torch.device | str) -> RoutingLayout:
        return RoutingLayout(**{f.name: None if getattr(self, f.name) is None else getattr(self, f.name).to(device)
                                for f in fields(self)})


def _engine_rows(t: Trajectory) -> np.ndarray | None:
    return None if t.routed_experts is None else np.asarray(t.routed_experts)


def padded_layout(trajs: list[Trajectory], length: int, response_len: int) -> RoutingLayout:
    """Layout of the padded batch: row ``b * length + p`` is position ``p`` of sequence ``b``."""
    B = len(trajs)
    rows = [_engine_rows(t) for t in trajs]
    replay = _replay_tensor(rows, B * length)
    response_rows = torch.full((B, response_len), -1, dtype=torch.long)
    valid = torch.zeros(B * length, dtype=torch.bool)
    for b, t in enumerate(trajs):
        p, r = len(t.prompt_ids), len(t.response_ids)
        valid[b * length : b * length + p + r] = True
        response_rows[b, :r] = b * length + p + torch.arange(r)
        if replay is not None and rows[b] is not None:
            replay[b * length : b * length + len(rows[b])] = torch.from_numpy(rows[b].astype(np.int64))
    return RoutingLayout(replay, response_rows, valid)


def packed_layout(trajs: list[Trajectory], spans: torch.Tensor, num_rows: int, response_len: int) -> RoutingLayout:
    """Layout of the packed row (``longcot.rl.batch``): ``spans[i]`` = (prompt start, prompt length, response
    start, response length) of trajectory ``i`` in the row. A prompt held once for several samples takes the rows
    of the first of them (the packer shares a prompt only between samples whose prompt rows are identical)."""
    rows = [_engine_rows(t) for t in trajs]
    replay = _replay_tensor(rows, num_rows)
    response_rows = torch.full((len(trajs), response_len), -1, dtype=torch.long)
    filled: set[int] = set()
    for i, (p0, n_p, r0, n_r) in enumerate(spans.tolist()):
        response_rows[i, :n_r] = r0 + torch.arange(n_r)
        if replay is None or rows[i] is None:
            continue
        eng = torch.from_numpy(rows[i].astype(np.int64))
        if p0 not in filled:  # (an empty response has rows for all but the last prompt token)
            replay[p0 : p0 + min(n_p, len(eng))] = eng[:n_p]
            filled.add(p0)
        have = max(0, min(n_r, len(eng) - n_p))
        replay[r0 : r0 + have] = eng[n_p : n_p + have]
    return RoutingLayout(replay, response_rows, torch.ones(num_rows, dtype=torch.bool))


def _replay_tensor(rows: list[np.ndarray | None], n: int) -> torch.Tensor | None:
    """[n, layers, k] of -1, or None when no trajectory carries engine routing; all or none must carry it."""
    have = [r is not None for r in rows]
    if not any(have):
        return None
    if not all(have):
        raise ValueError(f"{sum(have)} of {len(have)} trajectories carry engine routing (routed_experts): an engine "
                         "must return it for every sample of a step or for none")
    shape = {r.shape[1:] for r in rows if r is not None}
    if len(shape) != 1:
        raise ValueError(f"trajectories carry routing rows of different shapes {sorted(shape)}")
    return torch.full((n, *next(iter(shape))), -1, dtype=torch.long)


def prompt_routing_key(t: Trajectory) -> bytes:
    """What, besides its token ids, must match for two samples to share one copy of their prompt in the packed
    row: the engine's routing of the prompt tokens (with prefix caching off each sample computed its own)."""
    rows = _engine_rows(t)
    return b"" if rows is None else rows[: len(t.prompt_ids)].tobytes()


# ---- the hooks -------------------------------------------------------------------------------------------------
@dataclass
class _Pass:
    """What one forward replays and what it records."""

    replay: torch.Tensor | None  # [N, layers, k] or None
    record: bool
    own: dict[int, torch.Tensor] = field(default_factory=dict)  # layer -> the trainer's own top-k [N, k]
    used: dict[int, torch.Tensor] = field(default_factory=dict)  # layer -> the ids dispatched to [N, k]
    logits: dict[int, torch.Tensor] = field(default_factory=dict)  # layer -> router logits [N, E] (with grad)


@dataclass
class _Stats:
    """Routing statistics summed over the micro-batches of a step."""

    agree: np.ndarray  # [layers] tokens whose top-k set equals the engine's
    compared: np.ndarray  # [layers] tokens with an engine row
    load: np.ndarray  # [layers, experts] response tokens dispatched to each expert


class MoERouting:
    """Routing replay, router statistics and the auxiliary loss for one HF MoE model (see the module doc)."""

    def __init__(self, model: torch.nn.Module, replay: str = "none", aux_coef: float = 0.0):
        if replay not in REPLAY_MODES:
            raise ValueError(f"routing_replay must be one of {REPLAY_MODES}, got {replay!r}")
        cfg = getattr(model, "module", model).config
        self.spec = ROUTERS.get(cfg.model_type)
        self.gates = self.spec.gates(model)
        if not self.gates:
            raise ValueError(f"model type {cfg.model_type!r} has no MoE router modules (is it an MoE?)")
        self.mode, self.aux_coef = replay, aux_coef
        self.num_experts = int(self.spec.num_experts(cfg))
        self._model = model
        self._pass: _Pass | None = None
        self._handles = [g.register_forward_hook(self._hook(i)) for i, g in enumerate(self.gates)]
        self.reset_stats()

    @classmethod
    def for_model(cls, model: torch.nn.Module, replay: str = "none", aux_coef: float = 0.0) -> MoERouting | None:
        """The hooks for an MoE model; None for a dense one (then replay and the aux loss are errors)."""
        if is_moe(model):
            return cls(model, replay, aux_coef)
        if replay != "none" or aux_coef:
            mt = getattr(getattr(getattr(model, "module", model), "config", None), "model_type", None)
            raise ValueError(f"rl.routing_replay={replay!r} / rl.router_aux_coef={aux_coef} need an MoE policy with "
                             f"a registered router family ({', '.join(ROUTERS.names())}); this model is {mt!r}")
        return None

    @property
    def num_layers(self) -> int:
        return len(self.gates)

    def remove(self) -> None:
        for h in self._handles:
            h.remove()

    def _hook(self, layer: int):
        def hook(module: torch.nn.Module, inputs: tuple, output: tuple):
            p = self._pass
            if p is None:
                return None
            logits, own = output[0], output[2]
            if p.record:
                p.own[layer] = own.detach()
                p.logits[layer] = logits
            if p.replay is None:
                p.used[layer] = own.detach()
                return None
            if p.replay.shape[0] != own.shape[0]:
                raise RuntimeError(f"routing replay: {p.replay.shape[0]} rows of expert ids for a forward of "
                                   f"{own.shape[0]} tokens (layout and batch disagree)")
            ids = p.replay[:, layer].to(own.device)
            ids = torch.where(ids >= 0, ids, own)
            p.used[layer] = ids
            return self.spec.forced(module, output, ids)

        return hook

    # ---- one forward ----------------------------------------------------------------------------------------------
    @contextlib.contextmanager
    def forward(self, replay: torch.Tensor | None, record: bool = False) -> Iterator[_Pass]:
        """Hooks active for the forwards inside the block: dispatch to ``replay`` (None: the model's own top-k)
        and, with ``record``, keep the router outputs for :meth:`aux_loss` and :meth:`observe`."""
        if replay is not None and getattr(self._model, "is_gradient_checkpointing", False):
            raise ValueError("routing replay with gradient checkpointing is not supported: the recomputed forward "
                             "in backward would route by the model's own top-k")
        self._pass = _Pass(replay, record)
        try:
            yield self._pass
        finally:
            self._pass = None

    def replay_ids(self, layout: RoutingLayout | None, first: bool) -> torch.Tensor | None:
        """The ids a pass over this micro-batch replays under ``self.mode`` (None: the model's own routing)."""
        if self.mode == "none" or layout is None:
            return None
        if self.mode == "r3":
            if layout.replay is None:
                raise ValueError("rl.routing_replay=r3 but this batch carries no engine routing "
                                 "(Trajectory.routed_experts): the engine must capture it on every step")
            return layout.replay
        return None if first else layout.r2  # r2: the first pass routes freely and is recorded

    def keep_first_pass(self, layout: RoutingLayout, p: _Pass) -> None:
        """r2: store the ids of the first pass over a micro-batch for the later passes."""
        layout.r2 = torch.stack([p.used[i] for i in range(self.num_layers)], 1).detach()

    def aux_loss(self, p: _Pass, layout: RoutingLayout) -> torch.Tensor:
        """Mean over layers of the Switch load-balancing loss E * sum_i f_i P_i over real tokens, where f_i is the
        fraction of (token, slot) dispatches that went to expert i and P_i the mean router probability of expert i.
        1.0 when both are uniform; minimised by an even spread."""
        losses = []
        for i in range(self.num_layers):
            valid = layout.valid.to(p.logits[i].device)
            probs = F.softmax(p.logits[i][valid].float(), dim=-1)
            used = p.used[i][valid]
            f = torch.bincount(used.reshape(-1), minlength=self.num_experts).float() / max(used.numel(), 1)
            losses.append(self.num_experts * (f * probs.mean(0)).sum())
        return torch.stack(losses).mean()

    # ---- statistics ------------------------------------------------------------------------------------------------
    def reset_stats(self) -> None:
        L, E = self.num_layers, self.num_experts
        self.stats = _Stats(np.zeros(L), np.zeros(L), np.zeros((L, E)))

    def observe(self, p: _Pass, layout: RoutingLayout) -> None:
        """Add one first-pass forward's response tokens to the step's routing statistics."""
        rows = layout.response_rows[layout.response_rows >= 0].to(p.own[0].device)
        for i in range(self.num_layers):
            used = p.used[i][rows]
            self.stats.load[i] += torch.bincount(used.reshape(-1), minlength=self.num_experts).cpu().numpy()
            if layout.replay is None:
                continue
            engine = layout.replay[:, i].to(rows.device)[rows]
            have = (engine >= 0).all(-1)
            same = (engine.sort(-1).values == p.own[i][rows].sort(-1).values).all(-1)
            self.stats.agree[i] += float((same & have).sum())
            self.stats.compared[i] += float(have.sum())

    def step_metrics(self) -> dict[str, float]:
        """The step's routing metrics (then reset): agreement and expert load per layer, and their means."""
        out = routing_metrics(self.stats.agree, self.stats.compared, self.stats.load)
        self.reset_stats()
        return out


def routing_metrics(agree: np.ndarray, compared: np.ndarray, load: np.ndarray) -> dict[str, float]:
    """Per MoE layer l: ``routing/agreement/l{l}`` (fraction of tokens whose top-k set is the engine's; only when
    compared > 0), ``moe/load_max_over_mean/l{l}`` (max tokens per expert / mean tokens per expert; 1 = even),
    ``moe/load_entropy/l{l}`` (entropy of the dispatch distribution over experts, divided by log E; 1 = even) and
    ``moe/dead_experts/l{l}`` (experts that received no token); plus the mean over layers without the suffix."""
    out: dict[str, float] = {}
    per: dict[str, list[float]] = {}

    def put(name: str, layer: int, value: float) -> None:
        out[f"{name}/l{layer}"] = value
        per.setdefault(name, []).append(value)

    E = load.shape[1]
    for i in range(load.shape[0]):
        if compared[i] > 0:
            put("routing/agreement", i, float(agree[i] / compared[i]))
        total = load[i].sum()
        if total > 0:
            share = load[i] / total
            put("moe/load_max_over_mean", i, float(load[i].max() / (total / E)))
            nz = share[share > 0]
            put("moe/load_entropy", i, float(-(nz * np.log(nz)).sum() / math.log(E)))
            put("moe/dead_experts", i, float((load[i] == 0).sum()))
    for name, values in per.items():
        out[name] = float(np.mean(values))
    return out
