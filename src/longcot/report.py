"""Read a run directory back: training curves (PNG) and a text summary with the time breakdown.

``longcot report RUN_DIR`` prints where the seconds of an RL step go (median over steps, and the share
of each phase), the first and last metrics, and the held-out evaluations from ``summary.json``.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from longcot.plots import plot_metric_grid, read_metrics

CURVES = (("reward_mean", "reward"), ("accuracy", "train accuracy"), ("response_len_mean", "response length (tokens)"))
# Drawn too when a run logged them: rollout/trainer mismatch, MoE routing, MuonClip (docs/moe.md)
EXTRA_CURVES = (("logprob_gap", "log-prob gap (mean)"), ("mismatch/gap_max", "log-prob gap (max)"),
                ("routing/agreement", "routing agreement"), ("qk_clip/max_logit", "max attention logit"))
# What `longcot report` summarises per run (mean over the steps that logged it, and the last value)
SUMMARY_KEYS = ("logprob_gap", "mismatch/gap_max", "mismatch/kl_k3", "mismatch/frac_gap_gt_0.1",
                "rollout_rs/masked_frac", "routing/agreement", "moe/load_max_over_mean", "moe/load_entropy",
                "moe/dead_experts", "router_aux_loss", "qk_clip/max_logit", "qk_clip/clipped_heads")


def plot_curves(metrics_path: str | Path, out_png: str | Path) -> Path | None:
    """Reward, accuracy and response length per RL step (and held-out accuracy when logged), plus the mismatch,
    routing and attention-logit curves of runs that logged them."""
    rows = read_metrics(metrics_path)
    curves = CURVES + tuple(c for c in EXTRA_CURVES if any(c[0] in r for r in rows))
    return plot_metric_grid(rows, curves, out_png, ncols=len(CURVES), heldout={"accuracy": "eval/accuracy"})


def time_breakdown(rows: list[dict]) -> dict[str, dict[str, float]]:
    """Seconds per phase over steps: the median, and the mean with its share of the mean step time.

    Means are what add up (the phases' means sum to the mean step time, within the trainer's 5%); the
    median is the typical step, robust to the first step's warm-up. A phase that runs only on some steps
    (the periodic ``eval``) has a median of 0 and shows up in the mean.
    """
    phases = sorted({k for r in rows for k in r if k.startswith("time/")})
    out = {}
    total = statistics.median(r["step_seconds"] for r in rows)
    mean_total = statistics.fmean(r["step_seconds"] for r in rows)
    for p in phases:
        med = statistics.median(r.get(p, 0.0) for r in rows)
        mean = statistics.fmean(r.get(p, 0.0) for r in rows)
        out[p.removeprefix("time/")] = {"median_s": med, "mean_s": mean,
                                        "share": mean / mean_total if mean_total else 0.0}
    out["step"] = {"median_s": total, "mean_s": mean_total, "share": 1.0}
    return out


def render(run_dir: str | Path) -> str:
    run_dir = Path(run_dir)
    rows = read_metrics(run_dir / "metrics.jsonl")
    lines = [f"run: {run_dir}"]
    summary_path = run_dir / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.is_file() else {}
    lines += sft_summary(run_dir, summary.get("sft"))
    for stage, ev in summary.get("eval", {}).items():
        lines.append(f"eval {stage:>10}: accuracy {ev['accuracy']:.3f} on {ev['n']} held-out problems")
    if rows:
        lines.append(f"RL steps: {len(rows)}")
        lines.append("time per step:        median       mean  share of mean")
        for phase, v in time_breakdown(rows).items():
            lines.append(f"  {phase:<18} {v['median_s']:8.3f} s {v['mean_s']:8.3f} s  {100 * v['share']:5.1f}%")
        for label, r in (("first", rows[0]), ("last", rows[-1])):
            lines.append(f"{label} step: reward {r['reward_mean']:.3f}  acc {r['accuracy']:.3f}  "
                         f"len {r['response_len_mean']:.1f}  tokens/s {r.get('tokens_per_s', 0):.0f}")
        lines += async_summary(rows)
        lines += mismatch_summary(rows)
    return "\n".join(lines)


def sft_summary(run_dir: Path, sft: dict | None) -> list[str]:
    """The SFT stage: finished (examples, final loss), or stopped mid-stage at its newest checkpoint."""
    if sft:
        loss = sft.get("final_loss")
        return [f"SFT: {sft.get('examples')} examples, final loss {loss:.4f}" if loss is not None
                else f"SFT: {sft.get('examples')} examples"]
    states = sorted((run_dir / "checkpoints/sft/trl").glob("checkpoint-*/trainer_state.json"),
                    key=lambda p: int(p.parent.name.rsplit("-", 1)[1]))
    if not states:
        return []
    state = json.loads(states[-1].read_text())
    return [f"SFT: stopped at optimizer step {state.get('global_step')} of {state.get('max_steps')} "
            f"({states[-1].parent.relative_to(run_dir)}); `longcot train ... --resume` continues it"]


def async_summary(rows: list[dict]) -> list[str]:
    """A Ray run's pipeline (docs/cluster.md): how stale the trained samples were, what admission dropped, what was
    re-queued after worker restarts, and how busy each actor was (median over steps of the fraction of the step's
    wall time it spent in calls; the rest is waiting). Empty for a local run."""
    if not any("async/staleness_max" in r for r in rows):
        return []
    at = [r for r in rows if "async/staleness_max" in r]
    last = at[-1]
    lines = ["asynchronous rollouts (Ray):",
             f"  staleness (policy versions): mean {statistics.fmean(r['async/staleness_mean'] for r in at):.2f}, "
             f"max {max(r['async/staleness_max'] for r in at):.0f}",
             f"  samples dropped (too stale) {last.get('async/dropped_samples_total', 0):.0f}, requeued chunks "
             f"{last.get('async/requeued_chunks_total', 0):.0f}, worker restarts "
             f"{last.get('async/worker_restarts_total', 0):.0f}"]
    busy = sorted({k for r in at for k in r if k.startswith(("async/busy/", "async/wait_budget/"))},
                  key=lambda k: (k.split("/")[2] != "trainer", k.split("/")[2], k))
    for key in busy:
        kind, actor = key.split("/")[1:3]
        label = "busy" if kind == "busy" else "waiting for the off-policy budget"
        vals = [r[key] for r in at if key in r]
        lines.append(f"  {actor:<10} {label} {statistics.median(vals):.2f} of the step (median)")
    return lines


def mismatch_summary(rows: list[dict]) -> list[str]:
    """Rollout/trainer mismatch, MoE routing and expert load, MuonClip: mean and last value of each metric a run
    logged, and the per-layer routing agreement and expert load (docs/moe.md). Empty when none was logged."""
    keys = [k for k in SUMMARY_KEYS if any(k in r for r in rows)]
    if not keys:
        return []
    lines = ["mismatch / MoE:             mean       last  (steps)"]
    for k in keys:
        vals = [r[k] for r in rows if k in r]
        lines.append(f"  {k:<24} {statistics.fmean(vals):10.4g} {vals[-1]:10.4g}  ({len(vals)})")
    layers = sorted({k.rsplit("/", 1)[1] for r in rows for k in r if k.startswith("routing/agreement/l")
                     or k.startswith("moe/load_entropy/l")}, key=lambda x: int(x[1:]))
    for layer in layers:
        parts = []
        for name, key in (("agreement", "routing/agreement"), ("load max/mean", "moe/load_max_over_mean"),
                          ("load entropy", "moe/load_entropy"), ("dead experts", "moe/dead_experts")):
            vals = [r[f"{key}/{layer}"] for r in rows if f"{key}/{layer}" in r]
            if vals:
                parts.append(f"{name} {statistics.fmean(vals):.4f}")
        lines.append(f"  layer {layer[1:]}: " + ", ".join(parts))
    return lines


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="longcot report", description="Summarise a run directory.")
    ap.add_argument("run_dir")
    ap.add_argument("--sample", help="render one agent tree of this sample id (parallel-agent runs)")
    ns = ap.parse_args(argv)
    if not Path(ns.run_dir).is_dir():
        ap.error(f"no such run directory: {ns.run_dir}")
    if ns.sample:
        from longcot.agents.report import render_sample

        try:
            print(render_sample(ns.run_dir, ns.sample))
        except (KeyError, FileNotFoundError) as e:  # unknown/ambiguous id, no traces: a message, not a traceback
            ap.error(e.args[0] if e.args else str(e))
        return 0
    print(render(ns.run_dir))
    return 0
