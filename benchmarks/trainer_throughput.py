"""Trainer throughput and MFU of longcot's policy update for a 0.5B-class model on a GPU.

What is timed: ``Learner.update``, the exact code an RL step runs after rollouts and rewards (collate ->
response log-probs -> registered loss -> backward -> grad clip -> AdamW), on synthetic trajectories of the
shape a long-CoT step produces (P prompts x G samples, prompt and response lengths given). Generation and
weight sync are not in it: this measures the trainer, the part that is ours on a GPU (vLLM generates).

The model is built from a config (no download) with random weights: throughput does not depend on the values.
The learner keeps float32 master weights and computes in ``--precision`` (bf16-mixed by default on a GPU: bf16
autocast, float32 AdamW state). Default shape: Qwen2.5-0.5B (24 layers, d=896, 14/2 heads, MLP 4864, vocab
151936, tied embeddings; 494M parameters).

MFU = model FLOPs per second / peak dense bf16 FLOP/s of the device. Model FLOPs per trained token =
6 x (parameters in matmuls, the LM head included) + attention 6 x layers x d x context (causal: each token
attends to half its sequence on average, fwd 2 matmuls of 2 FLOPs per multiply-add, bwd twice fwd).

Run (on a GPU machine):  PYTHONPATH=src python benchmarks/trainer_throughput.py --out results.json

``--ab KEY=VALUE ...``: a second learner with those recipe overrides; each batch goes through both, in alternating
order, and ``ab_speedup`` is the ratio of their median step times. E.g. ``--zero-signal 0.5 --base
rl.skip_zero_advantage=false --ab rl.skip_zero_advantage=true`` (half the groups with advantage 0: what skipping
them saves, docs/algorithms.md) or ``--policy CHECKPOINT --ab rl.micro_batch_size=128`` (the demo's update with
micro-batches twice as large).
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from longcot.config import load_recipe  # noqa: E402
from longcot.policies.load import load_policy  # noqa: E402
from longcot.record import Trajectory  # noqa: E402
from longcot.rl.learner import Learner  # noqa: E402

# Dense bf16 peak (no sparsity) from the vendors' data sheets.
PEAK_BF16 = {"H100": 989e12, "H200": 989e12, "A100": 312e12}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--n", type=int, default=8, help="samples per prompt")
    ap.add_argument("--prompt-len", type=int, default=256)
    ap.add_argument("--response-len", type=int, default=1024, help="mean; lengths uniform in [len/2, 3len/2]")
    ap.add_argument("--micro-batch", type=int, default=8, help="sequences per forward/backward")
    ap.add_argument("--micro-batch-tokens", type=int, default=0, help="token budget per micro-batch (0: count only)")
    ap.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16-mixed"])
    ap.add_argument("--logit-chunk", type=int, default=1024, help="rl.logit_chunk_tokens (0: whole micro-batch)")
    ap.add_argument("--loss", default="ppo_clip")
    ap.add_argument("--steps", type=int, default=6, help="timed steps (after --warmup)")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--gradient-checkpointing", action="store_true")
    ap.add_argument("--layers", type=int, default=24)
    ap.add_argument("--hidden", type=int, default=896)
    ap.add_argument("--intermediate", type=int, default=4864)
    ap.add_argument("--heads", type=int, default=14)
    ap.add_argument("--kv-heads", type=int, default=2)
    ap.add_argument("--vocab", type=int, default=151936)
    ap.add_argument("--zero-signal", type=float, default=0.0,
                    help="fraction of groups whose samples all get advantage 0 (equal rewards)")
    ap.add_argument("--policy", default=None, help="a checkpoint to train instead of the --layers ... model")
    ap.add_argument("--base", nargs="+", default=[], metavar="KEY=VALUE", help="recipe overrides of the learner")
    ap.add_argument("--ab", nargs="+", default=None, metavar="KEY=VALUE",
                    help="a second learner with these recipe overrides (after --base); every batch goes through "
                         "both (the order alternates) and ab_speedup = median step of the first / of the second")
    ap.add_argument("--out", default=None)
    return ap.parse_args(argv)


def build_model(a: argparse.Namespace) -> torch.nn.Module:
    from transformers import AutoModelForCausalLM, Qwen2Config

    cfg = Qwen2Config(vocab_size=a.vocab, hidden_size=a.hidden, intermediate_size=a.intermediate,
                      num_hidden_layers=a.layers, num_attention_heads=a.heads, num_key_value_heads=a.kv_heads,
                      max_position_embeddings=32768, tie_word_embeddings=True, attn_implementation="sdpa")
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)  # the learner places and casts it


def matmul_params(model: torch.nn.Module) -> int:
    """Parameters that take part in a matmul per token: all but the embedding table, plus the LM head
    (which, tied, shares the table's storage but still costs d x V multiply-adds per token)."""
    emb = model.get_input_embeddings().weight
    head = model.get_output_embeddings().weight
    total = sum(p.numel() for p in model.parameters())
    return total - emb.numel() + (head.numel() if head is emb else 0)


def synthetic_batch(a: argparse.Namespace, rng: random.Random, step: int) -> list[Trajectory]:
    trajs = []
    zero_groups = round(a.zero_signal * a.prompts)  # the first ones: same count every step
    for p in range(a.prompts):
        prompt = [rng.randrange(a.vocab) for _ in range(a.prompt_len)]
        for _ in range(a.n):
            r = rng.randint(a.response_len // 2, a.response_len * 3 // 2)
            trajs.append(Trajectory(prompt_id=f"{step}-{p}", group_id=f"{step}-{p}", prompt_ids=prompt,
                                    response_ids=[rng.randrange(a.vocab) for _ in range(r)],
                                    rollout_logprobs=[-2.0] * r,
                                    advantage=0.0 if p < zero_groups else rng.gauss(0.0, 1.0)))
    return trajs


def step_flops(trajs: list[Trajectory], n_matmul: int, layers: int, d_attn: int) -> float:
    """Forward+backward FLOPs of one update over ``trajs`` (each sequence is run once: padded rows)."""
    total = 0.0
    for t in trajs:
        s = len(t.prompt_ids) + len(t.response_ids)
        total += 6 * n_matmul * s + 6 * layers * d_attn * s * s  # attention: 12 L d s^2 / 2 (causal half)
    return total


class PadOnly:
    pad_token_id = 0


def learner_for(a: argparse.Namespace, extra: list[str]) -> Learner:
    model = build_model(a) if a.policy is None else load_policy(a.policy)
    overrides = [f"rl.micro_batch_size={a.micro_batch}", f"rollout.max_tokens={a.response_len * 2}",
                 f"rl.micro_batch_tokens={a.micro_batch_tokens}", f"trainer.precision={a.precision}",
                 f"rl.gradient_checkpointing={str(a.gradient_checkpointing).lower()}",
                 f"rl.logit_chunk_tokens={a.logit_chunk}", f"rl.loss.name={a.loss}", *extra]
    return Learner(model, PadOnly(), load_recipe(ROOT / "recipes/tiny/arith-moe.yaml", overrides))


def main(argv: list[str] | None = None) -> dict:
    a = parse_args(argv)
    cuda = torch.cuda.is_available()  # on a CPU it still runs (a smoke test), with no MFU
    name = torch.cuda.get_device_name() if cuda else "cpu"
    peak = next((v for k, v in PEAK_BF16.items() if k in name), None)
    learners = [learner_for(a, a.base)] + ([learner_for(a, [*a.base, *a.ab])] if a.ab else [])
    model = learners[0].scorer.lm
    if a.policy is not None:  # the synthetic batch draws token ids from the policy's vocabulary
        a.vocab, a.layers, a.hidden = model.config.vocab_size, model.config.num_hidden_layers, model.config.hidden_size
    n_params, n_matmul = sum(p.numel() for p in model.parameters()), matmul_params(model)
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    rng = random.Random(0)
    times, tokens, flops = [[] for _ in learners], [], []
    for step in range(a.warmup + a.steps):
        trajs = synthetic_batch(a, rng, step)
        order = list(range(len(learners)))[:: -1 if step % 2 else 1]
        for i in order:
            sync()
            t0 = time.perf_counter()
            learners[i].update(trajs)
            sync()
            if step >= a.warmup:
                times[i].append(time.perf_counter() - t0)
        if step >= a.warmup:
            tokens.append(sum(len(t.prompt_ids) + len(t.response_ids) for t in trajs))
            flops.append(step_flops(trajs, n_matmul, a.layers, a.hidden))
    sec = statistics.median(times[0])
    tok_s = statistics.median(t / s for t, s in zip(tokens, times[0], strict=True))
    flop_s = statistics.median(f / s for f, s in zip(flops, times[0], strict=True))
    result = {"device": name, "torch": torch.__version__, "params": n_params, "matmul_params": n_matmul,
              "precision": learners[0].precision, "shape": vars(a), "median_step_seconds": sec,
              "sequences_per_step": a.prompts * a.n, "tokens_per_s": tok_s, "model_tflop_per_s": flop_s / 1e12,
              "peak_bf16_tflop_per_s": peak / 1e12 if peak else None, "mfu": flop_s / peak if peak else None,
              "max_memory_gib": torch.cuda.max_memory_allocated() / 2**30 if cuda else None,
              "command": " ".join(["python benchmarks/trainer_throughput.py", *(argv or sys.argv[1:])])}
    if a.ab:  # tokens/s and MFU above are the first learner's, counting every sample's tokens
        result |= {"ab_overrides": a.ab, "ab_median_step_seconds": statistics.median(times[1]),
                   "ab_speedup": sec / statistics.median(times[1])}
    print(json.dumps(result, indent=1))
    if a.out:
        Path(a.out).write_text(json.dumps(result, indent=1) + "\n")
    return result


if __name__ == "__main__":
    main()
