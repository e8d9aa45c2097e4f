"""Trainer-side MoE routing (longcot.policies.moe): replay hooks, layouts, statistics and the aux loss.

Fast: a tiny Qwen3-MoE built in memory, trajectories with constructed engine routing (no vLLM).
"""

import math

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM

from longcot.policies.build import build_tokenizer, tiny_moe_config
from longcot.policies.moe import SOFTMAX_TOPK, MoERouting, packed_layout, padded_layout, routing_metrics
from longcot.record import Trajectory
from longcot.rl.batch import collate, response_logprobs

L, K, E = 4, 2, 8


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(tiny_moe_config(len(build_tokenizer())), dtype=torch.float32)


def engine_rows(n: int, seed: int) -> np.ndarray:
    """Constructed engine routing: k distinct experts per token and layer."""
    rng = np.random.default_rng(seed)
    return np.stack([rng.permutation(E)[:K] for _ in range(n * L)]).reshape(n, L, K).astype(np.uint8)


def traj(prompt: list[int], response: list[int], seed: int, **kw) -> Trajectory:
    rows = engine_rows(len(prompt) + len(response) - 1, seed)
    return Trajectory("p", "g", prompt, response, [-1.0] * len(response), routed_experts=rows, **kw)


def test_layouts_place_each_token_row():
    a = traj([5, 6, 7], [8, 9], seed=1)
    b = traj([5, 6, 7], [10, 11, 12], seed=2)
    b.routed_experts[:3] = a.routed_experts[:3]  # same prompt routing: the packed row shares one prompt copy
    c = traj([13], [14], seed=3)
    batch = collate([a, b, c], pad_id=0, pack=True, routing=True)
    lay = batch.routing
    assert batch.packed.input_ids[0].tolist() == [5, 6, 7, 8, 9, 10, 11, 12, 13, 14]
    rep = lay.replay.numpy()
    np.testing.assert_array_equal(rep[0:3], a.routed_experts[:3])  # shared prompt
    np.testing.assert_array_equal(rep[3], a.routed_experts[3])  # a's first response token
    assert (rep[4] == -1).all()  # a's last response token: never fed to the engine
    np.testing.assert_array_equal(rep[5:7], b.routed_experts[3:5])
    assert (rep[7] == -1).all() and (rep[9] == -1).all()
    np.testing.assert_array_equal(rep[8], c.routed_experts[0])
    assert lay.response_rows.tolist() == [[3, 4, -1], [5, 6, 7], [9, -1, -1]]

    padded = padded_layout([a, c], length=5, response_len=2)
    np.testing.assert_array_equal(padded.replay[:4].numpy(), a.routed_experts)
    assert (padded.replay[4] == -1).all() and (padded.replay[6:] == -1).all()
    np.testing.assert_array_equal(padded.replay[5].numpy(), c.routed_experts[0])
    assert padded.response_rows.tolist() == [[3, 4], [6, -1]]
    assert padded.valid.tolist() == [True] * 5 + [True, True, False, False, False]


def test_prompts_with_different_engine_routing_are_not_shared():
    a, b = traj([5, 6, 7], [8], seed=1), traj([5, 6, 7], [9], seed=2)  # same tokens, other prompt routing
    batch = collate([a, b], pad_id=0, pack=True, routing=True)
    assert batch.packed.input_ids[0].tolist() == [5, 6, 7, 8, 5, 6, 7, 9]
    np.testing.assert_array_equal(batch.routing.replay[4:7].numpy(), b.routed_experts[:3])


def test_packed_layout_rejects_a_mix_of_routed_and_unrouted():
    a = traj([5], [8, 9], seed=1)
    b = Trajectory("p", "g", [5], [7], [-1.0])
    with pytest.raises(ValueError, match="1 of 2 trajectories carry engine routing"):
        packed_layout([a, b], torch.tensor([[0, 1, 1, 2], [0, 1, 3, 1]]), 4, 2)


