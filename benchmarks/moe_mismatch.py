"""Rollout/trainer mismatch on the tiny MoE: bf16 vLLM rollouts scored by the fp32 trainer, without and with R3.

One vLLM engine (``--dtype``, routing capture on) samples ``--prompts`` x ``--n`` responses to arithmetic prompts
from the demo task at temperature 1 with its log-probs and expert ids. The fp32 HF policy then scores the same
tokens twice: routing by its own top-k (``none``) and replaying the engine's experts (``r3``). Reported per mode:
routing agreement per MoE layer (trainer's own top-k set == engine's), the token log-prob gap (mean, max, p99),
the k3 estimate of KL(rollout || train) and the fraction of tokens with |gap| > 0.1; for r3 also whether every
token and layer with an engine row was dispatched to exactly the engine's experts. Results go to ``--out``.

    OMP_NUM_THREADS=1 python benchmarks/moe_mismatch.py --model runs/moe-sft/checkpoints/sft
    OMP_NUM_THREADS=1 python benchmarks/moe_mismatch.py            # a freshly built (random) tiny MoE
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parents[1]


def parse_args() -> argparse.Namespace:
    return _parser().parse_args()


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="", help="HF model dir; empty: build the tiny MoE (seed 0) under runs/")
    ap.add_argument("--dtype", default="bfloat16", help="the engine's dtype (the trainer is float32)")
    ap.add_argument("--prompts", type=int, default=32)
    ap.add_argument("--n", type=int, default=8)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--micro-batch", type=int, default=64)
    ap.add_argument("--timing-repeats", type=int, default=0,
                    help="also time the same generate call with and without routing capture, alternating")
    ap.add_argument("--fp32-head", action="store_true",
                    help="run the engine's lm_head in fp32 (vLLM hf_overrides head_dtype=float32)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "moe_mismatch.json"))
    return ap


def command(args: argparse.Namespace) -> str:
    """The command line that reproduces this result (defaults left out)."""
    defaults = vars(_parser().parse_args([]))
    parts = []
    for k, v in vars(args).items():
        if v != defaults[k]:
            flag = f"--{k.replace('_', '-')}"
            parts.append(flag if v is True else f"{flag} {v}")
    return " ".join(["OMP_NUM_THREADS=1 python benchmarks/moe_mismatch.py", *parts])


def score(model, moe, trajs, tok, mode: str, micro: int) -> dict:
    """Trainer log-probs of every response under ``mode`` routing; mismatch and routing metrics."""
    import torch

    from longcot.rl.batch import collate, group_ordered_chunks, response_logprobs
    from longcot.rl.rollout_correction import mismatch_metrics

    moe.mode = mode
    train, roll, exact, where = [], [], True, []
    for chunk in group_ordered_chunks(trajs, micro):
        b = collate(chunk, tok.pad_token_id, pack=True, routing=True)
        with torch.no_grad(), moe.forward(moe.replay_ids(b.routing, first=True), record=True) as p:
            lp = response_logprobs(model, b, temperature=1.0)[0]
        moe.observe(p, b.routing)
        live = b.mask > 0
        train.append(lp[live]), roll.append(b.rollout_logprobs[live])
        where += [(t, k) for t in chunk for k in range(len(t.response_ids))]  # row-major, as lp[live]
        if mode == "r3":  # every row with an engine row dispatched to exactly the engine's experts, every layer
            rep = b.routing.replay
            for layer in range(moe.num_layers):
                have = (rep[:, layer] >= 0).all(-1)
                exact &= bool(torch.equal(p.used[layer][have], rep[have, layer]))
    train, roll = torch.cat(train), torch.cat(roll)
    out = mismatch_metrics(train, roll)
    gap = (train - roll).abs()
    out["mismatch/gap_p99"] = float(gap.quantile(0.99))
    big = gap > 0.05
    out["tokens_gap_gt_0.05"] = int(big.sum())
    out["median_train_logprob_gap_gt_0.05"] = float(train[big].median()) if bool(big.any()) else None
    out["median_train_logprob_all"] = float(train.median())
    out["largest_gaps"] = [  # the tokens behind the max: context (last 8 response tokens + the token), log-probs
        {"gap": float(gap[i]), "train": float(train[i]), "engine": float(roll[i]),
         "context": tok.decode(where[i][0].response_ids[max(0, where[i][1] - 8): where[i][1] + 1])}
        for i in gap.argsort(descending=True)[:12].tolist()]
    out.update(moe.step_metrics())
    if mode == "r3":
        out["replay_exact"] = exact
    return out


def capture_timing(engine, prompts, sampling, repeats: int) -> dict | None:
    """Median seconds of the same seeded generate call with and without routing capture (alternating, so host
    load hits both), and their ratio: what capturing costs a rollout step."""
    import dataclasses
    import statistics

    if repeats <= 0:
        return None
    times: dict[bool, list[float]] = {True: [], False: []}
    for i in range(2 * repeats):
        routed = (i % 2 == 0) == (i // 2 % 2 == 0)  # T F F T T F ...: neither side always goes first
        t0 = time.perf_counter()
        engine.generate(prompts, dataclasses.replace(sampling, routed_experts=routed))
        times[routed].append(time.perf_counter() - t0)
    on, off = statistics.median(times[True]), statistics.median(times[False])
    return {"repeats": repeats, "median_s_capture": on, "median_s_no_capture": off, "ratio": on / off}


def main() -> None:
    args = parse_args()
    import torch

    from longcot.config import load_recipe
    from longcot.data import build_task
    from longcot.policies.build import build_tiny_moe
    from longcot.policies.load import load_policy, load_tokenizer
    from longcot.policies.moe import MoERouting
    from longcot.rollout.base import SamplingConfig
    from longcot.rollout.vllm import VLLMEngine

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    path = args.model or str(build_tiny_moe(ROOT / "runs" / "bench-moe-mismatch" / "init", seed=0))
    tok = load_tokenizer(path)
    recipe = load_recipe(ROOT / "recipes" / "tiny" / "arith-moe.yaml")
    task = build_task(recipe.data)
    prompts = [task.prompt(r, tok) for r in task.heldout[: args.prompts]]
    t0 = time.perf_counter()
    extra = {"hf_overrides": {"head_dtype": "float32"}} if args.fp32_head else {}
    engine = VLLMEngine(path, tok, max_model_len=512, dtype=args.dtype, seed=args.seed, routing_capture=True,
                        **extra)
    try:
        sampling = SamplingConfig(n=args.n, temperature=1.0, max_tokens=args.max_tokens, seed=args.seed,
                                  logprobs=True, routed_experts=True)
        trajs = engine.generate(prompts, sampling)
        timing = capture_timing(engine, prompts, sampling, args.timing_repeats)
        block_size = engine.llm.llm_engine.vllm_config.cache_config.block_size
    finally:
        engine.shutdown()
    gen_s = time.perf_counter() - t0
    model = load_policy(path, "float32")
    moe = MoERouting(model)
    modes = {mode: score(model, moe, trajs, tok, mode, args.micro_batch) for mode in ("none", "r3")}
    result = {
        "command": command(args),
        "model": path, "engine_dtype": args.dtype, "engine_head_dtype": "float32" if args.fp32_head else args.dtype,
        "trainer_dtype": "float32",
        "samples": len(trajs), "response_tokens": sum(len(t.response_ids) for t in trajs),
        "engine_seconds": round(gen_s, 1), "modes": modes, "capture_timing": timing,
        "kv_block_size": block_size, "longest_prompt": max(len(p.prompt_ids) for p in prompts),
        "gap_max_ratio_none_over_r3": modes["none"]["mismatch/gap_max"] / max(modes["r3"]["mismatch/gap_max"], 1e-12),
        "host": platform.node(), "torch": torch.__version__,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1))
    print("| mode | routing agreement | gap mean | gap p99 | gap max | KL k3 | frac > 0.1 |")
    print("|---|---|---|---|---|---|---|")
    for mode, m in modes.items():
        print(f"| {mode} | {m.get('routing/agreement', float('nan')):.4f} | {m['logprob_gap']:.2e} | "
              f"{m['mismatch/gap_p99']:.2e} | {m['mismatch/gap_max']:.2e} | {m['mismatch/kl_k3']:.2e} | "
              f"{m['mismatch/frac_gap_gt_0.1']:.4f} |")
    print(f"max gap none / r3: {result['gap_max_ratio_none_over_r3']:.1f}x; r3 exact: {modes['r3']['replay_exact']}")
    if timing:
        print(f"generate with / without routing capture: {timing['ratio']:.3f} (medians of {timing['repeats']})")


if __name__ == "__main__":
    main()
