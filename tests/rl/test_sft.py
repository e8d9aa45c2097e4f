"""The SFT warm-up (TRL's SFTTrainer) learns the pairs and hands the model to RL as it found it."""

from __future__ import annotations

import pytest

from longcot.policies.build import build_tiny_moe
from longcot.policies.load import load_policy, load_tokenizer
from longcot.rl.sft import run_sft


@pytest.mark.parametrize("checkpointing", [False, True])
def test_sft_learns_and_leaves_no_gradient_checkpointing_behind(tmp_path, checkpointing):
    path = build_tiny_moe(tmp_path / "init", seed=0, num_hidden_layers=1)
    model, tok = load_policy(path), load_tokenizer(path)
    pairs = [(f"Q: {a}+{b}\n", f"{a}+{b}={a + b}\n\\boxed{{{a + b}}}") for a in range(1, 9) for b in range(1, 9)]
    m = run_sft(model, tok, pairs, tmp_path / "sft", lr=5e-3, epochs=2, batch_size=16,
                gradient_checkpointing=checkpointing)
    assert m["train_loss"] < 3.5  # mean over the run; a uniform guess over ~100 tokens is ~4.6
    # TRL switches checkpointing on for training; RL continuing on this object must not recompute forwards
    assert not model.is_gradient_checkpointing
    assert (tmp_path / "sft" / "config.json").is_file()


def test_sft_with_muonclip_learns_and_removes_its_probes(tmp_path):
    """sft.optimizer=muonclip: TRL trains with our optimizer (and its schedule on top); the QK-Clip probes report
    the last step's max attention logit and do not outlive SFT."""
    path = build_tiny_moe(tmp_path / "init", seed=0, num_hidden_layers=1)
    model, tok = load_policy(path), load_tokenizer(path)
    pairs = [(f"Q: {a}+{b}\n", f"{a}+{b}={a + b}\n\\boxed{{{a + b}}}") for a in range(1, 9) for b in range(1, 9)]
    m = run_sft(model, tok, pairs, tmp_path / "sft", lr=5e-3, epochs=2, batch_size=16, optimizer="muonclip")
    assert m["train_loss"] < 3.5
    assert 0 < m["qk_clip/max_logit"] < 100 and m["qk_clip/clipped_heads"] == 0
    assert not model.model.layers[0].self_attn._forward_hooks
