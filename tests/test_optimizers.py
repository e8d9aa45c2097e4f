"""Optimizers by name (longcot.policies.optimizers) and QK-Clip (longcot.policies.qk_clip)."""

import copy

import pytest
import torch
from transformers import AutoModelForCausalLM, Qwen2MoeConfig, Qwen2MoeForCausalLM

from longcot.policies.build import build_tokenizer, tiny_moe_config
from longcot.policies.optimizers import MuonAdamW, build_optimizer, split_for_muon
from longcot.policies.qk_clip import QKClip
from longcot.record import Trajectory
from longcot.rl.batch import collate, response_logprobs


def tiny_qwen3():
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(tiny_moe_config(len(build_tokenizer())), dtype=torch.float32)


def tiny_qwen2_moe():
    """Qwen2-MoE: no QK-norm, grouped-query attention (4 query heads on 2 key/value heads)."""
    torch.manual_seed(0)
    cfg = Qwen2MoeConfig(vocab_size=64, hidden_size=32, intermediate_size=64, moe_intermediate_size=32,
                         shared_expert_intermediate_size=32, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, num_experts=4, num_experts_per_tok=2)
    return Qwen2MoeForCausalLM(cfg).float()


def test_muon_is_torchs_muon_per_matrix_and_adamw_elsewhere():
    torch.manual_seed(0)
    mat, stack, vec = (torch.nn.Parameter(torch.randn(*s)) for s in [(6, 4), (3, 5, 4), (7,)])
    kw = dict(lr=0.02, weight_decay=0.1)
    ours = MuonAdamW([mat, stack], [vec], betas=(0.9, 0.95), **kw)
    ref_mat = torch.nn.Parameter(mat.detach().clone())
    ref_slices = [torch.nn.Parameter(stack.detach()[e].clone()) for e in range(3)]
    ref_vec = torch.nn.Parameter(vec.detach().clone())
    ref_muon = torch.optim.Muon([ref_mat, *ref_slices], adjust_lr_fn="match_rms_adamw", **kw)
    ref_adam = torch.optim.AdamW([ref_vec], betas=(0.9, 0.95), **kw)
    for step in range(3):
        g = [torch.randn_like(p) for p in (mat, stack, vec)]
        mat.grad, stack.grad, vec.grad = g
        ref_mat.grad, ref_vec.grad = g[0].clone(), g[2].clone()
        for e, p in enumerate(ref_slices):
            p.grad = g[1][e].clone()
        ours.step(), ref_muon.step(), ref_adam.step()
        assert torch.allclose(mat, ref_mat, atol=1e-6), step
        assert all(torch.allclose(stack[e], ref_slices[e], atol=1e-6) for e in range(3)), step
        assert torch.allclose(vec, ref_vec, atol=1e-6), step
    state = ours.state_dict()
    again = MuonAdamW([mat, stack], [vec], betas=(0.9, 0.95), **kw)
    again.load_state_dict(state)
    assert torch.equal(again.state[stack]["momentum_buffer"], ours.state[stack]["momentum_buffer"])
    ours.state.clear()  # the k1.5 reset
    assert not ours.state


def test_muon_takes_hidden_matrices_and_experts_adamw_the_rest():
    model = tiny_qwen3()
    muon_params, adamw_params = split_for_muon(model)
    names = {id(p): n for n, p in model.named_parameters()}
    muon_names = {names[id(p)] for p in muon_params}
    adamw_names = {names[id(p)] for p in adamw_params}
    assert "model.layers.0.mlp.experts.gate_up_proj" in muon_names  # [experts, 2 * inter, hidden]
    assert "model.layers.0.self_attn.q_proj.weight" in muon_names and "model.layers.0.mlp.gate.weight" in muon_names
    assert {"model.embed_tokens.weight", "lm_head.weight", "model.norm.weight"} <= adamw_names
    assert not muon_names & adamw_names and len(muon_names | adamw_names) == len(list(model.parameters()))


def test_unknown_optimizer_and_option_fail_with_a_suggestion():
    model = tiny_qwen3()
    with pytest.raises(KeyError, match="did you mean 'muon'"):
        build_optimizer(model, "muom", lr=1e-3, betas=(0.9, 0.99), weight_decay=0.0)
    with pytest.raises(KeyError, match="unknown option 'qk_clip_tao'.*did you mean 'qk_clip_tau'"):
        build_optimizer(model, "muonclip", lr=1e-3, betas=(0.9, 0.99), weight_decay=0.0,
                        options={"qk_clip_tao": 50})


