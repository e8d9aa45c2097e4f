"""longcot vs TRL's GRPOTrainer on the same tiny-MoE GRPO job, side by side in one run.

Why one run, interleaved: CPU timings on the shared 2-core machines swing up to 10x with other users'
load (DESIGN.md section 5). Running N steps of TRL, then N steps of longcot, then N of TRL again ... exposes
both to the same load, so the *ratio* is meaningful even when the absolute seconds are not.

What is the same for both (the fairness contract, also written into the JSON):
  - model: one SFT'd checkpoint (build_tiny_moe(seed) + a short SFT with longcot's TRL-based SFT stage),
    cached under ``--cache`` so repeated runs start from the identical weights;
  - data: the arithmetic task from longcot.data, the same training prompts in the same order (TRL with
    ``shuffle_dataset=False``, longcot reading rows [k*P, (k+1)*P) at step k), P prompts x G samples per step;
  - sampling: temperature 1, top_p 1, no top_k, ``--max-tokens`` new tokens, EOS ends a completion;
  - reward: longcot's ``math`` reward for both (TRL gets a reward function that wraps it);
  - loss: TRL ``loss_type="dapo"`` (token-level sum over the whole batch / active tokens) with epsilon 0.2 ==
    longcot ``ppo_clip`` (clip 0.2/0.2) with ``token-mean`` aggregation; beta 0 (no KL, no reference model);
    advantages (R - mean_G) / (std_G + eps) per group (TRL: Bessel std, eps 1e-4; longcot: population std,
    eps 1e-6); one optimizer step per batch (TRL num_iterations=1, longcot updates_per_step=1);
  - optimizer: AdamW, same lr, betas (0.9, 0.99), weight decay 0, constant lr, grad-norm clip 1.0;
  - cores: ``--threads`` (default 2) for each side. TRL runs in this process with that many torch threads.
    longcot runs in its fastest mode, ``--longcot ray`` (default): one Ray rollout worker (1 CPU) generating the
    next batch while the trainer actor (1 CPU) trains on this one (``rl.max_off_policy_steps=1``, truncated IS
    ``rl.rollout_correction.rollout_is=token``, cap 2); its producers are paused while TRL runs, and a longcot
    block is timed until its worker has finished the call it was in, so what it generated ahead is charged to it.
    ``--longcot local`` is the synchronous in-process loop with ``--threads`` torch threads (the earlier
    comparison, at 1 thread).
What differs is the system: TRL generates with transformers ``generate`` (use_vllm=False: its vLLM colocate mode
cannot sync weights into vLLM's CPU backend, see ``--trl-vllm`` and docs/benchmarks.md), longcot with vLLM.

Held-out accuracy "after the same number of samples": both final policies are evaluated greedily on the
same held-out problems, through the same in-process engine (each policy's weights synced into it in turn).

Run:  python benchmarks/vs_trl.py   (writes benchmarks/results/vs_trl.json)
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
    ap.add_argument("--rounds", type=int, default=16, help="alternations of N TRL steps then N longcot steps")
    ap.add_argument("--steps", type=int, default=2, help="N: steps of each trainer per round")
    ap.add_argument("--prompts", type=int, default=2, help="prompts per step")
    ap.add_argument("--n", type=int, default=8, help="samples per prompt (2 x 8 = 16 completions per step)")
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--lr", type=float, default=1e-4, help="the demo recipe's (5e-4 degrades this model)")
    ap.add_argument("--eval-problems", type=int, default=512)
    ap.add_argument("--sft-examples", type=int, default=12000)
    ap.add_argument("--seed", type=int, default=0, help="RL seed (sampling); the SFT checkpoint has its own")
    ap.add_argument("--sft-seed", type=int, default=0, help="seed of the shared SFT checkpoint")
    ap.add_argument("--cache", default=str(ROOT / "runs/bench-vs-trl"), help="SFT checkpoint and eval samples")
    ap.add_argument("--out", default=str(ROOT / "benchmarks/results/vs_trl.json"))
    ap.add_argument("--eager", action="store_true", help="vLLM without compilation (slower decode, fast start)")
    ap.add_argument("--threads", type=int, default=2, help="torch threads of TRL; cores of longcot's actors")
    ap.add_argument("--longcot", choices=["ray", "local"], default="ray", help="longcot's runtime (ray: async)")
    ap.add_argument("--trl-vllm", action="store_true", help="TRL with use_vllm=True, vllm_mode='colocate'")
    ap.add_argument("--prepare-only", action="store_true", help="build + SFT the shared checkpoint and stop")
    ap.add_argument("overrides", nargs="*", help="extra recipe key=value overrides (both trainers)")
    return ap.parse_args(argv)


# The job: DESIGN.md's baseline of 16 completions x up to 128 tokens. Chains of 2-4 additions/subtractions
# where the solver re-checks every step on its own line ("7+5=12" then "check 7+5: 12 ok", a long-CoT habit)
# give completions of ~83 tokens (at most 124); the teacher slips on 10% of its steps, so the SFT'd policy
# is imperfect and RL has something to fix. (Chains of 8-14 steps without re-checks have the same length
# but the tiny model gets 3% of them right after SFT: nothing for either trainer to learn from.)
JOB = ["data.min_ops=2", "data.max_ops=4", "data.recheck_prob=1.0", "data.slip_prob=0.1", "data.num_heldout=512"]


def make_recipe(args: argparse.Namespace, seed: int | None = None):
    """longcot's recipe for this job: the tiny demo recipe with the benchmark's task and sizes."""
    from longcot.config import load_recipe

    return load_recipe(RECIPE, make_recipe_overrides(args, seed))


def make_recipe_overrides(args: argparse.Namespace, seed: int | None = None) -> list[str]:
    return [
        *JOB, "name=bench-vs-trl", f"seed={args.seed if seed is None else seed}", f"threads={args.threads}",
        f"out_dir={args.cache}",
        f"sft.num_examples={args.sft_examples}", "rollout.engine=vllm", f"rollout.n={args.n}",
        f"rollout.max_tokens={args.max_tokens}", "rollout.temperature=1.0", f"rl.prompts_per_step={args.prompts}",
        f"rl.lr={args.lr}", "rl.betas=[0.9,0.99]", "rl.weight_decay=0.0", "rl.grad_clip=1.0", "rl.warmup_steps=0",
        "rl.loss.name=ppo_clip", "rl.loss.options={clip_low: 0.2, clip_high: 0.2}", "rl.aggregation=token-mean",
        "rl.kl_coef=0.0", "rl.updates_per_step=1", f"rollout.engine_options={{enforce_eager: {args.eager}}}",
        f"eval.num_problems={args.eval_problems}",
        f"eval.max_tokens={args.max_tokens}", "eval.temperature=0.0", *args.overrides,
    ]


def train_rows(task, args) -> list[dict]:
    """The training rows both trainers consume, in order: ``prompts`` per step for every step of the run."""
    need = args.prompts * args.rounds * args.steps
    if need > len(task.train):
        raise ValueError(f"{need} training prompts needed but the task has {len(task.train)}")
    return task.train[:need]


def math_reward_for_trl(recipe):
    """A TRL reward function that scores with longcot's own ``math`` reward (same verdicts for both)."""
    from longcot.record import Trajectory
    from longcot.rewards.registry import compute_rewards

    counter = {"tokens": 0, "steps": []}

    def math(prompts, completions, completion_ids, answer, **_):
        trajs = [Trajectory(prompt_id=str(i), group_id=str(i), prompt_ids=[], response_ids=list(ids),
                            rollout_logprobs=[], response_text=text, meta={"answer": a},
                            finish="length" if len(ids) >= recipe.rollout.max_tokens and ids[-1] != EOS[0]
                            else "stop")
                 for i, (text, ids, a) in enumerate(zip(completions, completion_ids, answer, strict=True))]
        compute_rewards(trajs, recipe.rewards)
        counter["steps"].append(sum(len(ids) for ids in completion_ids))
        return [t.reward for t in trajs]

    return math, counter


