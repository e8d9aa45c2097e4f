"""What fits where: trainer memory per GPU from a model config (longcot.rl.memory), as a table for docs.

No model is downloaded or built: the estimate is a formula over the config's numbers (benchmarks/configs/*.json
hold the shapes of Qwen2.5-1.5B and Qwen3-30B-A3B). bf16-mixed, gradient checkpointing on, the LM head 1024
tokens at a time (the GPU defaults a long-CoT recipe would use); "fits" leaves ``--reserve-gib`` for the CUDA
context and allocator slack. A colocated vLLM engine is not counted: it sleeps during the update
(longcot.rollout.colocate) or lives on other GPUs.

Run:  PYTHONPATH=src python benchmarks/memory_plan.py --out benchmarks/results/memory_plan.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from longcot.rl.memory import GIB, training_memory  # noqa: E402

SCENARIOS = {  # model -> (strategy, ranks) options
    "qwen2.5-1.5b": [("single", 1), ("ddp", 8), ("fsdp", 8)],
    "qwen3-30b-a3b": [("single", 1), ("fsdp", 8), ("fsdp", 16)],
}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--gpu-gib", type=float, default=80.0)
    ap.add_argument("--reserve-gib", type=float, default=2.0)
    ap.add_argument("--tokens", type=int, nargs="+", default=[8192, 16384, 32768])
    ap.add_argument("--out", default=None)
    a = ap.parse_args(argv)
    rows = []
    for name, options in SCENARIOS.items():
        cfg = json.loads((ROOT / "benchmarks" / "configs" / f"{name}.json").read_text())
        for strategy, ranks in options:
            for tokens in a.tokens:
                est = training_memory(cfg, strategy=strategy, ranks=ranks, precision="bf16-mixed",
                                      micro_batch_tokens=tokens, gradient_checkpointing=True, logit_chunk_tokens=1024)
                rows.append({"model": name, "params_b": round(est.params / 1e9, 2),
                             "active_params_b": round(est.active_params / 1e9, 2), "strategy": strategy,
                             "ranks": ranks, "micro_batch_tokens": tokens, **est.gib(),
                             "fits": est.total / GIB + a.reserve_gib <= a.gpu_gib})
    print("| model | strategy x GPUs | micro-batch tokens | states | compute copies | activations | LM head | "
          f"total GiB/GPU | fits {a.gpu_gib:.0f} GB |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        print(f"| {r['model']} ({r['params_b']}B, {r['active_params_b']}B active) | {r['strategy']} x {r['ranks']} | "
              f"{r['micro_batch_tokens']} | {r['states']} | {r['compute_copies']} | {r['activations']} | "
              f"{r['lm_head']} | {r['total']} | {'yes' if r['fits'] else 'no'} |")
    result = {"command": "PYTHONPATH=src python benchmarks/memory_plan.py " + " ".join(argv or sys.argv[1:]),
              "gpu_gib": a.gpu_gib, "reserve_gib": a.reserve_gib, "precision": "bf16-mixed",
              "gradient_checkpointing": True, "logit_chunk_tokens": 1024, "rows": rows}
    if a.out:
        Path(a.out).write_text(json.dumps(result, indent=1) + "\n")
    return result


if __name__ == "__main__":
    main()
