"""Weight sync trainer -> engine: after a sync, the engine's logprobs must equal the trainer model's.

The vLLM half also guards a silent vLLM 0.32 bug: after ``reload_weights``, fused-MoE layers keep their
old prepacked expert weights (see ``longcot.rollout.weight_sync.repack_fused_moe``). The test asserts the
bug is still there without the workaround, so we learn when an upgrade fixes it.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from longcot.policies.build import build_tiny_moe
from longcot.rollout.base import Prompt, SamplingConfig
from longcot.rollout.hf import HFEngine
from longcot.rollout.weight_sync import checkpoint_named_params, clean_name


def user_env() -> dict[str, str]:
    """The environment of a user's shell for a subprocess: importing TRL (the SFT tests do) sets
    VLLM_LOGGING_LEVEL=ERROR in this process if it is unset (trl/_compat.py), and a child inheriting that prints
    none of vLLM's warnings, which made the noise test below vacuous after the SFT tests and then fail."""
    return {k: v for k, v in os.environ.items() if k != "VLLM_LOGGING_LEVEL"}


# Fixed sequences (prompt, response) of different lengths; ids 4..99 are characters of the tiny tokenizer.
PAIRS = [([1, 40, 41, 42], list(range(10, 40))), ([1] + list(range(60, 90)), [5, 6, 7, 8, 9]), ([1, 7], [8, 9])]


def reference_logprobs(model, prompt: list[int], response: list[int], temperature: float = 1.0) -> torch.Tensor:
    """The trainer-side truth: one unpadded forward pass, logprob of each response token."""
    ids = torch.tensor([prompt + response])
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0, len(prompt) - 1 : -1].float() / temperature
    return logits.log_softmax(-1).gather(-1, torch.tensor(response)[:, None])[:, 0]


def max_diff(engine, model) -> float:
    got = engine.compute_logprobs([p for p, _ in PAIRS], [r for _, r in PAIRS])
    diffs = [(torch.tensor(g) - reference_logprobs(model, p, r)).abs().max().item()
             for g, (p, r) in zip(got, PAIRS, strict=True)]
    return max(diffs)


