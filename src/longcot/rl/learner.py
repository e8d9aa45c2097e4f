"""The policy under training: model, optimizer, an optional frozen reference, and one update on a batch.

The learner knows no engine, prompt or reward: it receives scored trajectories with advantages and returns
metrics. That is the seam every runtime cuts at. The local runtime calls it in-process between rollouts; the
Ray runtime wraps it in a trainer actor; a multi-rank strategy runs one per rank. It also owns what a resume
must restore of the policy side: optimizer state, the policy version and the learning-rate schedule position.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator

from longcot.config import Recipe
from longcot.record import Trajectory
from longcot.rl.batch import TokenBatch, can_pack, collate, micro_batches, response_logprobs
from longcot.rl.losses import LOSSES, LossBatch, policy_loss
from longcot.rl.timing import StepTimer


class Learner:
    """One policy and its optimizer; :meth:`update` is a full optimizer step (or ``updates_per_step`` of them)."""

    def __init__(self, model: torch.nn.Module, tokenizer: Any, recipe: Recipe):
        self.recipe, self.rl = recipe, recipe.rl
        self.tokenizer = tokenizer
        self.accelerator = Accelerator(cpu=not torch.cuda.is_available())
        self.loss_fn = LOSSES.get(self.rl.loss.name)
        self.ref_model = None
        if self.rl.kl_coef:
            # The reference is the policy RL starts from; on resume it is rebuilt the same way (not stored).
            self.ref_model = copy.deepcopy(model).eval().requires_grad_(False).to(self.accelerator.device)
        self.model, self.optimizer = self.accelerator.prepare(model, self._new_optimizer(model))
        self.temperature = recipe.rollout.temperature
        self.version = 0  # policy version: bumped by every update that changed the weights
        self.updates = 0  # optimizer steps taken (the learning-rate warm-up position)

    def _new_optimizer(self, model) -> torch.optim.Optimizer:
        # fused: one kernel for all parameters instead of a Python loop over them (same update; 2-4x faster
        # on the tiny MoE on CPU, where the per-parameter loop was most of the optimizer's time)
        params = list(model.parameters())
        fused = all(p.device.type in ("cpu", "cuda") and p.is_floating_point() for p in params)
        return torch.optim.AdamW(params, lr=self.rl.lr, betas=tuple(self.rl.betas),
                                 weight_decay=self.rl.weight_decay, fused=fused)

    def lr_scale(self) -> float:
        """Linear warm-up over ``rl.warmup_steps`` optimizer steps (skipped updates do not count)."""
        w = self.rl.warmup_steps
        return min(1.0, (self.updates + 1) / w) if w else 1.0

    # ---- weights out ---------------------------------------------------------------------------------------
    def unwrapped(self) -> torch.nn.Module:
        return self.accelerator.unwrap_model(self.model)

    def named_parameters(self) -> Iterator[tuple[str, torch.Tensor]]:
        """What an engine's ``sync_weights`` takes (HF checkpoint names, wrapper prefixes stripped there)."""
        return self.unwrapped().named_parameters()

    def save_pretrained(self, path: str | Path) -> None:
        """HF-format weights + tokenizer (loadable by vLLM, transformers and ``longcot eval``)."""
        self.unwrapped().save_pretrained(path)
        self.tokenizer.save_pretrained(path)

    # ---- state for resume -----------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        """Everything of the policy side but the weights (saved in HF format beside it)."""
        return {"optimizer": self.optimizer.state_dict(), "version": self.version, "updates": self.updates}

    def load_state_dict(self, state: dict) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        self.version, self.updates = int(state["version"]), int(state["updates"])

    # ---- the update -----------------------------------------------------------------------------------------
    def batches(self, model, trajs: list[Trajectory]) -> list[tuple[list[Trajectory], TokenBatch]]:
        """Micro-batches for ``model`` as (trajectories, tensors on its device); the packed layout (index tensors
        and per-response masks) is built only when ``model`` can use it."""
        pack = can_pack(model)
        return [(chunk, collate(chunk, self.tokenizer.pad_token_id, pack=pack, temperature=self.temperature)
                 .to(self.accelerator.device))
                for chunk in micro_batches(model, trajs, self.rl.micro_batch_size)]

    def reference_logprobs(self, trajs: list[Trajectory]) -> list[list[float]]:
        """Per-token log-probs of each response under the frozen reference (KL in the reward)."""
        if self.ref_model is None:
            raise ValueError("reference_logprobs needs rl.kl_coef > 0 (no reference model was built)")
        out: dict[int, list[float]] = {}
        with torch.no_grad():
            for chunk, batch in self.batches(self.ref_model, trajs):
                lp = response_logprobs(self.ref_model, batch)[0]
                for t, row in zip(chunk, lp.tolist(), strict=True):
                    out[id(t)] = row[: len(t.response_ids)]
        return [out[id(t)] for t in trajs]

    def policy_logprobs(self, trajs: list[Trajectory]) -> list[list[float]]:
        """Per-token log-probs (temperature 1) of each response under the current weights: what a weight-sync
        check compares with the engine's own forward pass."""
        out: dict[int, list[float]] = {}
        model = self.unwrapped()
        with torch.no_grad():
            for chunk, batch in self.batches(model, trajs):
                lp = response_logprobs(model, batch, temperature=1.0)[0]
                for t, row in zip(chunk, lp.tolist(), strict=True):
                    out[id(t)] = row[: len(t.response_ids)]
        return [out[id(t)] for t in trajs]

    def update(self, trajs: list[Trajectory], timer: StepTimer | None = None) -> dict:
        """``updates_per_step`` optimizer steps over the batch; bumps :attr:`version` only if the weights changed.
        On-policy with one update, pi_old is the current policy, so its log-probs come from the same forward
        pass (no recompute)."""
        timer = timer or StepTimer()
        rl = self.rl
        live = [t for t in trajs if t.response_ids and any(t.mask())]
        if not live:  # nothing finished this step (partial rollouts) or nothing kept (dynamic sampling)
            return {"skipped_update": 1.0}
        chunks = [batch for _, batch in self.batches(self.model, live)]
        total_tokens = float(sum(c.mask.sum() for c in chunks))
        total_seqs = float(sum((c.mask.sum(-1) > 0).sum() for c in chunks))
        self._precompute(chunks, timer)
        if getattr(self.loss_fn, "reset_optimizer", False) or rl.reset_optimizer:
            self.optimizer.state.clear()  # k1.5: each iteration is a fresh mirror-descent problem
        sums: dict[str, float] = {}
        for update in range(rl.updates_per_step):
            with timer.phase("forward_backward"):
                for c in chunks:
                    m = self._micro_step(c, total_tokens, total_seqs, first=update == 0)
                    w = float(c.mask.sum()) / max(total_tokens, 1.0)
                    for k, v in m.items():
                        sums[k] = sums.get(k, 0.0) + v * w / rl.updates_per_step
            with timer.phase("optimizer"):
                grad_norm = self.accelerator.clip_grad_norm_(self.model.parameters(), rl.grad_clip)
                for g in self.optimizer.param_groups:
                    g["lr"] = rl.lr * self.lr_scale()
                self.optimizer.step()
                self.optimizer.zero_grad(set_to_none=True)
                self.updates += 1
        self.version += 1
        sums["grad_norm"] = float(grad_norm)
        sums["lr"] = rl.lr * self.lr_scale()
        return sums

    def _precompute(self, chunks: list[TokenBatch], timer: StepTimer) -> None:
        """pi_old (the engine's log-probs with ``rl.old_logprobs=engine``, else recomputed when there are several
        updates per batch) and reference log-probs (KL in the loss), once, before any update."""
        kl_in_loss = self.ref_model is not None and self.rl.kl_in == "loss"
        if self.rl.old_logprobs == "engine":
            for c in chunks:
                if c.rollout_logprobs is None:
                    raise ValueError("rl.old_logprobs=engine but the batch has no engine log-probs (the engine must "
                                     "return them on every step: SamplingConfig.logprobs)")
                c.old_logprobs = c.rollout_logprobs
        recompute_old = self.rl.updates_per_step > 1 and self.rl.old_logprobs == "trainer"
        if not recompute_old and not kl_in_loss:
            return
        with timer.phase("logprob_recompute"), torch.no_grad():
            for c in chunks:
                if recompute_old:
                    c.old_logprobs = response_logprobs(self.model, c)[0]
                if kl_in_loss:
                    c.ref_logprobs = response_logprobs(self.ref_model, c)[0]

    def _micro_step(self, c: TokenBatch, total_tokens: float, total_seqs: float, first: bool) -> dict:
        rl = self.rl
        logp, entropy = response_logprobs(self.model, c, with_entropy=True, entropy_grad=bool(rl.entropy_coef))
        old = c.old_logprobs if c.old_logprobs is not None else logp.detach()
        batch = LossBatch(logprobs=logp, old_logprobs=old, advantages=c.advantages, mask=c.mask,
                          ref_logprobs=c.ref_logprobs, rollout_logprobs=c.rollout_logprobs,
                          entropy=entropy if rl.entropy_coef else None,
                          total_tokens=total_tokens, total_seqs=total_seqs)
        loss, m = policy_loss(batch, rl.loss.name, rl.loss.options, agg=rl.aggregation,
                              max_len=self.recipe.rollout.max_tokens,
                              kl_coef=rl.kl_coef if rl.kl_in == "loss" else 0.0,
                              kl_estimator=rl.kl_estimator, entropy_coef=rl.entropy_coef, tis_cap=rl.tis_cap)
        self.accelerator.backward(loss)
        mask = c.mask
        n = mask.sum().clamp(min=1.0)
        m["entropy"] = float((entropy.detach() * mask).sum() / n)
        if first and c.rollout_logprobs is not None:  # the policy that sampled == the policy before the first update
            m["logprob_gap"] = float(((logp.detach() - c.rollout_logprobs).abs() * mask).sum() / n)
        return m
