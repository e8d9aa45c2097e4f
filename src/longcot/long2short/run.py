"""``longcot long2short RECIPE``: from the long-CoT checkpoint, one method, one short model, one run directory.

``runs/<name>/`` holds ``config.yaml``, ``eval/<label>/`` (held-out evaluations under the recipe's ``eval``
settings: ``long``, the ``result``, and ``short`` for merge), ``checkpoints/<method>/`` (the short model, HF
format), ``samples.jsonl`` (rejection sampling, DPO), ``pairs.jsonl`` (DPO) and ``summary.json``, whose
``long2short`` block is what ``longcot long2short report`` tabulates and plots. For ``rl`` the run directory is
the ``longcot train`` one (metrics.jsonl, curves.png) plus that block.

One rollout engine serves the whole run: it is built on the long model, draws the samples, evaluates the long
model, and evaluates every other model after a weight sync (the same path RL uses after each step).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch

from longcot.config import Recipe
from longcot.data import build_task
from longcot.long2short import dpo, rejection, samples
from longcot.long2short.config import METHODS
from longcot.run import RunDir

log = logging.getLogger(__name__)


def check_recipe(recipe: Recipe) -> None:
    """Raise ``ValueError`` for a recipe the command cannot run (before any work)."""
    cfg = recipe.long2short
    if cfg.method not in METHODS:
        raise ValueError(f"long2short.method must be one of {list(METHODS)}, got {cfg.method!r}")
    if not cfg.long_model:
        raise ValueError("long2short.long_model is empty: the long-CoT checkpoint every method starts from "
                         "(e.g. runs/l2s-long/checkpoints/sft, made by recipes/tiny/long2short-long.yaml)")
    if not (Path(cfg.long_model) / "config.json").is_file():
        raise FileNotFoundError(f"long2short.long_model: no Hugging Face checkpoint at {cfg.long_model} "
                                "(train the long model first: longcot train recipes/tiny/long2short-long.yaml)")
    if cfg.method == "merge" and cfg.merge.short_model and not (Path(cfg.merge.short_model) / "config.json").is_file():
        raise FileNotFoundError(f"long2short.merge.short_model: no Hugging Face checkpoint at {cfg.merge.short_model}")


def eval_summary(ev: dict | None) -> dict | None:
    """The three numbers of an evaluation the token-efficiency table needs."""
    if ev is None:
        return None
    # the eval reports 0.0 for the mean correct length when nothing was correct: no measurement, None here
    return {"accuracy": ev["accuracy"], "correct_len_mean": ev["correct_len_mean"] if ev["accuracy"] > 0 else None,
            "response_len_mean": ev["response_len_mean"]}


def result_block(recipe: Recipe, evals: dict[str, dict], result_model: str, details: dict) -> dict:
    """The run's ``long2short`` summary: method, models, the evals, and the change against the long model."""
    summaries = {k: eval_summary(v) for k, v in evals.items()}
    long, result = summaries["long"], summaries["result"]
    lengths = (result["correct_len_mean"], long["correct_len_mean"])
    block = {"method": recipe.long2short.method, "seed": recipe.seed, "long_model": recipe.long2short.long_model,
             "result_model": result_model, **summaries,
             # None when either model got nothing right (no correct response to measure)
             "correct_len_change": lengths[0] / lengths[1] - 1.0 if None not in lengths else None,
             "accuracy_change": result["accuracy"] - long["accuracy"]}
    block.update(details)
    return block


class Session:
    """The run's engine, task and directory; evaluates a model by syncing its weights into the engine."""

    def __init__(self, recipe: Recipe, run: RunDir):
        from longcot.policies.load import load_tokenizer
        from longcot.rollout import build_engine

        self.recipe, self.run, self.cfg = recipe, run, recipe.long2short
        self.tokenizer = load_tokenizer(self.cfg.long_model)
        self.task = build_task(recipe.data)
        budget = max(recipe.eval.max_tokens, self.cfg.samples.max_tokens)
        rows = list(self.task.heldout)
        if self.cfg.method in ("shortest_rejection", "dpo"):  # and the training problems it will sample
            rows += samples.pick_problems(self.task.train, self.cfg.samples.num_problems, recipe.seed)
        longest_prompt = max(len(self.task.prompt(r, self.tokenizer).prompt_ids) for r in rows)
        self.engine = build_engine(recipe.rollout.engine, self.cfg.long_model, self.tokenizer, seed=recipe.seed,
                                   max_model_len=max(recipe.rollout.max_model_len, longest_prompt + budget),
                                   **recipe.rollout.engine_options)
        self.version = 0
        self.evals: dict[str, dict] = {}

    def evaluate(self, label: str, model=None) -> dict:
        """Held-out eval of ``model`` (None: the model the engine holds) under the recipe's ``eval`` settings."""
        from longcot.pipeline import heldout_eval

        if model is not None:
            self.version += 1
            self.engine.sync_weights(model.named_parameters(), self.version)
        ev = heldout_eval(self.engine, self.tokenizer, self.task, self.recipe, self.run.root / "eval" / label)
        self.evals[label] = ev
        self.run.update_summary(eval={label: ev})
        log.info("%s: accuracy %.3f, correct length %.1f tokens", label, ev["accuracy"], ev["correct_len_mean"] or 0)
        return ev

    def samples(self) -> list[dict]:
        """The long model's graded samples: drawn now (before any weight sync), or reused from another run."""
        if self.version != 0:
            raise RuntimeError("long2short: samples must come from the long model, drawn before any weight sync")
        meta = samples.sample_meta(self.recipe)
        reuse = self.cfg.samples.reuse
        records = samples.load_samples(reuse, meta) if reuse else samples.draw_samples(
            self.engine, self.tokenizer, self.task, self.recipe, self.run.root)
        samples.write_samples(records, {**meta, "reused_from": reuse or None}, self.run.root)
        samples.drop_partial(self.run.root)
        self.run.update_summary(samples=samples.sample_stats(records))
        return records

    def long_policy(self):
        from longcot.policies.load import load_policy

        return load_policy(self.cfg.long_model, self.recipe.model.dtype)

    def close(self) -> None:
        if hasattr(self.engine, "shutdown"):
            self.engine.shutdown()


