"""Partial rollouts vs full rollouts on the long-tailed tiny task: wall time per RL step and held-out accuracy.

One process, one vLLM engine, one SFT checkpoint; two RL arms from that checkpoint with the same prompts per
step (same sampler seed) and the same samples started per step (``rl.prompts_per_step * rollout.n``):

- ``full``: ``partial.enabled=false`` (every sample generates until it stops or hits ``rollout.max_tokens``);
- ``partial``: the recipe as written (token budget per iteration, carry-over, loop cut).

The arms alternate step by step (which one goes first alternates too), so host-load swings hit both; before
each step the engine is loaded with that arm's weights (untimed). Reported: median and mean step seconds,
median generate seconds, samples trained per step, tokens generated per step, held-out greedy accuracy
after the same number of steps. Results go to ``<out>/bench.json`` and a markdown table on stdout.

    OMP_NUM_THREADS=1 python benchmarks/partial_rollouts.py [--steps 12] [--sft-examples 6000] [key=value ...]
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import os
import statistics
import time
from pathlib import Path

os.environ.setdefault("LONGCOT_NO_PROGRESS", "1")

RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "tiny" / "arith-moe-partial.yaml"


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=14)
    ap.add_argument("--sft-examples", type=int, default=6000)
    ap.add_argument("--out", default="runs/bench-partial")
    ap.add_argument("--reuse-sft", action="store_true", help="reuse <out>/checkpoints/sft if it exists")
    ap.add_argument("overrides", nargs="*", help="recipe key=value overrides (both arms)")
    return ap.parse_args()


def build_arms(recipe):
    full = copy.deepcopy(recipe)
    full.partial.enabled = False
    full.partial.repetition.enabled = False
    return {"full": full, "partial": recipe}


def summarize(rows: list[dict], accuracy: float, warmup: int) -> dict:
    """Per-arm numbers. ``steady_*``: steps from ``warmup`` on; before that the partial arm's buffer is
    still filling (its first groups need up to max_tokens / token_budget iterations), so it trains less."""
    col = lambda k: [r.get(k, 0.0) for r in rows]  # noqa: E731
    steady = rows[warmup:] or rows
    return {
        "median_step_s": statistics.median(col("step_seconds")),
        "steady_median_step_s": statistics.median([r["step_seconds"] for r in steady]),
        "steady_trained_samples_per_step": statistics.fmean([r["n_trajs"] for r in steady]),
        "seconds_per_trained_sample": sum(col("step_seconds")) / max(sum(col("n_trajs")), 1),
        "mean_step_s": statistics.fmean(col("step_seconds")),
        "median_generate_s": statistics.median(col("time/generate")),
        "median_train_s": statistics.median([a + b for a, b in zip(col("time/forward_backward"),
                                                                      col("time/optimizer"), strict=True)]),
        "trained_samples_per_step": statistics.fmean(col("n_trajs")),
        "generated_tokens_per_step": statistics.fmean([r.get("partial/generated_tokens", r["response_tokens"])
                                                       for r in rows]),
        "response_len_max_mean": statistics.fmean(col("response_len_max")),
        "truncated_frac_mean": statistics.fmean(col("truncated_frac")),
        "repeat_cut_per_step": statistics.fmean(col("partial/repeat_cut")),
        "segments_per_traj": statistics.fmean(col("partial/segments_per_traj")),
        "buffered_mean": statistics.fmean(col("partial/buffered")),
        "staleness_max": max(col("partial/staleness_max")),
        "tokens_wasted_per_step": statistics.fmean(col("partial/tokens_wasted")),
        "heldout_accuracy": accuracy,
    }


def main() -> int:
    import torch

    from longcot.config import load_recipe
    from longcot.data import build_task
    from longcot.data.prompts import PromptSource
    from longcot.pipeline import (
        heldout_eval,
        prepare_model,
        rl_engine,
        run_sft_stage,
        seed_everything,
    )
    from longcot.policies.load import load_policy, load_tokenizer
    from longcot.rl.trainer import RLTrainer
    from longcot.rollout import build_engine
    from longcot.run import RunDir

    args = parse_args()
    logging.basicConfig(level=logging.WARNING)
    recipe = load_recipe(RECIPE, ["threads=1", f"sft.num_examples={args.sft_examples}", *args.overrides])
    torch.set_num_threads(recipe.threads)
    seed_everything(recipe.seed)
    run = RunDir(args.out)
    tok = load_tokenizer(prepare_model(recipe, run))
    task = build_task(recipe.data)
    sft = run.checkpoint("sft")
    t0 = time.perf_counter()
    if not (args.reuse_sft and (sft / "config.json").is_file()):
        run_sft_stage(recipe, load_policy(prepare_model(recipe, run), recipe.model.dtype), tok, task, run)
    sft_s = time.perf_counter() - t0
    max_len = max(len(task.prompt(r, tok).prompt_ids) for r in task.heldout + task.train[:2000]) + \
        max(recipe.rollout.max_tokens, recipe.eval.max_tokens) + 8
    engine = build_engine("vllm", str(sft), tok, max_model_len=max(max_len, recipe.rollout.max_model_len),
                          seed=recipe.seed, **recipe.rollout.engine_options)
    after_sft = heldout_eval(engine, tok, task, recipe, run.root / "eval" / "after_sft")["accuracy"]
    arms = {}
    for name, r in build_arms(recipe).items():
        prompts = PromptSource(r, task, tok)
        model = load_policy(str(sft), r.model.dtype)
        arms[name] = {"trainer": RLTrainer(model, tok, rl_engine(engine, r), r, prompts.next_prompts,
                                           prompts.on_results), "rows": []}
    for step in range(args.steps):
        order = list(arms) if step % 2 == 0 else list(arms)[::-1]
        for name in order:
            tr = arms[name]["trainer"]
            engine.sync_weights(tr.learner.named_parameters(), tr.version)
            row, trajs = tr.step(step)
            row["n_trajs"] = len(trajs)
            arms[name]["rows"].append(row)
            print(f"step {step} {name:7s} {row['step_seconds']:6.2f}s gen {row['time/generate']:6.2f}s "
                  f"trained {len(trajs):3d} len_max {row['response_len_max']:4.0f} acc {row['accuracy']:.3f}",
                  flush=True)
    results = {"after_sft_accuracy": after_sft, "sft_seconds": sft_s, "steps": args.steps,
               "samples_started_per_step": recipe.rl.prompts_per_step * recipe.rollout.n,
               "token_budget": recipe.partial.token_budget, "max_tokens": recipe.rollout.max_tokens}
    warmup = -(-recipe.rollout.max_tokens // recipe.partial.token_budget)  # ceil
    results["warmup_steps"] = warmup
    for name, arm in arms.items():
        tr = arm["trainer"]
        engine.sync_weights(tr.learner.named_parameters(), tr.version)
        acc = heldout_eval(engine, tok, task, recipe, run.root / "eval" / f"after_rl_{name}")["accuracy"]
        results[name] = summarize(arm["rows"], acc, warmup)
        (run.root / f"metrics_{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in arm["rows"]))
    results["speedup_median_step"] = results["full"]["median_step_s"] / results["partial"]["median_step_s"]
    results["speedup_steady_median_step"] = (results["full"]["steady_median_step_s"]
                                             / results["partial"]["steady_median_step_s"])
    results["speedup_per_trained_sample"] = (results["full"]["seconds_per_trained_sample"]
                                             / results["partial"]["seconds_per_trained_sample"])
    results["accuracy_delta_points"] = 100 * (results["partial"]["heldout_accuracy"]
                                              - results["full"]["heldout_accuracy"])
    (run.root / "bench.json").write_text(json.dumps(results, indent=2))
    print_table(results)
    engine.shutdown()
    return 0


def print_table(res: dict) -> None:
    keys = ["median_step_s", "steady_median_step_s", "steady_trained_samples_per_step",
            "seconds_per_trained_sample", "mean_step_s", "median_generate_s", "median_train_s",
            "trained_samples_per_step",
            "generated_tokens_per_step", "response_len_max_mean", "truncated_frac_mean", "repeat_cut_per_step",
            "segments_per_traj", "buffered_mean", "staleness_max", "tokens_wasted_per_step", "heldout_accuracy"]
    print("\n| metric | full | partial |\n|---|---|---|")
    for k in keys:
        print(f"| {k} | {res['full'][k]:.3f} | {res['partial'][k]:.3f} |")
    print(f"\nspeedup: median step {res['speedup_median_step']:.2f}x, steady-state median step "
          f"{res['speedup_steady_median_step']:.2f}x (from step {res['warmup_steps']}), per trained sample "
          f"{res['speedup_per_trained_sample']:.2f}x; held-out accuracy after SFT "
          f"{res['after_sft_accuracy']:.3f}; partial - full = {res['accuracy_delta_points']:+.1f} points")


if __name__ == "__main__":
    raise SystemExit(main())