def _max_logit(model, ids: torch.Tensor) -> torch.Tensor:
    """Per layer and head, the max attention logit of one forward (through the QK-Clip probe)."""
    clip = QKClip(model, tau=1e9)
    try:
        with torch.no_grad():
            model(input_ids=ids)
        return torch.stack(clip.max)
    finally:
        clip.remove()


def test_qk_clip_caps_an_over_large_logit_per_head_without_qk_norm():
    model = tiny_qwen2_moe()
    ids = torch.randint(0, 64, (2, 12))
    attn = model.model.layers[1].self_attn
    head = slice(2 * attn.head_dim, 3 * attn.head_dim)
    with torch.no_grad():
        attn.q_proj.weight[head] *= 200.0  # query head 2 of layer 1: logits far above tau
        attn.q_proj.bias[head] *= 200.0
    before = _max_logit(model, ids)
    tau = 0.5  # the random init's logits are ~0.03; head 2's are now ~6
    assert before[1, 2] > 10 * tau and before[0].max() < tau and before[1, [0, 1, 3]].max() < tau
    clip = QKClip(model, tau)
    with torch.no_grad():
        model(input_ids=ids)
    m = clip.apply()
    clip.remove()
    after = _max_logit(model, ids)
    assert m["qk_clip/max_logit"] == pytest.approx(float(before.max()), rel=1e-5)
    assert m["qk_clip/clipped_heads"] == 1.0
    assert float(after[1, 2]) == pytest.approx(tau, rel=1e-4)  # capped at tau exactly
    unclipped = torch.ones_like(before, dtype=torch.bool)
    unclipped[1, 2] = False
    assert torch.allclose(after[unclipped], before[unclipped], rtol=1e-5)  # every other head untouched


def test_qk_clip_with_qk_norm_scales_the_layer_through_the_norm_gains():
    model = tiny_qwen3()
    ids = torch.randint(4, 60, (1, 20))
    attn = model.model.layers[2].self_attn
    with torch.no_grad():  # QK-norm: scaling W_q does nothing; the gains carry the logit scale
        attn.q_norm.weight.mul_(8.0)
        attn.k_norm.weight.mul_(8.0)
    before = _max_logit(model, ids)
    tau = float(before[2].max()) / 3
    assert before[[0, 1, 3]].max() < tau
    clip = QKClip(model, tau)
    with torch.no_grad():
        model(input_ids=ids)
    clip.apply()
    clip.remove()
    after = _max_logit(model, ids)
    assert float(after[2].max()) == pytest.approx(tau, rel=1e-4)
    assert torch.allclose(after[2], before[2] * tau / before[2].max(), rtol=1e-4)  # one factor for the layer
    assert torch.allclose(after[:2], before[:2], rtol=1e-5)  # earlier layers untouched (later ones see new inputs)


def test_probe_sees_the_same_pairs_in_the_packed_and_the_padded_layout():
    model = tiny_qwen3()
    trajs = [Trajectory("a", "g", [5, 6, 7], [8, 9, 10], [-1.0] * 3),
             Trajectory("a", "g", [5, 6, 7], [11, 12], [-1.0] * 2)]
    results = []
    for pack in (True, False):  # packed (padding rows per response) and padded (a pad token at the end)
        clip = QKClip(model, tau=1e9)
        with torch.no_grad():
            response_logprobs(model, collate(trajs, pad_id=0, pack=pack))
        results.append(torch.stack(clip.max))
        clip.remove()
    alone = []
    for t in trajs:  # each sequence alone, no padding anywhere
        alone.append(_max_logit(model, torch.tensor([t.prompt_ids + t.response_ids])))
    want = torch.maximum(*alone)
    assert torch.allclose(results[0], want, atol=1e-5) and torch.allclose(results[1], want, atol=1e-5)


def test_learner_with_muonclip_logs_the_max_logit():
    from longcot.config import load_recipe
    from longcot.rl.learner import Learner

    model, tok = tiny_qwen3(), build_tokenizer()
    before = copy.deepcopy(model.state_dict())
    learner = Learner(model, tok, load_recipe(None, ["rl.optimizer=muonclip", "rl.lr=0.01"]))
    trajs = [Trajectory("a", "g", [5, 6, 7], [8, 9, 10], [], advantage=1.0),
             Trajectory("a", "g", [5, 6, 7], [11, 12], [], advantage=-1.0)]
    m = learner.update(trajs)
    assert 0 < m["qk_clip/max_logit"] < 100 and m["qk_clip/clipped_heads"] == 0
    assert any(not torch.equal(before[n], p) for n, p in learner.unwrapped().state_dict().items())