def method_merge(s: Session) -> tuple[str, dict]:
    from longcot.long2short.merge import merge_checkpoints
    from longcot.long2short.short_model import train_short_model
    from longcot.policies.load import load_policy

    cfg = s.cfg.merge
    details: dict = {"long_weight": cfg.long_weight}
    short = cfg.short_model
    if not short:
        short, details["short_sft"] = train_short_model(s.recipe, s.task, s.tokenizer, s.run.checkpoint("short"))
    details["short_model"] = short
    s.evaluate("short", load_policy(short, s.recipe.model.dtype))
    out = merge_checkpoints([s.cfg.long_model, short], [cfg.long_weight, 1.0 - cfg.long_weight],
                            s.run.checkpoint("merge"), s.recipe.model.dtype)
    s.evaluate("result", load_policy(out, s.recipe.model.dtype))
    return str(out), details


def method_shortest_rejection(s: Session) -> tuple[str, dict]:
    from longcot.rl.sft import run_sft

    records = s.samples()
    kept = rejection.shortest_correct(records)
    if not kept:
        raise RuntimeError("shortest rejection sampling: no problem had a correct sample")
    model, sft, out = s.long_policy(), s.cfg.sft, s.run.checkpoint("shortest_rejection")
    metrics = run_sft(model, s.tokenizer, rejection.sft_pairs(kept), out, lr=sft.lr, epochs=sft.epochs,
                      batch_size=sft.batch_size, warmup_ratio=sft.warmup_ratio, weight_decay=sft.weight_decay,
                      seed=s.recipe.seed)
    s.evaluate("result", model)
    return str(out), {"rejection": rejection.rejection_stats(records, kept), "sft": metrics}


def method_dpo(s: Session) -> tuple[str, dict]:
    cfg = s.cfg.dpo
    pairs = dpo.build_pairs(s.samples(), long_ratio=cfg.long_ratio, wrong=cfg.wrong,
                            pairs_per_problem=cfg.pairs_per_problem)
    with open(s.run.root / "pairs.jsonl", "w") as f:
        f.writelines(json.dumps(p, ensure_ascii=False) + "\n" for p in pairs)
    model, t, out = s.long_policy(), cfg.train, s.run.checkpoint("dpo")
    metrics = dpo.run_dpo(model, s.tokenizer, pairs, out, beta=cfg.beta, loss_type=cfg.loss_type,
                          loss_weights=cfg.loss_weights, lr=t.lr, epochs=t.epochs, batch_size=t.batch_size,
                          warmup_ratio=t.warmup_ratio, weight_decay=t.weight_decay, seed=s.recipe.seed)
    s.evaluate("result", model)
    return str(out), {"pairs": dpo.pair_stats(pairs), "dpo": metrics}


METHOD_RUNNERS = {"merge": method_merge, "shortest_rejection": method_shortest_rejection, "dpo": method_dpo}


def run_rl(recipe: Recipe, resume: bool = False, overwrite: bool = False) -> dict:
    """``longcot train`` from the long model (see :mod:`longcot.long2short.rl`), then the long2short block;
    ``resume``/``overwrite`` as for ``longcot train`` (an existing run is never wiped silently)."""
    from longcot.long2short.rl import rl_recipe
    from longcot.pipeline import train

    summary = train(rl_recipe(recipe), resume=resume, overwrite=overwrite)
    run = RunDir(Path(recipe.out_dir) / recipe.name)
    run.summary = summary
    ev = summary["eval"]
    lengths = {s.name: s.weight for s in recipe.rewards}
    details = {"rl": {"steps": recipe.rl.steps, "rollout_max_tokens": recipe.rollout.max_tokens,
                      "length_reward_weight": lengths[recipe.rl.length_penalty_reward]}}
    start = ev["initial"] if "initial" in ev else ev["after_sft"]  # RL starts from the long model: SFT is off
    run.update_summary(long2short=result_block(recipe, {"long": start, "result": ev["after_rl"]},
                                               str(run.checkpoint("final")), details))
    return run.summary


def run_long2short(recipe: Recipe, resume: bool = False, overwrite: bool = False) -> dict:
    """Run the recipe's long2short method; returns the summary (also in ``runs/<name>/summary.json``).
    ``resume``/``overwrite`` apply to method ``rl`` (a training run); the other methods rewrite their run."""
    from longcot.pipeline import seed_everything

    check_recipe(recipe)
    if recipe.threads:
        torch.set_num_threads(recipe.threads)
    seed_everything(recipe.seed)
    if recipe.long2short.method == "rl":
        return run_rl(recipe, resume, overwrite)
    run = RunDir(Path(recipe.out_dir) / recipe.name)
    run.write_config(recipe)
    s = Session(recipe, run)
    try:
        s.evaluate("long")
        result_model, details = METHOD_RUNNERS[recipe.long2short.method](s)
    finally:
        s.close()
    run.update_summary(long2short=result_block(recipe, s.evals, result_model, details))
    return run.summary
