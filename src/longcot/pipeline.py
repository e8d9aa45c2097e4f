"""``longcot train``: build -> SFT warm-up -> RL -> eval, as a recipe says, into ``runs/<name>/``.

The run directory is written as the run goes (config first, a metrics row per step, checkpoints, the
summary after each stage), so a crash loses at most the current step.
"""

from __future__ import annotations

import logging
import os
import random
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

from longcot.config import Recipe
from longcot.data import Task, build_task, needed_fields
from longcot.data.samplers import make_sampler
from longcot.eval.evaluate import evaluate
from longcot.eval.grading import make_grader
from longcot.policies.build import build_tiny_moe
from longcot.policies.load import load_policy, load_tokenizer
from longcot.rollout import agents, build_engine
from longcot.rollout.base import SamplingConfig
from longcot.run import RunDir

log = logging.getLogger(__name__)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)


def heldout_eval(engine, tokenizer, task: Task, recipe: Recipe, out_dir: Path) -> dict:
    """Accuracy (avg@n: mean correctness over ``eval.n`` samples per problem, judged by ``eval.grader``) on the
    first ``eval.num_problems`` held-out problems; greedy when ``eval.temperature`` is 0."""
    rows = task.heldout[: recipe.eval.num_problems]
    prompts = [task.prompt(r, tokenizer) for r in rows]
    n = recipe.eval.n if recipe.eval.temperature > 0 else 1
    sampling = SamplingConfig(n=n, temperature=recipe.eval.temperature, max_tokens=recipe.eval.max_tokens,
                              seed=recipe.seed, logprobs=False)
    summary = evaluate(engine, tokenizer, prompts, sampling, make_grader(recipe.eval.grader), out_dir, ks=[1])
    m = summary["metrics"]
    return {"accuracy": m[f"avg@{n}"], "n": len(rows), "samples_per_problem": n, "temperature": sampling.temperature,
            "response_len_mean": m.get("length/mean"), "correct_len_mean": m.get("length/correct_mean"),
            "tokens_per_s": m.get("tokens_per_s"),
            **getattr(engine, "last_metrics", {})}


def prepare_model(recipe: Recipe, run: RunDir) -> str:
    """The initial policy path: the recipe's model, or the tiny MoE built into ``init/``."""
    if recipe.model.path:
        return recipe.model.path
    path = run.root / "init"
    if not (path / "config.json").is_file():
        build_tiny_moe(path, seed=recipe.model.build_seed, **recipe.model.build_overrides)
    return str(path)


def run_sft_stage(recipe: Recipe, model, tokenizer, task: Task, run: RunDir, rows: list[dict] | None = None) -> str:
    """SFT on ``rows`` (default: :func:`~longcot.data.sft_data.sft_rows`, checked before any model loads)."""
    from longcot.data.sft_data import sft_pairs, sft_rows
    from longcot.rl.sft import run_sft

    pairs = sft_pairs(sft_rows(recipe, task) if rows is None else rows, task, tokenizer)
    out = run.checkpoint("sft")
    metrics = run_sft(model, tokenizer, pairs, out, lr=recipe.sft.lr, epochs=recipe.sft.epochs,
                      batch_size=recipe.sft.batch_size, warmup_ratio=recipe.sft.warmup_ratio,
                      weight_decay=recipe.sft.weight_decay, seed=recipe.seed,
                      gradient_checkpointing=recipe.sft.gradient_checkpointing)
    run.update_summary(sft={"examples": len(pairs), **metrics})
    return str(out)


def make_prompt_source(recipe: Recipe, task: Task, tokenizer):
    """``next_prompts(step, k)`` from the recipe's sampler, and the callback that feeds it success rates."""
    sampler = make_sampler(recipe.data.sampler, task.train, seed=recipe.seed, **recipe.data.sampler_options)

    def next_prompts(step: int, k: int):
        return [task.prompt(task.train[i], tokenizer) for i in sampler.sample(k)]

    def on_results(trajs) -> None:
        sampler.update([t.prompt_id for t in trajs], [t.rewards.get("math", t.reward) > 0 for t in trajs])

    return next_prompts, on_results


