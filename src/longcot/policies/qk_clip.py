"""QK-Clip (Kimi K2): cap the pre-softmax attention logits by rescaling query and key weights after a step.

Muon lets attention logits grow until training diverges (K2 report, section 2.1). QK-Clip watches, for every
head h, the largest logit S_h = max_{i, j} q_i . k_j * scale over the forwards of an optimizer step; after the step
a head with S_h > tau gets gamma_h = tau / S_h folded into its weights, so the same inputs give a maximum of tau.
Heads below tau are untouched; no forward is changed. K2 uses tau = 100.

Where gamma goes depends on where the logit's scale lives:

* no QK-norm (Llama, Qwen2-MoE): the query rows of head h are scaled by gamma_h / sqrt(gamma_g) and the key rows
  of its key/value head g by sqrt(gamma_g), gamma_g = min over the query heads sharing g (grouped-query
  attention). Each head's logits are scaled by exactly gamma_h; with one query head per key head this is K2's
  sqrt(gamma) on both sides.
* QK-norm (Qwen3, Qwen3-MoE): an RMSNorm follows the projections, so scaling W_q or W_k changes nothing. The scale
  lives in the norms' gains, which all heads of a layer share: the layer's q_norm and k_norm gains are scaled by
  sqrt(min_h gamma_h), which caps the layer's largest head at tau and scales its other heads by the same factor
  (per-head clipping needs per-head parameters, which this architecture does not have).

The maximum is computed by a forward hook on each attention module that recomputes the queries and keys (no
gradient) and takes the max over the pairs the attention really uses: the packed layout's per-prompt and
per-response blocks (``longcot.rl.batch``), the 4-D mask transformers passes, or causal. This costs the q/k
projections and one logit matrix per layer per forward (small next to the layer for the tiny MoE; a fused kernel
that returns the row maxima is what a large model would use instead).
"""

from __future__ import annotations

import math
import sys

import torch


def _attention_modules(model: torch.nn.Module) -> list[torch.nn.Module]:
    base = getattr(model, "module", model)
    layers = getattr(getattr(base, "model", None), "layers", None)
    if layers is None:
        raise ValueError(f"QK-Clip: cannot find the decoder layers of {type(base).__name__} (model.model.layers)")
    return [layer.self_attn for layer in layers]


def _heads(attn: torch.nn.Module) -> tuple[int, int, int]:
    """(query heads, key/value heads, head dim) of an HF attention module."""
    d = attn.head_dim
    return attn.q_proj.out_features // d, attn.k_proj.out_features // d, d


def queries_keys(attn: torch.nn.Module, hidden: torch.Tensor, position_embeddings: tuple) -> tuple:
    """The attention's queries [B, H, S, D] and keys [B, H_kv, S, D] as its forward computes them (projection,
    QK-norm when present, rotary embedding)."""
    B, S, _ = hidden.shape
    H, Hkv, D = _heads(attn)
    q = attn.q_proj(hidden).view(B, S, H, D)
    k = attn.k_proj(hidden).view(B, S, Hkv, D)
    if hasattr(attn, "q_norm"):
        q, k = attn.q_norm(q), attn.k_norm(k)
    q, k = q.transpose(1, 2), k.transpose(1, 2)
    rope = sys.modules[type(attn).__module__].apply_rotary_pos_emb
    cos, sin = position_embeddings
    return rope(q, k, cos, sin)


def _allowed(mask: torch.Tensor) -> torch.Tensor:
    """A boolean "may attend" mask [..., Lq, Lk] from a boolean or an additive float mask, restricted to real
    query rows: a real query attends its own key (at Lk - Lq + row), a padding row does not (the packed layout's
    padding rows and a padded batch's pad tokens see real keys, but their outputs are never used)."""
    allowed = mask if mask.dtype == torch.bool else mask == 0
    lq, lk = allowed.shape[-2:]
    own = torch.diagonal(allowed[..., lk - lq :], dim1=-2, dim2=-1)  # [..., Lq]
    return allowed & own.unsqueeze(-1)


