"""Trainer memory per rank, from a model config: what fits where (docs/training.md "What fits where").

:func:`training_memory` adds up, in bytes per rank:

- states: float32 master weights (4P), float32 gradients (4P) and AdamW's two moments (8P) = 16P, divided over
  the ranks by fsdp; ddp adds its gradient buckets (4P);
- compute copies: bf16-mixed keeps a bf16 copy of each weight for the forward and backward (2P; autocast's cast
  cache) for single/ddp; fsdp instead gathers one decoder layer at a time (plus the next, prefetched) and keeps
  the root unit (embeddings, LM head, final norm) gathered from forward to backward, with unsharded float32
  gradients of one layer and of the root while they are reduced;
- activations of one micro-batch of T tokens: without checkpointing every layer keeps A(shape) values per token
  for backward (:func:`layer_activations`), plus the backward's working set; with ``rl.gradient_checkpointing``
  only each layer's input (d per token) is kept and one layer's activations are rebuilt at a time;
- the LM head: ``rl.logit_chunk_tokens`` x vocabulary float32 logits, a few times (logits, probabilities,
  gradient), or T x vocabulary without chunking.

The per-token activation count is an explicit sum over a decoder layer's saved tensors (attention projections,
norms, rotary outputs, the MLP's or the routed experts' intermediates). The backward working set (in layers'
worth of activations) is calibrated on the tiny MoE (benchmarks/trainer_memory.py, float32, CPU RSS): with the
constants below the estimate matches the measured step peaks within tests/rl/test_memory.py's bound. On a GPU
add the CUDA context (~0.5-1 GiB) and the caching allocator's slack; a colocated vLLM engine's weights and KV
cache come on top unless it sleeps during the update (longcot.rollout.colocate).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

GIB = 2**30
# Backward working set, in one decoder layer's activations (benchmarks/trainer_memory.py, tiny MoE, CPU, 4k-32k
# tokens): without checkpointing backward frees saved values as fast as it makes gradients (measured 0.03-0.06);
# with it, the layer being recomputed plus its gradients' transients (measured 1.11-1.18).
BACKWARD_LAYERS = {False: 0.1, True: 1.2}
HEAD_COPIES = 3  # logits, probabilities (log-softmax / entropy), their gradient: float32 chunk x vocab each


@dataclass(frozen=True)
class Shape:
    """The numbers of a decoder-only transformer that memory depends on."""

    layers: int
    hidden: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    intermediate: int  # dense MLP width (layers without experts)
    experts: int = 0  # routed experts per MoE layer (0: dense)
    top_k: int = 0
    moe_intermediate: int = 0
    moe_layers: int = 0  # layers whose MLP is the routed experts
    tied_embeddings: bool = False
    qkv_bias: bool = False
    qk_norm: bool = False

    @classmethod
    def of(cls, config: Any) -> Shape:
        """From a transformers config (object or ``config.json`` dict): Qwen2/Qwen3 dense and Qwen3-MoE style."""
        c = config if isinstance(config, dict) else config.to_dict()
        heads = c["num_attention_heads"]
        layers = c["num_hidden_layers"]
        experts = c.get("num_experts") or c.get("num_local_experts") or 0
        sparse_step = c.get("decoder_sparse_step", 1) or 1
        dense_only = set(c.get("mlp_only_layers") or [])
        moe_layers = sum(1 for i in range(layers) if experts and i not in dense_only and (i + 1) % sparse_step == 0)
        model_type = c.get("model_type", "")
        return cls(layers=layers, hidden=c["hidden_size"], heads=heads,
                   kv_heads=c.get("num_key_value_heads") or heads,
                   head_dim=c.get("head_dim") or c["hidden_size"] // heads, vocab=c["vocab_size"],
                   intermediate=c.get("intermediate_size", 0), experts=experts,
                   top_k=c.get("num_experts_per_tok", 0) if experts else 0,
                   moe_intermediate=c.get("moe_intermediate_size", 0) if experts else 0, moe_layers=moe_layers,
                   tied_embeddings=bool(c.get("tie_word_embeddings", False)),
                   qkv_bias=model_type == "qwen2" or bool(c.get("attention_bias", False)),
                   qk_norm=model_type.startswith("qwen3"))


def parameter_counts(shape: Shape) -> tuple[int, int]:
    """(all parameters, parameters a token passes through: the routed experts counted top_k times, not E)."""
    s = shape
    q, kv = s.heads * s.head_dim, s.kv_heads * s.head_dim
    attn = s.hidden * (q + 2 * kv) + q * s.hidden + (q + 2 * kv if s.qkv_bias else 0) \
        + (2 * s.head_dim if s.qk_norm else 0) + 2 * s.hidden  # projections, biases, q/k norms, 2 layer norms
    dense_mlp = 3 * s.hidden * s.intermediate
    expert = 3 * s.hidden * s.moe_intermediate
    router = s.experts * s.hidden
    dense_layers = s.layers - s.moe_layers
    embed = s.vocab * s.hidden * (1 if s.tied_embeddings else 2) + s.hidden  # + final norm
    total = embed + s.layers * attn + dense_layers * dense_mlp + s.moe_layers * (router + s.experts * expert)
    active = embed + s.layers * attn + dense_layers * dense_mlp + s.moe_layers * (router + s.top_k * expert)
    return total, active


def layer_activations(shape: Shape) -> int:
    """Values one decoder layer keeps per token for backward: norms (in, out; twice), q/k/v, their norms and
    rotary outputs, attention output, o_proj output and the residual; then the MLP's gate, up, activation,
    product and output, or for routed experts the router logits and probabilities and, per chosen expert, its
    input copy, gate+up, activation, product, output and weighted output."""
    s = shape
    q, kv = s.heads * s.head_dim, s.kv_heads * s.head_dim
    attn = 6 * s.hidden + 4 * q + 4 * kv
    dense = 4 * s.intermediate + s.hidden
    moe = 2 * s.experts + s.top_k * (3 * s.hidden + 4 * s.moe_intermediate) + s.hidden
    frac_moe = s.moe_layers / s.layers if s.layers else 0.0
    return int(attn + frac_moe * moe + (1 - frac_moe) * dense)


@dataclass
class MemoryEstimate:
    """Bytes per rank, by part."""

    states: float
    compute_copies: float
    activations: float
    lm_head: float
    params: int
    active_params: int

    @property
    def total(self) -> float:
        return self.states + self.compute_copies + self.activations + self.lm_head

    def gib(self) -> dict[str, float]:
        out = {k: round(v / GIB, 2) for k, v in asdict(self).items() if k not in ("params", "active_params")}
        out["total"] = round(self.total / GIB, 2)
        return out


def training_memory(config: Any, *, strategy: str = "single", ranks: int = 1, precision: str = "bf16-mixed",
                    micro_batch_tokens: int = 16384, gradient_checkpointing: bool = False,
                    logit_chunk_tokens: int = 1024) -> MemoryEstimate:
    """Peak trainer memory per rank for one micro-batch of ``micro_batch_tokens`` tokens (module doc)."""
    if strategy not in ("single", "ddp", "fsdp") or precision not in ("fp32", "bf16-mixed"):
        raise ValueError(f"strategy must be single|ddp|fsdp and precision fp32|bf16-mixed, got {strategy}, "
                         f"{precision}")
    shape = Shape.of(config)
    P, active = parameter_counts(shape)
    act_bytes = 2 if precision == "bf16-mixed" else 4
    T = micro_batch_tokens
    states = 16.0 * P / (ranks if strategy == "fsdp" else 1) + (4.0 * P if strategy == "ddp" else 0.0)
    if strategy == "fsdp":
        root = shape.vocab * shape.hidden * (1 if shape.tied_embeddings else 2)
        layer = (P - root) / shape.layers
        compute = act_bytes * (root + 2 * layer) + 4.0 * (root + layer)  # gathered units + their unsharded grads
    else:
        compute = 2.0 * P if precision == "bf16-mixed" else 0.0
    per_layer = layer_activations(shape) * act_bytes * T
    if gradient_checkpointing:
        activations = shape.layers * shape.hidden * act_bytes * T + BACKWARD_LAYERS[True] * per_layer
    else:
        activations = shape.layers * per_layer + BACKWARD_LAYERS[False] * per_layer
    head_tokens = min(T, logit_chunk_tokens) if logit_chunk_tokens else T
    lm_head = HEAD_COPIES * 4.0 * head_tokens * shape.vocab + shape.hidden * act_bytes * T  # + gathered hidden
    return MemoryEstimate(states, compute, activations, lm_head, P, active)
