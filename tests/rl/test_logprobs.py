"""Chunked LM-head log-probs and entropies equal one full log-softmax, and so do their gradients."""

from __future__ import annotations

import pytest
import torch

from longcot.policies.build import build_tiny_moe
from longcot.policies.load import load_policy
from longcot.record import Trajectory
from longcot.rl.batch import collate, response_logprobs
from longcot.rl.logprobs import token_logprobs


def head_grads(chunk: int, entropy_grad: bool, temps: torch.Tensor | None):
    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(37, 16, generator=g, dtype=torch.float64).requires_grad_()
    weight = torch.randn(50, 16, generator=g, dtype=torch.float64).requires_grad_()
    bias = torch.randn(50, generator=g, dtype=torch.float64).requires_grad_()
    targets = torch.randint(0, 50, (37,), generator=g)
    logp, ent = token_logprobs(hidden, weight, bias, targets, temps, chunk=chunk, with_entropy=True,
                               entropy_grad=entropy_grad)
    loss = (logp * torch.linspace(-1, 1, 37, dtype=torch.float64)).sum() + (0.1 * ent.sum() if entropy_grad else 0)
    loss.backward()
    return logp.detach(), ent.detach(), [t.grad for t in (hidden, weight, bias)], ent.requires_grad


@pytest.mark.parametrize("entropy_grad", [True, False])
def test_chunked_head_equals_unchunked(entropy_grad):
    temps = torch.linspace(0.5, 1.5, 37)
    lp0, e0, g0, req0 = head_grads(0, entropy_grad, temps)
    for chunk in (1, 7, 36, 37, 1000):
        lp, e, g, req = head_grads(chunk, entropy_grad, temps)
        assert (lp - lp0).abs().max() <= 1e-6 and (e - e0).abs().max() <= 1e-6
        for a, b in zip(g, g0, strict=True):
            assert torch.allclose(a, b, atol=1e-6, rtol=0)
        assert req == req0 == entropy_grad


def test_head_arithmetic_matches_log_softmax():
    g = torch.Generator().manual_seed(1)
    hidden, weight = torch.randn(9, 8, generator=g), torch.randn(30, 8, generator=g)
    targets = torch.randint(0, 30, (9,), generator=g)
    logp, ent = token_logprobs(hidden, weight, None, targets, torch.full((9,), 0.7), chunk=4, with_entropy=True)
    full = torch.log_softmax((hidden @ weight.T) / 0.7, -1)
    assert torch.allclose(logp, full.gather(-1, targets[:, None]).squeeze(-1), atol=1e-6)
    assert torch.allclose(ent, -(full.exp() * full).sum(-1), atol=1e-5)


@pytest.mark.parametrize("pack", [True, False])
def test_policy_logprobs_and_gradients_do_not_depend_on_the_chunk(tmp_path, pack):
    """The whole forward on the tiny MoE: chunked (3 tokens at a time, under checkpointing) vs all at once."""
    model = load_policy(build_tiny_moe(tmp_path / "m", seed=2, num_hidden_layers=2))
    trajs = [Trajectory("a", "g", [5, 6, 7], [8, 9, 10, 11, 12], [], advantage=1.0, temperature=0.8),
             Trajectory("b", "g", [5, 6, 7], [13, 14], [], advantage=-1.0),
             Trajectory("c", "h", [20, 21], [22, 23, 24, 25, 26, 27, 28], [], advantage=0.5)]
    b = collate(trajs, pad_id=0, pack=pack)
    out = []
    for chunk in (0, 3):
        logp, ent = response_logprobs(model, b, with_entropy=True, chunk_tokens=chunk)
        ((logp * b.advantages).sum() - 0.01 * (ent * b.mask).sum()).backward()
        out.append((logp.detach(), ent.detach(), [p.grad.clone() for p in model.parameters()]))
        model.zero_grad(set_to_none=True)
    (lp0, e0, g0), (lp1, e1, g1) = out
    assert (lp0 - lp1).abs().max() <= 1e-6 and (e0 - e1).abs().max() <= 1e-6
    for a, c in zip(g0, g1, strict=True):  # float32 sums in another order: equal to 1e-5 of each tensor's scale
        assert (a - c).abs().max() <= 1e-5 * a.abs().max()
