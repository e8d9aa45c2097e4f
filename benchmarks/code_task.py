"""The tiny code task learns: held-out pass rate after SFT and after RL, per seed, with sample programs.

Runs ``recipes/tiny/code-moe.yaml`` end to end (build -> SFT on the imperfect teacher -> GRPO with the code reward
-> held-out eval) once per seed, one after the other, and writes every seed's numbers, its run directory, a few
held-out programs before and after RL (to read, not only count) and what the programs got wrong (which numbers
were miscopied, read off every held-out sample) to ``benchmarks/results/code_task.json``.

    OMP_NUM_THREADS=1 python benchmarks/code_task.py --seeds 0 1 [--out runs] [key=value ...]
    python benchmarks/code_task.py --seeds 0 1 --from-runs --out runs [key=value ...]   # re-read finished runs
"""

from __future__ import annotations

import argparse
import json
import os
import re
from pathlib import Path

os.environ.setdefault("LONGCOT_NO_PROGRESS", "1")

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "recipes" / "tiny" / "code-moe.yaml"
_NUM = r"\(?(-?\d+)\)?"  # a copied number; negatives are parenthesised
# the teacher's program shape (longcot.data.codefit.program), capturing every number the model copies
PROGRAM = re.compile(rf"```python\ndef f\(x\):\n    a = \({_NUM}-{_NUM}\)//\((\d+)-(\d+)\)\n"
                     rf"    b = {_NUM}-a\*(\d+)\n    return a\*x\+b\n```")


def samples(run: Path, stage: str, k: int = 4) -> list[dict]:
    """The first ``k`` held-out responses of an eval stage, with their verdicts."""
    lines = (run / "eval" / stage / "samples.jsonl").read_text().splitlines()[:k]
    return [{key: row[key] for key in ("id", "response", "correct")} for row in map(json.loads, lines)]


def copy_errors(run: Path, stage: str, problems: dict[str, str]) -> dict:
    """Fractions of an eval stage's samples with every number copied right, with a miscopied number in the slope
    line (``a = (y2-y1)//(x2-x1)``) or in the intercept line (``b = y1-a*x1``), and not in the program's shape.

    Why: the pass rate alone cannot say whether RL fixed the copying (the skill the task trains) or changed the
    program's form; this reads it off every sample."""
    rows = [json.loads(line) for line in (run / "eval" / stage / "samples.jsonl").read_text().splitlines()]
    counts = {"all_numbers_right": 0, "slope_line_miscopied": 0, "intercept_line_miscopied": 0, "other_shape": 0}
    for row in rows:
        x1, y1, x2, y2 = map(int, re.findall(r"-?\d+", problems[row["id"]]))
        m = PROGRAM.search(row["response"])
        if m is None:
            counts["other_shape"] += 1
            continue
        a_y2, a_y1, a_x2, a_x1, b_y1, b_x1 = map(int, m.groups())
        slope_bad, intercept_bad = (a_y2, a_y1, a_x2, a_x1) != (y2, y1, x2, x1), (b_y1, b_x1) != (y1, x1)
        counts["slope_line_miscopied"] += slope_bad
        counts["intercept_line_miscopied"] += intercept_bad
        counts["all_numbers_right"] += not (slope_bad or intercept_bad)
    return {key: value / len(rows) for key, value in counts.items()}


def seed_result(run: Path, summary: dict, problems: dict[str, str]) -> dict:
    """One seed's record: pass rates, gain, sample programs and copy errors before and after RL."""
    sft, rl = summary["eval"]["after_sft"]["accuracy"], summary["eval"]["after_rl"]["accuracy"]
    return {
        "run_dir": str(run), "after_sft": sft, "after_rl": rl, "gain_points": 100 * (rl - sft),
        "n": summary["eval"]["after_rl"]["n"],
        "samples_per_problem": summary["eval"]["after_rl"]["samples_per_problem"],
        "copy_errors_after_sft": copy_errors(run, "after_sft", problems),
        "copy_errors_after_rl": copy_errors(run, "after_rl", problems),
        "samples_after_sft": samples(run, "after_sft"), "samples_after_rl": samples(run, "after_rl"),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--out", default="runs", help="out_dir of the runs")
    ap.add_argument("--from-runs", action="store_true", help="read finished runs in --out instead of training")
    ap.add_argument("--results", default=str(ROOT / "benchmarks" / "results" / "code_task.json"))
    ap.add_argument("overrides", nargs="*", help="recipe key=value overrides (every seed)")
    ns = ap.parse_args()
    from longcot.config import load_recipe
    from longcot.data import build_task
    from longcot.pipeline import train

    results = {"recipe": str(RECIPE.relative_to(ROOT)), "overrides": ns.overrides, "seeds": {}}
    for seed in ns.seeds:
        name = f"code-moe-seed{seed}"
        recipe = load_recipe(RECIPE, [*ns.overrides, f"seed={seed}", f"name={name}", f"out_dir={ns.out}"])
        run = Path(ns.out) / name
        summary = json.loads((run / "summary.json").read_text()) if ns.from_runs else train(recipe)
        problems = {row["id"]: row["problem"] for row in build_task(recipe.data, recipe.eval).heldout}
        record = results["seeds"][str(seed)] = seed_result(run, summary, problems)
        Path(ns.results).write_text(json.dumps(results, indent=2))  # after each seed: nothing lost on a crash
        print(f"seed {seed}: held-out pass rate after SFT {record['after_sft']:.3f}, after RL {record['after_rl']:.3f} "
              f"({record['gain_points']:+.1f} points); every number copied right "
              f"{record['copy_errors_after_sft']['all_numbers_right']:.3f} -> "
              f"{record['copy_errors_after_rl']['all_numbers_right']:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