EOS: list[int] = []


def build_trl(model, tok, prompts, args, recipe, callbacks):
    """TRL's GRPOTrainer with the job's settings (transformers generate unless ``--trl-vllm``; TRL's defaults
    elsewhere). With ``--trl-vllm`` on a CPU, TRL's colocated vLLM starts, then its weight sync fails: it calls the
    vLLM model's ``load_weights`` directly, whose CPU linear layers no longer carry a ``weight_loader`` after vLLM
    prepacked them ("'Parameter' object has no attribute 'weight_loader'")."""
    import datasets
    from trl import GRPOConfig, GRPOTrainer

    ds = datasets.Dataset.from_dict({"prompt": [p.prompt_text for p in prompts],
                                     "answer": [p.meta["answer"] for p in prompts]})
    cfg = GRPOConfig(
        output_dir=str(Path(args.cache) / "trl"), max_steps=args.rounds * args.steps, learning_rate=args.lr,
        adam_beta1=0.9, adam_beta2=0.99, weight_decay=0.0, lr_scheduler_type="constant", warmup_steps=0,
        max_grad_norm=1.0, per_device_train_batch_size=args.prompts * args.n, gradient_accumulation_steps=1,
        num_generations=args.n, max_completion_length=args.max_tokens, temperature=1.0, top_p=1.0, top_k=0,
        loss_type="dapo", epsilon=0.2, epsilon_high=0.2, beta=0.0, num_iterations=1, scale_rewards="group",
        shuffle_dataset=False, use_vllm=args.trl_vllm, vllm_mode="colocate", use_cpu=True, bf16=False, fp16=False,
        seed=args.seed,
        logging_steps=1, save_strategy="no", report_to=[], disable_tqdm=True, dataloader_num_workers=0,
    )
    reward_fn, counter = math_reward_for_trl(recipe)
    trainer = GRPOTrainer(model=model, reward_funcs=[reward_fn], args=cfg, train_dataset=ds,
                          processing_class=tok, callbacks=callbacks)
    return trainer, counter


