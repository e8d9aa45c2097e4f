"""Per-run mismatch and learning numbers of finished MoE runs (docs/moe.md, section 2b), as a JSON table.

    python benchmarks/moe_runs.py runs/bf16-none-s2 runs/bf16-r3-s2 ... --out benchmarks/results/X.json

For each run directory: held-out accuracy before and after RL (``summary.json``), how many steps had a token whose
engine/trainer log-prob gap exceeded 1 and the worst such gap (``mismatch/gap_max``), the mean gap
(``logprob_gap``), the mean routing agreement and the training reward over the last 25 steps (``metrics.jsonl``).
``moe_curves.py`` plots the same runs; this is the per-run table the section's text quotes.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from longcot.plots import read_metrics


def _mean(rows: list[dict], key: str) -> float | None:
    vals = [r[key] for r in rows if key in r]
    return sum(vals) / len(vals) if vals else None


def summarize(run: Path) -> dict:
    evals = json.loads((run / "summary.json").read_text())["eval"]
    rows = read_metrics(run / "metrics.jsonl")
    gaps = [r["mismatch/gap_max"] for r in rows if "mismatch/gap_max" in r]
    start = evals.get("initial", evals.get("after_sft"))["accuracy"]
    end = evals["after_rl"]["accuracy"]
    return {"initial": start, "after_rl": end, "gain_points": round(100 * (end - start), 1),
            "steps_with_token_gap_over_1": sum(g > 1 for g in gaps), "worst_token_gap": max(gaps, default=None),
            "mean_logprob_gap": _mean(rows, "logprob_gap"), "routing_agreement_mean": _mean(rows, "routing/agreement"),
            "reward_mean_last_25": round(_mean(rows[-25:], "reward_mean"), 3)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("runs", nargs="+", type=Path)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    table = {run.name: summarize(run) for run in args.runs}
    args.out.write_text(json.dumps(table, indent=1) + "\n")
    for name, row in table.items():
        print(name, row)


if __name__ == "__main__":
    main()
