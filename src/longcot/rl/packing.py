"""The packed layout: a micro-batch as ONE unpadded row, and the attention function that reads it.

Each distinct prompt appears once, followed by its responses, with per-response position ids. Every per-token
layer (projections, experts, norms: nearly all of the compute) runs on exactly the real tokens, and a group's
G samples share one copy of the prompt. Attention is the only part that needs to know the layout:
:func:`packed_attention` (registered with transformers as ``longcot_packed``) lets each prompt attend causally
to itself and each response to its prompt + its own earlier tokens, by one of two routes:

- ``masked`` (small micro-batches): each prompt's and each response's queries gathered into padded blocks with
  boolean block masks, two ``scaled_dot_product_attention`` calls per layer. Fast for many short sequences,
  but the masks hold G*P^2 + B*L*(P+L) entries, so it is only taken while that stays under
  ``MASKED_ATTENTION_MAX_TOKENS**2``.
- ``causal`` (anything larger, e.g. one 32k-token response): one sdpa call per prompt and per response on its
  own contiguous [prompt; response] tokens with ``is_causal=True`` and no mask at all. No L x L tensor exists:
  on CPU and GPU sdpa runs a flash kernel whose memory is linear in L. The prompt's rows are recomputed in
  each of its responses' calls (attention only, a small cost next to a long response).

Why not a mask over the whole row: an explicit mask is O(L^2) whatever kernel reads it (torch 2.13 on CPU does
pick its flash kernel for a masked call, but the mask itself, 4 bytes an entry as an additive float, is the
quadratic part: 362 MiB at 8k tokens vs 42 MiB with ``is_causal``; benchmarks/trainer_memory.py).
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

import torch
import torch.nn.functional as F

from longcot.policies.moe import prompt_routing_key
from longcot.record import Trajectory

# The masked route's masks (prompt x prompt and response x (prompt + response) blocks) hold at most this
# squared entries (16M: 64 MiB as float masks); a bigger micro-batch takes the causal route instead.
MASKED_ATTENTION_MAX_TOKENS = 4096
ATTENTION_NAME = "longcot_packed"  # the attention implementation registered with transformers


@dataclass
class Packed:
    """A micro-batch as one unpadded row: prompt_g, responses of prompt_g, ... (see the module doc).

    Index tensors point into the row (N tokens); padding entries point at position 0 and are masked out.
    ``prompt_mask``/``context_mask`` exist only on the masked route; ``prompts``/``spans`` (plain ints) drive the
    causal route.
    """

    input_ids: torch.Tensor  # [1, N]
    position_ids: torch.Tensor  # [1, N] position within its own prompt + response
    prompt_index: torch.Tensor  # [G, P] each distinct prompt's tokens
    query_index: torch.Tensor  # [B', L] each non-empty response's tokens
    context_index: torch.Tensor  # [B', P + L] its prompt's tokens, then its own
    output_index: torch.Tensor  # [N] where token n's attention output sits in cat(prompt out, response out)
    logit_index: torch.Tensor  # [B, T] position in the row whose hidden state predicts response token k
    targets: torch.Tensor  # [B, T] response token ids (0 past the end)
    prompts: list[tuple[int, int]]  # each distinct prompt: (start, length) in the row
    spans: list[tuple[int, int, int, int]]  # each non-empty response: (prompt start, prompt len, start, len)
    trajectory_spans: list[tuple[int, int, int, int]]  # the same for every trajectory, empty responses too
    prompt_mask: torch.Tensor | None = None  # [G, 1, P, P] causal within the prompt (masked route)
    context_mask: torch.Tensor | None = None  # [B', 1, L, P + L] the whole prompt, own earlier tokens

    @property
    def route(self) -> str:
        return "masked" if self.context_mask is not None else "causal"

    def to(self, device: torch.device | str) -> Packed:
        return Packed(**{f.name: _move(getattr(self, f.name), device) for f in fields(self)})


def _move(value, device):
    return value.to(device) if isinstance(value, torch.Tensor) else value


def pack_trajectories(trajs: list[Trajectory], T: int, mask_cap: int = MASKED_ATTENTION_MAX_TOKENS) -> Packed | None:
    """The unpadded one-row layout of ``trajs`` (any size), with block masks when they hold at most
    ``mask_cap**2`` entries (masked route) and none otherwise (causal route); ``None`` only if a trajectory has
    no prompt (its first response token would have nothing to be predicted from).

    Why not rows with an N x N block mask (an earlier layout): the mask's N^2 attention work and the rows'
    padding cost more than the per-response attention here (tiny MoE, CPU, 16 responses of ~85 tokens:
    forward+backward 0.32 s in rows of 256 tokens or padded, 0.25 s in this layout)."""
    if any(not t.prompt_ids for t in trajs):
        return None
    ids, pos, prompts, spans = _one_row(trajs)
    live = [sp for sp in spans if sp[3]]
    G, P = len(prompts), max(n for _, n in prompts)
    L = max((sp[3] for sp in live), default=1)
    arange_p, arange_l = torch.arange(P), torch.arange(L)
    p_start, p_len = torch.tensor(prompts, dtype=torch.long).reshape(-1, 2).unbind(1)
    p_valid = arange_p[None, :] < p_len[:, None]  # [G, P]
    prompt_index = torch.where(p_valid, p_start[:, None] + arange_p[None, :], 0)
    ps, pl, rs, rl = torch.tensor(live, dtype=torch.long).reshape(-1, 4).unbind(1)
    q_valid = arange_l[None, :] < rl[:, None]  # [B', L]
    query_index = torch.where(q_valid, rs[:, None] + arange_l[None, :], 0)
    ctx_prompt_valid = arange_p[None, :] < pl[:, None]
    context_index = torch.cat([torch.where(ctx_prompt_valid, ps[:, None] + arange_p[None, :], 0), query_index], 1)
    output_index = torch.zeros(len(ids), dtype=torch.long)
    output_index[prompt_index[p_valid]] = torch.arange(G * P).reshape(G, P)[p_valid]
    output_index[query_index[q_valid]] = G * P + torch.arange(len(live) * L).reshape(len(live), L)[q_valid]
    logit_index = torch.zeros((len(trajs), T), dtype=torch.long)
    targets = torch.zeros((len(trajs), T), dtype=torch.long)
    for i, (t, (p0, n_p, r0, n_r)) in enumerate(zip(trajs, spans, strict=True)):
        if n_r:  # token 0 is predicted by the prompt's last position, token k > 0 by response token k-1
            logit_index[i, :n_r] = torch.tensor([p0 + n_p - 1, *range(r0, r0 + n_r - 1)])
            targets[i, :n_r] = torch.tensor(t.response_ids)
    packed = Packed(torch.tensor([ids]), torch.tensor([pos]), prompt_index, query_index, context_index,
                    output_index, logit_index, targets, prompts=prompts, spans=live, trajectory_spans=spans)
    if G * P * P + len(live) * L * (P + L) > mask_cap**2:
        return packed  # causal route: no masks at all
    causal_p = arange_p[None, :] <= arange_p[:, None]
    # a padding query row sees key 0 only: no empty softmax row (its output is never gathered)
    prompt_mask = (causal_p[None] & p_valid[:, None, :]) | (~p_valid[:, :, None] & (arange_p == 0)[None, None, :])
    sees_response = (arange_l[None, :] <= arange_l[:, None])[None] & q_valid[:, None, :]  # [B', L, L]
    context_mask = torch.cat([ctx_prompt_valid[:, None, :].expand(-1, L, -1), sees_response], 2)
    context_mask[:, :, 0] |= ~q_valid  # padding query rows see key 0 only
    return replace(packed, prompt_mask=prompt_mask[:, None], context_mask=context_mask[:, None])


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
    its prompt and its own earlier tokens (module doc: the masked and the causal route)."""
    pk = longcot_packed
    if pk is None:  # any other forward of the model (padded batches, generate): plain sdpa
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        return sdpa_attention_forward(module, query, key, value, attention_mask, scaling=scaling, dropout=dropout,
                                      **kwargs)
    q, k, v = (x[0].transpose(0, 1) for x in (query, key, value))  # [N, heads, D]
    if pk.context_mask is None:
        return _causal_route(q, k, v, pk, scaling, dropout).unsqueeze(0), None
    heads, kv_heads = q.shape[1], k.shape[1]
    # grouped-query attention: on CPU sdpa shares each key/value head itself (no copies); on CUDA the heads are
    # repeated as before, because not every masked CUDA kernel takes enable_gqa (not measured on a GPU here)
    gqa = kv_heads != heads and q.device.type == "cpu"
    if kv_heads != heads and not gqa:
        k, v = k.repeat_interleave(heads // kv_heads, 1), v.repeat_interleave(heads // kv_heads, 1)

    def attend(qi: torch.Tensor, ki: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        if mask.is_floating_point() and mask.dtype != q.dtype:  # mixed precision: bf16 compute, fp32 masks
            mask = mask.to(q.dtype)
        out = F.scaled_dot_product_attention(_rows(q, qi), _rows(k, ki), _rows(v, ki), attn_mask=mask,
                                             dropout_p=dropout, scale=scaling, enable_gqa=gqa)
        return out.transpose(1, 2).reshape(-1, heads, q.shape[-1])

    out = torch.cat([attend(pk.prompt_index, pk.prompt_index, pk.prompt_mask),
                     attend(pk.query_index, pk.context_index, pk.context_mask)])
    return out.index_select(0, pk.output_index).unsqueeze(0), None


def _rows(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``x`` [N, h, D] gathered at ``index`` [a, b] as [a, h, b, D]. ``index_select`` rather than ``x[index]``:
    its backward is one ``index_add_``, where advanced indexing's is a zero-filled ``index_put_`` with
    accumulation: a large part of this route's cost on a CPU, next to the small sdpa calls themselves."""
    return x.index_select(0, index.reshape(-1)).view(*index.shape, *x.shape[1:]).transpose(1, 2)


def _causal_route(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, pk: Packed, scaling: float | None,
                  dropout: float) -> torch.Tensor:
    """[N, H, D] attention output, one mask-free causal sdpa call per prompt and per [prompt; response]."""
    gqa = k.shape[1] != q.shape[1]

    def causal(qs: torch.Tensor, ks: torch.Tensor, vs: torch.Tensor) -> torch.Tensor:  # [n, H, D] each
        # 4D [1, H, n, D]: sdpa takes its flash kernel for 4D inputs only (3D goes to the O(n^2) math kernel)
        q4, k4, v4 = (x.transpose(0, 1).unsqueeze(0) for x in (qs, ks, vs))
        out = F.scaled_dot_product_attention(q4, k4, v4, is_causal=True, dropout_p=dropout, scale=scaling,
                                             enable_gqa=gqa)
        return out[0].transpose(0, 1)

    pieces = [(s, causal(q[s:s + n], k[s:s + n], v[s:s + n])) for s, n in pk.prompts]
    for p0, n_p, r0, n_r in pk.spans:
        ctx = [torch.cat([x[p0:p0 + n_p], x[r0:r0 + n_r]]) for x in (q, k, v)]
        pieces.append((r0, causal(*ctx)[n_p:]))
    pieces.sort(key=lambda piece: piece[0])  # prompts and responses tile the row: concatenated in row order
    return torch.cat([out for _, out in pieces])


def use_packed_attention(model) -> None:
    """Switch an sdpa ``model`` to ``longcot_packed`` attention: the packed layout's attention when a forward
    passes one, sdpa otherwise (generate, padded batches; same masks, same numbers).

    Why a lasting switch and not one around the forward: gradient checkpointing re-runs the forward during
    backward, and that re-run must take the same attention path. The switch is not saved with the model."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    if ATTENTION_NAME not in AttentionInterface():
        AttentionInterface.register(ATTENTION_NAME, packed_attention)
        AttentionMaskInterface.register(ATTENTION_NAME, sdpa_mask)  # padded batches through the same function
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


def float_masks(pk: Packed, dtype: torch.dtype) -> Packed:
    """The layout with additive float masks (sdpa would convert a bool mask in every layer); the causal route
    has none to convert."""
    if pk.context_mask is None:
        return pk

    def bias(allowed: torch.Tensor) -> torch.Tensor:
        return torch.zeros(allowed.shape, dtype=dtype, device=allowed.device).masked_fill_(~allowed,
                                                                                           torch.finfo(dtype).min)
    return replace(pk, prompt_mask=bias(pk.prompt_mask), context_mask=bias(pk.context_mask))