@pytest.mark.parametrize("pack", [True, False])
def test_replay_dispatches_to_every_given_id_and_keeps_router_gradient(model, pack):
    trajs = [traj([5, 6, 7], [8, 9, 10], seed=1), traj([5, 6], [11, 12], seed=4)]
    batch = collate(trajs, pad_id=0, pack=pack, routing=True)
    moe = MoERouting(model, "r3")
    try:
        model.zero_grad()
        with moe.forward(moe.replay_ids(batch.routing, first=True), record=True) as p:
            logp = response_logprobs(model, batch)[0]
        logp.sum().backward()
        rep = batch.routing.replay
        have = (rep >= 0).all(-1)  # [N, L]
        for layer in range(L):
            used, own = p.used[layer], p.own[layer]
            h = have[:, layer]
            assert torch.equal(used[h], rep[h, layer])  # every token with an engine row, every layer
            assert torch.equal(used[~h], own[~h])  # rows without one keep the trainer's own choice
            assert moe.gates[layer].weight.grad.abs().sum() > 0  # the router still learns through the gate weights
    finally:
        moe.remove()


def test_forced_gate_weights_are_renormalised_router_probabilities(model):
    gate = model.model.layers[0].mlp.gate
    x = torch.randn(5, gate.hidden_dim)
    ids = torch.tensor([[0, 1], [2, 3], [4, 5], [6, 7], [7, 0]])
    logits, weights, out_ids = SOFTMAX_TOPK.forced(gate, gate(x), ids)
    probs = torch.softmax(x @ gate.weight.T, -1).gather(-1, ids)
    assert torch.equal(out_ids, ids)
    assert torch.allclose(weights, probs / probs.sum(-1, keepdim=True), atol=1e-6)


def test_r2_replays_the_first_pass(model):
    batch = collate([traj([5, 6], [8, 9, 10], seed=1)], pad_id=0, pack=True, routing=True)
    moe = MoERouting(model, "r2")
    try:
        assert moe.replay_ids(batch.routing, first=True) is None  # the first pass routes freely
        with torch.no_grad(), moe.forward(None, record=True) as p:
            response_logprobs(model, batch)
        moe.keep_first_pass(batch.routing, p)
        assert batch.routing.r2.shape == (5, L, K)
        assert moe.replay_ids(batch.routing, first=False) is batch.routing.r2
    finally:
        moe.remove()


def test_routing_metrics_pinned_on_constructed_counts():
    load = np.array([[4, 4, 0, 0], [2, 2, 2, 2]], dtype=float)  # 2 layers, 4 experts
    m = routing_metrics(np.array([3, 4]), np.array([4, 4]), load)
    assert m["routing/agreement/l0"] == 0.75 and m["routing/agreement/l1"] == 1.0
    assert m["routing/agreement"] == 0.875
    assert m["moe/load_max_over_mean/l0"] == 2.0 and m["moe/load_max_over_mean/l1"] == 1.0
    assert m["moe/load_entropy/l0"] == pytest.approx(math.log(2) / math.log(4))  # 0.5
    assert m["moe/load_entropy/l1"] == pytest.approx(1.0)
    assert m["moe/dead_experts/l0"] == 2 and m["moe/dead_experts"] == 1.0
    assert "routing/agreement/l0" not in routing_metrics(np.zeros(2), np.zeros(2), load)  # no engine routing


def test_observe_counts_response_tokens_only(model):
    """Statistics over the response tokens of a constructed batch: agreement against the engine rows and the
    load of the ids the layer dispatched to, identical in the packed and the padded layout."""
    a, b = traj([5, 6, 7], [8, 9, 10], seed=1), traj([5, 6], [11, 12], seed=4)
    moe = MoERouting(model, "none")
    try:
        results = []
        for pack in (True, False):
            batch = collate([a, b], pad_id=0, pack=pack, routing=True)
            with torch.no_grad(), moe.forward(None, record=True) as p:
                response_logprobs(model, batch)
            moe.observe(p, batch.routing)
            results.append((moe.stats.agree.copy(), moe.stats.compared.copy(), moe.stats.load.copy()))
            moe.reset_stats()
        for x, y in zip(*results, strict=True):
            np.testing.assert_array_equal(x, y)
        agree, compared, load = results[0]
        assert compared.tolist() == [3.0] * L  # 2 + 1 response tokens have engine rows (last tokens do not)
        assert load.sum(1).tolist() == [5.0 * K] * L  # all 5 response tokens, k slots each
        # hand count for layer 0: the trainer's own choice at the response rows against the engine rows
        batch = collate([a, b], pad_id=0, pack=True, routing=True)
        with torch.no_grad(), moe.forward(None, record=True) as p:
            response_logprobs(model, batch)
        own = p.own[0]
        rows = {3: a.routed_experts[3], 4: a.routed_experts[4], 8: b.routed_experts[2]}
        want = sum(set(own[r].tolist()) == set(v[0].tolist()) for r, v in rows.items())
        assert agree[0] == want
    finally:
        moe.remove()


