"""Trajectories -> padded tensors, and per-token log-probs of a causal LM.

Two layouts. Padded: micro-batches of trajectories sorted by length, so a batch pads to the length of its
own longest sequence, not the step's.

Packed (the default where it is exact): micro-batches keep a prompt's samples together and are laid out
as ONE row with no padding: each distinct prompt once, followed by its responses, with per-response position
ids. Every per-token layer (projections, experts, norms: nearly all of the compute) runs on exactly the real
tokens, and a group's G samples share one copy of the prompt. Attention is the only part that needs to know
the layout: :func:`packed_attention` (registered with transformers as ``longcot_packed``) gathers each
prompt's queries (causal) and each response's queries against its prompt + its own earlier tokens, padded
per response, in two ``scaled_dot_product_attention`` calls per layer. Log-probs come back in the same
response-aligned [B, T] layout, so nothing downstream changes. The padded path remains for models whose
attention is not sdpa through transformers' attention interface, or that need a 2D mask (router aux loss),
and for micro-batches too long for the per-response masks.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

import torch
import torch.nn.functional as F

from longcot.policies.moe import RoutingLayout, packed_layout, padded_layout, prompt_routing_key
from longcot.record import Trajectory

# The packed layout's masks (prompt x prompt and response x (prompt + response) per micro-batch) hold at most
# MAX_PACKED_TOKENS**2 bools (16 MiB); beyond that a micro-batch takes the padded path.
MAX_PACKED_TOKENS = 4096
ATTENTION_NAME = "longcot_packed"  # the attention implementation registered with transformers


@dataclass
class Packed:
    """A micro-batch as one unpadded row: prompt_g, responses of prompt_g, ... (see the module doc).

    Index tensors point into the row (N tokens); padding entries point at position 0 and are masked out.
    """

    input_ids: torch.Tensor  # [1, N]
    position_ids: torch.Tensor  # [1, N] position within its own prompt + response
    prompt_index: torch.Tensor  # [G, P] each distinct prompt's tokens
    prompt_mask: torch.Tensor  # [G, 1, P, P] bool, causal within the prompt
    query_index: torch.Tensor  # [B', L] each non-empty response's tokens
    context_index: torch.Tensor  # [B', P + L] its prompt's tokens, then its own
    context_mask: torch.Tensor  # [B', 1, L, P + L] bool: the whole prompt, own earlier tokens
    output_index: torch.Tensor  # [N] where token n's attention output sits in cat(prompt out, response out)
    logit_index: torch.Tensor  # [B, T] position in the row whose logits predict response token k
    targets: torch.Tensor  # [B, T] response token ids (0 past the end)
    spans: torch.Tensor  # [B, 4] per trajectory: prompt start, prompt length, response start, response length

    def to(self, device: torch.device | str) -> Packed:
        return Packed(*(getattr(self, f.name).to(device) for f in fields(self)))


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
    with ``pack``, also lay it out without padding (:func:`pack_trajectories`) when it fits. ``temperature``
    is the sampling temperature of trajectories that do not record their own. ``routing``: attach the MoE
    routing layout of whichever layout the batch will run in (packed when it fits, else padded)."""
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
        layout = packed_layout(trajs, packed.spans, packed.input_ids.shape[1], T) if packed is not None \
            else padded_layout(trajs, L, T)
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