def perturb(model, seed: int, scale: float = 0.05) -> None:
    """Noise on every parameter (attention, router, experts, embeddings), like a few large optimizer steps."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * scale)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return build_tiny_moe(tmp_path_factory.mktemp("tiny_moe"))


@pytest.fixture(scope="module")
def vllm_engine(model_dir):
    pytest.importorskip("vllm")
    from longcot.rollout.vllm import VLLMEngine

    engine = VLLMEngine(str(model_dir), max_model_len=256, seed=0)
    yield engine
    engine.shutdown()


def test_clean_name_strips_wrapper_prefixes():
    assert clean_name("module._orig_mod.model.norm.weight") == "model.norm.weight"
    assert clean_name("model.layers.0.mlp.gate.weight") == "model.layers.0.mlp.gate.weight"
    t = torch.ones(2, requires_grad=True)
    (name, out), = checkpoint_named_params([("module.lm_head.weight", t * 2)])
    assert name == "lm_head.weight" and not out.requires_grad


def test_vllm_sync_matches_hf_and_guards_moe_repack_bug(vllm_engine, model_dir):
    trainer = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    assert max_diff(vllm_engine, trainer) < 1e-4  # same checkpoint: the engine starts in agreement

    perturb(trainer, seed=1)
    vllm_engine.repack_moe_after_sync = False
    vllm_engine.sync_weights(trainer.named_parameters(), version=1)
    stale = max_diff(vllm_engine, trainer)
    assert stale > 1e-3, f"vLLM's MoE reload bug seems fixed (diff {stale:.2e}): the repack workaround may go"

    vllm_engine.repack_moe_after_sync = True
    vllm_engine.sync_weights(trainer.named_parameters(), version=1)
    assert max_diff(vllm_engine, trainer) < 1e-4
    for step in (2, 3):  # repeated syncs keep working (the repack must not compound)
        perturb(trainer, seed=step, scale=0.02)
        # Names as a DDP/accelerate-wrapped trainer reports them.
        vllm_engine.sync_weights(((f"module.{n}", p) for n, p in trainer.named_parameters()), step)
        assert max_diff(vllm_engine, trainer) < 1e-4
        assert vllm_engine.version == step and vllm_engine.last_sync_s > 0


def test_vllm_engine_starts_and_syncs_without_noise_and_gives_threads_back(model_dir):
    """vLLM's CPU worker replaces torch.set_num_threads with a warning that its own start-up then prints five
    times, every weight sync warned "RotaryEmbedding: Failed to load weights" (the rotary table is computed,
    not loaded), and start-up printed nine warnings about settings longcot makes on purpose; the engine filters
    them out of what the user sees and puts the real set_num_threads back for the trainer. A layer that really
    fails to load (the empty sync) still warns. In a fresh process: one in-process engine per process, and the
    output is the user's view."""
    pytest.importorskip("vllm")
    code = ("import sys, torch; from longcot.rollout.vllm import VLLMEngine; "
            "from longcot.policies.load import load_policy; "
            "e = VLLMEngine(sys.argv[1], max_model_len=256, seed=0); "
            "e.sync_weights(load_policy(sys.argv[1]).named_parameters(), 1); e.sync_weights([], 2); "
            "print('threads restored:', torch.set_num_threads.__name__ != 'skip_set_num_threads')")
    out = subprocess.run([sys.executable, "-c", code, str(model_dir)], capture_output=True, text=True, timeout=300,
                         env=user_env())
    text = out.stdout + out.stderr
    assert out.returncode == 0, text[-2000:]
    assert "Loading safetensors" in text  # vLLM's start-up output is in it: the next checks are not vacuous
    assert "thread binding" not in text
    assert "RotaryEmbedding" not in text
    for startup in ("Enforce eager set", "Inductor compilation was disabled", "global random seed",
                    "disabling chunked prefill", "triton-cpu is expected", "Model Runner V2", "Reset SSM cache",
                    "doesn't include CPU backend", "torch.distributed.reduce_op"):
        assert startup not in text, startup  # settings longcot makes on purpose, what a CPU vLLM lacks
    assert "RMSNorm: Failed to load weights" in text  # the empty sync: a layer that really loads nothing still warns
    assert "threads restored: True" in out.stdout


def test_the_cli_sets_vllm_warnings_on_before_trl_can_turn_them_off():
    """Importing TRL sets VLLM_LOGGING_LEVEL=ERROR when it is unset, so vLLM's warnings were hidden only in runs
    that ran SFT or DPO before the engine started. The command line decides first; the user's environment wins."""
    code = ("import os; from longcot.cli import main; main(['rewards', 'list']); import trl; "
            "print('level', os.environ['VLLM_LOGGING_LEVEL'])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=user_env())
    assert out.returncode == 0 and out.stdout.splitlines()[-1] == "level WARNING", out.stderr[-2000:]
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                         env={**user_env(), "VLLM_LOGGING_LEVEL": "INFO"})
    assert out.stdout.splitlines()[-1] == "level INFO"


TP_SCRIPT = """
import sys, torch
from longcot.policies.load import load_policy
from longcot.rollout.vllm import VLLMEngine

def gap(engine, model):
    prompts, responses = [[5, 6, 7, 8, 9], [10, 11, 12]], [[20, 21, 22, 23], [30, 31]]
    worst = 0.0
    with torch.no_grad():
        for p, r, got in zip(prompts, responses, engine.compute_logprobs(prompts, responses)):
            logp = torch.log_softmax(model(torch.tensor([p + r])).logits[0].float(), -1)
            worst = max(worst, *(abs(logp[len(p) - 1 + i, t].item() - g) for i, (t, g) in enumerate(zip(r, got))))
    return worst

if __name__ == "__main__":
    engine = VLLMEngine(sys.argv[1], max_model_len=256, tensor_parallel_size=2, distributed_executor_backend="mp")
    model = load_policy(sys.argv[1])
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())) * 0.05)
    before = gap(engine, model)
    engine.sync_weights(model.named_parameters(), 1)
    print("GAPS", before, gap(engine, model))
    engine.shutdown()
"""


