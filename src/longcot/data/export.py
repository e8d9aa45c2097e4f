"""Write a synthetic task's rows as a dataset file, the shape of a user's own data (docs/data.md walks through it).

``python -m longcot.data.export arith problems.jsonl --n 2000 [--seed S] [--slip-prob P] [--drop solution]``

Each line is one row: ``problem``, ``answer`` (arith) or ``tests`` (codefit), ``solution`` (a worked solution, for
SFT) and the task's own columns. ``--drop`` leaves columns out, e.g. a file without worked solutions, as most
question/answer sets are. Recipe keys such as ``data.max_ops`` keep their defaults here; ``--option key=value``
sets any field of the task's spec.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import yaml


def rows_of(task: str, n: int, seed: int, slip_prob: float, options: dict) -> list[dict]:
    """``n`` training rows of the synthetic ``task`` (arith or codefit)."""
    if task == "arith":
        from longcot.data.arith import ArithSpec, make_split

        return make_split(ArithSpec(slip_prob=slip_prob, **options), n, 0, seed)[0]
    if task == "codefit":
        from longcot.data.codefit import CodeFitSpec, make_codefit_split

        return make_codefit_split(CodeFitSpec(slip_prob=slip_prob, **options), n, 0, seed)[0]
    raise SystemExit(f"unknown task '{task}': expected arith or codefit")


def write_jsonl(path: str | Path, rows: list[dict], drop: tuple[str, ...] = ()) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as f:
        for row in rows:
            f.write(json.dumps({k: v for k, v in row.items() if k not in drop}) + "\n")
    return path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m longcot.data.export", description=__doc__.split("\n\n")[0])
    ap.add_argument("task", choices=["arith", "codefit"])
    ap.add_argument("out", help="output .jsonl")
    ap.add_argument("--n", type=int, default=2000, help="rows")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--slip-prob", type=float, default=0.0, help="imperfect teacher: chance of a slip per step")
    ap.add_argument("--drop", action="append", default=[], help="leave this column out (repeatable)")
    ap.add_argument("--option", action="append", default=[], metavar="KEY=VALUE", help="a field of the task's spec")
    ns = ap.parse_args(argv)
    options = {}
    for item in ns.option:
        key, eq, value = item.partition("=")
        if not eq:
            raise SystemExit(f"--option {item!r}: expected KEY=VALUE")
        options[key] = yaml.safe_load(value)
    rows = rows_of(ns.task, ns.n, ns.seed, ns.slip_prob, options)
    print(write_jsonl(ns.out, rows, tuple(ns.drop)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