def pack_trajectories(trajs: list[Trajectory], T: int, max_tokens: int = MAX_PACKED_TOKENS) -> Packed | None:
    """The unpadded one-row layout of ``trajs``; ``None`` if its masks would hold more than ``max_tokens**2``
    entries or a trajectory has no prompt (its first response token would have nothing to be predicted from).

    Why not rows with an N x N block mask (the previous layout): the mask's N^2 attention work and the rows'
    padding cost more than the per-response attention here (tiny MoE, CPU, 16 responses of ~85 tokens:
    forward+backward 0.32 s in rows of 256 tokens or padded, 0.25 s in this layout)."""
    if any(not t.prompt_ids for t in trajs):
        return None
    ids, pos, prompts, spans = _one_row(trajs)
    live = [sp for sp in spans if sp[3]]
    G, P = len(prompts), max(n for _, n in prompts)
    L = max((sp[3] for sp in live), default=1)
    if G * P * P + len(live) * L * (P + L) > max_tokens**2:
        return None
    arange_p, arange_l = torch.arange(P), torch.arange(L)
    p_start, p_len = torch.tensor(prompts, dtype=torch.long).reshape(-1, 2).unbind(1)
    p_valid = arange_p[None, :] < p_len[:, None]  # [G, P]
    prompt_index = torch.where(p_valid, p_start[:, None] + arange_p[None, :], 0)
    causal_p = arange_p[None, :] <= arange_p[:, None]
    # a padding query row sees key 0 only: no empty softmax row (its output is never gathered)
    prompt_mask = (causal_p[None] & p_valid[:, None, :]) | (~p_valid[:, :, None] & (arange_p == 0)[None, None, :])
    ps, pl, rs, rl = torch.tensor(live, dtype=torch.long).reshape(-1, 4).unbind(1)
    q_valid = arange_l[None, :] < rl[:, None]  # [B', L]
    query_index = torch.where(q_valid, rs[:, None] + arange_l[None, :], 0)
    ctx_prompt_valid = arange_p[None, :] < pl[:, None]
    context_index = torch.cat([torch.where(ctx_prompt_valid, ps[:, None] + arange_p[None, :], 0), query_index], 1)
    sees_response = (arange_l[None, :] <= arange_l[:, None])[None] & q_valid[:, None, :]  # [B', L, L]
    context_mask = torch.cat([ctx_prompt_valid[:, None, :].expand(-1, L, -1), sees_response], 2)
    context_mask[:, :, 0] |= ~q_valid  # padding query rows see key 0 only
    output_index = torch.zeros(len(ids), dtype=torch.long)
    output_index[prompt_index[p_valid]] = torch.arange(G * P).reshape(G, P)[p_valid]
    output_index[query_index[q_valid]] = G * P + torch.arange(len(live) * L).reshape(len(live), L)[q_valid]
    logit_index = torch.zeros((len(trajs), T), dtype=torch.long)
    targets = torch.zeros((len(trajs), T), dtype=torch.long)
    for i, (t, (p0, n_p, r0, n_r)) in enumerate(zip(trajs, spans, strict=True)):
        if n_r:  # token 0 is predicted by the prompt's last position, token k > 0 by response token k-1
            logit_index[i, :n_r] = torch.tensor([p0 + n_p - 1, *range(r0, r0 + n_r - 1)])
            targets[i, :n_r] = torch.tensor(t.response_ids)
    return Packed(torch.tensor([ids]), torch.tensor([pos]), prompt_index, prompt_mask[:, None], query_index,
                  context_index, context_mask[:, None], output_index, logit_index, targets,
                  torch.tensor(spans, dtype=torch.long).reshape(-1, 4))


def _one_row(trajs: list[Trajectory]) -> tuple[list[int], list[int], list[tuple[int, int]], list[tuple]]:
    """Token ids and positions of the row (each distinct prompt once, where it first appears, then each
    response), the prompts as (start, length), and per trajectory (prompt start, prompt length, response
    start, response length). Samples share a prompt copy when its tokens and, for MoE routing replay, the
    engine's routing of it are the same (:func:`~longcot.policies.moe.prompt_routing_key`)."""
    first: dict[tuple, int] = {}
    ids: list[int] = []
    pos: list[int] = []
    spans: list[tuple[int, int, int, int]] = []
    for t in trajs:
        prompt = tuple(t.prompt_ids)
        key = (prompt, prompt_routing_key(t))
        if key not in first:
            first[key] = len(ids)
            ids += prompt
            pos += range(len(prompt))
        spans.append((first[key], len(prompt), len(ids), len(t.response_ids)))
        ids += t.response_ids
        pos += range(len(prompt), len(prompt) + len(t.response_ids))
    return ids, pos, [(start, len(key[0])) for key, start in first.items()], spans