def interleave_callback(args, run_longcot):
    """A TRL callback that times every TRL step and, after every N of them, runs N longcot steps.

    A TRL step is timed from the end of the previous one (after this callback returned) to its
    ``on_step_end``: batch fetch, generate, reward, loss, backward and optimizer, plus the previous step's
    logging. Longcot's steps run inside the callback, so they never count against TRL.
    """
    from transformers import TrainerCallback

    class Interleave(TrainerCallback):
        def __init__(self) -> None:
            self.times: list[float] = []
            self.mark = time.perf_counter()

        def on_train_begin(self, *a, **k):
            self.mark = time.perf_counter()

        def on_step_end(self, cb_args, state, control, **kw):
            self.times.append(time.perf_counter() - self.mark)
            if state.global_step % args.steps == 0:
                run_longcot(state.global_step - args.steps, args.steps)
            self.mark = time.perf_counter()

    return Interleave()


def time_generate(trainer) -> list[float]:
    """Wrap TRL's generation call to measure its share of the step (DESIGN says about 70%)."""
    spent: list[float] = []
    inner = trainer._generate_single_turn

    def timed(*a, **k):
        t = time.perf_counter()
        try:
            return inner(*a, **k)
        finally:
            spent.append(time.perf_counter() - t)

    trainer._generate_single_turn = timed
    return spent


def held_out(engine, model, tok, task, recipe, out_dir: Path) -> float:
    """Greedy held-out accuracy of ``model``'s weights, scored through the shared engine."""
    from longcot.pipeline import heldout_eval

    engine.sync_weights(model.named_parameters(), version=engine.version + 1)
    return heldout_eval(engine, tok, task, recipe, out_dir)["accuracy"]


def summarize(step_s: list[float], tokens: list[float], gen_s: list[float] | None = None) -> dict:
    """Throughput over the timed steps: every step but each trainer's first (engine warm-up, the reward
    pool's start, allocator growth: one-time costs that a long run amortises away)."""
    warmup_s = step_s[0]
    step_s, tokens, gen_s = step_s[1:], tokens[1:], (gen_s or [])[1:]
    med = statistics.median(step_s)
    total_tokens, total_s = sum(tokens), sum(step_s)
    out = {"steps": len(step_s), "median_step_s": med, "completion_tokens_per_step": total_tokens / len(step_s),
           "tokens_per_s": total_tokens / total_s,
           "median_tokens_per_s": statistics.median(t / s for t, s in zip(tokens, step_s, strict=True)),
           "warmup_step_s": warmup_s, "step_s": [round(s, 4) for s in step_s]}
    if gen_s:
        out["median_generate_s"] = statistics.median(gen_s)
        out["generate_share"] = sum(gen_s) / total_s
    return out


