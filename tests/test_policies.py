"""Tiny MoE + char tokenizer: built locally, saved in HF format, reloaded identically."""

import torch

from longcot.policies.build import build_tiny_moe
from longcot.policies.load import load_policy, load_tokenizer


def test_build_save_reload_roundtrip(tmp_path):
    path = build_tiny_moe(tmp_path / "m", seed=0)
    tok = load_tokenizer(path)
    text = "Q: (7+5)*3-4\n7+5=12\n\\boxed{32}"
    ids = tok(text, add_special_tokens=False).input_ids
    assert len(ids) == len(text) and tok.decode(ids) == text
    assert tok.eos_token_id == 2 and tok.pad_token_id == 0
    m1, m2 = load_policy(path), load_policy(path)
    n_params = sum(p.numel() for p in m1.parameters())
    assert 3.0e6 < n_params < 4.0e6
    assert m1.config.num_experts == 8 and m1.config.num_experts_per_tok == 2
    x = torch.tensor([ids])
    with torch.no_grad():
        torch.testing.assert_close(m1(x).logits, m2(x).logits, rtol=0, atol=0)
        out = m1(x, output_router_logits=True)
    assert out.aux_loss is not None and len(out.router_logits) == 4


def test_build_is_deterministic_by_seed(tmp_path):
    a = load_policy(build_tiny_moe(tmp_path / "a", seed=1))
    b = load_policy(build_tiny_moe(tmp_path / "b", seed=1))
    c = load_policy(build_tiny_moe(tmp_path / "c", seed=2))
    pa, pb, pc = (next(m.parameters()) for m in (a, b, c))
    assert torch.equal(pa, pb) and not torch.equal(pa, pc)


def test_load_rejects_a_directory_that_is_not_a_model(tmp_path):
    import pytest

    with pytest.raises(FileNotFoundError, match="config.json"):
        load_policy(tmp_path)