def max_logits(attn: torch.nn.Module, hidden: torch.Tensor, kwargs: dict) -> torch.Tensor:
    """[H] the largest logit of each query head over the pairs this forward attends."""
    q, k = queries_keys(attn, hidden, kwargs["position_embeddings"])
    H, Hkv = q.shape[1], k.shape[1]
    k = k.repeat_interleave(H // Hkv, 1)
    scale = attn.scaling
    packed = kwargs.get("longcot_packed")
    if packed is not None:  # one row: per-prompt blocks and per-response (prompt + own tokens) blocks
        q0, k0 = q[0].transpose(0, 1), k[0].transpose(0, 1)  # [N, H, D]
        out = torch.full((H,), -math.inf, device=q.device)
        for qi, ki, mask in ((packed.prompt_index, packed.prompt_index, packed.prompt_mask),
                             (packed.query_index, packed.context_index, packed.context_mask)):
            logits = torch.einsum("bqhd,bkhd->bhqk", q0[qi], k0[ki]) * scale
            logits = logits.masked_fill(~_allowed(mask).expand_as(logits), -math.inf)
            out = torch.maximum(out, logits.amax(dim=(0, 2, 3)))
        return out
    logits = torch.einsum("bhqd,bhkd->bhqk", q, k) * scale
    mask = kwargs.get("attention_mask")
    S = logits.shape[-1]
    allowed = _allowed(torch.ones(S, S, dtype=torch.bool, device=q.device).tril() if mask is None else mask)
    logits = logits.masked_fill(~allowed.expand_as(logits), -math.inf)
    return logits.amax(dim=(0, 2, 3))


class QKClip:
    """Tracks each head's max attention logit over the forwards of a step; :meth:`apply` clips after the step."""

    def __init__(self, model: torch.nn.Module, tau: float = 100.0):
        if tau <= 0:
            raise ValueError(f"qk_clip_tau must be > 0, got {tau}")
        self.tau = tau
        self.attn = _attention_modules(model)
        self.max = [None] * len(self.attn)
        self._handles = [a.register_forward_hook(self._hook(i), with_kwargs=True) for i, a in enumerate(self.attn)]

    def _hook(self, layer: int):
        def hook(module: torch.nn.Module, args: tuple, kwargs: dict, output) -> None:
            hidden = kwargs.get("hidden_states", args[0] if args else None)
            with torch.no_grad():
                m = max_logits(module, hidden, kwargs).float()
            self.max[layer] = m if self.max[layer] is None else torch.maximum(self.max[layer], m)

        return hook

    def remove(self) -> None:
        for h in self._handles:
            h.remove()

    @torch.no_grad()
    def apply(self) -> dict[str, float]:
        """Clip every head whose max logit since the last call exceeded tau; return the step's max logit (before
        clipping) and the number of heads clipped. Resets the tracking."""
        seen = [m for m in self.max if m is not None]
        if not seen:
            return {}
        clipped = 0
        for attn, m in zip(self.attn, self.max, strict=True):
            if m is None:
                continue
            gamma = torch.clamp(self.tau / m.clamp(min=1e-12), max=1.0)
            if bool((gamma < 1).any()):
                clipped += int((gamma < 1).sum())
                rescale(attn, gamma)
        top = float(torch.stack([m.max() for m in seen]).max())
        self.max = [None] * len(self.attn)
        return {"qk_clip/max_logit": top, "qk_clip/clipped_heads": float(clipped)}


def rescale(attn: torch.nn.Module, gamma: torch.Tensor) -> None:
    """Scale head h's logits by ``gamma[h]`` (<= 1): per head through W_q/W_k, or per layer through QK-norm
    gains (see the module doc)."""
    H, Hkv, D = _heads(attn)
    if hasattr(attn, "q_norm"):
        s = math.sqrt(float(gamma.min()))
        attn.q_norm.weight.mul_(s)
        attn.k_norm.weight.mul_(s)
        return
    group = gamma.view(Hkv, H // Hkv).amin(1)  # [Hkv]
    q_scale = (gamma / group.repeat_interleave(H // Hkv).sqrt()).repeat_interleave(D)
    k_scale = group.sqrt().repeat_interleave(D)
    for proj, scale in ((attn.q_proj, q_scale), (attn.k_proj, k_scale)):
        proj.weight.mul_(scale.to(proj.weight.dtype)[:, None])
        if proj.bias is not None:
            proj.bias.mul_(scale.to(proj.bias.dtype))
