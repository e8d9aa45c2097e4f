"""Memory of a job from the model's config alone: parameters, trainer state, activations, engine KV cache.

Parameters are counted exactly by building the model on PyTorch's ``meta`` device (no memory, any architecture
transformers knows); everything else is arithmetic on the config, stated here so a reader can check it:

* trainer weights / gradients / optimizer: ``P * w``, ``P * w``, ``2 * P * s`` bytes (AdamW's two moments; ``w``
  the parameter dtype's bytes, ``s`` the optimizer state's: the same dtype as the parameters in PyTorch's AdamW),
  divided by the number of devices the trainer shards over (FSDP), 1 for an unsharded trainer;
* activations kept for backward, per token and layer, in the compute dtype (FlashAttention-style attention, which
  keeps no L x L matrix): attention ``2h + 2*q + 2*kv`` (norm output, q/k/v, attention output, residual; ``q`` =
  heads * head_dim, ``kv`` = kv_heads * head_dim), a dense MLP ``2h + 3i``, a MoE MLP ``h + E + k*(2h + 3i_e)``
  (router logits, and per routed expert its input, gate/up/act and output); plus the vocabulary logits in fp32
  and their log-softmax (``2 * V * 4`` bytes per token) unless they are computed in chunks. With activation
  checkpointing only each layer's input (``h`` per layer) is kept, plus one layer recomputed at a time;
* engine KV cache: ``2 * layers * kv_heads * head_dim * bytes`` per token (K and V), kv heads split over tensor
  parallel ranks; the room is ``memory * gpu_memory_utilization - weights / tp``.

These are estimates of what dominates, not a profiler: frameworks add buffers, fragmentation and temporary
copies (a 10-20% margin is prudent).
"""

from __future__ import annotations

from dataclasses import dataclass

GB = 1024**3
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2, "auto": 2}


@dataclass(frozen=True)
class ModelShape:
    """What the memory formulas need from a config (and the exact parameter counts)."""

    params: int
    active_params: int  # per token: shared weights plus top-k of the routed experts
    layers: int
    hidden: int
    q_dim: int  # heads * head_dim
    kv_dim: int  # kv_heads * head_dim
    kv_heads: int
    head_dim: int
    vocab: int
    intermediate: int  # dense MLP width (0 for a pure MoE)
    experts: int  # routed experts per MoE layer (0: dense)
    experts_per_token: int
    expert_intermediate: int
    moe_layers: int


def count_params(config) -> tuple[int, int]:
    """(total, expert) parameters of ``config`` (a transformers ``PretrainedConfig``), built on the meta device."""
    import torch
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    total = expert = 0
    for name, p in model.named_parameters():
        total += p.numel()
        if ".experts." in name:
            expert += p.numel()
    return total, expert


def shape_of(config) -> ModelShape:
    """A :class:`ModelShape` from a transformers config (Qwen2/Qwen3 dense, Qwen3-MoE and alike)."""
    total, expert = count_params(config)
    c = config.to_dict()
    heads = c["num_attention_heads"]
    head_dim = c.get("head_dim") or c["hidden_size"] // heads
    kv_heads = c.get("num_key_value_heads") or heads
    experts = int(c.get("num_experts") or c.get("num_local_experts") or 0)
    k = int(c.get("num_experts_per_tok") or 0)
    layers = c["num_hidden_layers"]
    step = int(c.get("decoder_sparse_step") or 1)
    skip = set(c.get("mlp_only_layers") or [])
    moe_layers = sum(1 for i in range(layers) if experts and i not in skip and (i + 1) % step == 0)
    active = total - (expert - expert * k // experts) if experts else total
    return ModelShape(params=total, active_params=active, layers=layers, hidden=c["hidden_size"],
                      q_dim=heads * head_dim, kv_dim=kv_heads * head_dim, kv_heads=kv_heads, head_dim=head_dim,
                      vocab=c["vocab_size"], intermediate=int(c.get("intermediate_size") or 0), experts=experts,
                      experts_per_token=k, expert_intermediate=int(c.get("moe_intermediate_size") or 0),
                      moe_layers=moe_layers)


def activation_bytes_per_token(s: ModelShape, dtype_bytes: int, checkpointing: bool = False,
                               chunked_logits: bool = False) -> float:
    """Bytes kept for backward per token of a micro-batch (see module docstring)."""
    attn = 2 * s.hidden + 2 * s.q_dim + 2 * s.kv_dim
    dense = 2 * s.hidden + 3 * s.intermediate
    moe = s.hidden + s.experts + s.experts_per_token * (2 * s.hidden + 3 * s.expert_intermediate)
    per_layer = [attn + (moe if i < s.moe_layers else dense) for i in range(s.layers)]
    layers = (s.layers * s.hidden + max(per_layer)) if checkpointing else sum(per_layer)
    logits = 0 if chunked_logits else 2 * s.vocab * 4 / dtype_bytes  # fp32 logits + log-softmax, in elements
    return (layers + logits) * dtype_bytes


@dataclass(frozen=True)
class TrainerMemory:
    weights: float
    gradients: float
    optimizer: float
    reference: float  # a frozen copy of the weights when a KL term needs the reference policy
    activations: float

    @property
    def total(self) -> float:
        return self.weights + self.gradients + self.optimizer + self.reference + self.activations


def trainer_memory(s: ModelShape, dtype_bytes: int, shards: int, micro_tokens: int, checkpointing: bool = False,
                   optimizer_bytes: int | None = None, reference: bool = False, master_bytes: int | None = None,
                   chunked_logits: bool = False) -> TrainerMemory:
    """Bytes per device of the trainer (weights, gradients, AdamW state and the reference copy sharded over
    ``shards``; activations of one micro-batch of ``micro_tokens`` tokens in ``dtype_bytes``, not sharded).
    ``master_bytes``: bytes per weight, gradient and moment when they differ from the activations' (longcot's
    learner keeps float32 master weights and AdamW state under bf16-mixed: 4)."""
    master = dtype_bytes if master_bytes is None else master_bytes
    opt = master if optimizer_bytes is None else optimizer_bytes
    weights = s.params * master / shards
    return TrainerMemory(weights=weights, gradients=weights, optimizer=2 * s.params * opt / shards,
                         reference=weights if reference else 0.0,
                         activations=micro_tokens * activation_bytes_per_token(s, dtype_bytes, checkpointing,
                                                                               chunked_logits))


@dataclass(frozen=True)
class EngineMemory:
    weights: float  # per device
    kv_bytes_per_token: float  # per device
    kv_room: float | None  # bytes per device left for the KV cache (None: device memory unknown)

    def kv_tokens(self) -> int | None:
        return None if self.kv_room is None else max(int(self.kv_room // self.kv_bytes_per_token), 0)


def engine_memory(s: ModelShape, dtype_bytes: int, tensor_parallel: int = 1, memory_bytes: float | None = None,
                  utilization: float = 0.9, kv_dtype_bytes: int | None = None) -> EngineMemory:
    """The rollout engine's share of a device: its weights and the KV cache that fits in the rest."""
    kv_heads = max(1, s.kv_heads // tensor_parallel)
    kv_bytes = 2 * s.layers * kv_heads * s.head_dim * (kv_dtype_bytes or dtype_bytes)
    weights = s.params * dtype_bytes / tensor_parallel
    room = None if memory_bytes is None else memory_bytes * utilization - weights
    return EngineMemory(weights=weights, kv_bytes_per_token=kv_bytes, kv_room=room)
