"""Optimizers by name (``rl.optimizer``, ``sft.optimizer``): AdamW, Muon, and Kimi K2's MuonClip.

* ``adamw``: ``torch.optim.AdamW`` (fused: one kernel for all parameters, 2-4x faster than the per-parameter loop
  on the tiny MoE on CPU).
* ``muon``: Muon (Jordan et al. 2024; Moonlight) for the hidden weight matrices, AdamW for the rest (embeddings,
  output head, norms, biases), as Muon's authors prescribe. The Muon update is torch 2.13's own
  (``torch.optim.Muon``'s functional form); an MoE's experts are stored stacked, [experts, out, in], and each
  expert's matrix is orthogonalised on its own, exactly as if it were a separate 2-D parameter.
  ``adjust_lr_fn="match_rms_adamw"`` (Moonlight) scales each matrix's step so its RMS matches AdamW's: the
  recipe's AdamW learning rate and weight decay carry over.
* ``muonclip``: ``muon`` plus QK-Clip (Kimi K2, tau = 100): the largest pre-softmax attention logit of each head
  is tracked over the forwards of a step, and after the step a head whose maximum exceeded tau has its query and
  key projections scaled so that the maximum becomes tau (:mod:`longcot.policies.qk_clip`).

Every optimizer is one ``torch.optim.Optimizer`` (param groups, state dict, schedulers, accelerate all work
unchanged); :func:`optimizer_metrics` reads what it logs per step.
"""

from __future__ import annotations

from typing import Any

import torch
from torch.optim._muon import DEFAULT_A, DEFAULT_B, DEFAULT_C, EPS, muon

from longcot.policies.qk_clip import QKClip
from longcot.registry import Registry, check_options

OPTIMIZERS: Registry = Registry("optimizer")


class MuonAdamW(torch.optim.AdamW):
    """Muon for the param groups marked ``muon=True`` (2-D matrices, or stacks of them along dim 0), AdamW for
    the others. An AdamW subclass, so the AdamW groups take torch's own (fused) AdamW step unchanged."""

    def __init__(self, muon_params: list[torch.Tensor], adamw_params: list[torch.Tensor], *, lr: float,
                 betas: tuple[float, float], weight_decay: float, momentum: float = 0.95, nesterov: bool = True,
                 ns_steps: int = 5, adjust_lr_fn: str = "match_rms_adamw", qk_clip: QKClip | None = None,
                 fused: bool | None = None):
        for p in muon_params:
            if p.ndim not in (2, 3):
                raise ValueError(f"Muon takes matrices (2-D) or stacks of them (3-D), got a {p.ndim}-D parameter")
        muon_group = {"params": muon_params, "muon": True, "momentum": momentum, "nesterov": nesterov,
                      "ns_steps": ns_steps, "adjust_lr_fn": adjust_lr_fn,
                      "ns_coefficients": (DEFAULT_A, DEFAULT_B, DEFAULT_C), "muon_eps": EPS}
        groups = [g for g in (muon_group, {"params": adamw_params, "muon": False}) if g["params"]]
        super().__init__(groups, lr=lr, betas=betas, weight_decay=weight_decay, fused=fused)
        self.qk_clip = qk_clip
        self.last_metrics: dict[str, float] = {}

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            if group["muon"]:
                self._muon_step(group)
        everything = self.param_groups
        self.param_groups = [g for g in everything if not g["muon"]]
        try:
            super().step()
        finally:
            self.param_groups = everything
        self.last_metrics = self.qk_clip.apply() if self.qk_clip is not None else {}
        return loss

    def _muon_step(self, group: dict) -> None:
        """torch's Muon update on every matrix of the group; a 3-D stack is updated matrix by matrix (views)."""
        params, grads, bufs = [], [], []
        for p in group["params"]:
            if p.grad is None:
                continue
            state = self.state[p]
            if "momentum_buffer" not in state:
                state["momentum_buffer"] = torch.zeros_like(p.grad, memory_format=torch.preserve_format)
                state["step"] = torch.tensor(0.0)  # AdamW's state loading expects a step in every entry
            state["step"] += 1
            buf = state["momentum_buffer"]
            if p.ndim == 2:
                params.append(p), grads.append(p.grad), bufs.append(buf)
            else:
                params += p.unbind(0)
                grads += p.grad.unbind(0)
                bufs += buf.unbind(0)
        if params:
            muon(params, grads, bufs, lr=group["lr"], weight_decay=group["weight_decay"], momentum=group["momentum"],
                 nesterov=group["nesterov"], ns_coefficients=group["ns_coefficients"], eps=group["muon_eps"],
                 ns_steps=group["ns_steps"], adjust_lr_fn=group["adjust_lr_fn"], has_complex=False)