class LongcotArm:
    """longcot's side: the synchronous loop in this process (``local``) or the Ray runtime (``ray``)."""

    def __init__(self, args, recipe, sft_path: Path, tok, task, prompts) -> None:
        from longcot.pipeline import longest_prompt
        from longcot.policies.load import load_policy
        from longcot.runtime import make_runtime

        P = args.prompts
        self.model = load_policy(sft_path)
        max_len = longest_prompt(task, tok) + args.max_tokens + 8
        self.runtime = make_runtime(recipe, Path(args.cache) / f"longcot-{args.longcot}", str(sft_path), tok, max_len)
        self.loop = self.runtime.rl_trainer(self.model, lambda step, k: prompts[step * P:step * P + k])
        self.prompts = getattr(self.loop, "prompts", None)  # Ray: the producers' queue (paused between blocks)
        if self.prompts is not None:
            self.prompts.pause()
        self.wall: list[float] = []
        self.rows: list[dict] = []

    def run(self, first: int, count: int) -> None:
        if self.prompts is not None:
            self.prompts.resume()
        for step in range(first, first + count):
            t = time.perf_counter()
            row, _ = self.loop.step(step)
            self.wall.append(time.perf_counter() - t)
            self.rows.append(row)
        if self.prompts is not None:
            t = time.perf_counter()
            self.prompts.pause()  # wait for the call in flight: charged to the block's last step
            self.wall[-1] += time.perf_counter() - t
        logging.info("longcot steps %d-%d: median %.2fs", first, first + count - 1,
                     statistics.median(self.wall[-count:]))

    def policy(self):
        """The trained policy as a module (Ray: the newest published weights, pulled into the driver's copy)."""
        if hasattr(self.loop.learner, "pull_weights"):
            self.loop.learner.pull_weights()
            return self.model
        return self.loop.learner.unwrapped()


def longcot_recipe(args, recipe):
    from longcot.config import load_recipe

    if args.longcot == "local":
        return recipe
    return load_recipe(RECIPE, [*make_recipe_overrides(args), "cluster.backend=ray", "cluster.rollout_workers=1",
                                "cluster.worker_cpus=1", "cluster.trainer_cpus=1", "rl.max_off_policy_steps=1",
                                "rl.rollout_correction.rollout_is=token"])


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    for name in ("httpx", "vllm", "datasets", "transformers"):
        logging.getLogger(name).setLevel(logging.WARNING)
    import torch
    from transformers import PrinterCallback

    from longcot.data import build_task
    from longcot.pipeline import seed_everything
    from longcot.policies.load import load_policy, load_tokenizer
    from longcot.rollout import build_engine

    recipe = make_recipe(args)
    cache = Path(args.cache)
    cache.mkdir(parents=True, exist_ok=True)
    sft_path = prepare_policy(make_recipe(args, seed=args.sft_seed), cache)
    if args.prepare_only:
        return 0
    torch.set_num_threads(args.threads)
    seed_everything(args.seed)
    tok = load_tokenizer(sft_path)
    EOS[:] = [tok.eos_token_id]
    task = build_task(recipe.data)
    prompts = [task.prompt(r, tok) for r in train_rows(task, args)]
    max_len = max(len(task.prompt(r, tok).prompt_ids) for r in task.heldout) + args.max_tokens + 8
    # The evaluation engine (both final policies go through it). enforce_eager=False: vLLM compiles the model once
    # at start (~30-60 s on these CPUs, cached on disk) and decodes ~3x faster per token.
    engine = build_engine("vllm", str(sft_path), tok, max_model_len=max_len, seed=args.seed,
                          **recipe.rollout.engine_options)
    torch.set_num_threads(args.threads)
    acc0 = held_out(engine, load_policy(sft_path), tok, task, recipe, cache / "eval" / "sft")
    logging.info("held-out accuracy of the shared SFT checkpoint: %.3f", acc0)
    lc = LongcotArm(args, longcot_recipe(args, recipe), sft_path, tok, task, prompts)
    try:
        cb = interleave_callback(args, lc.run)
        trl, counter = build_trl(load_policy(sft_path), tok, prompts, args, recipe, [cb])
        trl.remove_callback(PrinterCallback)  # one dict per step on stdout otherwise
        gen_s = time_generate(trl)
        torch.set_num_threads(args.threads)
        t0 = time.perf_counter()
        trl.train()
        wall = time.perf_counter() - t0
        acc_trl = held_out(engine, trl.model, tok, task, recipe, cache / "eval" / "trl")
        acc_lc = held_out(engine, lc.policy(), tok, task, recipe, cache / "eval" / "longcot")
    finally:
        lc.runtime.shutdown()
        engine.shutdown()
    result = report(args, recipe, cb.times, counter["steps"], gen_s, lc.wall, lc.rows, acc0, acc_trl, acc_lc, wall)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(table(result))
    return 0