def train(recipe: Recipe) -> dict:
    """Run a recipe end to end; returns the summary (also written to ``summary.json``)."""
    from longcot.rl.trainer import RLTrainer

    if recipe.threads:
        torch.set_num_threads(recipe.threads)
    seed_everything(recipe.seed)
    run = RunDir(Path(recipe.out_dir) / recipe.name)
    if run.metrics_path.exists():
        run.metrics_path.unlink()
    run.write_config(recipe)
    # data first: a wrong column path or a missing SFT target fails before a model is built or loaded
    task = build_task(recipe.data, recipe.eval, needed_fields(recipe.rewards, recipe.eval.grader))
    run.write_json("split.json", task.split)
    sft_data = None
    if recipe.sft.enabled:
        from longcot.data.sft_data import sft_rows

        sft_data = sft_rows(recipe, task)
    if recipe.tracking.log_with != "none":  # a tracker that is not installed fails now, not after SFT
        from longcot.run.trackers import check_available

        check_available(recipe.tracking.log_with)
    policy_path = prepare_model(recipe, run)
    tokenizer = load_tokenizer(policy_path)
    model = load_policy(policy_path, recipe.model.dtype)
    run.update_summary(run={"name": recipe.name, "seed": recipe.seed, "policy": policy_path,
                            "train_problems": len(task.train), "heldout_problems": len(task.heldout)})
    if recipe.sft.enabled:
        policy_path = run_sft_stage(recipe, model, tokenizer, task, run, sft_data)
    first = "after_sft" if recipe.sft.enabled else "initial"  # the summary key and log label of the first eval
    max_len = max(recipe.rollout.max_model_len, max(len(task.prompt(r, tokenizer).prompt_ids) for r in task.heldout)
                  + max(recipe.rollout.max_tokens, recipe.eval.max_tokens))
    engine = build_engine(recipe.rollout.engine, policy_path, tokenizer, max_model_len=max_len, seed=recipe.seed,
                          **recipe.rollout.engine_options)
    engine = agents.wrap_engine(engine, recipe, tokenizer, run.root / "agents", policy_path)  # as is unless enabled
    run.trackers = start_trackers(recipe, run)
    try:
        before = heldout_eval(engine, tokenizer, task, recipe, run.root / "eval" / first)
        run.update_summary(eval={first: before})
        log.info("held-out accuracy %s: %.3f", "after SFT" if recipe.sft.enabled else "of the initial policy (SFT off)",
                 before["accuracy"])
        if recipe.rl.enabled and recipe.rl.steps > 0:
            next_prompts, on_results = make_prompt_source(recipe, task, tokenizer)
            trainer = RLTrainer(model, tokenizer, rl_engine(engine, recipe), recipe, next_prompts, on_results)
            rl_loop(trainer, recipe, run, task, tokenizer)
            after_rl = heldout_eval(engine, tokenizer, task, recipe, run.root / "eval" / "after_rl")
            run.update_summary(eval={"after_rl": after_rl})
            log.info("held-out accuracy after RL: %.3f", after_rl["accuracy"])
    finally:
        if hasattr(engine, "shutdown"):
            engine.shutdown()
        if run.trackers is not None:
            run.trackers.finish()
    from longcot.report import plot_curves

    plot_curves(run.metrics_path, run.root / "curves.png")
    if recipe.agents.enabled:
        from longcot.rollout.agents_report import plot_agent_curves

        plot_agent_curves(run.root)  # agents/curves.png: sub-agents, critical path, PARL reward terms
    return run.summary


def start_trackers(recipe: Recipe, run: RunDir):
    """The recipe's experiment tracker (``tracking.log_with``), or None."""
    if recipe.tracking.log_with == "none":
        return None
    from longcot.config import to_dict
    from longcot.run.trackers import Trackers

    return Trackers(recipe.tracking, recipe.name, run.root, config=to_dict(recipe))


def rl_engine(engine, recipe: Recipe):
    """The engine the RL loop samples from: wrapped for partial rollouts / loop cutting when the recipe asks."""
    if not (recipe.partial.enabled or recipe.partial.repetition.enabled):
        return engine
    from longcot.rollout.partial import PartialRollouts

    return PartialRollouts(engine, recipe.partial)


def rl_loop(trainer, recipe: Recipe, run: RunDir, task: Task, tokenizer) -> None:
    """The RL steps with a progress bar, metrics rows, periodic eval and checkpoints."""
    from longcot.rl.zero_signal import ZeroSignalWatch

    watch = ZeroSignalWatch(reward_names=[r.name for r in recipe.rewards])
    bar = tqdm(range(recipe.rl.steps), desc="rl", unit="step", dynamic_ncols=True,
               disable=os.environ.get("LONGCOT_NO_PROGRESS") == "1")
    for step in bar:
        row, trajs = trainer.step(step)
        if watch.observe(step, row, trajs):
            run.update_summary(warnings=watch.warnings)
        if recipe.eval.every and (step + 1) % recipe.eval.every == 0 and step + 1 < recipe.rl.steps:
            engine = getattr(trainer.engine, "inner", trainer.engine)  # eval bypasses partial rollouts
            t_eval = time.perf_counter()
            ev = heldout_eval(engine, tokenizer, task, recipe, run.root / "eval" / f"step_{step + 1:06d}")
            row["eval/accuracy"] = ev["accuracy"]
            # The eval belongs to this step's wall time: time/* still sums to step_seconds (tokens_per_s
            # stays the training throughput, measured before the eval).
            row["time/eval"] = time.perf_counter() - t_eval
            row["step_seconds"] += row["time/eval"]
        run.log_metrics(row)
        if run.trackers is not None and run.trackers.wants_samples(step):
            run.trackers.log_samples(step, trajs)
        bar.set_postfix(reward=f"{row['reward_mean']:.3f}", acc=f"{row['accuracy']:.3f}",
                        len=f"{row['response_len_mean']:.0f}")
        if recipe.rl.checkpoint_every and (step + 1) % recipe.rl.checkpoint_every == 0:
            save_checkpoint(trainer, tokenizer, run.checkpoint(f"step-{step + 1:06d}"))
    save_checkpoint(trainer, tokenizer, run.checkpoint("final"))


def save_checkpoint(trainer, tokenizer, path: Path) -> None:
    """HF-format weights + tokenizer (loadable by vLLM, transformers and ``longcot eval``)."""
    trainer.accelerator.unwrap_model(trainer.model).save_pretrained(path)
    tokenizer.save_pretrained(path)
