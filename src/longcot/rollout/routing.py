"""Which experts the rollout engine routed each token to: the record that rollout routing replay (R3) replays.

An MoE token's expert choice can differ between the engine that sampled it and the trainer that scores it
(precision, kernels), and one flipped expert changes the token's log-prob by far more than numerical noise.
R3 records the engine's top-k expert ids for every token and MoE layer and makes the training forward use
them (``longcot.policies.moe``). This module gets them out of vLLM.

Two paths, one result per sample: ``Trajectory.routed_experts``, an integer array [P + R - 1, moe_layers, k]
(row ``i`` = the experts that routed the token at position ``i`` of prompt + response; the last response token
is never fed to the model, so it has no row).

* GPU: vLLM's own ``enable_return_routed_experts`` (Model Runner V2; it needs Triton, so not on CPU). Each
  ``CompletionOutput.routed_experts`` is [tokens, num_hidden_layers, k]; :func:`rows_from_output` keeps the
  MoE layers and checks the length. Untested here (no GPU with vLLM in this project); written against vLLM
  0.32's output format.
* CPU (this machine): vLLM's router capture hook. :func:`bind_capture_on_load` makes the CPU model runner
  bind a ``RoutedExpertsCapturer`` to every MoE router right after the model is built, before any
  compilation, so a compiled graph includes the capture. A wrapper around the runner's ``_model_forward``
  then files each forward's rows under the requests that were in the batch (the runner lays tokens out request
  by request, ``query_start_loc``), with each token's position and id. :meth:`RoutingLog.rows` assembles a
  request's rows by position and checks them against its tokens.

Prefix caching: a prompt served from vLLM's prefix cache runs no forward, so it produces no router rows. On
CPU the engine turns prefix caching off when it captures (``VLLMEngine(routing_capture=True)``), and a request
whose rows do not start at position 0 is an error, never a silent partial replay. vLLM's GPU path stores the
rows of cached blocks itself.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

# vLLM 0.32 request ids: "<external id>-<8 random chars>" and, for the i-th sample of an n > 1 request,
# "<i>_<that id>". The external id of LLM.generate is a counter.
_REQ_ID = re.compile(r"^(?:(?P<index>\d+)_)?(?P<ext>.+)-[0-9a-zA-Z]{8}$")


def compact(rows: np.ndarray, num_experts: int) -> np.ndarray:
    """Expert ids in the narrowest type that holds them: uint8 up to 256 experts, else int16."""
    return rows.astype(np.uint8 if num_experts <= 256 else np.int16)


@dataclass
class _Step:
    """One forward: the requests in batch order, their token offsets, and each token's position, id and rows."""

    req_ids: list[str]
    starts: np.ndarray  # [num_reqs + 1] query_start_loc
    positions: np.ndarray  # [tokens]
    token_ids: np.ndarray  # [tokens]
    rows: np.ndarray  # [tokens, moe_layers, k]


