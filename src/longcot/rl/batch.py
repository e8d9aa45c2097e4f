"""Trajectories -> micro-batches -> tensors, and per-token log-probs of a causal LM (the policy's forward).

Micro-batches are sized by a token budget (``rl.micro_batch_tokens``, and at most ``rl.micro_batch_size``
sequences): a long-CoT step mixes 200-token and 32k-token responses, and a sequence count that suits the first
runs out of memory on the second. A response longer than the budget is a micro-batch of its own.

Two layouts. Packed (the default where it is exact, :mod:`longcot.rl.packing`): a micro-batch keeps a prompt's
samples together and is laid out as ONE row with no padding, each distinct prompt once. Padded: micro-batches
of trajectories sorted by length, each padded to its own longest sequence; for models whose attention is not
sdpa through transformers' attention interface, or that need a 2D mask (router aux loss).

Log-probs: the model body runs to its final hidden states, and only the positions that predict a response token
go through the LM head, chunk by chunk (:mod:`longcot.rl.logprobs`), so no [tokens, vocabulary] tensor exists.
They come back in the response-aligned [B, T] layout, so nothing downstream depends on the layout.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, fields

import torch
from torch import nn

from longcot.policies.moe import RoutingLayout, packed_layout, padded_layout
from longcot.record import Trajectory
from longcot.rl.logprobs import token_logprobs
from longcot.rl.packing import (  # noqa: F401  (re-exported: the layout's public names)
    MASKED_ATTENTION_MAX_TOKENS,
    Packed,
    can_pack,
    float_masks,
    pack_trajectories,
    use_packed_attention,
)

log = logging.getLogger(__name__)

DEFAULT_LOGIT_CHUNK = 1024  # tokens per LM-head chunk when the caller does not say (rl.logit_chunk_tokens)


@dataclass
class TokenBatch:
    input_ids: torch.Tensor  # [B, L] prompt + response, right padded
    attention_mask: torch.Tensor  # [B, L]
    response_start: torch.Tensor  # [B] index of the first response token
    # Response-aligned tensors [B, T] (T = longest response in this micro-batch):
    mask: torch.Tensor
    advantages: torch.Tensor
    rollout_logprobs: torch.Tensor | None  # None when the step's engine returned none (SamplingConfig.logprobs)
    old_logprobs: torch.Tensor | None = None
    ref_logprobs: torch.Tensor | None = None
    packed: Packed | None = None  # the same sequences without padding, prompts shared (see module doc)
    # [B] the temperature each response was sampled at (Trajectory.temperature, else the collate default)
    temperatures: torch.Tensor | None = None
    # MoE: where each token sits in the forward that will run (packed row or padded rows), with the engine's
    # expert ids per row for routing replay (longcot.policies.moe); None unless collate(routing=True)
    routing: RoutingLayout | None = None

    @property
    def response_len(self) -> int:
        return self.mask.shape[1]

    def to(self, device: torch.device | str) -> TokenBatch:
        """The same batch on ``device`` (collation happens on the CPU; the model may live on a GPU)."""
        moved = {f.name: getattr(self, f.name) for f in fields(self)}
        return TokenBatch(**{k: v.to(device) if v is not None else None for k, v in moved.items()})


def collate(trajs: list[Trajectory], pad_id: int, pack: bool = True, temperature: float = 1.0,
            routing: bool = False) -> TokenBatch:
    """Pad a list of trajectories into a :class:`TokenBatch` (advantage broadcast per token if scalar);
    with ``pack``, also lay it out without padding (:func:`pack_trajectories`). ``temperature`` is the
    sampling temperature of trajectories that do not record their own. ``routing``: attach the MoE routing
    layout of whichever layout the batch will run in (packed when there is one, else padded)."""
    lengths = [len(t.prompt_ids) + len(t.response_ids) for t in trajs]
    L, T = max(lengths), max(max(len(t.response_ids) for t in trajs), 1)
    B = len(trajs)
    input_ids = torch.full((B, L), pad_id, dtype=torch.long)
    attn = torch.zeros((B, L), dtype=torch.long)
    mask = torch.zeros((B, T))
    adv = torch.zeros((B, T))
    roll = torch.zeros((B, T))
    start = torch.zeros(B, dtype=torch.long)
    for i, t in enumerate(trajs):
        p, r = len(t.prompt_ids), len(t.response_ids)
        input_ids[i, : p + r] = torch.tensor(t.prompt_ids + t.response_ids, dtype=torch.long)
        attn[i, : p + r] = 1
        start[i] = p
        if r:
            mask[i, :r] = torch.tensor(t.mask(), dtype=torch.float)
            a = t.advantage
            adv[i, :r] = torch.tensor(a, dtype=torch.float) if isinstance(a, list) else float(a)
            if t.rollout_logprobs:
                roll[i, :r] = torch.tensor(t.rollout_logprobs[:r], dtype=torch.float)
    packed = pack_trajectories(trajs, T) if pack else None
    temps = torch.tensor([temperature if t.temperature is None else t.temperature for t in trajs])
    layout = None
    if routing:
        layout = padded_layout(trajs, L, T) if packed is None else packed_layout(
            trajs, torch.tensor(packed.trajectory_spans, dtype=torch.long).reshape(-1, 4), packed.input_ids.shape[1], T)
    return TokenBatch(input_ids, attn, start, mask, adv, roll if _has_rollout_logprobs(trajs) else None,
                      packed=packed, temperatures=temps, routing=layout)


def _has_rollout_logprobs(trajs: list[Trajectory]) -> bool:
    """Whether the batch carries engine log-probs: all responses or none (a mix would feed zeros as log-probs
    to the trajectories without them)."""
    have = [bool(t.rollout_logprobs) for t in trajs if t.response_ids]
    if any(have) and not all(have):
        missing = next(t.prompt_id for t in trajs if t.response_ids and not t.rollout_logprobs)
        raise ValueError(f"collate: {sum(have)} of {len(have)} responses have rollout log-probs, {missing!r} has "
                         "none; an engine must return them for every response of a step or for none")
    return any(have)


def filler_batch(pad_id: int, pack: bool) -> TokenBatch:
    """A one-token micro-batch that trains nothing (its mask is all zero): what a rank with fewer micro-batches
    than the others runs, because every sharded forward and every gradient reduction is collective."""
    t = Trajectory("filler", "filler", [pad_id], [pad_id], [], loss_mask=[0])
    return collate([t], pad_id, pack=pack)


# ---- the forward ----------------------------------------------------------------------------------------------
def response_logprobs(model, b: TokenBatch, with_entropy: bool = False, temperature: float | None = None,
                      entropy_grad: bool = True,
                      chunk_tokens: int = DEFAULT_LOGIT_CHUNK) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Log-probs [B, T] of each response token under the causal LM ``model`` (and the entropy of each
    position; 0 past a response's end).

    Logits are divided by the sampling temperature of each response (``b.temperatures``, or ``temperature``
    for all rows when given): the engine reports log-probs of the distribution it sampled from, and the
    policy gradient is taken through that same distribution. A temperature of 0 (greedy) counts as 1.

    Only the hidden states that predict a response token reach the LM head, ``chunk_tokens`` at a time
    (module doc). With ``entropy_grad=False`` the entropy comes back without an autograd graph (a metric,
    not a loss term). Models whose head is more than a linear layer take the full-logits path.
    """
    B, T = b.mask.shape
    rows, ks = _response_positions(b)
    temps = _row_temperatures(b, temperature)
    token_temps = temps.to(b.mask.device)[rows] if temps is not None else None
    head = _linear_head(model)
    if head is None:
        return _full_logits_logprobs(model, b, rows, ks, token_temps, with_entropy, entropy_grad)
    hidden, targets = _response_hidden(model, b, rows, ks)
    logp_flat, ent_flat = token_logprobs(hidden, head.weight, head.bias, targets, token_temps, chunk=chunk_tokens,
                                         with_entropy=with_entropy, entropy_grad=entropy_grad)
    return _to_grid(logp_flat, rows, ks, B, T) * (b.mask > 0), _to_grid(ent_flat, rows, ks, B, T)


