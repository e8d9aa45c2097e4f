"""Overlay the curves of several RL runs (reward, log-prob gap, routing agreement, held-out accuracy) and write
their numbers: the figure and table of docs/moe.md.

    python benchmarks/moe_curves.py runs/moe-none runs/moe-r3 runs/moe-r3-mis \\
        --png docs/img/moe_r3_curves.png --out benchmarks/results/moe_demo.json

Per run: held-out accuracy after SFT (the start), at each periodic eval and after RL; train reward (mean over
the first and the last 20 steps); mean and max of the per-step log-prob gap, KL and routing agreement; what
the masks dropped and the largest attention logit when logged. Reads only the run directories.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from longcot.report import read_metrics  # noqa: E402

PANELS = (("reward_mean", "train reward"), ("logprob_gap", "log-prob gap, mean |train - engine|"),
          ("mismatch/gap_max", "log-prob gap, max over tokens"), ("routing/agreement", "routing agreement"),
          ("heldout", "held-out accuracy (avg@4, T=1)"))


def heldout_points(run: Path, rows: list[dict]) -> list[tuple[int, float]]:
    """(step, accuracy): the start (after SFT, or ``initial`` for a run that starts from an SFT checkpoint with SFT
    off) at step 0, the periodic evals, after RL at the last step."""
    summary = json.loads((run / "summary.json").read_text()) if (run / "summary.json").is_file() else {}
    ev = summary.get("eval", {})
    start = ev.get("after_sft") or ev.get("initial")
    pts = [(0, start["accuracy"])] if start else []
    pts += [(r["step"] + 1, r["eval/accuracy"]) for r in rows if "eval/accuracy" in r]
    if "after_rl" in ev and rows:
        pts.append((rows[-1]["step"] + 1, ev["after_rl"]["accuracy"]))
    return pts


def numbers(run: Path) -> dict:
    rows = read_metrics(run / "metrics.jsonl")
    out: dict = {"run": str(run), "steps": len(rows), "heldout": heldout_points(run, rows)}
    if not rows:
        return out
    # steps with at least one token whose engine/trainer ratio is beyond e (or its inverse): the flip outliers
    out["steps_gap_max_gt_1"] = sum(r.get("mismatch/gap_max", 0.0) > 1.0 for r in rows)
    out["reward_first20"] = statistics.fmean(r["reward_mean"] for r in rows[:20])
    out["reward_last20"] = statistics.fmean(r["reward_mean"] for r in rows[-20:])
    for key in ("logprob_gap", "mismatch/gap_max", "mismatch/kl_k3", "mismatch/frac_gap_gt_0.1", "routing/agreement",
                "rollout_rs/masked_frac", "qk_clip/max_logit", "moe/load_entropy", "step_seconds"):
        vals = [r[key] for r in rows if key in r]
        if vals:
            out[key] = {"mean": statistics.fmean(vals), "max": max(vals), "min": min(vals), "last": vals[-1]}
    return out


def plot(runs: list[Path], png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(PANELS), figsize=(4.0 * len(PANELS), 3.3))
    for run in runs:
        rows = read_metrics(run / "metrics.jsonl")
        for ax, (key, title) in zip(axes, PANELS, strict=True):
            if key == "heldout":
                pts = heldout_points(run, rows)
                style = "o-"
            else:
                pts = [(r["step"], r[key]) for r in rows if key in r]
                if key == "reward_mean":  # smoothed: one step holds 32 prompts
                    vals = [v for _, v in pts]
                    pts = [(s, statistics.fmean(vals[max(0, i - 9): i + 1])) for i, (s, _) in enumerate(pts)]
                style = "-"
            if pts:
                ax.plot(*zip(*pts, strict=True), style, lw=1.2, label=run.name)
            ax.set_title(title, fontsize=9)
            ax.set_xlabel("RL step")
            ax.grid(alpha=0.3)
    axes[2].set_yscale("log")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=110)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", type=Path)
    ap.add_argument("--png", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    plot(args.runs, args.png)
    result = {"command": "python benchmarks/moe_curves.py " + " ".join(map(str, args.runs))
              + f" --png {args.png} --out {args.out}", "runs": [numbers(r) for r in args.runs]}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    for r in result["runs"]:
        print(r["run"], "heldout", [(s, round(a, 3)) for s, a in r["heldout"]],
              "reward first/last 20", round(r.get("reward_first20", 0), 3), round(r.get("reward_last20", 0), 3))


if __name__ == "__main__":
    main()
