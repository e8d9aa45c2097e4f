"""The "Train on your own data" walk-through of docs/data.md, run command by command as the docs write them.

Each step is the docs' command (``longcot ...`` as ``python -m longcot.cli ...``) plus ``threads=1``,
``out_dir`` and a run name. It records every step's exit code and, for the runs, the held-out accuracies, the
zero-signal warnings and the per-step reward and gradient norm; for the steps that must fail, the error line the
user sees. Written to ``benchmarks/results/own_data.json`` after every step (nothing lost on a crash).

    OMP_NUM_THREADS=1 python benchmarks/own_data.py [--work DIR]     # about 8 minutes on 2 shared cores
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

from longcot.jsonl import read_jsonl

ROOT = Path(__file__).resolve().parents[1]
RECIPE = str(ROOT / "recipes" / "tiny" / "arith-moe.yaml")
EXPORT = ["-m", "longcot.data.export", "arith"]
MAKE = ["--n", "10000", "--option", "ops=+-", "--option", "max_operand=9"]
OWN = ["data.task=dataset", "data.source=mine.jsonl"]
# (name, python arguments, the exit code the docs promise, whether it is a training run to read back)
STEPS = [
    ("export_without_solutions", [*EXPORT, "mine.jsonl", *MAKE, "--drop", "solution"], 0, False),
    ("dry_run", ["-m", "longcot.cli", "train", RECIPE, "--dry-run", *OWN, "sft.enabled=false"], 0, False),
    ("dry_run_wrong_column_path", ["-m", "longcot.cli", "train", RECIPE, "--dry-run", *OWN,
                                   "data.columns.answer=gold"], 2, False),
    ("sft_without_a_target", ["-m", "longcot.cli", "train", RECIPE, *OWN], 2, False),
    ("rl_with_sft_off", ["-m", "longcot.cli", "train", RECIPE, *OWN, "sft.enabled=false", "rl.steps=5"], 0, True),
    ("export_with_solutions", [*EXPORT, "mine-worked.jsonl", *MAKE], 0, False),
    ("sft_then_rl", ["-m", "longcot.cli", "train", RECIPE, "data.task=dataset", "data.source=mine-worked.jsonl",
                     "sft.num_examples=9000", "rl.steps=30"], 0, True),
]


def read_run(run: Path) -> dict:
    """What the docs quote from a run: held-out accuracies, warnings, reward and gradient per RL step."""
    summary = json.loads((run / "summary.json").read_text())
    rows = read_jsonl(run / "metrics.jsonl")
    return {"eval": {stage: e["accuracy"] for stage, e in summary["eval"].items()},
            "warnings": [w["message"] for w in summary.get("warnings", [])],
            "reward_mean": [r["reward_mean"] for r in rows], "grad_norm": [r["grad_norm"] for r in rows],
            "split": json.loads((run / "split.json").read_text())["heldout"]["how"]}


def run_overrides(name: str, args: list[str], work: Path) -> list[str]:
    """What a training step adds to the docs' command: one thread (a shared machine), where and under which name."""
    trains = "longcot.cli" in args and "--dry-run" not in args
    return ["threads=1", f"out_dir={work}", f"name={name}"] if trains else []


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", default="runs/own-data", help="where the files and runs go")
    ap.add_argument("--results", default=str(ROOT / "benchmarks" / "results" / "own_data.json"))
    ns = ap.parse_args()
    work = Path(ns.work).resolve()
    work.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "LONGCOT_NO_PROGRESS": "1"}
    results: dict = {"work": str(work), "steps": {}}
    for name, args, expected_rc, is_run in STEPS:
        extra = run_overrides(name, args, work)
        proc = subprocess.run([sys.executable, *args, *extra], cwd=work, env=env, capture_output=True, text=True)
        step = {"command": " ".join(["python", *args, *extra]).replace(str(ROOT) + "/", ""), "rc": proc.returncode}
        if proc.returncode != 0:
            step["error"] = proc.stderr.strip().splitlines()[-1]
        if is_run and proc.returncode == 0:
            step.update(read_run(work / name))
        results["steps"][name] = step
        Path(ns.results).write_text(json.dumps(results, indent=2))
        print(f"{name}: rc {proc.returncode} (docs: {expected_rc})", {k: v for k, v in step.items() if k == "eval"})
        if proc.returncode != expected_rc:
            print(proc.stderr[-3000:], file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
