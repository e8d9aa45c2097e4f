"""Peak memory and time of one training micro-step of the tiny MoE on one response of 1k-32k tokens (CPU).

What is measured: ``Learner.update`` on one trajectory (a 16-token prompt + one response of N tokens: one
micro-batch, the packed layout, the registered ppo_clip loss, AdamW), the exact code an RL step runs. Each
point runs in a fresh subprocess: the learner is built and warmed up with one short update (so the optimizer
state exists), then the kernel's peak-RSS counter is reset (``/proc/self/clear_refs`` 5) and the measured update
runs; ``step_peak_mib`` = peak RSS during the update - RSS before it (``VmHWM`` - ``VmRSS``, /proc/self/status).
RSS, not torch's allocator statistics: torch keeps none for the CPU, and RSS is what the machine runs out of
(with glibc's mmap threshold fixed, so that freed tensors leave RSS: see ``run_point``).

Variants (docs/benchmarks.md "Trainer memory"):
- ``plain``: no activation checkpointing, the LM head on all tokens at once (``rl.logit_chunk_tokens=0``);
- ``ckpt+chunk``: ``rl.gradient_checkpointing=true`` and the LM head 1024 tokens at a time;
- ``masked``: plain, with the packed layout's masked attention route forced (the route every micro-batch took
  before: an L x (P + L) float mask per response), to show what the mask-free causal route saves.

Run:  PYTHONPATH=src python benchmarks/trainer_memory.py --out benchmarks/results/trainer_memory.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
VARIANTS = {
    "plain": ["rl.gradient_checkpointing=false", "rl.logit_chunk_tokens=0"],
    "ckpt+chunk": ["rl.gradient_checkpointing=true", "rl.logit_chunk_tokens=1024"],
    "masked": ["rl.gradient_checkpointing=false", "rl.logit_chunk_tokens=0"],
}
PROMPT_TOKENS = 16


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tokens", type=int, nargs="+", default=[1024, 4096, 16384, 32768])
    ap.add_argument("--variants", nargs="+", default=["plain", "ckpt+chunk"], choices=sorted(VARIANTS))
    ap.add_argument("--masked-max-tokens", type=int, default=16384,
                    help="longest response for the masked variant (its float mask alone is 4 x N^2 bytes)")
    ap.add_argument("--out", default=None)
    ap.add_argument("--point", nargs=2, metavar=("VARIANT", "TOKENS"), help=argparse.SUPPRESS)  # child mode
    return ap.parse_args(argv)


def status_mib(key: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
    raise KeyError(key)


def measure_point(variant: str, tokens: int) -> dict:
    """One micro-step in this (fresh) process; returns the measurements."""
    import random
    import tempfile

    import torch

    sys.path.insert(0, str(ROOT / "src"))
    from longcot.config import load_recipe
    from longcot.policies.build import build_tiny_moe
    from longcot.policies.load import load_policy, load_tokenizer
    from longcot.record import Trajectory
    from longcot.rl import batch as batch_module
    from longcot.rl.learner import Learner
    from longcot.rl.packing import pack_trajectories

    torch.set_num_threads(1)
    if variant == "masked":  # force the masked attention route whatever the size (collate's packing call)
        batch_module.pack_trajectories = lambda trajs, T: pack_trajectories(trajs, T, mask_cap=1 << 20)
    with tempfile.TemporaryDirectory() as tmp:
        path = build_tiny_moe(Path(tmp) / "m", seed=0, max_position_embeddings=tokens + PROMPT_TOKENS + 1)
        model, tok = load_policy(path), load_tokenizer(path)
    recipe = load_recipe(None, ["threads=1", f"rl.micro_batch_tokens={tokens + PROMPT_TOKENS}",
                                f"rollout.max_tokens={tokens}", *VARIANTS[variant]])
    learner = Learner(model, tok, recipe)
    rng = random.Random(0)
    prompt = [rng.randrange(4, 90) for _ in range(PROMPT_TOKENS)]

    def traj(n: int) -> Trajectory:
        resp = [rng.randrange(4, 90) for _ in range(n)]
        return Trajectory("p", "g", prompt, resp, [-4.0] * n, advantage=1.0)

    learner.update([traj(64)])  # warm-up: optimizer state, allocator pools
    batch = [traj(tokens)]
    route = learner._plan(batch)[0][1].packed.route
    rss_before = status_mib("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # reset the peak-RSS counter (VmHWM) to the current RSS
    t0 = time.perf_counter()
    metrics = learner.update(batch)
    seconds = time.perf_counter() - t0
    peak = status_mib("VmHWM")
    return {"variant": variant, "response_tokens": tokens, "prompt_tokens": PROMPT_TOKENS, "attention_route": route,
            "rss_before_mib": round(rss_before, 1), "peak_rss_mib": round(peak, 1),
            "step_peak_mib": round(peak - rss_before, 1), "seconds": round(seconds, 2),
            "loss_finite": bool(torch.isfinite(torch.tensor(metrics["loss"]))), "torch": torch.__version__}


def run_point(variant: str, tokens: int) -> dict:
    # A fixed mmap threshold: glibc then maps every large block and unmaps it on free, so RSS follows the live
    # tensors. Its default threshold adapts to past frees and freed blocks stay resident: without it the
    # checkpointed 32k point measured 1486 MiB (results/trainer_memory_glibc_default.json), with it 739.
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT / "src"), "MALLOC_MMAP_THRESHOLD_": "131072"}
    proc = subprocess.run([sys.executable, __file__, "--point", variant, str(tokens)], capture_output=True, text=True,
                          env=env, check=False)
    if proc.returncode != 0:
        return {"variant": variant, "response_tokens": tokens, "error": proc.stderr.strip().splitlines()[-1:]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def growth(points: list[dict], variant: str, lo: int, hi: int) -> float | None:
    by = {p["response_tokens"]: p for p in points if p["variant"] == variant and "step_peak_mib" in p}
    if lo in by and hi in by:
        return round(by[hi]["step_peak_mib"] / by[lo]["step_peak_mib"], 2)
    return None


def main(argv: list[str] | None = None) -> dict:
    a = parse_args(argv)
    if a.point:
        print(json.dumps(measure_point(a.point[0], int(a.point[1]))))
        return {}
    points = []
    for variant in a.variants:
        for n in a.tokens:
            if variant == "masked" and n > a.masked_max_tokens:
                continue
            p = run_point(variant, n)
            print(json.dumps(p), flush=True)
            points.append(p)
    result = {"command": "PYTHONPATH=src python benchmarks/trainer_memory.py " + " ".join(argv or sys.argv[1:]),
              "machine": f"{os.cpu_count()} cores, shared; 1 thread per point", "points": points,
              "peak_growth_4k_to_32k": {v: growth(points, v, 4096, 32768) for v in a.variants}}
    print(json.dumps(result["peak_growth_4k_to_32k"]))
    if a.out:
        Path(a.out).write_text(json.dumps(result, indent=1) + "\n")
    return result


if __name__ == "__main__":
    main()
