"""Trajectories -> padded tensors, and per-token log-probs of a causal LM.

Two layouts. Padded: micro-batches of trajectories sorted by length, so a batch pads to the length of its
own longest sequence, not the step's.

Packed (the default where it is exact): micro-batches keep a prompt's samples together, and each is laid
out as a few rows of about PACK_ROW_TOKENS tokens that hold each distinct prompt once, followed by its
responses, with a block mask (a response sees its prompt and its own earlier tokens) and per-response
position ids. A group's G samples share one copy of the prompt and almost nothing is padding: on the tiny
arithmetic job about half the tokens of the padded [B, L] layout. Rows stay short because a row's attention
is N x N. Log-probs come back in the same response-aligned [B, T] layout, so nothing downstream changes; the
padded path remains for models whose attention ignores a custom 4D mask (flash-attention) or that need a 2D
mask (router aux loss), and for sequences too long for a dense N x N mask.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch
import torch.nn.functional as F

from longcot.record import Trajectory

# Longest sequence the packed layout takes: a row's block mask is dense (N x N bools), 4096 -> 16 MiB.
MAX_PACKED_TOKENS = 4096
# Target tokens per packed row (see pack_trajectories: attention cost grows with N^2 per row).
PACK_ROW_TOKENS = 256


@dataclass
class Packed:
    """A micro-batch as R rows of shared prompts and their responses: prompt_g, responses of prompt_g, ..."""

    input_ids: torch.Tensor  # [R, N] (rows shorter than N end in padding that only sees itself)
    position_ids: torch.Tensor  # [R, N] position within its own prompt + response
    attention_mask: torch.Tensor  # [R, 1, N, N] bool, True = query may attend to key
    logit_index: torch.Tensor  # [B, T] flat position (row * N + col) whose logits predict response token k
    targets: torch.Tensor  # [B, T] response token ids (0 past the end)

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
    rollout_logprobs: torch.Tensor
    old_logprobs: torch.Tensor | None = None
    ref_logprobs: torch.Tensor | None = None
    packed: Packed | None = None  # the same sequences without padding, prompts shared (see module doc)

    @property
    def response_len(self) -> int:
        return self.mask.shape[1]

    def to(self, device: torch.device | str) -> TokenBatch:
        """The same batch on ``device`` (collation happens on the CPU; the model may live on a GPU)."""
        moved = {f.name: getattr(self, f.name) for f in fields(self)}
        return TokenBatch(**{k: v.to(device) if v is not None else None for k, v in moved.items()})


def collate(trajs: list[Trajectory], pad_id: int, pack: bool = True) -> TokenBatch:
    """Pad a list of trajectories into a :class:`TokenBatch` (advantage broadcast per token if scalar);
    with ``pack``, also lay it out without padding (:func:`pack_trajectories`) when it fits."""
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
    return TokenBatch(input_ids, attn, start, mask, adv, roll, packed=packed)


def pack_trajectories(trajs: list[Trajectory], T: int, max_tokens: int = MAX_PACKED_TOKENS,
                      row_tokens: int = PACK_ROW_TOKENS) -> Packed | None:
    """Rows of about ``row_tokens`` tokens, each holding distinct prompts once with their responses after
    them; ``None`` if the masks would hold more than ``max_tokens**2`` entries (one prompt + response over
    ``max_tokens`` included) or a trajectory has no prompt (its first response token would have nothing to be
    predicted from).

    Why several short rows and not one long one: a row's attention is N x N under the block mask, so one
    row of 2000 tokens costs far more than four of 500 (tiny MoE, CPU, forward+backward of 256 samples of
    ~25 tokens: one length-sorted row per 64 samples 5.7 s, padded 2.4 s)."""
    if any(not t.prompt_ids or len(t.prompt_ids) + len(t.response_ids) > max_tokens for t in trajs):
        return None
    rows = _assign_rows(trajs, row_tokens)
    N = max(n for _, n in rows)
    R = len(rows)
    if R * N * N > max_tokens**2:  # the masks' memory: long responses take the padded path (2D mask)
        return None
    input_ids = torch.zeros((R, N), dtype=torch.long)
    position_ids = torch.zeros((R, N), dtype=torch.long)
    allowed = torch.zeros((R, 1, N, N), dtype=torch.bool)
    index = torch.zeros((len(trajs), T), dtype=torch.long)
    targets = torch.zeros((len(trajs), T), dtype=torch.long)
    for row, (members, _) in enumerate(rows):
        ids, pos, seq, group = [], [], [], []  # seq: 0 for a prompt token, i + 1 for a token of response i
        prompt_at: dict[tuple[int, ...], tuple[int, int]] = {}  # prompt -> (its last position, its group)
        for i in members:
            t = trajs[i]
            prompt, r = tuple(t.prompt_ids), t.response_ids
            if prompt not in prompt_at:
                g = len(prompt_at)
                ids += prompt
                pos += range(len(prompt))
                seq += [0] * len(prompt)
                group += [g] * len(prompt)
                prompt_at[prompt] = (len(ids) - 1, g)
            last, g = prompt_at[prompt]
            s = len(ids)
            if r:
                # token 0 is predicted by the prompt's last position, token k > 0 by the response's token k-1
                index[i, : len(r)] = row * N + torch.tensor([last, *range(s, s + len(r) - 1)])
                targets[i, : len(r)] = torch.tensor(r)
            ids += r
            pos += range(len(prompt), len(prompt) + len(r))
            seq += [i + 1] * len(r)
            group += [g] * len(r)
        n = len(ids)
        input_ids[row, :n], position_ids[row, :n] = torch.tensor(ids), torch.tensor(pos)
        grp, sq, order = torch.tensor(group), torch.tensor(seq), torch.arange(n)
        allowed[row, 0, :n, :n] = ((grp[:, None] == grp[None, :]) & ((sq[None, :] == 0) | (sq[:, None] == sq[None, :]))
                                   & (order[None, :] <= order[:, None]))
        allowed[row, 0, n:, n:] = torch.eye(N - n, dtype=torch.bool)  # padding sees itself: no empty softmax row
    return Packed(input_ids, position_ids, allowed, index, targets)


def _assign_rows(trajs: list[Trajectory], row_tokens: int) -> list[tuple[list[int], int]]:
    """Trajectory indices per row, same-prompt trajectories kept together, and each row's token count."""
    by_prompt: dict[tuple[int, ...], list[int]] = {}
    for i, t in enumerate(trajs):
        by_prompt.setdefault(tuple(t.prompt_ids), []).append(i)
    rows: list[tuple[list[int], int]] = []
    cur, cur_n, cur_prompts = [], 0, set()
    for prompt, members in by_prompt.items():
        for i in members:
            add = len(trajs[i].response_ids) + (0 if prompt in cur_prompts else len(prompt))
            if cur and cur_n + add > row_tokens:
                rows.append((cur, cur_n))
                cur, cur_n, cur_prompts = [], 0, set()
                add = len(trajs[i].response_ids) + len(prompt)
            cur.append(i)
            cur_n += add
            cur_prompts.add(prompt)
    rows.append((cur, cur_n))
    return rows