def report(args, recipe, trl_s, trl_tokens, gen_s, lc_s, lc_rows, acc0, acc_trl, acc_lc, wall) -> dict:
    import torch
    import trl
    import vllm

    breakdown = {k.removeprefix("time/"): statistics.median(r.get(k, 0.0) for r in lc_rows)
                 for k in sorted({k for r in lc_rows for k in r if k.startswith("time/")})}
    trl_res = {**summarize(trl_s, trl_tokens, gen_s), "heldout_accuracy": acc_trl}
    lc_res = {**summarize(lc_s, [r["response_tokens"] for r in lc_rows]), "heldout_accuracy": acc_lc,
              "median_step_seconds_logged": statistics.median(r["step_seconds"] for r in lc_rows),
              "median_time_breakdown_s": breakdown}
    return {
        "trl": trl_res, "longcot": lc_res,
        "ratio_tokens_per_s": lc_res["tokens_per_s"] / trl_res["tokens_per_s"],
        "ratio_median_step_s": trl_res["median_step_s"] / lc_res["median_step_s"],
        "heldout_accuracy_sft": acc0,
        "accuracy_gap_points": 100 * (acc_lc - acc_trl),
        "settings": {"rounds": args.rounds, "steps_per_round": args.steps, "prompts_per_step": args.prompts,
                     "samples_per_prompt": args.n, "max_tokens": args.max_tokens, "lr": args.lr,
                     "eval_problems": args.eval_problems, "sft_examples": args.sft_examples, "seed": args.seed,
                     "sft_seed": args.sft_seed, "job": JOB + list(args.overrides),
                     "threads": args.threads, "longcot_runtime": args.longcot,
                     "longcot_cores": "1 rollout worker (1 CPU) + trainer actor (1 CPU), max_off_policy_steps=1, "
                     "truncated IS cap 2" if args.longcot == "ray" else f"{args.threads} torch threads, in-process",
                     "trl_generation": "vllm colocate" if args.trl_vllm else "transformers generate",
                     "loadavg_1m_at_end": os.getloadavg()[0], "trl_loss": "dapo, epsilon 0.2, beta 0", "longcot_loss":
                     "ppo_clip 0.2/0.2, token-mean", "optimizer": "AdamW betas (0.9, 0.99), wd 0, constant lr"},
        "versions": {"torch": torch.__version__, "trl": trl.__version__, "vllm": vllm.__version__},
        "command": ".venv/bin/python benchmarks/vs_trl.py " + " ".join(sys.argv[1:]),
        "wall_s": wall,
    }


def table(r: dict) -> str:
    t, lc = r["trl"], r["longcot"]
    lines = ["| | TRL GRPOTrainer | longcot |", "| --- | ---: | ---: |",
             f"| median s/step | {t['median_step_s']:.3f} | {lc['median_step_s']:.3f} |",
             f"| completion tokens/step | {t['completion_tokens_per_step']:.1f} | "
             f"{lc['completion_tokens_per_step']:.1f} |",
             f"| completion tokens/s | {t['tokens_per_s']:.1f} | {lc['tokens_per_s']:.1f} |",
             f"| held-out accuracy (greedy) | {t['heldout_accuracy']:.3f} | {lc['heldout_accuracy']:.3f} |",
             f"ratio tokens/s (longcot / TRL): {r['ratio_tokens_per_s']:.2f}"]
    return "\n".join(lines)


if __name__ == "__main__":
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    os.environ.setdefault("LONGCOT_NO_PROGRESS", "1")
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "ERROR")  # a warning per weight reload otherwise
    sys.exit(main())
