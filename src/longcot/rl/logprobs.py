"""Token log-probs and entropies from final hidden states, the LM head applied chunk by chunk.

Why: the logits of a long-CoT micro-batch are its tokens x the vocabulary (32k tokens x 152k vocab = 20 GB in
fp32), and log-softmax, its gradient and the entropy each want a tensor of that size again. Here the head,
the temperature, log-softmax, the target's log-prob and the entropy run on ``chunk`` tokens at a time, each
chunk under activation checkpointing: the forward keeps only each chunk's inputs (a view of the hidden
states) and its two output numbers per token, and the backward recomputes one chunk's logits at a time.
Peak memory is one chunk's logits (a few times chunk x vocab floats), at the cost of running the head twice.

The numbers are those of one full log-softmax (``chunk=0``), up to float rounding (tests/rl/test_logprobs.py:
<= 1e-6 and matching gradients). A fused linear-cross-entropy kernel (Liger's) would save the recompute on a
GPU; it is not installed here, so it is not used.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint


def token_logprobs(hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, targets: torch.Tensor,
                   temperatures: torch.Tensor | None = None, *, chunk: int = 1024, with_entropy: bool = False,
                   entropy_grad: bool = True) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Log-prob of ``targets`` [M] and (optionally) the entropy, both [M] float32, from ``hidden`` [M, d] and
    the LM head ``weight`` [V, d] (+ ``bias``). ``temperatures`` [M] divide each token's logits (None: 1).

    ``chunk``: tokens per head application (0: all at once, no checkpointing: the reference computation).
    ``entropy_grad=False`` returns the entropy without an autograd graph (a metric, not a loss term).
    """
    n = hidden.shape[0]
    if n == 0:
        empty = hidden.new_zeros(0, dtype=torch.float32)
        return empty, (empty if with_entropy else None)
    recompute = chunk > 0 and torch.is_grad_enabled() and n > chunk
    step = chunk if chunk > 0 else n
    logps, ents = [], []
    for start in range(0, n, step):
        sl = slice(start, start + step)
        temps = temperatures[sl] if temperatures is not None else None
        args = (hidden[sl], weight, bias, targets[sl], temps, with_entropy, entropy_grad)
        lp, ent = checkpoint(_head, *args, use_reentrant=False) if recompute else _head(*args)
        logps.append(lp)
        ents.append(ent)
    logp = torch.cat(logps) if len(logps) > 1 else logps[0]
    if not with_entropy:
        return logp, None
    return logp, (torch.cat(ents) if len(ents) > 1 else ents[0])


def _head(hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, targets: torch.Tensor,
          temperatures: torch.Tensor | None, with_entropy: bool,
          entropy_grad: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """One chunk: logits in float32, scaled by temperature, then log p(target) = logit - logsumexp and
    entropy = logsumexp - sum(p * logit)."""
    logits = F.linear(hidden, weight, bias).float()
    if temperatures is not None:
        logits = logits / temperatures.to(logits)[:, None]
    lse = torch.logsumexp(logits, dim=-1)
    logp = logits.gather(-1, targets[:, None]).squeeze(-1) - lse
    entropy = None
    if with_entropy:
        with torch.set_grad_enabled(entropy_grad and torch.is_grad_enabled()):
            probs = torch.softmax(logits, dim=-1)
            entropy = lse - (probs * logits).sum(-1)
    return logp, entropy