@dataclass
class RoutingLog:
    """Lives in the vLLM worker (in-process engine): the router rows of every forward while ``active``."""

    capturer: Any  # vllm RoutedExpertsCapturer: its device_buffer [max_tokens, num_hidden_layers, k]
    layers: list[int]  # decoder-layer indices of the MoE layers, in order
    num_experts: int
    active: bool = False
    steps: list[_Step] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def record(self, runner: Any, input_ids: torch.Tensor | None, positions: torch.Tensor, forward) -> Any:
        """Run one forward and file its rows (called instead of the runner's ``_model_forward``)."""
        if not self.active:
            return forward()
        n_reqs = runner.input_batch.num_reqs
        starts = runner.query_start_loc.np[: n_reqs + 1].copy()
        n = int(starts[-1])
        buf = self.capturer.device_buffer
        buf[:n].fill_(-1)
        out = forward()
        rows = buf[:n, self.layers].cpu()
        # Errors are raised by stop(), after llm.generate returns: raising inside vLLM's engine loop would leave
        # the in-process engine hanging instead of failing.
        if n and bool((rows < 0).any()):
            missing = sorted({self.layers[i] for i in torch.nonzero(rows < 0)[:, 1].tolist()})
            self.errors.append(f"routing capture came back empty for MoE layers {missing} of a {n}-token "
                               "forward: the router capture hook is not bound there (R3 would replay nothing)")
            return out
        if input_ids is None:
            self.errors.append("routing capture needs token ids in the forward (this model passes embeddings)")
            return out
        self.steps.append(_Step(list(runner.input_batch.req_ids[:n_reqs]), starts,
                                positions[:n].cpu().numpy().copy(), input_ids[:n].cpu().numpy().copy(),
                                compact(rows.numpy(), self.num_experts)))
        return out

    def start(self) -> None:
        self.steps.clear()
        self.errors.clear()
        self.active = True

    def stop(self) -> dict[tuple[str, int], tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """Per request (external id, sample index): positions, token ids and rows of every forward, in order."""
        self.active = False
        if self.errors:
            errors, self.errors = list(self.errors), []
            self.steps.clear()
            raise RuntimeError(errors[0])
        parts: dict[str, list[tuple[np.ndarray, np.ndarray, np.ndarray]]] = {}
        for s in self.steps:
            for i, rid in enumerate(s.req_ids):
                a, b = int(s.starts[i]), int(s.starts[i + 1])
                parts.setdefault(rid, []).append((s.positions[a:b], s.token_ids[a:b], s.rows[a:b]))
        self.steps.clear()
        out = {}
        for rid, chunks in parts.items():
            m = _REQ_ID.match(rid)
            if m is None:
                raise RuntimeError(f"routing capture: unexpected vLLM request id {rid!r}")
            key = (m["ext"], int(m["index"] or 0))
            out[key] = tuple(np.concatenate(x) for x in zip(*chunks, strict=True))
        return out


def request_rows(captured: tuple[np.ndarray, np.ndarray, np.ndarray] | None, tokens: list[int], where: str
                 ) -> np.ndarray:
    """The rows [len(tokens) - 1, layers, k] of one request whose full sequence (prompt + output) is ``tokens``.

    Rows are placed by position (a recomputed, preempted request overwrites its earlier rows); every position
    but the last must have been computed, and the captured token ids must be the request's own."""
    need = len(tokens) - 1
    if captured is None:
        raise RuntimeError(f"routing capture: no router rows for {where} (did the engine run it?)")
    positions, token_ids, rows = captured
    out = np.zeros((need, *rows.shape[1:]), dtype=rows.dtype)
    seen = np.zeros(need, dtype=bool)
    keep = positions < need
    out[positions[keep]] = rows[keep]
    seen[positions[keep]] = True
    if not seen.all():
        first = int(np.flatnonzero(~seen)[0])
        raise RuntimeError(f"routing capture: {where} has no router rows from position {first} of {need} (a prefix-"
                           "cache hit computes nothing; R3 needs enable_prefix_caching=False on CPU)")
    expect = np.asarray(tokens[:need])
    if not np.array_equal(_by_position(positions[keep], token_ids[keep], need), expect):
        raise RuntimeError(f"routing capture: the token ids of the rows for {where} are not its own tokens")
    return out


def _by_position(positions: np.ndarray, values: np.ndarray, n: int) -> np.ndarray:
    """``values`` placed at ``positions`` (the last write wins), length ``n``."""
    out = np.zeros(n, dtype=values.dtype)
    out[positions] = values
    return out


def rows_from_output(comp: Any, layers: list[int], num_experts: int, tokens: int, where: str) -> np.ndarray:
    """GPU path: the MoE layers' rows from vLLM's ``CompletionOutput.routed_experts`` [tokens, all layers, k]."""
    arr = getattr(comp, "routed_experts", None)
    if arr is None or len(arr) == 0:
        raise RuntimeError(f"vLLM returned no routed_experts for {where} (engine built without "
                           "enable_return_routed_experts?)")
    arr = np.asarray(arr)[: tokens - 1, layers]
    if len(arr) != tokens - 1:
        raise RuntimeError(f"vLLM returned routed_experts for {len(arr)} tokens of {where}, expected {tokens - 1}")
    return compact(arr, num_experts)


def hf_moe_layers(cfg: Any) -> list[int]:
    """Decoder-layer indices with a sparse MoE block, from an HF config (Qwen2/3-MoE rules: every
    ``decoder_sparse_step``-th layer, minus ``mlp_only_layers``; DeepSeek's ``first_k_dense_replace``)."""
    step = getattr(cfg, "decoder_sparse_step", 1) or 1
    dense = set(getattr(cfg, "mlp_only_layers", None) or [])
    first = getattr(cfg, "first_k_dense_replace", 0) or 0
    return [i for i in range(cfg.num_hidden_layers) if i not in dense and i >= first and (i + 1) % step == 0]


# ---- binding inside the CPU worker --------------------------------------------------------------------------------
def moe_layers(model: torch.nn.Module) -> list[int]:
    """Decoder-layer indices of the vLLM model's MoE layers (the modules the capturer binds)."""
    from vllm.model_executor.layers.fused_moe.runner.moe_runner import MoERunner

    return sorted({m.layer_id for m in model.modules() if isinstance(m, MoERunner)})


def _install(runner: Any) -> None:
    """Bind a capturer to the freshly built model's routers and wrap the runner's forward to file the rows."""
    from vllm.model_executor.layers.fused_moe.routed_experts_capturer import (
        RoutedExpertsCapturer,
        bind_routed_experts_capturer,
    )

    cfg = runner.vllm_config
    capturer = RoutedExpertsCapturer(cfg.scheduler_config.max_num_batched_tokens, cfg)
    bind_routed_experts_capturer(runner.model, capturer)  # raises when the model has no supported router
    log = RoutingLog(capturer, moe_layers(runner.model), cfg.model_config.get_num_experts())
    original = runner._model_forward

    def model_forward(*args: Any, **kwargs: Any) -> Any:
        return log.record(runner, kwargs.get("input_ids"), kwargs["positions"],
                          lambda: original(*args, **kwargs))

    runner._model_forward = model_forward
    runner.longcot_routing = log


@contextlib.contextmanager
def bind_capture_on_load() -> Iterator[None]:
    """While a ``vllm.LLM`` is built inside this block, its CPU model runner binds the router capture right after
    loading the model: before warm-up and compilation, so compiled graphs include the capture call."""
    from vllm.v1.worker.cpu_model_runner import CPUModelRunner

    original = CPUModelRunner.load_model

    def load_model(self: Any, *args: Any, **kwargs: Any) -> Any:
        out = original(self, *args, **kwargs)
        _install(self)
        return out

    CPUModelRunner.load_model = load_model
    try:
        yield
    finally:
        CPUModelRunner.load_model = original


def _start_on_worker(worker: Any) -> bool:
    worker.model_runner.longcot_routing.start()
    return True


def _stop_on_worker(worker: Any) -> dict:
    return worker.model_runner.longcot_routing.stop()


def _layers_on_worker(worker: Any) -> tuple[list[int], int]:
    log = worker.model_runner.longcot_routing
    return log.layers, log.num_experts


@contextlib.contextmanager
def capturing(llm: Any) -> Iterator[dict]:
    """Record router rows during the block; afterwards the yielded dict maps (external request id, sample index)
    to that request's (positions, token ids, rows). In-process engines only (the rows are Python objects)."""
    result: dict = {}
    llm.collective_rpc(_start_on_worker)
    try:
        yield result
    finally:
        (captured,) = llm.collective_rpc(_stop_on_worker)
        result.update(captured)


def worker_layers(llm: Any) -> tuple[list[int], int]:
    """(MoE layer indices, number of experts) as the worker's capture sees them."""
    (out,) = llm.collective_rpc(_layers_on_worker)
    return out
