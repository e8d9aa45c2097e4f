"""Trajectories -> padded tensors, and per-token log-probs of a causal LM.

Micro-batches are built from trajectories sorted by length, so a batch pads to the length of its own
longest sequence, not the step's.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from longcot.record import Trajectory


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

    @property
    def response_len(self) -> int:
        return self.mask.shape[1]


def collate(trajs: list[Trajectory], pad_id: int) -> TokenBatch:
    """Pad a list of trajectories into a :class:`TokenBatch` (advantage broadcast per token if scalar)."""
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
    return TokenBatch(input_ids, attn, start, mask, adv, roll)


def response_logprobs(model, b: TokenBatch, with_entropy: bool = False,
                      temperature: float = 1.0) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Log-probs [B, T] of each response token under ``model`` (and the entropy of each position).

    Logits are divided by the sampling ``temperature``: the engine reports log-probs of the distribution it
    sampled from, and the policy gradient is taken through that same distribution.

    Only the response positions are put through log-softmax, and the logits are sliced before the
    vocabulary-sized float work, which is what dominates memory for real vocabularies.
    """
    out = model(input_ids=b.input_ids, attention_mask=b.attention_mask, use_cache=False)
    logits = out.logits
    B, T = b.mask.shape
    # Position j predicts token j+1: response token k of row i is predicted at start_i + k - 1.
    pos = (b.response_start.unsqueeze(1) - 1 + torch.arange(T).unsqueeze(0)).clamp(max=logits.shape[1] - 1)
    resp_logits = logits.gather(1, pos.unsqueeze(-1).expand(B, T, logits.shape[-1])).float()
    if temperature > 0 and temperature != 1.0:
        resp_logits = resp_logits / temperature
    targets = b.input_ids.gather(1, (pos + 1).clamp(max=b.input_ids.shape[1] - 1))
    logp_all = F.log_softmax(resp_logits, dim=-1)
    logp = logp_all.gather(-1, targets.unsqueeze(-1)).squeeze(-1) * (b.mask > 0)
    entropy = None
    if with_entropy:
        entropy = -(logp_all.exp() * logp_all).sum(-1)
    return logp, entropy


def length_sorted_chunks(trajs: list[Trajectory], size: int) -> list[list[Trajectory]]:
    """Split into micro-batches of ``size``, grouping similar lengths to minimise padding."""
    order = sorted(trajs, key=lambda t: len(t.prompt_ids) + len(t.response_ids))
    return [order[i : i + size] for i in range(0, len(order), size)]