def can_pack(model) -> bool:
    """Whether ``model`` computes exactly the same log-probs from a packed row as from padded rows: its
    attention must honour a custom 4D mask (sdpa, eager) and it must not need the 2D mask itself."""
    cfg = getattr(getattr(model, "module", model), "config", None)
    return (cfg is not None and getattr(cfg, "_attn_implementation", None) in ("sdpa", "eager")
            and not getattr(cfg, "output_router_logits", False))


def response_logprobs(model, b: TokenBatch, with_entropy: bool = False, temperature: float = 1.0,
                      entropy_grad: bool = True) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Log-probs [B, T] of each response token under ``model`` (and the entropy of each position).

    Logits are divided by the sampling ``temperature``: the engine reports log-probs of the distribution it
    sampled from, and the policy gradient is taken through that same distribution.

    Only the response positions are put through log-softmax, and the logits are sliced before the
    vocabulary-sized float work, which is what dominates memory for real vocabularies. With
    ``entropy_grad=False`` the entropy comes back without an autograd graph (a metric, not a loss term).
    """
    pk = b.packed
    if pk is not None and can_pack(model):
        dtype = next(model.parameters()).dtype  # additive float mask: sdpa would convert a bool one per layer
        allowed = pk.attention_mask
        bias = torch.zeros(allowed.shape, dtype=dtype, device=allowed.device).masked_fill_(~allowed,
                                                                                           torch.finfo(dtype).min)
        out = model(input_ids=pk.input_ids, position_ids=pk.position_ids, attention_mask=bias, use_cache=False)
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
    if temperature > 0 and temperature != 1.0:
        resp_logits = resp_logits / temperature
    logp_all = F.log_softmax(resp_logits, dim=-1)
    logp = logp_all.gather(-1, targets.unsqueeze(-1)).squeeze(-1) * (b.mask > 0)
    entropy = None
    if with_entropy:
        # Only a metric unless entropy_grad (an entropy bonus in the loss): no autograd graph otherwise.
        with torch.set_grad_enabled(entropy_grad and torch.is_grad_enabled()):
            entropy = -(logp_all.exp() * logp_all).sum(-1)
    return logp, entropy


def group_ordered_chunks(trajs: list[Trajectory], size: int) -> list[list[Trajectory]]:
    """Micro-batches of ``size`` with the samples of one prompt next to each other, for the packed layout
    (a prompt is stored once per row that holds its samples)."""
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