def test_aux_loss_is_one_when_routing_is_uniform(model):
    moe = MoERouting(model, "none", aux_coef=0.01)
    try:
        from longcot.policies.moe import RoutingLayout, _Pass

        p = _Pass(None, True)
        for layer in range(L):  # equal logits: P_i = 1/E; 16 tokens spread 4 per expert over k=2 slots
            p.logits[layer] = torch.zeros(16, E, requires_grad=True)
            p.used[layer] = torch.arange(32).reshape(16, 2) % E
        lay = RoutingLayout(None, torch.zeros(1, 1, dtype=torch.long), torch.ones(16, dtype=torch.bool))
        assert moe.aux_loss(p, lay).detach().item() == pytest.approx(1.0)
        for layer in range(L):  # everything on expert 0, which also has all the probability: loss E
            p.logits[layer] = torch.full((16, E), -1e4).index_fill(1, torch.tensor([0]), 0.0)
            p.used[layer] = torch.zeros(16, 2, dtype=torch.long)
        assert moe.aux_loss(p, lay).detach().item() == pytest.approx(E)
    finally:
        moe.remove()


def test_dense_models_refuse_replay():
    from transformers import LlamaConfig, LlamaForCausalLM

    dense = LlamaForCausalLM(LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                         num_attention_heads=2, num_key_value_heads=2))
    assert MoERouting.for_model(dense) is None
    with pytest.raises(ValueError, match="need an MoE policy"):
        MoERouting.for_model(dense, "r3")


def test_learner_adds_the_aux_loss_in_the_packed_layout(model):
    """rl.router_aux_coef: the learner adds the balancing loss (packed layout, no output_router_logits), logs it,
    and it changes the routers' gradient but not the head's (which comes after every router)."""
    import copy

    from longcot.config import load_recipe
    from longcot.rl.learner import Learner

    tok = build_tokenizer()
    trajs = [traj([5, 6, 7], [8, 9, 10], seed=1, advantage=1.0), traj([5, 6, 7], [11, 12], seed=2, advantage=-1.0)]
    grads = {}
    for coef in (0.0, 1.0):
        learner = Learner(copy.deepcopy(model), tok, load_recipe(None, [f"rl.router_aux_coef={coef}",
                                                                        "rl.grad_clip=1e9"]))
        learner.optimizer.step = lambda: None  # keep the gradients of one backward for comparison
        learner.optimizer.zero_grad = lambda set_to_none=True: None
        m = learner.update(trajs)
        grads[coef] = {n: p.grad.clone() for n, p in learner.unwrapped().named_parameters() if p.grad is not None}
        if coef:
            assert 1.0 <= m["router_aux_loss"] < E  # 1 when balanced, E when everything goes to one expert
        learner.moe.remove()
    router = "model.layers.0.mlp.gate.weight"
    assert not torch.allclose(grads[0.0][router], grads[1.0][router])
    assert torch.allclose(grads[0.0]["lm_head.weight"], grads[1.0]["lm_head.weight"])


def test_an_empty_response_keeps_its_prompt_rows():
    a = Trajectory("p", "g", [5, 6, 7], [], [], routed_experts=engine_rows(2, seed=1))  # P + 0 - 1 rows
    b = traj([5, 6, 7], [8, 9], seed=2)
    b.routed_experts[:2] = a.routed_experts
    lay = collate([a, b], pad_id=0, pack=True, routing=True).routing
    np.testing.assert_array_equal(lay.replay[:2].numpy(), a.routed_experts)
