"""Synchronous local RL vs asynchronous Ray RL on the demo job, both arms on the same cores in one run.

Arms, from one SFT'd checkpoint per seed, the same prompts in the same order (same sampler seed):

- ``local``: ``cluster.backend=local`` with ``threads=2`` (the demo as ``make demo`` runs it: rollouts and
  training take turns in one process, each using both cores);
- ``ray``: ``cluster.backend=ray``, one rollout worker (1 CPU) and the trainer (1 CPU), ``rl.max_off_policy_steps=1``
  with ``rl.rollout_correction.rollout_is=token`` (cap 2: decoupled PPO / truncated IS): generation of the next
  batch overlaps the update.
- variants: ``local1`` (1 thread), ``local-ddp2`` / ``ray-ddp2`` (the trainer as two 1-thread DDP ranks), to see
  where the cores go (docs/benchmarks.md).

They run interleaved, ``--block`` steps of one then ``--block`` of the other (the order alternates), so the host's
load hits both alike; a Ray block is timed until its workers have finished the call they were in (its producers are
paused while the local arm runs), so generation it did ahead is charged to it. Each arm's first block (warm-up,
pipeline fill) is not timed. Reported per seed: RL steps per second of each arm and their ratio, held-out accuracy
(avg@4 at T=1 on the demo's 256 held-out problems) after the same number of steps, the Ray arm's busy fractions
(worker, trainer) and where the rest of its time goes, and the host's load average around every block.

    nice -n 10 python benchmarks/async_rollouts.py --seeds 0 1     # writes benchmarks/results/async_rollouts.json
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import sys
import time
from pathlib import Path

from bench_common import prepare_policy

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "recipes/tiny/arith-moe.yaml"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--steps", type=int, default=150, help="RL steps per arm (the demo's 150)")
    ap.add_argument("--block", type=int, default=10, help="steps of one arm before switching")
    ap.add_argument("--arms", nargs="+", default=["local", "ray"], choices=list(ARMS),
                    help="local1: the synchronous loop with 1 thread (how 2 threads fare on a busy host); "
                         "*-ddp2: the trainer as 2 DDP ranks of 1 thread each (processes, not threads)")
    ap.add_argument("--cache", default=str(ROOT / "runs/bench-async"), help="SFT checkpoints, evals")
    ap.add_argument("--out", default=str(ROOT / "benchmarks/results/async_rollouts.json"))
    ap.add_argument("--prepare-only", action="store_true", help="build the seeds' SFT checkpoints and stop")
    ap.add_argument("overrides", nargs="*", help="recipe key=value overrides (both arms)")
    args = ap.parse_args(argv)
    if sum(a.startswith("local") for a in args.arms) > 1 or sum(a.startswith("ray") for a in args.arms) > 1:
        ap.error("one local arm (each holds an in-process vLLM engine) and one Ray arm per run, e.g. --arms local ray")
    return args


DDP2 = ["trainer.strategy=ddp", "trainer.ranks=2"]
ARMS = {
    "local": ["threads=2", "cluster.backend=local"],
    "local1": ["threads=1", "cluster.backend=local"],
    "local-ddp2": ["threads=1", "cluster.backend=local", *DDP2],
    "ray": ["threads=1", "cluster.backend=ray", "cluster.rollout_workers=1", "cluster.worker_cpus=1",
            "cluster.trainer_cpus=1", "rl.max_off_policy_steps=1", "rl.rollout_correction.rollout_is=token"],
}
ARMS["ray-ddp2"] = [*ARMS["ray"], *DDP2]


def arm_recipe(name: str, seed: int, cache: Path, overrides: list[str]):
    from longcot.config import load_recipe

    return load_recipe(RECIPE, [f"seed={seed}", f"out_dir={cache}", f"name=seed{seed}", "eval.every=0", *overrides,
                                *ARMS[name]])


class Arm:
    """One arm's runtime, RL loop, rows and timed blocks."""

    def __init__(self, name, recipe, sft_path, tok, task, run_root: Path):
        from longcot.data.prompts import PromptSource
        from longcot.pipeline import longest_prompt
        from longcot.policies.load import load_policy
        from longcot.runtime import make_runtime

        self.name, self.recipe = name, recipe
        max_len = max(recipe.rollout.max_model_len, longest_prompt(task, tok)
                      + max(recipe.rollout.max_tokens, recipe.eval.max_tokens))
        self.runtime = make_runtime(recipe, run_root / name, str(sft_path), tok, max_len)
        source = PromptSource(recipe, task, tok)
        self.loop = self.runtime.rl_trainer(load_policy(str(sft_path), recipe.model.dtype), source.next_prompts,
                                            source.on_results)
        self.rows: list[dict] = []
        self.blocks: list[float] = []
        self.step = 0

    def block(self, steps: int) -> float:
        import torch

        if self.recipe.threads:
            torch.set_num_threads(self.recipe.threads)
        t0 = time.perf_counter()
        prompts = getattr(self.loop, "prompts", None)
        if prompts is not None:
            prompts.resume()
        for _ in range(steps):
            row, _ = self.loop.step(self.step)
            self.rows.append(row)
            self.step += 1
        if prompts is not None:
            prompts.pause()  # wait for the call in flight: what it generates ahead is this arm's time
        self.blocks.append(time.perf_counter() - t0)
        return self.blocks[-1]


