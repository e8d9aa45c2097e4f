"""Crash-safe runs: a run killed anywhere and resumed with ``--resume`` ends exactly like an uninterrupted one.

Every run here is a real ``longcot train`` of the tiny recipe (SFT, vLLM rollouts, math + length rewards, GRPO)
in its own process; faults are injected from outside by tests/run/faults.py (a signal at the N-th call of a
function), so the code under test has no test hooks. "Exactly" means bit for bit: the final weights and every
metrics row's rewards, gradient norm and token counts equal the uninterrupted run's.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[2]
FAULTS = Path(__file__).with_name("faults.py")
SMALL = ["threads=1", "sft.num_examples=64", "rl.steps=6", "rl.prompts_per_step=4", "rollout.n=4",
         "eval.num_problems=8", "eval.n=1", "data.num_train=400", "data.num_heldout=32", "rl.checkpoint_every=1",
         "rollout.logprobs_every=2", "rl.lr=1e-3",
         # the length reward gives every group a spread of rewards, so every step moves the weights
         "rewards=[{name: math}, {name: k15_length, weight: 1.0}]"]
PARTIAL = ["data.sampler=prioritized", "rollout.max_tokens=96", "eval.max_tokens=96", "partial.token_budget=24"]
COMPARED = ("reward_mean", "grad_norm", "response_tokens", "clip_frac", "entropy", "policy_version")

pytestmark = pytest.mark.slow


def train(out: Path, name: str, *extra: str, fault: tuple[str, int, str, str] | None = None,
          recipe: str = "recipes/tiny/arith-moe.yaml") -> subprocess.CompletedProcess:
    env = {**os.environ, "LONGCOT_NO_PROGRESS": "1", "VLLM_ENABLE_V1_MULTIPROCESSING": "0",
           "VLLM_CPU_KVCACHE_SPACE": "1", "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"}
    args = [str(ROOT / recipe), f"out_dir={out}", f"name={name}", *SMALL, *extra]
    if fault is None:
        cmd = [sys.executable, "-m", "longcot.cli", "train", *args]
    else:
        target, nth, sig, when = fault
        cmd = [sys.executable, str(FAULTS), target, str(nth), sig, when, "--", *args]
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)


def rows(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def assert_same_run(run: Path, ref: Path) -> None:
    """Final weights equal (<= 1e-6) and each step exactly once, with the same numbers."""
    final = "checkpoints/final/model.safetensors"
    a, b = load_file(run / final), load_file(ref / final)
    assert max((a[k] - b[k]).abs().max().item() for k in b) <= 1e-6
    got, want = rows(run), rows(ref)
    assert [r["step"] for r in got] == [r["step"] for r in want] == list(range(6))
    for g, w in zip(got, want, strict=True):
        assert {k: g.get(k) for k in COMPARED} == {k: w.get(k) for k in COMPARED}


@pytest.fixture(scope="module")
def out(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("resume")


@pytest.fixture(scope="module")
def reference(out) -> Path:
    done = train(out, "ref")
    assert done.returncode == 0, done.stderr[-3000:]
    sft = load_file(out / "ref/checkpoints/sft/model.safetensors")
    final = load_file(out / "ref/checkpoints/final/model.safetensors")
    assert max((final[k] - sft[k]).abs().max().item() for k in sft) > 1e-4  # RL really changed the weights
    return out / "ref"


def test_killed_mid_generation_optimizer_and_state_write_resumes_bit_exact(out, reference):
    """Generate call 1 is the eval after SFT, call k+2 is RL step k. Kills: SIGKILL as step 2 generates, SIGKILL
    right after step 3's optimizer step, SIGTERM as step 4 generates (the step finishes, a state is written, exit
    143), SIGKILL inside the next state write (before its manifest); then resume to the end."""
    run = out / "chain"
    gen = "longcot.rollout.vllm:VLLMEngine.generate"
    first = train(out, "chain", fault=(gen, 4, "KILL", "before"))
    assert first.returncode == -9 and (run / "states/latest").read_text().strip() == "step-00000002"
    # (the learner's update, not AdamW.step: loading a state calls step() once with zero grads and lr 0, torch
    # DCP's way to create the optimizer state before filling it)
    second = train(out, "chain", "--resume", fault=("longcot.rl.learner:Learner._op_update", 2, "KILL", "after"))
    assert second.returncode == -9 and len(rows(run)) == 3  # step 3 was updated in memory, never saved
    third = train(out, "chain", "--resume", fault=(gen, 2, "TERM", "before"))
    assert third.returncode == 143, third.stderr[-3000:]
    assert "stopped by SIGTERM" in third.stderr and "--resume" in third.stderr.splitlines()[-1]
    assert (run / "states/latest").read_text().strip() == "step-00000005" and len(rows(run)) == 5
    fourth = train(out, "chain", "--resume", fault=("longcot.run.state:_write_manifest", 1, "KILL", "before"))
    assert fourth.returncode == -9 and (run / "states/latest").read_text().strip() == "step-00000005"
    assert list((run / "states").glob(".tmp-*"))  # the torn write is left as a temporary directory ...
    last = train(out, "chain", "--resume")
    assert last.returncode == 0, last.stderr[-3000:]
    assert not list((run / "states").glob(".tmp-*"))  # ... and cleaned up by the next writer
    assert sorted(p.name for p in (run / "states").glob("step-*")) == ["step-00000005", "step-00000006"]
    assert_same_run(run, reference)


def test_stopped_mid_sft_resumes_the_stage_not_restarts_it(out, reference):
    """SIGTERM as SFT's first optimizer step runs (2 steps in all): the step finishes, a TRL checkpoint is written,
    exit 143 with the --resume command. A plain rerun is refused (the checkpoint is work worth keeping); --resume
    continues SFT at step 2 and the run ends exactly as the uninterrupted one; the SFT checkpoints are deleted."""
    run = out / "sftstop"
    first = train(out, "sftstop", fault=("trl:SFTTrainer.training_step", 1, "TERM", "before"))
    assert first.returncode == 143, first.stderr[-3000:]
    assert "checkpoints/sft/trl/checkpoint-1" in first.stderr and "--resume" in first.stderr.splitlines()[-1]
    assert not (run / "checkpoints/sft/config.json").exists() and not (run / "states").exists()
    from longcot.report import render

    assert "SFT: stopped at optimizer step 1 of 2 (checkpoints/sft/trl/checkpoint-1)" in render(run)
    again = train(out, "sftstop")
    assert again.returncode == 2 and "pass --resume to continue it" in again.stderr
    done = train(out, "sftstop", "--resume")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "SFT: continuing from" in done.stderr and "checkpoint-1" in done.stderr
    assert not (run / "checkpoints/sft/trl").exists() and "SFT: 64 examples" in render(run)
    assert_same_run(run, reference)


def test_ctrl_c_outside_a_step_ends_with_one_line_and_resumes(out, reference):
    """Ctrl-C during the evaluation after SFT (no step to finish there): the run ends with exit 130, the --resume
    command and no traceback (it printed vLLM's and Python's, ~140 lines); --resume ends like the uninterrupted run."""
    run = out / "ctrlc"
    first = train(out, "ctrlc", fault=("longcot.rollout.vllm:VLLMEngine.generate", 1, "INT", "before"))
    assert first.returncode == 130, first.stderr[-3000:]
    assert "Traceback" not in first.stderr and "interrupted; finished stages and training states are kept" in \
        first.stderr and first.stderr.splitlines()[-1].endswith("--resume")
    done = train(out, "ctrlc", "--resume")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "SFT already finished in this run" in done.stderr
    assert_same_run(run, reference)


def test_corrupt_latest_state_falls_back_to_the_one_before(out, reference):
    run = out / "corrupt"
    shutil.copytree(reference, run)
    torn = run / "states/step-00000006/learner.pt"
    torn.write_bytes(torn.read_bytes()[:1000])
    done = train(out, "corrupt", "--resume")
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"{torn}: 1000 bytes, the manifest says" in done.stderr
    assert "resuming from" in done.stderr and "step-00000005 at RL step 5" in done.stderr
    assert_same_run(run, reference)


def test_resumes_on_another_trainer_layout(out, reference):
    """A run saved by one process resumes on two FSDP ranks (more GPUs after a restart): the state's optimizer is
    the full one keyed by parameter name. The last step is recomputed on the new layout: the same samples, and an
    update equal up to float summation order."""
    run = out / "relayout"
    shutil.copytree(reference, run)
    shutil.rmtree(run / "states/step-00000006")
    (run / "states/latest").write_text("step-00000005\n")
    done = train(out, "relayout", "trainer.strategy=fsdp", "trainer.ranks=2", "--resume")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "step-00000005 at RL step 5" in done.stderr and "trainer ranks up: fsdp" in done.stderr
    final = "checkpoints/final/model.safetensors"
    a, b = load_file(run / final), load_file(reference / final)
    assert max((a[k] - b[k]).abs().max().item() for k in b) <= 1e-5
    got, want = rows(run)[-1], rows(reference)[-1]
    assert got["step"] == want["step"] == 5 and got["response_tokens"] == want["response_tokens"]
    assert got["reward_mean"] == want["reward_mean"] and got["grad_norm"] == pytest.approx(want["grad_norm"], rel=1e-4)


def test_partial_rollout_buffer_and_prioritized_sampler_survive_a_kill(out):
    recipe = "recipes/tiny/arith-moe-partial.yaml"
    ref = train(out, "pref", *PARTIAL, recipe=recipe)
    assert ref.returncode == 0, ref.stderr[-3000:]
    assert any(r["partial/buffered"] > 0 for r in rows(out / "pref")[:3])  # unfinished samples cross steps
    first = train(out, "pkill", *PARTIAL, recipe=recipe, fault=("longcot.rollout.partial:VLLMBackend.run", 3, "KILL",
                                                                 "before"))
    assert first.returncode == -9
    done = train(out, "pkill", *PARTIAL, "--resume", recipe=recipe)
    assert done.returncode == 0, done.stderr[-3000:]
    assert_same_run(out / "pkill", out / "pref")
    for got, want in zip(rows(out / "pkill"), rows(out / "pref"), strict=True):
        assert got["partial/buffered"] == want["partial/buffered"]


def test_changed_key_refused_and_existing_run_never_wiped(out, reference, capsys):
    from longcot.cli import main

    args = ["train", str(ROOT / "recipes/tiny/arith-moe.yaml"), f"out_dir={out}", "name=ref", *SMALL]
    before = (reference / "metrics.jsonl").read_bytes()
    assert main([*args, "rl.lr=0.5", "rollout.n=8", "--resume"]) == 2
    err = capsys.readouterr().err
    assert "rl.lr: 0.001 -> 0.5" in err and "rollout.n: 4 -> 8" in err and "rl.steps" in err
    assert main(args) == 2
    assert "pass --resume to continue it, --overwrite to delete it" in capsys.readouterr().err
    assert (reference / "metrics.jsonl").read_bytes() == before
