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

from longcot import agents
from longcot.config import Recipe
from longcot.data import Task, build_task, needed_fields
from longcot.data.prompts import PromptSource
from longcot.eval.evaluate import evaluate
from longcot.eval.grading import make_grader
from longcot.policies.build import build_tiny_moe
from longcot.policies.load import load_policy, load_tokenizer
from longcot.rollout.base import SamplingConfig
from longcot.run import RunDir
from longcot.run.checkpoint import restore_training_state, save_training_state
from longcot.run.preemption import Preempted, StopOnSignal
from longcot.run.resume import open_run
from longcot.runtime import make_runtime, rl_engine  # noqa: F401 - rl_engine: kept importable from here

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
    """SFT on ``rows`` (default: :func:`~longcot.data.sft_data.sft_rows`, checked before any model loads),
    continuing from the stage's last checkpoint when a resumed run stopped mid-SFT (only a resumed run has one:
    :func:`~longcot.run.resume.open_run` refuses to start a new run over it)."""
    from longcot.data.sft_data import sft_pairs, sft_rows
    from longcot.rl.sft import last_checkpoint, remove_checkpoints, run_sft

    pairs = sft_pairs(sft_rows(recipe, task) if rows is None else rows, task, tokenizer, recipe.agents)
    from longcot.rl.strategy import resolve_device, resolve_precision

    out = run.checkpoint("sft")
    device = resolve_device(recipe.trainer.device, 0)  # SFT trains on rank 0's device, in the RL precision
    with StopOnSignal() as stop:
        metrics = run_sft(model, tokenizer, pairs, out, lr=recipe.sft.lr, epochs=recipe.sft.epochs,
                          batch_size=recipe.sft.batch_size, warmup_ratio=recipe.sft.warmup_ratio,
                          weight_decay=recipe.sft.weight_decay, seed=recipe.seed, max_length=recipe.sft.max_length,
                          gradient_checkpointing=recipe.sft.gradient_checkpointing, device=device.type,
                          precision=resolve_precision(recipe.trainer.precision, device),
                          optimizer=recipe.sft.optimizer, optimizer_options=recipe.sft.optimizer_options,
                          checkpoint_every=recipe.sft.checkpoint_every, resume_from=last_checkpoint(out), stop=stop)
        run.update_summary(sft={"examples": len(pairs), **metrics})
        remove_checkpoints(out)  # after the summary records the stage: a kill in between resumes from the checkpoint
        if stop.requested:  # the signal came after SFT's last step: the stage is complete, stop before RL
            raise Preempted(stop.signum, str(out))
    return str(out)


def train(recipe: Recipe, resume: bool = False, overwrite: bool = False) -> dict:
    """Run a recipe end to end; returns the summary (also written to ``summary.json``). ``resume`` continues
    ``runs/<name>/`` from its latest training state (finished stages are not redone); ``overwrite`` deletes an
    existing run of that name first."""
    from longcot.config.validate import validate_recipe

    validate_recipe(recipe)  # every name, option, file and this machine's sandbox: before any work
    if recipe.threads:
        torch.set_num_threads(recipe.threads)
    if recipe.agents.enabled:
        agents.train_specialists(recipe)  # specialist sub-agents a frozen role names by recipe, when missing
    seed_everything(recipe.seed)
    run, state = open_run(recipe, resume, overwrite)
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
    run.update_summary(run={"name": recipe.name, "seed": recipe.seed, "policy": policy_path,
                            "train_problems": len(task.train), "heldout_problems": len(task.heldout),
                            "skipped_no_answer": task.skipped_no_answer})
    sft_done = recipe.sft.enabled and "sft" in run.summary
    if sft_done:
        policy_path = str(run.checkpoint("sft"))
        log.info("SFT already finished in this run: continuing from %s", policy_path)
    model = load_policy(policy_path, recipe.model.dtype)
    if recipe.sft.enabled and not sft_done:
        policy_path = run_sft_stage(recipe, model, tokenizer, task, run, sft_data)
    first = "after_sft" if recipe.sft.enabled else "initial"  # the summary key and log label of the first eval
    max_len = max(recipe.rollout.max_model_len, longest_prompt(task, tokenizer)
                  + max(recipe.rollout.max_tokens, recipe.eval.max_tokens))
    # local: the engine in this process; ray: rollout workers (and, for RL, a trainer) as Ray actors (docs/cluster.md)
    runtime = make_runtime(recipe, run.root, policy_path, tokenizer, max_len, engine_options(recipe, model))
    engine = runtime.engine
    trainer = None
    run.trackers = start_trackers(recipe, run)
    try:
        if first not in run.summary.get("eval", {}):
            run.update_summary(eval={first: heldout_eval(engine, tokenizer, task, recipe, run.root / "eval" / first)})
        log.info("held-out accuracy %s: %.3f", "after SFT" if recipe.sft.enabled else "of the initial policy (SFT off)",
                 run.summary["eval"][first]["accuracy"])
        if recipe.rl.enabled and recipe.rl.steps > 0:
            prompts = PromptSource(recipe, task, tokenizer)
            trainer = runtime.rl_trainer(model, prompts.next_prompts, prompts.on_results)
            start = restore_training_state(trainer, prompts, run, state) if state else run.truncate_metrics(0)
            ran = rl_loop(trainer, recipe, run, task, tokenizer, prompts, start)
            if ran or "after_rl" not in run.summary.get("eval", {}):
                after_rl = heldout_eval(engine, tokenizer, task, recipe, run.root / "eval" / "after_rl")
                run.update_summary(eval={"after_rl": after_rl})
            log.info("held-out accuracy after RL: %.3f", run.summary["eval"]["after_rl"]["accuracy"])
    finally:
        if trainer is not None:
            trainer.learner.close()  # stops the trainer ranks this process started (trainer.ranks > 1)
        runtime.shutdown()
        if run.trackers is not None:
            run.trackers.finish()
    from longcot.report import plot_curves

    plot_curves(run.metrics_path, run.root / "curves.png")
    if recipe.agents.enabled:
        from longcot.agents.report import plot_agent_curves

        plot_agent_curves(run.root)  # agents/curves.png: sub-agents, critical path, PARL reward terms
    return run.summary