def packed_attention(module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, attention_mask,
                     scaling: float | None = None, dropout: float = 0.0, longcot_packed: Packed | None = None,
                     **kwargs) -> tuple[torch.Tensor, None]:
    """transformers attention function for the packed row: ``query`` [1, H, N, D], ``key``/``value``
    [1, H_kv, N, D] -> output [1, N, H, D]. Prompts attend causally to themselves; each response attends to
    its prompt and its own earlier tokens. Two sdpa calls, on small per-prompt and per-response blocks."""
    pk = longcot_packed
    if pk is None:  # any other forward of the model (padded batches, generate): plain sdpa
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        return sdpa_attention_forward(module, query, key, value, attention_mask, scaling=scaling, dropout=dropout,
                                      **kwargs)
    heads, kv_heads = query.shape[1], key.shape[1]
    q, k, v = (x[0].transpose(0, 1) for x in (query, key, value))  # [N, heads, D]
    if kv_heads != heads:  # grouped-query attention: share each key/value head across its query heads
        k, v = k.repeat_interleave(heads // kv_heads, 1), v.repeat_interleave(heads // kv_heads, 1)

    def attend(qi: torch.Tensor, ki: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        out = F.scaled_dot_product_attention(q[qi].transpose(1, 2), k[ki].transpose(1, 2), v[ki].transpose(1, 2),
                                             attn_mask=mask, dropout_p=dropout, scale=scaling)
        return out.transpose(1, 2).reshape(-1, heads, q.shape[-1])

    out = torch.cat([attend(pk.prompt_index, pk.prompt_index, pk.prompt_mask),
                     attend(pk.query_index, pk.context_index, pk.context_mask)])
    return out[pk.output_index].unsqueeze(0), None


def use_packed_attention(model) -> None:
    """Switch an sdpa ``model`` to ``longcot_packed`` attention: the packed layout's attention when a forward
    passes one, sdpa otherwise (generate, padded batches; same masks, same numbers).

    Why a lasting switch and not one around the forward: gradient checkpointing re-runs the forward during
    backward, and that re-run must take the same attention path. The switch is not saved with the model."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    if ATTENTION_NAME not in AttentionInterface():
        AttentionInterface.register(ATTENTION_NAME, packed_attention)
        AttentionMaskInterface.register(ATTENTION_NAME, sdpa_mask)  # the packed layout passes no mask at all
    cfg = getattr(model, "module", model).config
    if cfg._attn_implementation == "sdpa":
        cfg._attn_implementation = ATTENTION_NAME


def can_pack(model) -> bool:
    """Whether ``model`` computes exactly the same log-probs from the packed layout as from padded rows: its
    attention must be sdpa through transformers' attention interface (which :func:`use_packed_attention`
    takes over) and it must not need the 2D mask itself (router aux loss)."""
    cfg = getattr(getattr(model, "module", model), "config", None)
    return (cfg is not None and getattr(cfg, "_attn_implementation", None) in ("sdpa", ATTENTION_NAME)
            and not getattr(cfg, "output_router_logits", False))


def response_logprobs(model, b: TokenBatch, with_entropy: bool = False, temperature: float | None = None,
                      entropy_grad: bool = True) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Log-probs [B, T] of each response token under ``model`` (and the entropy of each position).

    Logits are divided by the sampling temperature of each response (``b.temperatures``, or ``temperature``
    for all rows when given): the engine reports log-probs of the distribution it sampled from, and the
    policy gradient is taken through that same distribution. A temperature of 0 (greedy) counts as 1.

    Only the response positions are put through log-softmax, and the logits are sliced before the
    vocabulary-sized float work, which is what dominates memory for real vocabularies. With
    ``entropy_grad=False`` the entropy comes back without an autograd graph (a metric, not a loss term).
    """
    pk = b.packed
    if pk is not None and can_pack(model):
        use_packed_attention(model)
        out = model(input_ids=pk.input_ids, position_ids=pk.position_ids, use_cache=False,
                    longcot_packed=_float_masks(pk, next(model.parameters()).dtype))
        logits = out.logits.reshape(-1, out.logits.shape[-1])
        resp_logits, targets = logits[pk.logit_index].float(), pk.targets
    else:
        out = model(input_ids=b.input_ids, attention_mask=b.attention_mask, use_cache=False)
        logits = out.logits
        B, T = b.mask.shape
        # Position j predicts token j+1: response token k of row i is predicted at start_i + k - 1.
        offsets = torch.arange(T, device=logits.device).unsqueeze(0)
        pos = (b.response_start.unsqueeze(1) - 1 + offsets).clamp(max=logits.shape[1] - 1)
        resp_logits = logits.gather(1, pos.unsqueeze(-1).expand(B, T, logits.shape[-1])).float()
        targets = b.input_ids.gather(1, (pos + 1).clamp(max=b.input_ids.shape[1] - 1))
    temps = _row_temperatures(b, temperature)
    if temps is not None:
        resp_logits = resp_logits / temps.to(resp_logits)[:, None, None]
    logp_all = F.log_softmax(resp_logits, dim=-1)
    logp = logp_all.gather(-1, targets.unsqueeze(-1)).squeeze(-1) * (b.mask > 0)
    entropy = None
    if with_entropy:
        # Only a metric unless entropy_grad (an entropy bonus in the loss): no autograd graph otherwise.
        with torch.set_grad_enabled(entropy_grad and torch.is_grad_enabled()):
            entropy = -(logp_all.exp() * logp_all).sum(-1)
    return logp, entropy


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


def _float_masks(pk: Packed, dtype: torch.dtype) -> Packed:
    """The layout with additive float masks (sdpa would convert a bool mask in every layer)."""
    def bias(allowed: torch.Tensor) -> torch.Tensor:
        return torch.zeros(allowed.shape, dtype=dtype, device=allowed.device).masked_fill_(~allowed,
                                                                                           torch.finfo(dtype).min)
    return replace(pk, prompt_mask=bias(pk.prompt_mask), context_mask=bias(pk.context_mask))


def group_ordered_chunks(trajs: list[Trajectory], size: int) -> list[list[Trajectory]]:
    """Micro-batches of ``size`` with the samples of one prompt next to each other, for the packed layout
    (a prompt is stored once per micro-batch that holds its samples)."""
    order = sorted(range(len(trajs)), key=lambda i: (trajs[i].group_id, i))
    return [[trajs[i] for i in order[k : k + size]] for k in range(0, len(order), size)]


def micro_batches(model, trajs: list[Trajectory], size: int) -> list[list[Trajectory]]:
    """The trainer's micro-batches: group-ordered when ``model`` takes the packed layout, else sorted by
    length (padding is what costs there)."""
    return group_ordered_chunks(trajs, size) if can_pack(model) else length_sorted_chunks(trajs, size)


def length_sorted_chunks(trajs: list[Trajectory], size: int) -> list[list[Trajectory]]:
    """Split into micro-batches of ``size``, grouping similar lengths to minimise padding."""
    order = sorted(trajs, key=lambda t: len(t.prompt_ids) + len(t.response_ids))
    return [order[i : i + size] for i in range(0, len(order), size)]
