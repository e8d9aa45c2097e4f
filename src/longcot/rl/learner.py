"""The policy under training: model, optimizer, an optional frozen reference, and one update on a batch.

The learner knows no engine, prompt or reward: it receives scored trajectories with advantages and returns
metrics. That is the seam every runtime cuts at. The local runtime calls it between rollouts (in-process with
``trainer.strategy=single``; through :mod:`longcot.rl.remote` with ddp/fsdp); the Ray runtime wraps it in a
trainer actor. It also owns what a resume must restore of the policy side: optimizer state, the policy version
and the learning-rate schedule position.

One learner runs on every trainer rank (``trainer.ranks``, ``trainer.strategy``: docs/training.md). Rank 0's is
the one the RL loop calls; each public method that touches the model is an *op* that rank 0 sends to the
followers (:mod:`longcot.rl.ranks`) and that every rank then runs the same way (``_op_*``): rank 0 plans the
micro-batches by a token budget and gives each rank its share, in equal counts, so the ranks' collectives
stay in step. A rank's life, whoever starts it, is :func:`longcot.rl.remote.rank_main`.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch.utils._pytree import tree_map_only

from longcot.config import Recipe
from longcot.errors import RunStoppedError
from longcot.policies.moe import MoERouting
from longcot.policies.optimizers import build_optimizer, optimizer_metrics
from longcot.record import Trajectory, carries_signal
from longcot.rl.batch import (
    Scorer,
    TokenBatch,
    assign_to_ranks,
    can_pack,
    collate,
    filler_batch,
    micro_batches,
)
from longcot.rl.first_pass import FirstPass
from longcot.rl.losses import LOSSES, LossBatch, policy_loss, zero_advantage_skip_blocker
from longcot.rl.ranks import RankGroup
from longcot.rl.rollout_correction import rejection_mask
from longcot.rl.strategy import make_strategy, resolve_device, resolve_precision
from longcot.rl.timing import StepTimer

log = logging.getLogger(__name__)
NONFINITE_LIMIT = 3  # updates in a row with only non-finite gradients before the run stops


class NonFiniteGradientError(RunStoppedError):
    """Every optimizer step of several updates in a row had a NaN or infinite gradient."""


class Learner:
    """One policy and its optimizer; :meth:`update` is a full optimizer step (or ``updates_per_step`` of them).

    ``group``: this process's place among the ranks (:func:`~longcot.rl.ranks.init_rank_group`); None for
    ``trainer.strategy=single``. ddp/fsdp from the driver: :func:`longcot.rl.remote.make_learner` starts the ranks.
    """

    def __init__(self, model: torch.nn.Module, tokenizer: Any, recipe: Recipe, group: RankGroup | None = None):
        self.recipe, self.rl, self.cfg = recipe, recipe.rl, recipe.trainer
        self.tokenizer = tokenizer
        self.pad_id = int(getattr(tokenizer, "pad_token_id", None) or 0)
        self.loss_fn = LOSSES.get(self.rl.loss.name)
        self.temperature = recipe.rollout.temperature
        # policy version: bumped by every update (also one whose optimizer steps were all dropped for a non-finite
        # gradient: the engines then load the same weights again)
        self.version = 0
        self.updates = 0  # optimizer steps taken (the learning-rate warm-up position)
        self.nonfinite_streak = 0  # updates in a row whose every optimizer step was dropped (non-finite gradient)
        self._in_flight: str | None = None  # the op the ranks are running (close() must not talk over it)
        if group is None and self.cfg.strategy != "single":
            raise ValueError(f"trainer.strategy={self.cfg.strategy} needs its ranks: build the learner with "
                             "longcot.rl.remote.make_learner (starts them) or pass group=init_rank_group(...)")
        self.group = group if group is not None else RankGroup()
        self._build(model)
        if self.group.rank == 0:
            why_not = zero_advantage_skip_blocker(self.rl)
            log.info("learner: strategy=%s ranks=%d device=%s precision=%s layout=%s zero-advantage skip=%s",
                     self.strategy.name, self.group.world_size, self.device, self.precision,
                     "packed" if self.pack else "padded", f"off ({why_not})" if why_not else "on")

    def _build(self, model: torch.nn.Module) -> None:
        """Device, precision, strategy; the policy, its reference and optimizer placed on this rank."""
        self.device = resolve_device(self.cfg.device, self.group.local_rank)
        self.precision = resolve_precision(self.cfg.precision, self.device)
        self.strategy = make_strategy(self.cfg.strategy, self.group, self.device, self.precision)
        low = {p.dtype for p in model.parameters() if p.is_floating_point() and p.dtype != torch.float32}
        if low and self.group.rank == 0:
            log.info("learner: %s parameters upcast to float32 master weights (compute: %s)", low, self.precision)
        model.float()  # master weights in float32 whatever the checkpoint's dtype (docs/training.md)
        ref = copy.deepcopy(model).eval().requires_grad_(False) if self.rl.kl_coef else None
        # MoE: routing replay, router statistics, aux loss (hooks on the policy's routers; the reference has none)
        self.moe = MoERouting.for_model(model, self.rl.routing_replay, self.rl.router_aux_coef)
        self._gaps: list[tuple[torch.Tensor, torch.Tensor]] = []  # (trainer, engine) log-probs of the first pass
        if self.rl.gradient_checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.train()  # HF gradient checkpointing acts in train mode only; Qwen configs have no dropout
        self.scorer = Scorer(model, self.rl.logit_chunk_tokens)
        self.model = self.strategy.wrap(self.scorer)
        # The reference is the policy RL starts from; on resume it is rebuilt the same way (not stored).
        self.ref_model = self.strategy.wrap(Scorer(ref, self.rl.logit_chunk_tokens), frozen=True) if ref else None
        self.optimizer = self._new_optimizer()
        self.pack = can_pack(model)

    def _new_optimizer(self) -> torch.optim.Optimizer:
        """``rl.optimizer`` (adamw | muon | muonclip; policies/optimizers.py) over the policy's parameters: the HF
        module's, which are the wrapped model's own (ddp), or their shards once fsdp has wrapped it."""
        return build_optimizer(self.scorer.lm, self.rl.optimizer, lr=self.rl.lr, betas=self.rl.betas,
                               weight_decay=self.rl.weight_decay, options=self.rl.optimizer_options,
                               where="rl.optimizer")

    def lr_scale(self) -> float:
        """Linear warm-up over ``rl.warmup_steps`` optimizer steps (skipped updates do not count)."""
        w = self.rl.warmup_steps
        return min(1.0, (self.updates + 1) / w) if w else 1.0

    # ---- weights out ---------------------------------------------------------------------------------------
    def unwrapped(self) -> torch.nn.Module:
        """The HF module under training (for its config and for hooks; under fsdp its parameters are shards:
        read weights through :meth:`named_parameters`)."""
        return self.scorer.lm

    def named_parameters(self) -> Iterator[tuple[str, torch.Tensor]]:
        """What an engine's ``sync_weights`` takes: ``(HF name, full tensor)`` lazily, one parameter at a time
        (under fsdp each is gathered from the shards as the engine asks for it: never the whole model twice)."""
        if not (self.strategy.gathers_parameters and self.group.world_size > 1):
            yield from self.strategy.full_parameters(self.scorer.lm)
            return
        self._begin("publish", [None] * self.group.world_size)
        params = self.strategy.full_parameters(self.scorer.lm)
        try:
            yield from params
        finally:
            for _ in params:  # a consumer that stopped early: the followers still gather every parameter
                pass
            self._end(None)

    def save_pretrained(self, path: str | Path) -> None:
        """HF-format weights + tokenizer (loadable by vLLM, transformers and ``longcot eval``)."""
        if self.strategy.gathers_parameters:
            state = self._run("model_state", [None] * self.group.world_size)[0]
            self.scorer.lm.save_pretrained(path, state_dict=state)
        else:
            self.scorer.lm.save_pretrained(path)
        if self.tokenizer is not None:
            self.tokenizer.save_pretrained(path)

    # ---- state for resume -----------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        """Everything of the policy side but the weights (saved in HF format beside it). The optimizer state is
        the full one, keyed by parameter name, gathered on rank 0 for every strategy (strategy module doc)."""
        optimizer = self._run("optimizer_state", [None] * self.group.world_size)[0]
        return {"optimizer": optimizer, "version": self.version, "updates": self.updates,
                "strategy": self.strategy.name}

    def load_state_dict(self, state: dict) -> None:
        counters = {"version": int(state["version"]), "updates": int(state["updates"])}
        self._run("load_state", [(state["optimizer"], counters)] + [(None, counters)] * (self.group.world_size - 1))

    def load_weights(self, path: str | Path) -> None:
        """Load HF-format weights saved by :meth:`save_pretrained` into the policy in place, on every rank (the
        optimizer binding and the reference built from the starting policy stay as they are): what a resumed
        run trains from (longcot.run.checkpoint).

        Through ``from_pretrained``, not the safetensors files: transformers stores some modules in another
        layout on disk than in memory (Qwen3-MoE experts are fused in memory, per expert on disk) and converts
        on load. Rank 0 reads the checkpoint on the CPU; the strategy copies it into every rank's parameters
        (broadcast; each rank keeps only its shard under fsdp)."""
        loaded = type(self.scorer.lm).from_pretrained(str(path), dtype=torch.float32)
        state = loaded.state_dict()
        del loaded
        self._run("load_weights", [state] + [None] * (self.group.world_size - 1))

    # ---- log-probs without an update ------------------------------------------------------------------------
    def reference_logprobs(self, trajs: list[Trajectory]) -> list[list[float]]:
        """Per-token log-probs of each response under the frozen reference (KL in the reward)."""
        if self.ref_model is None:
            raise ValueError("reference_logprobs needs rl.kl_coef > 0 (no reference model was built)")
        return self._logprobs(trajs, "reference", None)

    def policy_logprobs(self, trajs: list[Trajectory], free_routing: bool = False) -> list[list[float]]:
        """Per-token log-probs (temperature 1) of each response under the current weights. ``free_routing``: an MoE
        routes by its own top-k instead of replaying the engine's experts (rl.routing_replay): what the weight-sync
        check compares with the engine's own forward pass, which routes freely too (and needs no routing rows)."""
        return self._logprobs(trajs, "policy, free routing" if free_routing else "policy", 1.0)

    def _logprobs(self, trajs: list[Trajectory], which: str, temperature: float | None) -> list[list[float]]:
        planned = self._plan(trajs)
        shares = self._shares([b for _, b in planned])
        results = self._run("logprobs", [(which, temperature, share) for share, _ in shares])
        out: dict[int, list[float]] = {}
        for (_, ids), rows in zip(shares, results, strict=True):
            for i, lp in zip(ids, rows, strict=True):  # fillers return nothing
                for t, row in zip(planned[i][0], lp.tolist(), strict=True):
                    out[id(t)] = row[: len(t.response_ids)]
        return [out[id(t)] for t in trajs]

    def _op_logprobs(self, payload: tuple, timer: StepTimer) -> list[torch.Tensor]:
        which, temperature, share = payload
        model = self.ref_model if which == "reference" else self.model
        rows = []
        with torch.no_grad():
            for b, filler in share:
                b = b.to(self.device)
                with self._routing(b, first=True, filler=filler or which != "policy"):  # others route freely
                    lp = self._forward(model, b, temperature=temperature)[0]
                if not filler:
                    rows.append(lp.cpu())
        self.strategy.after_forward_only(model)
        return rows

    # ---- the update -----------------------------------------------------------------------------------------
    def update(self, trajs: list[Trajectory], timer: StepTimer | None = None) -> dict:
        """``updates_per_step`` optimizer steps over the batch; bumps :attr:`version` only if the weights changed.
        On-policy with one update, pi_old is the current policy, so its log-probs come from the same forward
        pass (no recompute)."""
        timer = timer or StepTimer()
        live = [t for t in trajs if t.response_ids and any(t.mask())]
        if not live:  # nothing finished this step (partial rollouts) or nothing kept (dynamic sampling)
            return {"skipped_update": 1.0}
        # the loss denominators count every live sample, trained or not: skipping changes the cost, not the step
        tokens = [sum(t.mask()) for t in live]
        keep = [carries_signal(t) for t in live] if self.skips_zero_advantage else [True] * len(live)
        if not any(keep):  # all zero: still one (momentum-only) optimizer step, as without skipping
            keep = [True] * len(live)
        trained = [t for t, k in zip(live, keep, strict=True) if k]
        totals = (float(sum(tokens)), float(len(live)))
        trained_share = sum(n for n, k in zip(tokens, keep, strict=True) if k) / totals[0]  # metrics: trained tokens
        batches = [b for _, b in self._plan(trained)]
        results = self._run("update", [(part, totals, trained_share) for part, _ in self._shares(batches)], timer)
        observed = [part.pop("_first_pass") for part in results]
        sums: dict[str, float] = {}
        for part in results:  # each rank's token-weighted sums: their sum is the step's mean
            for k, v in part.items():
                sums[k] = sums.get(k, 0.0) + v
        sums["grad_norm"] = results[0]["grad_norm"]  # the same global norm on every rank
        sums["nonfinite_grad_skips"] = results[0]["nonfinite_grad_skips"]  # and so the same skips
        self._check_finite(sums)
        sums["lr"] = self.rl.lr * self.lr_scale()
        sums.update(optimizer_metrics(self.optimizer))  # MuonClip: max attention logit of the last step
        sums.update(FirstPass.merged(observed))
        sums["zero_advantage_skipped_frac"] = 1.0 - len(trained) / len(live)
        return sums

    def _check_finite(self, sums: dict[str, float]) -> None:
        """Warn at an optimizer step dropped for a NaN/inf gradient; stop when no step of the last
        :data:`NONFINITE_LIMIT` updates had a finite one (the weights are fine, the objective is not)."""
        skipped = int(sums["nonfinite_grad_skips"])
        if not skipped:
            self.nonfinite_streak = 0
            return
        log.warning("policy version %d: %d of %d optimizer steps dropped: the gradient norm was %s (loss %s)",
                    self.version, skipped, self.rl.updates_per_step, sums["grad_norm"], sums.get("loss"))
        self.nonfinite_streak = self.nonfinite_streak + 1 if skipped == self.rl.updates_per_step else 0
        if self.nonfinite_streak >= NONFINITE_LIMIT:
            raise NonFiniteGradientError(
                f"{NONFINITE_LIMIT} updates in a row had non-finite gradients (norm {sums['grad_norm']}, loss "
                f"{sums.get('loss')}): the weights were not touched, but training cannot go on. Look for an "
                "overflow: rl.lr, trainer.precision, a loss option; reward values are checked (a NaN reward is a "
                "reward error). --resume retries from the last training state with the same settings; to change "
                "them, start a new run from its weights: model.path=runs/<name>/states/step-N/policy "
                "sft.enabled=false")

    @property
    def skips_zero_advantage(self) -> bool:
        """``rl.skip_zero_advantage`` as it applies to this recipe (:func:`.losses.zero_advantage_skip_blocker`)."""
        return zero_advantage_skip_blocker(self.rl) is None

    def _op_update(self, payload: tuple, timer: StepTimer) -> dict:
        share, totals, trained_share = payload
        rl = self.rl
        chunks = [(b.to(self.device), filler) for b, filler in share]
        seen = FirstPass()
        self._precompute(chunks, timer, seen)
        if rl.rollout_correction.rollout_rs is not None:  # dropped tokens leave the loss denominators
            totals = self._kept_totals(chunks)
        total_tokens, total_seqs = totals
        if getattr(self.loss_fn, "reset_optimizer", False) or rl.reset_optimizer:
            self.optimizer.state.clear()  # k1.5: each iteration is a fresh mirror-descent problem
        sums: dict[str, float] = {}
        skipped = 0
        for update in range(rl.updates_per_step):
            with timer.phase("forward_backward"):
                for i, (c, filler) in enumerate(chunks):
                    with self.strategy.grad_sync(self.model, sync=i == len(chunks) - 1):
                        loss, m = self._micro_step(c, filler, total_tokens, total_seqs, update == 0, seen)
                    w = float(c.mask.sum()) / max(total_tokens * trained_share, 1.0)
                    for k, v in m.items():
                        sums[k] = sums.get(k, 0.0) + v * w / rl.updates_per_step
                    # each micro-batch's loss is already its share of the step's (whole-step denominators)
                    sums["loss"] = sums.get("loss", 0.0) + loss / rl.updates_per_step
            with timer.phase("optimizer"):
                grad_norm = self.strategy.clip_grad_norm(self.model, rl.grad_clip)
                if math.isfinite(grad_norm):  # every rank sees the same global norm, so all skip together
                    for g in self.optimizer.param_groups:
                        g["lr"] = rl.lr * self.lr_scale()
                    self.optimizer.step()
                    self.updates += 1
                else:  # one NaN/inf gradient would make every weight (and Adam's moments) NaN: drop the step
                    skipped += 1
                self.optimizer.zero_grad(set_to_none=True)
        self.version += 1
        sums["grad_norm"] = grad_norm
        sums["nonfinite_grad_skips"] = float(skipped)
        sums["_first_pass"] = seen.finish(self.moe)  # raw counts: rank 0 merges every rank's (FirstPass.merged)
        return sums

    def _precompute(self, chunks: list[tuple[TokenBatch, bool]], timer: StepTimer, seen: FirstPass) -> None:
        """pi_old and reference log-probs (KL in the loss), once, before any update. pi_old is the engine's
        log-probs with ``rl.old_logprobs=engine``; else the trainer's, recomputed here when there are several
        updates per batch. A rollout rejection mask needs the trainer's log-probs too, and must drop tokens before
        the loss denominators are counted."""
        kl_in_loss = self.ref_model is not None and self.rl.kl_in == "loss"
        corr = self.rl.rollout_correction
        engine_old = self.rl.old_logprobs == "engine"
        if engine_old:
            for c, filler in chunks:
                if filler:
                    continue
                if c.rollout_logprobs is None:
                    raise ValueError("rl.old_logprobs=engine but the batch has no engine log-probs (the engine must "
                                     "return them on every step: SamplingConfig.logprobs)")
                c.old_logprobs = c.rollout_logprobs
        need_trainer = (self.rl.updates_per_step > 1 and not engine_old) or corr.rollout_rs is not None
        if not need_trainer and not kl_in_loss:
            return
        with timer.phase("logprob_recompute"), torch.no_grad():
            for c, filler in chunks:
                if need_trainer:
                    with self._routing(c, first=True, filler=filler) as p:
                        lp = self._forward(self.model, c)[0]
                    if not engine_old:
                        c.old_logprobs = lp
                    if not filler:
                        seen.observe(c, lp, p, self.moe)
                    if corr.rollout_rs is not None and not filler:
                        self._reject(c, lp, seen)
                if kl_in_loss:
                    c.ref_logprobs = self._forward(self.ref_model, c)[0]

    def _reject(self, c: TokenBatch, trainer_logprobs: torch.Tensor, seen: FirstPass) -> None:
        """Rollout rejection (masked IS / geometric-mean masking): drop tokens from the loss and its denominator."""
        corr = self.rl.rollout_correction
        if c.rollout_logprobs is None:
            raise ValueError("rl.rollout_correction.rollout_rs needs the engine's log-probs on every step")
        keep, m = rejection_mask(trainer_logprobs, c.rollout_logprobs, c.mask, corr.rollout_rs,
                                 corr.rollout_rs_threshold, corr.rollout_rs_threshold_lower)
        seen.rejected(m, float(c.mask.sum()))
        c.mask = c.mask * keep

    def _kept_totals(self, chunks: list[tuple[TokenBatch, bool]]) -> tuple[float, float]:
        """The step's loss denominators (tokens, sequences) after rejection, summed over the ranks."""
        local = torch.tensor([[float(c.mask.sum()), float((c.mask.sum(-1) > 0).sum())] for c, f in chunks if not f]
                             or [[0.0, 0.0]], dtype=torch.float64).sum(0)
        if self.group.world_size > 1:
            torch.distributed.all_reduce(local, group=self.group.control)
        return float(local[0]), float(local[1])

    def _routing(self, c: TokenBatch, first: bool, record: bool = False, filler: bool = False):
        """The MoE hooks for one forward over ``c`` (replay per rl.routing_replay); a no-op for a dense model and
        for a filler micro-batch (it routes by the model's own top-k and trains nothing)."""
        if self.moe is None or filler or c.routing is None:
            return contextlib.nullcontext()
        return self.moe.forward(self.moe.replay_ids(c.routing, first), record=record or first)

    def _forward(self, model, c: TokenBatch, **kwargs) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Every forward of the policy or the reference goes through here: response log-probs (and entropy)
        in the strategy's compute precision (MoE hooks: :meth:`_routing` around it)."""
        with self.strategy.autocast():
            return model(c, **kwargs)

    def _micro_step(self, c: TokenBatch, filler: bool, total_tokens: float, total_seqs: float,
                    first: bool, seen: FirstPass) -> tuple[float, dict]:
        """Forward and backward of one micro-batch: (its loss, its metrics as micro-batch means)."""
        rl = self.rl
        with self._routing(c, first, record=bool(rl.router_aux_coef), filler=filler) as p:
            logp, entropy = self._forward(self.model, c, with_entropy=True, entropy_grad=bool(rl.entropy_coef))
        if filler:  # a rank's extra micro-batch (equal counts): the collectives run, the gradient is exactly 0
            (logp.sum() * 0.0).backward()
            return 0.0, {}
        if first and not seen.has(c):  # the first pass (not measured by _precompute)
            seen.observe(c, logp, p, self.moe)
        old = c.old_logprobs if c.old_logprobs is not None else logp.detach()
        batch = LossBatch(logprobs=logp, old_logprobs=old, advantages=c.advantages, mask=c.mask,
                          ref_logprobs=c.ref_logprobs, rollout_logprobs=c.rollout_logprobs,
                          entropy=entropy if rl.entropy_coef else None,
                          total_tokens=total_tokens, total_seqs=total_seqs)
        loss, m = policy_loss(batch, rl.loss.name, rl.loss.options, agg=rl.aggregation,
                              max_len=self.recipe.rollout.max_tokens,
                              kl_coef=rl.kl_coef if rl.kl_in == "loss" else 0.0,
                              kl_estimator=rl.kl_estimator, entropy_coef=rl.entropy_coef,
                              tis_cap=rl.rollout_correction.tis_cap)
        if rl.router_aux_coef:
            aux = self.moe.aux_loss(p, c.routing)
            loss = loss + rl.router_aux_coef * aux * float(c.mask.sum()) / max(total_tokens, 1.0)
            m["router_aux_loss"] = float(aux.detach())
        loss.backward()
        m["entropy"] = float((entropy.detach() * c.mask).sum() / c.mask.sum().clamp(min=1.0))
        return float(loss.detach()), m

    # ---- planning (rank 0) ----------------------------------------------------------------------------------
    def _plan(self, trajs: list[Trajectory]) -> list[tuple[list[Trajectory], TokenBatch]]:
        """Token-budgeted micro-batches as (trajectories, tensors on the CPU)."""
        chunks = micro_batches(trajs, self.rl.micro_batch_size, self.rl.micro_batch_tokens, pack=self.pack)
        return [(chunk, collate(chunk, self.pad_id, pack=self.pack, temperature=self.temperature,
                                routing=self.moe is not None)) for chunk in chunks]

    def _shares(self, batches: list[TokenBatch]) -> list[tuple[list[tuple[TokenBatch, bool]], list[int]]]:
        """Per rank: its micro-batches (balanced by tokens), filled up to the same count with
        :func:`filler_batch` entries, and their indices into ``batches``."""
        world = self.group.world_size
        costs = [int(b.mask.shape[0] * b.input_ids.shape[1]) if b.packed is None else b.packed.input_ids.shape[1]
                 for b in batches]
        per_rank = assign_to_ranks(costs, world)
        count = max(len(ids) for ids in per_rank)
        return [([(batches[i], False) for i in ids] + [(filler_batch(self.pad_id, self.pack), True)]
                 * (count - len(ids)), ids) for ids in per_rank]

    # ---- ops: rank 0 leads, every rank runs -----------------------------------------------------------------
    def _run(self, op: str, payloads: list[Any], timer: StepTimer | None = None) -> list[Any]:
        """Run ``_op_<op>`` on every rank (rank 0 gets ``payloads[0]``); returns every rank's result."""
        mine = self._begin(op, payloads)
        return self._end(getattr(self, f"_op_{op}")(mine, timer or StepTimer()))

    def _begin(self, op: str, payloads: list[Any]) -> Any:
        if self.group.world_size == 1:
            return payloads[0]
        self._in_flight = op
        try:
            return self.group.send(op, payloads)
        except Exception as e:
            raise self._rank_failure(op) from e

    def _end(self, result: Any) -> list[Any]:
        if self.group.world_size == 1:
            return [result]
        try:
            results = self.group.gather(result)
        except Exception as e:
            raise self._rank_failure(self._in_flight) from e
        self._in_flight = None
        return results

    def _rank_failure(self, op: str | None) -> RuntimeError:
        return RuntimeError(f"trainer op {op!r} failed across the ranks (a follower failed or left; its own "
                            "traceback is in the launcher's report)")

    def _op_publish(self, payload: None, timer: StepTimer) -> None:
        for _ in self.strategy.full_parameters(self.scorer.lm):  # followers: take part in each gather
            pass

    def _op_model_state(self, payload: None, timer: StepTimer) -> dict:
        state = self.strategy.model_state_dict(self.scorer)
        return state if self.group.rank == 0 else None

    def _op_optimizer_state(self, payload: None, timer: StepTimer) -> dict | None:
        state = self.strategy.optimizer_state_dict(self.scorer, self.optimizer)
        if self.group.rank != 0 or state is None:
            return None
        # a snapshot: the helpers may return the live state tensors, which the next step updates in place
        return tree_map_only(torch.Tensor, lambda t: t.detach().clone(), state)

    def _op_load_weights(self, payload: dict | None, timer: StepTimer) -> None:
        self.strategy.load_model_state_dict(self.scorer, payload)

    def _op_load_state(self, payload: tuple, timer: StepTimer) -> None:
        optimizer_state, counters = payload
        if optimizer_state is not None:  # the loader may adopt these tensors as the live state: never the caller's
            optimizer_state = tree_map_only(torch.Tensor, lambda t: t.detach().clone(), optimizer_state)
        self.strategy.load_optimizer_state_dict(self.scorer, self.optimizer, optimizer_state)
        self.version, self.updates = counters["version"], counters["updates"]

    def serve(self) -> None:
        """A follower's loop: run rank 0's ops until it says stop."""
        while True:
            op, payload = self.group.receive()
            if op == "stop":
                return
            self.group.gather(getattr(self, f"_op_{op}")(payload, StepTimer()))

    def close(self) -> None:
        """Rank 0: tell the followers to stop (not while an op is in flight: after an error, whoever started
        the ranks stops them by signal). Safe to call twice."""
        if self.group.rank == 0 and self.group.world_size > 1 and self._in_flight is None:
            with contextlib.suppress(Exception):
                self.group.send("stop", [None] * self.group.world_size)
            self._in_flight = "stop"
