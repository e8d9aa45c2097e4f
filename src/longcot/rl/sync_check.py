"""The weight-sync canary: after a sync, the engine and the trainer must score the same tokens alike.

A weight sync can fail with no error: vLLM 0.32's fused-MoE layers kept stale packed experts after a reload
(rollout/weight_sync.py), and a wrong name mapping or a dtype cast would look the same from the outside:
the run goes on, sampling from one policy and training another. Every ``rollout.sync_check_every`` steps the
trainer asks the engine for its own log-probs of a few of this step's responses (its forward pass, at
temperature 1) and compares them with the learner's under the weights it just published. The gap is logged;
above ``rollout.sync_check_max_gap`` (mean absolute log-prob difference) the run stops, since every later
step would train on the wrong samples.
"""

from __future__ import annotations

import logging
from typing import Any

from longcot.record import Trajectory

log = logging.getLogger(__name__)
SAMPLES = 4  # responses checked per canary: enough to catch a broken layer, cheap next to a step


class WeightSyncError(RuntimeError):
    """The engine's policy no longer matches the trainer's after a weight sync."""


def check_weight_sync(engine: Any, learner: Any, trajs: list[Trajectory], max_gap: float) -> dict[str, float]:
    """``sync_check/gap_mean`` and ``gap_max`` over the policy's own tokens (loss mask 1) of up to
    :data:`SAMPLES` responses; raises :class:`WeightSyncError` when the mean gap exceeds ``max_gap``. Engines
    without ``compute_logprobs`` are not checked (a warning says so once)."""
    if not hasattr(engine, "compute_logprobs"):
        if not getattr(engine, "_longcot_warned_no_sync_check", False):
            log.warning("rollout.sync_check_every is set but engine %s has no compute_logprobs: weight syncs are "
                        "not checked", type(engine).__name__)
            engine._longcot_warned_no_sync_check = True
        return {}
    live = [t for t in trajs if t.prompt_ids and any(t.mask())][:SAMPLES]
    if not live:
        return {}
    engine_lp = engine.compute_logprobs([t.prompt_ids for t in live], [t.response_ids for t in live])
    trainer_lp = learner.policy_logprobs(live, free_routing=True)  # the engine's forward routes freely too
    # only the tokens the policy wrote: the learner gives no log-prob to masked ones (an agent's observations,
    # a tool's output), which the engine still scores
    gaps = token_gaps(engine_lp, trainer_lp, [t.mask() for t in live])
    out = gap_row(gaps)
    if out["sync_check/gap_mean"] > max_gap:
        raise WeightSyncError(
            f"weight sync check failed at policy version {learner.version}: the engine's log-probs differ from the "
            f"trainer's by {out['sync_check/gap_mean']:.3g} on average (max {out['sync_check/gap_max']:.3g}) over "
            f"{len(gaps)} tokens, above rollout.sync_check_max_gap={max_gap}. The engine is not sampling from the "
            "policy being trained; see docs/rollout.md 'Weight sync'.")
    return out


def token_gaps(engine_lp: list[list[float]], trainer_lp: list[list[float]],
               masks: list[list[int]] | None = None) -> list[float]:
    """The absolute log-prob gap of every token whose mask is 1 (all when ``masks`` is None), of the same responses
    scored by the engine and by the trainer: the one gap rule of the local canary and the Ray workers' checks."""
    masks = masks or [[1] * len(e) for e in engine_lp]
    return [abs(a - b) for e, tr, mask in zip(engine_lp, trainer_lp, masks, strict=True)
            for a, b, m in zip(e, tr, mask, strict=True) if m]


def gap_row(gaps: list[float]) -> dict[str, float]:
    """The canary's metrics from :func:`token_gaps` (non-empty)."""
    return {"sync_check/gap_mean": sum(gaps) / len(gaps), "sync_check/gap_max": max(gaps)}
