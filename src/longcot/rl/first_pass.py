"""What the first forward over a step's batch measures: rollout/trainer mismatch, MoE routing, rejection counts.

The policy that sampled is the policy before the step's first update, so the first pass over each micro-batch
is where the trainer's log-probs (and its routers' choices) can be compared with the engine's. Each trainer
rank measures its own micro-batches and returns raw counts and samples (:meth:`FirstPass.finish`); rank 0
merges every rank's into the step's metrics (:meth:`FirstPass.merged`), so a maximum is the maximum over all
ranks and a fraction is over all their tokens, not an average of per-rank values.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from longcot.policies.moe import MoERouting, routing_metrics
from longcot.rl.batch import TokenBatch
from longcot.rl.rollout_correction import mismatch_metrics


class FirstPass:
    """One rank's first-pass measurements over one step."""

    def __init__(self) -> None:
        self.train: list[torch.Tensor] = []  # trainer log-probs of the live tokens
        self.rollout: list[torch.Tensor] = []  # the engine's log-probs of the same tokens
        self.rs: dict[str, float] = {}  # rejection fractions, weighted by the tokens they were taken over
        self.rs_tokens = 0.0
        self._measured: set[int] = set()  # micro-batches whose first pass was measured

    def has(self, c: TokenBatch) -> bool:
        """Whether :meth:`observe` has seen this micro-batch (the pass before the update measured it)."""
        return id(c) in self._measured

    def observe(self, c: TokenBatch, logp: torch.Tensor, p: Any, moe: MoERouting | None) -> None:
        """One micro-batch's first forward: mismatch samples, routing statistics, r2's replay ids."""
        self._measured.add(id(c))
        if c.rollout_logprobs is not None:
            live = c.mask > 0
            self.train.append(logp.detach()[live].cpu())
            self.rollout.append(c.rollout_logprobs[live].cpu())
        if p is not None and moe is not None:
            moe.observe(p, c.routing)
            if moe.mode == "r2":
                moe.keep_first_pass(c.routing, p)

    def rejected(self, metrics: dict[str, float], tokens: float) -> None:
        """A micro-batch's rollout-rejection fractions (``rejection_mask``) over its ``tokens`` live tokens."""
        for k, v in metrics.items():
            self.rs[k] = self.rs.get(k, 0.0) + v * tokens
        self.rs_tokens += tokens

    def finish(self, moe: MoERouting | None) -> dict:
        """This rank's raw measurements (picklable, for rank 0); resets the router statistics for the next step."""
        stats = None
        if moe is not None:
            stats = (moe.stats.agree.copy(), moe.stats.compared.copy(), moe.stats.load.copy())
            moe.reset_stats()
        cat = (lambda xs: torch.cat(xs) if xs else None)  # noqa: E731
        return {"train": cat(self.train), "rollout": cat(self.rollout), "moe": stats, "rs": self.rs,
                "rs_tokens": self.rs_tokens}

    @staticmethod
    def merged(parts: list[dict]) -> dict[str, float]:
        """The step's metrics from every rank's :meth:`finish`: ``logprob_gap`` and ``mismatch/*``,
        ``routing/*`` and ``moe/*``, ``rollout_rs/*``."""
        out: dict[str, float] = {}
        train = [p["train"] for p in parts if p["train"] is not None]
        if train:
            out.update(mismatch_metrics(torch.cat(train), torch.cat([p["rollout"] for p in parts
                                                                     if p["rollout"] is not None])))
        stats = [p["moe"] for p in parts if p["moe"] is not None]
        if stats:  # router statistics exist only for an MoE policy
            out.update(routing_metrics(*(np.sum([s[i] for s in stats], axis=0) for i in range(3))))
        tokens = sum(p["rs_tokens"] for p in parts)
        for k in {k for p in parts for k in p["rs"]}:
            out[k] = sum(p["rs"].get(k, 0.0) for p in parts) / max(tokens, 1.0)
        return out