def _response_positions(b: TokenBatch) -> tuple[torch.Tensor, torch.Tensor]:
    """(row, k) of every response token of the batch, in row-major order."""
    resp_len = b.attention_mask.sum(1) - b.response_start
    valid = torch.arange(b.mask.shape[1], device=b.mask.device)[None, :] < resp_len[:, None]
    rows, ks = valid.nonzero(as_tuple=True)
    return rows, ks


def _response_hidden(model, b: TokenBatch, rows: torch.Tensor, ks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The body's final hidden states [M, d] at the positions predicting each response token, and the targets."""
    body = model.get_decoder()
    pk = b.packed
    if pk is not None and can_pack(model):
        use_packed_attention(model)
        # The layout carries its own attention structure. A 4D placeholder mask makes transformers skip building
        # one: from the row's restarting position ids it would infer packed sequences and build an N x N mask.
        placeholder = torch.ones(1, 1, 1, 1, dtype=torch.bool, device=pk.input_ids.device)
        dtype = _compute_dtype(model)
        out = body(input_ids=pk.input_ids, position_ids=pk.position_ids, attention_mask=placeholder, use_cache=False,
                   longcot_packed=float_masks(pk, dtype))
        flat = pk.logit_index[rows, ks]
        return out.last_hidden_state[0, flat], pk.targets[rows, ks]
    out = body(input_ids=b.input_ids, attention_mask=b.attention_mask, use_cache=False)
    pos = b.response_start[rows] - 1 + ks  # position j predicts token j+1
    return out.last_hidden_state[rows, pos], b.input_ids[rows, pos + 1]


def _full_logits_logprobs(model, b: TokenBatch, rows, ks, token_temps, with_entropy: bool, entropy_grad: bool):
    """The plain path for heads that are not one linear layer (logit soft-capping, scaling): the model's own
    logits, then the same per-token arithmetic."""
    B, T = b.mask.shape
    out = model(input_ids=b.input_ids, attention_mask=b.attention_mask, use_cache=False)
    logits = out.logits[rows, b.response_start[rows] - 1 + ks].float()
    if token_temps is not None:
        logits = logits / token_temps.to(logits)[:, None]
    logp_all = torch.log_softmax(logits, dim=-1)
    targets = b.input_ids[rows, b.response_start[rows] + ks]
    logp = logp_all.gather(-1, targets[:, None]).squeeze(-1)
    ent = None
    if with_entropy:
        with torch.set_grad_enabled(entropy_grad and torch.is_grad_enabled()):
            ent = -(logp_all.exp() * logp_all).sum(-1)
    return _to_grid(logp, rows, ks, B, T) * (b.mask > 0), _to_grid(ent, rows, ks, B, T)


_SPECIAL_HEAD_KEYS = ("final_logit_softcapping", "logit_scale", "logits_scaling", "output_multiplier_scale")


def _linear_head(model) -> nn.Linear | None:
    """The LM head when the logits are exactly ``head(body(x))``; None for heads with extra arithmetic."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    cfg = getattr(model, "config", None)
    special = [k for k in _SPECIAL_HEAD_KEYS if getattr(cfg, k, None) not in (None, 1, 1.0)]
    if not isinstance(head, nn.Linear) or not hasattr(model, "get_decoder") or special:
        if not getattr(model, "_longcot_full_logits_logged", False):
            log.warning("%s: the LM head is not a plain linear layer (%s): log-probs from full logits, unchunked",
                        type(model).__name__, special or type(head).__name__)
            model._longcot_full_logits_logged = True
        return None
    return head


def _compute_dtype(model) -> torch.dtype:
    """The dtype attention runs in: the autocast dtype inside an autocast region (bf16-mixed), else the
    parameters' (FSDP's mixed precision casts parameters themselves, and reports that dtype)."""
    device = next(model.parameters()).device
    if torch.is_autocast_enabled(device.type):
        return torch.get_autocast_dtype(device.type)
    return next(model.parameters()).dtype


def _to_grid(flat: torch.Tensor | None, rows: torch.Tensor, ks: torch.Tensor, B: int, T: int) -> torch.Tensor | None:
    """[M] values at (rows, ks) -> a [B, T] tensor, 0 elsewhere (differentiable)."""
    if flat is None:
        return None
    return flat.new_zeros(B, T).index_put((rows, ks), flat)


def _row_temperatures(b: TokenBatch, temperature: float | None) -> torch.Tensor | None:
    """[B] divisors for the logits, or None when every row is at temperature 1 (no division at all)."""
    if temperature is not None:
        temps = torch.full((b.mask.shape[0],), float(temperature))
    elif b.temperatures is not None:
        temps = b.temperatures.float()
    else:
        return None
    temps = torch.where(temps > 0, temps, torch.ones_like(temps))
    return None if bool((temps == 1).all()) else temps


class Scorer(nn.Module):
    """A causal LM whose forward is :func:`response_logprobs`: the module DDP and FSDP wrap, so the whole
    forward, LM head included, runs inside the wrapper's hooks (FSDP gathers the head's weight for it)."""

    def __init__(self, lm: nn.Module, chunk_tokens: int = DEFAULT_LOGIT_CHUNK):
        super().__init__()
        self.lm = lm
        self.chunk_tokens = chunk_tokens

    def forward(self, b: TokenBatch, with_entropy: bool = False, temperature: float | None = None,
                entropy_grad: bool = True) -> tuple[torch.Tensor, torch.Tensor | None]:
        return response_logprobs(self.lm, b, with_entropy=with_entropy, temperature=temperature,
                                 entropy_grad=entropy_grad, chunk_tokens=self.chunk_tokens)


# ---- micro-batches --------------------------------------------------------------------------------------------
def group_ordered_chunks(trajs: list[Trajectory], size: int) -> list[list[Trajectory]]:
    """Micro-batches of ``size`` with the samples of one prompt next to each other, for the packed layout
    (a prompt is stored once per micro-batch that holds its samples)."""
    order = sorted(range(len(trajs)), key=lambda i: (trajs[i].group_id, i))
    return [[trajs[i] for i in order[k : k + size]] for k in range(0, len(order), size)]


def length_sorted_chunks(trajs: list[Trajectory], size: int) -> list[list[Trajectory]]:
    """Split into micro-batches of ``size``, grouping similar lengths to minimise padding."""
    order = sorted(trajs, key=lambda t: len(t.prompt_ids) + len(t.response_ids))
    return [order[i : i + size] for i in range(0, len(order), size)]


def micro_batches(trajs: list[Trajectory], max_seqs: int, max_tokens: int = 0,
                  pack: bool = True) -> list[list[Trajectory]]:
    """The trainer's micro-batches: at most ``max_seqs`` sequences and (if ``max_tokens`` > 0) at most
    ``max_tokens`` tokens each, as the forward will see them (:func:`batch_tokens`); a sequence longer than
    the budget is a micro-batch of its own. Group-ordered for the packed layout, length-sorted for padding."""
    if not max_tokens or not trajs:
        return group_ordered_chunks(trajs, max_seqs) if pack else length_sorted_chunks(trajs, max_seqs)
    order = group_ordered_chunks(trajs, len(trajs))[0] if pack else length_sorted_chunks(trajs, len(trajs))[0]
    chunks: list[list[Trajectory]] = []
    for t in order:
        if chunks and len(chunks[-1]) < max_seqs and batch_tokens([*chunks[-1], t], pack) <= max_tokens:
            chunks[-1].append(t)
        else:
            chunks.append([t])
    return chunks


def batch_tokens(trajs: list[Trajectory], pack: bool) -> int:
    """Tokens a forward over ``trajs`` processes: each distinct prompt once plus every response (packed), or
    rows x the longest sequence (padded)."""
    if pack:
        return sum(len(p) for p in {tuple(t.prompt_ids) for t in trajs}) + sum(len(t.response_ids) for t in trajs)
    return len(trajs) * max((len(t.prompt_ids) + len(t.response_ids) for t in trajs), default=0)


def assign_to_ranks(costs: list[int], world: int) -> list[list[int]]:
    """Micro-batch indices per rank, costliest first to the least-loaded rank that has fewer than
    ceil(len(costs) / world); each rank's list in the original order. (Every rank then runs ceil(...) micro-batches,
    filled up with empty ones, so the ranks' collectives stay in step: the cap keeps the filling minimal.)"""
    per_rank = -(-len(costs) // world) if costs else 0
    loads, out = [0] * world, [[] for _ in range(world)]
    for i in sorted(range(len(costs)), key=lambda i: (-costs[i], i)):
        r = min((r for r in range(world) if len(out[r]) < per_rank), key=lambda r: (loads[r], r))
        out[r].append(i)
        loads[r] += costs[i]
    return [sorted(ids) for ids in out]