@pytest.mark.slow
def test_tensor_parallel_engine_takes_synced_weights(model_dir, tmp_path):
    """tensor_parallel_size 2 (vLLM's workers are processes of their own, here one per core): the sync must hand
    them a picklable list, not the lazy iterator the in-process engine reads; afterwards the engine's log-probs
    are the trainer's (perturbed) model's."""
    pytest.importorskip("vllm")
    script = tmp_path / "tp_sync.py"
    script.write_text(TP_SCRIPT)
    env = {**os.environ, "VLLM_CPU_OMP_THREADS_BIND": "0|1", "VLLM_ENABLE_V1_MULTIPROCESSING": "0",
           "VLLM_CPU_KVCACHE_SPACE": "1", "HF_HUB_OFFLINE": "1"}
    out = subprocess.run([sys.executable, str(script), str(model_dir)], capture_output=True, text=True, timeout=300,
                         env=env)
    assert out.returncode == 0, (out.stdout + out.stderr)[-3000:]
    before, after = map(float, next(line for line in out.stdout.splitlines() if line.startswith("GAPS")).split()[1:])
    assert before > 1e-2 and after < 1e-4


def test_vllm_sleep_mode_is_a_no_op_on_cpu(vllm_engine):
    """Sleep mode is CUDA only: on CPU the engine keeps its memory and says so (longcot.rollout.colocate)."""
    assert vllm_engine.release_memory() is False and not vllm_engine.asleep


def test_vllm_rollout_logprobs_match_trainer_after_sync(vllm_engine, model_dir):
    """What the trainer's mismatch metric sees: sampled-token logprobs vs its own forward pass."""
    trainer = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    perturb(trainer, seed=7)
    vllm_engine.sync_weights(trainer.named_parameters(), version=7)
    prompts = [Prompt("a", [1, 20, 21, 22]), Prompt("b", [1, 50, 51])]
    for temperature in (1.0, 0.7):
        trajs = vllm_engine.generate(prompts, SamplingConfig(n=2, max_tokens=24, temperature=temperature, seed=3))
        for t in trajs:
            ref = reference_logprobs(trainer, t.prompt_ids, t.response_ids, temperature)
            assert (torch.tensor(t.rollout_logprobs) - ref).abs().max().item() < 1e-4
            assert t.segments[0].policy_version == 7


def test_hf_engine_sync_own_copy(model_dir):
    tok = AutoTokenizer.from_pretrained(model_dir)
    trainer = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    engine = HFEngine.from_module(trainer, tok)  # private copy: the trainer can step while it rolls out
    perturb(trainer, seed=1)
    assert max_diff(engine, trainer) > 1e-3
    engine.sync_weights(trainer.named_parameters(), version=1)
    assert max_diff(engine, trainer) < 1e-5 and engine.version == 1
    with pytest.raises(KeyError, match="missing"):
        engine.sync_weights([(n, p) for n, p in trainer.named_parameters() if "experts" not in n], version=2)
    with pytest.raises(KeyError, match="unknown"):
        engine.sync_weights([*trainer.named_parameters(), ("model.extra.weight", torch.zeros(1))], version=2)


def test_hf_engine_shared_module_needs_no_copy(model_dir):
    tok = AutoTokenizer.from_pretrained(model_dir)
    trainer = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    engine = HFEngine.from_module(trainer, tok, share=True)
    perturb(trainer, seed=2)
    assert max_diff(engine, trainer) < 1e-5  # same module: no sync needed, only the version is recorded
    engine.sync_weights(iter(()), version=4)
    assert engine.version == 4