def split_for_muon(model: torch.nn.Module) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """(Muon parameters, AdamW parameters): hidden matrices (2-D, and 3-D stacked experts) go to Muon; the input
    embedding and the output head (Muon's authors keep them on AdamW), vectors and scalars go to AdamW."""
    base = getattr(model, "module", model)
    skip = set()
    for get in ("get_input_embeddings", "get_output_embeddings"):
        mod = getattr(base, get, lambda: None)()
        if mod is not None:
            skip.add(id(mod.weight))
    muon_params, adamw_params = [], []
    for p in model.parameters():
        if not p.requires_grad:
            continue
        (muon_params if p.ndim in (2, 3) and id(p) not in skip else adamw_params).append(p)
    return muon_params, adamw_params


def _fused(params: list[torch.Tensor]) -> bool:
    return all(p.device.type in ("cpu", "cuda") and p.is_floating_point() for p in params)


@OPTIMIZERS.register("adamw")
def adamw(model: torch.nn.Module, *, lr: float, betas: tuple[float, float], weight_decay: float
          ) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    return torch.optim.AdamW(params, lr=lr, betas=betas, weight_decay=weight_decay, fused=_fused(params))


@OPTIMIZERS.register("muon")
def muon_adamw(model: torch.nn.Module, *, lr: float, betas: tuple[float, float], weight_decay: float,
               momentum: float = 0.95, nesterov: bool = True, ns_steps: int = 5,
               adjust_lr_fn: str = "match_rms_adamw") -> torch.optim.Optimizer:
    muon_params, adamw_params = split_for_muon(model)
    return MuonAdamW(muon_params, adamw_params, lr=lr, betas=betas, weight_decay=weight_decay, momentum=momentum,
                     nesterov=nesterov, ns_steps=ns_steps, adjust_lr_fn=adjust_lr_fn,
                     fused=_fused(adamw_params) if adamw_params else None)


@OPTIMIZERS.register("muonclip")
def muonclip(model: torch.nn.Module, *, lr: float, betas: tuple[float, float], weight_decay: float,
             momentum: float = 0.95, nesterov: bool = True, ns_steps: int = 5,
             adjust_lr_fn: str = "match_rms_adamw", qk_clip_tau: float = 100.0) -> torch.optim.Optimizer:
    opt = muon_adamw(model, lr=lr, betas=betas, weight_decay=weight_decay, momentum=momentum, nesterov=nesterov,
                     ns_steps=ns_steps, adjust_lr_fn=adjust_lr_fn)
    opt.qk_clip = QKClip(model, qk_clip_tau)
    return opt


def build_optimizer(model: torch.nn.Module, name: str, *, lr: float, betas: tuple[float, float] | list[float],
                    weight_decay: float, options: dict[str, Any] | None = None,
                    where: str = "optimizer") -> torch.optim.Optimizer:
    """The optimizer ``name`` over ``model``'s trainable parameters; ``options`` are its own keyword options
    (momentum, qk_clip_tau, ...), an unknown one fails with the closest valid key."""
    fn = OPTIMIZERS.get(name)
    options = dict(options or {})
    check_options(fn, options, where=f"{where}[{name}]")
    return fn(model, lr=lr, betas=tuple(betas), weight_decay=weight_decay, **options)


def optimizer_metrics(optimizer: Any) -> dict[str, float]:
    """What the last ``step()`` reports (MuonClip: the step's max attention logit and the heads it clipped)."""
    inner = getattr(optimizer, "optimizer", optimizer)  # accelerate wraps it
    return dict(getattr(inner, "last_metrics", {}) or {})