def summarize(arm: Arm, block: int) -> dict:
    timed = arm.blocks[1:]
    steps = block * len(timed)
    rows = arm.rows[block:]
    out = {"steps_timed": steps, "seconds_timed": sum(timed), "steps_per_s": steps / sum(timed),
           "block_s": [round(b, 2) for b in arm.blocks],
           "median_step_seconds_logged": statistics.median(r["step_seconds"] for r in rows),
           "median_time_breakdown_s": {k.removeprefix("time/"): statistics.median(r.get(k, 0.0) for r in rows)
                                       for k in sorted({k for r in rows for k in r if k.startswith("time/")})},
           "train_accuracy_last10": statistics.fmean(r["accuracy"] for r in arm.rows[-10:]),
           # samples the update left out (advantage 0: rl.skip_zero_advantage), a share of the batch
           "zero_advantage_skipped_frac": statistics.fmean(r.get("zero_advantage_skipped_frac", 0.0) for r in rows)}
    extra = sorted({k for r in rows for k in r if k.startswith(("async/", "trainer/time/"))})
    if extra:
        out["async_means"] = {k: statistics.fmean(r.get(k, 0.0) for r in rows) for k in extra}
    return out


def run_seed(args, seed: int, load: list) -> dict:
    import torch

    from longcot.data import build_task
    from longcot.pipeline import heldout_eval, seed_everything
    from longcot.policies.load import load_tokenizer

    cache = Path(args.cache) / f"seed{seed}"
    recipes = {name: arm_recipe(name, seed, cache, args.overrides) for name in args.arms}
    torch.set_num_threads(1)  # the SFT checkpoint: 1 thread is the fastest on a busy 2-core host (docs/benchmarks.md)
    sft_path = prepare_policy(arm_recipe("local", seed, cache, args.overrides), cache)
    if args.prepare_only:
        return {"sft": str(sft_path)}
    seed_everything(seed)
    tok = load_tokenizer(sft_path)
    task = build_task(recipes[args.arms[0]].data)
    arms = {name: Arm(name, r, sft_path, tok, task, cache) for name, r in recipes.items()}
    ray_arm = next((n for n in arms if n.startswith("ray")), None)
    if ray_arm:
        arms[ray_arm].loop.prompts.pause()  # nothing runs before its first block (producers start at its first step)
    try:
        first = arms[args.arms[0]]
        after_sft = heldout_eval(first.runtime.engine, tok, task, first.recipe,
                                 cache / "eval" / "after_sft")["accuracy"]
        rounds = args.steps // args.block
        for r in range(rounds):
            for name in (args.arms if r % 2 == 0 else args.arms[::-1]):
                s = arms[name].block(args.block)
                load.append({"seed": seed, "round": r, "arm": name, "block_s": round(s, 2),
                             "loadavg_1m": os.getloadavg()[0]})
                logging.info("seed %d round %d %s: %d steps in %.1fs (load %.1f)", seed, r, name, args.block, s,
                             os.getloadavg()[0])
        out = {name: summarize(a, args.block) for name, a in arms.items()}
        for name, a in arms.items():
            ev = heldout_eval(a.runtime.engine, tok, task, a.recipe, cache / name / "eval" / "after_rl")
            out[name]["heldout_accuracy"] = ev["accuracy"]
            (cache / name).mkdir(parents=True, exist_ok=True)
            (cache / name / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in a.rows))
        out["heldout_accuracy_sft"] = after_sft
        local = next((n for n in arms if n.startswith("local")), None)
        if ray_arm and local:
            out["ratio_steps_per_s"] = out[ray_arm]["steps_per_s"] / out[local]["steps_per_s"]
            out["accuracy_gap_points"] = 100 * (out[ray_arm]["heldout_accuracy"] - out[local]["heldout_accuracy"])
        return out
    finally:
        for a in arms.values():
            a.runtime.shutdown()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    for name in ("vllm", "datasets", "transformers", "httpx"):
        logging.getLogger(name).setLevel(logging.WARNING)
    load: list[dict] = []
    seeds = {}
    for seed in args.seeds:
        seeds[str(seed)] = run_seed(args, seed, load)
        if args.prepare_only:
            continue
        print(table(seeds), flush=True)
    if args.prepare_only:
        return 0
    result = {"seeds": seeds, "ratio_steps_per_s": {s: r.get("ratio_steps_per_s") for s, r in seeds.items()},
              "accuracy_gap_points": {s: r.get("accuracy_gap_points") for s, r in seeds.items()},
              "load": load, "settings": {"steps": args.steps, "block": args.block, "overrides": args.overrides,
                                         "arms": {name: ARMS[name] for name in args.arms}, "cpus": os.cpu_count()},
              "command": "python benchmarks/async_rollouts.py " + " ".join(sys.argv[1:])}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    return 0


def table(seeds: dict) -> str:
    lines = ["| seed | arm | steps/s | held-out after SFT -> after RL | worker busy | trainer busy |",
             "| --- | --- | ---: | ---: | ---: | ---: |"]
    for s, r in seeds.items():
        for name, a in r.items():
            if not isinstance(a, dict) or "steps_per_s" not in a:
                continue
            am = a.get("async_means", {})
            busy = (f"{am['async/busy/worker0']:.2f} | {am['async/busy/trainer']:.2f}" if am else "- | -")
            lines.append(f"| {s} | {name} | {a['steps_per_s']:.3f} | {r['heldout_accuracy_sft']:.3f} -> "
                         f"{a['heldout_accuracy']:.3f} | {busy} |")
        if "ratio_steps_per_s" in r:
            lines.append(f"| {s} | ray / local | {r['ratio_steps_per_s']:.2f}x | "
                         f"{r['accuracy_gap_points']:+.1f} points | | |")
    return "\n".join(lines)


if __name__ == "__main__":
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    os.environ.setdefault("LONGCOT_NO_PROGRESS", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "ERROR")
    sys.exit(main())
