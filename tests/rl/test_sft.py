"""The SFT warm-up (TRL's SFTTrainer) learns the pairs and hands the model to RL as it found it."""

from __future__ import annotations

import os
import shutil
import signal

import pytest
import torch

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


PAIRS = [(f"Q: {a}+{b}\n", f"{a}+{b}={a + b}\n\\boxed{{{a + b}}}") for a in range(1, 9) for b in range(1, 9)]


def _sft(tmp_path, name: str, **kw) -> dict:
    """8 optimizer steps (64 pairs, batch 16, 2 epochs) from the same initial weights; the model's state dict."""
    path = tmp_path / "init"
    if not (path / "config.json").is_file():
        build_tiny_moe(path, seed=0, num_hidden_layers=1)
    model, tok = load_policy(path), load_tokenizer(path)
    run_sft(model, tok, PAIRS, tmp_path / name, lr=5e-3, epochs=2, batch_size=16, **kw)
    return {k: v.clone() for k, v in model.state_dict().items()}


def _fail_at_step(monkeypatch, n: int, action) -> None:
    """Run ``action`` as the ``n``-th optimizer step's forward/backward starts (TRL's training_step)."""
    from trl import SFTTrainer

    original, calls = SFTTrainer.training_step, []

    def training_step(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == n:
            action()
        return original(self, *args, **kwargs)

    monkeypatch.setattr(SFTTrainer, "training_step", training_step)


def test_sft_killed_mid_stage_resumes_to_the_same_weights(tmp_path, monkeypatch):
    """A crash in step 6 of 8 (checkpoints every 2 steps) loses steps 5-6 only: resumed from checkpoint-4, SFT ends
    with the uninterrupted run's weights, bit for bit (TRL restores optimizer, schedule, RNG and data position)."""
    from longcot.rl.sft import last_checkpoint

    reference = _sft(tmp_path, "ref")

    def crash():
        raise RuntimeError("killed")

    _fail_at_step(monkeypatch, 6, crash)
    with pytest.raises(RuntimeError, match="killed"):
        _sft(tmp_path, "run", checkpoint_every=2)
    monkeypatch.undo()
    assert not (tmp_path / "run" / "config.json").exists()  # never saved as finished
    # a checkpoint torn by a kill mid-write (no trainer_state.json) is skipped and deleted
    torn = tmp_path / "run" / "trl" / "checkpoint-6"
    shutil.copytree(tmp_path / "run" / "trl" / "checkpoint-4", torn)
    (torn / "trainer_state.json").unlink()
    resume = last_checkpoint(tmp_path / "run")
    assert resume is not None and resume.name == "checkpoint-4" and not torn.exists()
    resumed = _sft(tmp_path, "run", checkpoint_every=2, resume_from=resume)
    assert all(torch.equal(resumed[k], reference[k]) for k in reference)


def test_sft_stopped_by_sigterm_saves_a_checkpoint_and_resumes(tmp_path, monkeypatch):
    """SIGTERM during step 3: the step finishes, checkpoint-3 is written (no periodic checkpoints asked for), and
    Preempted names it; resuming from it ends with the uninterrupted run's weights."""
    from longcot.rl.sft import last_checkpoint
    from longcot.run.preemption import Preempted, StopOnSignal

    reference = _sft(tmp_path, "ref")
    _fail_at_step(monkeypatch, 3, lambda: os.kill(os.getpid(), signal.SIGTERM))
    with StopOnSignal() as stop, pytest.raises(Preempted) as stopped:
        _sft(tmp_path, "run", stop=stop)
    monkeypatch.undo()
    assert stopped.value.exit_code == 143 and stopped.value.state_path.endswith("trl/checkpoint-3")
    assert last_checkpoint(tmp_path / "run").name == "checkpoint-3"
    resumed = _sft(tmp_path, "run", resume_from=last_checkpoint(tmp_path / "run"))
    assert all(torch.equal(resumed[k], reference[k]) for k in reference)


def test_sft_stopped_during_its_last_step_is_finished_not_preempted(tmp_path, monkeypatch):
    """A signal during the last optimizer step leaves nothing to resume: run_sft saves the model as finished and
    leaves the stop to its caller (the pipeline stops before RL), rather than pointing at a checkpoint to redo."""
    from longcot.run.preemption import StopOnSignal

    _fail_at_step(monkeypatch, 8, lambda: os.kill(os.getpid(), signal.SIGTERM))
    with StopOnSignal() as stop:
        _sft(tmp_path, "run", stop=stop)
        assert stop.requested
    assert (tmp_path / "run" / "config.json").is_file()