def start_trackers(recipe: Recipe, run: RunDir):
    """The recipe's experiment tracker (``tracking.log_with``), or None."""
    if recipe.tracking.log_with == "none":
        return None
    from longcot.config import to_dict
    from longcot.run.trackers import Trackers

    return Trackers(recipe.tracking, recipe.name, run.root, config=to_dict(recipe))


def engine_options(recipe: Recipe, model) -> dict:
    """The recipe's engine options, plus MoE routing capture on vLLM when RL trains an MoE policy: R3 replays the
    engine's experts, and the routing agreement metric compares them with the trainer's (docs/moe.md). An
    explicit ``rollout.engine_options.routing_capture`` wins."""
    from longcot.policies.moe import is_moe

    options = dict(recipe.rollout.engine_options)
    if recipe.rollout.engine == "vllm" and recipe.rl.enabled and recipe.rl.steps > 0:
        options.setdefault("routing_capture", recipe.rl.routing_replay == "r3" or is_moe(model))
    if recipe.rl.routing_replay == "r3" and not options.get("routing_capture"):
        raise ValueError("rl.routing_replay=r3 needs the engine's expert ids: do not set "
                         "rollout.engine_options.routing_capture to false")
    return options


def longest_prompt(task: Task, tokenizer) -> int:
    """Tokens of the longest prompt, training and held-out rows alike: the engine's context must fit any prompt
    the sampler may draw, not only the ones evaluated."""
    return max(len(task.prompt(r, tokenizer).prompt_ids) for r in [*task.train, *task.heldout])


def rl_loop(trainer, recipe: Recipe, run: RunDir, task: Task, tokenizer, prompts: PromptSource,
            start: int = 0) -> int:
    """RL steps ``start`` .. ``rl.steps - 1`` with a progress bar, metrics rows, periodic eval, tracker samples,
    zero-signal warnings and training states (every ``rl.checkpoint_every`` steps, at the end, and on
    SIGTERM/Ctrl-C). Returns the steps run."""
    from longcot.rl.zero_signal import ZeroSignalWatch

    watch = ZeroSignalWatch(reward_names=[r.name for r in recipe.rewards])
    steps = recipe.rl.steps
    bar = tqdm(range(start, steps), initial=start, total=steps, desc="rl", unit="step", dynamic_ncols=True,
               disable=os.environ.get("LONGCOT_NO_PROGRESS") == "1")
    with StopOnSignal() as stop:
        for step in bar:
            row, trajs = trainer.step(step)
            if watch.observe(step, row, trajs):
                run.update_summary(warnings=watch.warnings)
            if recipe.eval.every and (step + 1) % recipe.eval.every == 0 and step + 1 < steps:
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
            every = recipe.rl.checkpoint_every
            if (every and (step + 1) % every == 0) or step + 1 == steps or stop.requested:
                path = save_training_state(trainer, prompts, run, step + 1, recipe.rl.keep_checkpoints)
            if stop.requested:
                raise Preempted(stop.signum, str(path))
    if start < steps:
        save_checkpoint(trainer, tokenizer, run.checkpoint("final"))
    return steps - start


def save_checkpoint(trainer, tokenizer, path: Path) -> None:
    """HF-format weights + tokenizer (loadable by vLLM, transformers and ``longcot eval``)."""
    trainer.learner.save_pretrained(path)
