"""Packed micro-batches (no padding, one copy of a group's prompt) give the padded layout's log-probs,
entropies and gradients, and fall back to padding where packing would not be exact."""

from __future__ import annotations

import pytest
import torch

from longcot.policies.build import build_tiny_moe
from longcot.policies.load import load_policy
from longcot.record import Trajectory
from longcot.rl.batch import can_pack, collate, group_ordered_chunks, pack_trajectories, response_logprobs


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return load_policy(build_tiny_moe(tmp_path_factory.mktemp("m"), seed=1, num_hidden_layers=2))


def groups_of(sizes: list[int], seed: int = 0) -> list[Trajectory]:
    """Groups sharing a prompt (like GRPO's G samples), responses of different lengths, one masked token."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for gi, n in enumerate(sizes):
        prompt = torch.randint(4, 90, (5 + 3 * gi,), generator=g).tolist()
        for i in range(n):
            r = torch.randint(4, 90, (int(torch.randint(1, 12, (1,), generator=g)),), generator=g).tolist()
            t = Trajectory(f"p{gi}", f"p{gi}@0", prompt, r, [0.0] * len(r), advantage=float(i % 3 - 1))
            if len(r) > 2:
                t.loss_mask = [1, 0] + [1] * (len(r) - 2)
            out.append(t)
    return out


def loss_and_grads(model, b, with_entropy=True):
    logp, ent = response_logprobs(model, b, with_entropy=with_entropy, temperature=0.7, entropy_grad=True)
    loss = -(logp * b.advantages * b.mask).sum() / b.mask.sum() - 0.01 * (ent * b.mask).sum() / b.mask.sum()
    loss.backward()
    grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad(set_to_none=True)
    return logp.detach(), ent.detach(), grads


def test_packed_equals_padded(model):
    trajs = groups_of([4, 3, 1])
    packed, padded = collate(trajs, pad_id=0), collate(trajs, pad_id=0, pack=False)
    assert packed.packed is not None and padded.packed is None
    # each prompt once, every response token once
    n_tokens = sum(len(p) for p in {tuple(t.prompt_ids) for t in trajs}) + sum(len(t.response_ids) for t in trajs)
    assert packed.packed.input_ids.shape == (1, n_tokens) < padded.input_ids.shape
    lp1, e1, g1 = loss_and_grads(model, packed)
    lp2, e2, g2 = loss_and_grads(model, padded)
    m = packed.mask > 0
    assert torch.allclose(lp1[m], lp2[m], atol=2e-5) and (lp1[~m] == 0).all()
    assert torch.allclose(e1[m], e2[m], atol=2e-5)
    for a, b in zip(g1, g2, strict=True):
        assert torch.allclose(a, b, atol=1e-5, rtol=1e-3)


@pytest.mark.parametrize("route", ["masked", "causal"])
def test_uneven_groups_and_an_empty_response_equal_padded(model, monkeypatch, route):
    """Groups of different sizes, prompts of different lengths (padding inside the per-prompt and
    per-response attention blocks), one response with no tokens: log-probs, entropies and gradients still
    match the padded layout, on both attention routes (past the mask cap: one is_causal sdpa per sequence and
    no mask, linear memory)."""
    import longcot.rl.batch as batch_mod

    trajs = groups_of([4, 3, 1, 2])
    trajs.insert(2, Trajectory("p0", "p0@0", list(trajs[0].prompt_ids), [], []))
    if route == "causal":
        monkeypatch.setattr(batch_mod, "pack_trajectories", lambda ts, T: pack_trajectories(ts, T, mask_cap=1))
    b = batch_mod.collate(trajs, pad_id=0)
    assert b.packed.route == route and b.packed.query_index.shape[0] == len(b.packed.spans) == len(trajs) - 1
    lp1, e1, g1 = loss_and_grads(model, b)
    lp2, e2, g2 = loss_and_grads(model, collate(trajs, pad_id=0, pack=False))
    m = b.mask > 0
    assert torch.allclose(lp1[m], lp2[m], atol=2e-5) and torch.allclose(e1[m], e2[m], atol=2e-5)
    for a, c in zip(g1, g2, strict=True):
        assert torch.allclose(a, c, atol=1e-5, rtol=1e-3)


def test_mask_cap_picks_the_route_and_group_order():
    trajs = groups_of([3, 3])
    assert pack_trajectories(trajs, T=12, mask_cap=10).route == "causal"  # masks of > 100 entries: none built
    assert pack_trajectories(trajs, T=12, mask_cap=1000).route == "masked"
    shuffled = [trajs[i] for i in (0, 3, 1, 4, 2, 5)]
    chunks = group_ordered_chunks(shuffled, 4)
    assert [t.group_id for t in chunks[0]] == ["p0@0"] * 3 + ["p1@0"] and len(chunks[1]) == 2


def test_layout_and_mask():
    trajs = groups_of([2])
    p = len(trajs[0].prompt_ids)
    r0, r1 = (len(t.response_ids) for t in trajs)
    pk = pack_trajectories(trajs, T=max(r0, r1))
    assert pk.input_ids.shape == (1, p + r0 + r1)  # one copy of the prompt, no padding
    assert pk.position_ids[0].tolist() == list(range(p)) + list(range(p, p + r0)) + list(range(p, p + r1))
    assert pk.prompt_index.tolist() == [list(range(p))] and pk.prompt_mask[0, 0].equal(
        torch.ones(p, p, dtype=torch.bool).tril())
    # response 1 attends to the prompt and its own earlier tokens, never to response 0
    first_of_r1 = p + r0
    assert pk.context_index[1].tolist()[: p + r1] == list(range(p)) + list(range(first_of_r1, first_of_r1 + r1))
    allowed = pk.context_mask[1, 0]
    assert allowed[0, : p + 1].all() and not allowed[0, p + 1 :].any()
    assert allowed[r1 - 1, : p + r1].all()
    # response 1's first token is predicted from the shared prompt's last position
    assert pk.logit_index[1, 0] == p - 1 and pk.logit_index[1, 1] == first_of_r1


def test_falls_back_to_padding(model, tmp_path):
    """A model that cannot take the packed row (router aux loss needs the 2D mask) gets padded batches."""
    trajs = groups_of([3])
    assert pack_trajectories([Trajectory("x", "x", [], [5], [0.0])], T=1) is None  # nothing predicts token 0
    aux = load_policy(build_tiny_moe(tmp_path / "aux", num_hidden_layers=1, output_router_logits=True))
    assert can_pack(model) and not can_pack(aux)
    b = collate(trajs, pad_id=0)
    with torch.no_grad():  # a model that cannot take the packed row still gets the right answer
        want = response_logprobs(aux, collate(trajs, pad_id=0, pack=False))[0]
        assert torch.allclose(response_logprobs(aux, b)[0], want)


def test_gradient_checkpointing_recomputes_the_packed_attention(tmp_path):
    """Checkpointing re-runs each layer's forward during backward: it must take the packed attention again
    (the switch lasts; a switch only around the forward failed with a CheckpointError)."""
    ckpt = load_policy(build_tiny_moe(tmp_path / "c", seed=1, num_hidden_layers=2))
    ckpt.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    ckpt.train()
    trajs = groups_of([3, 2])
    lp1, _, g1 = loss_and_grads(ckpt, collate(trajs, pad_id=0))
    assert ckpt.config._attn_implementation == "longcot_packed"
    lp2, _, g2 = loss_and_grads(ckpt, collate(trajs, pad_id=0, pack=False))  # sdpa through the same function
    for a, c in zip(g1, g2, strict=True):
        assert torch.allclose(a, c, atol=1e-5, rtol=1e-3)


def test_causal_route_calls_the_flash_kernel_shape(model, monkeypatch):
    """The causal route must hand sdpa 4D inputs, is_causal and no mask: on CPU that is the flash kernel (linear
    memory); 3D inputs silently take the math kernel, which materialises [heads, L, L] (benchmarks/
    trainer_memory.py measured 1.9 GiB instead of 0.35 GiB for one 4k-token response)."""
    from dataclasses import replace

    from torch.nn.attention import SDPBackend

    import longcot.rl.packing as packing

    sdpa, calls = packing.F.scaled_dot_product_attention, []

    def spy(q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False):
        backend = SDPBackend(torch._fused_sdp_choice(q, k, v, attn_mask, dropout_p, is_causal, scale=scale,
                                                     enable_gqa=enable_gqa))
        calls.append((q.dim(), is_causal, attn_mask is None, backend))
        return sdpa(q, k, v, attn_mask=attn_mask, dropout_p=dropout_p, is_causal=is_causal, scale=scale,
                    enable_gqa=enable_gqa)

    monkeypatch.setattr(packing.F, "scaled_dot_product_attention", spy)
    trajs = groups_of([2, 1])
    b = collate(trajs, pad_id=0)
    with torch.no_grad():
        response_logprobs(model, replace(b, packed=pack_trajectories(trajs, b.response_len, mask_cap=1)))
    assert calls and all(c == (4, True, True, SDPBackend.FLASH_ATTENTION) for c in calls)
