"""Synthetic multi-step arithmetic: a task small models can learn on a CPU, with verifiable answers.

A problem is a chain of operations written with standard precedence, e.g. ``(7+5)*3-4``. The solver writes
one line per step (``7+5=12``) and ends with ``\\boxed{32}``, which is the SFT warm-up target. Knobs:
number of operations (difficulty), operand size, redundant re-checking lines (something for a length
penalty to remove), and a long tail of much longer problems (something for partial rollouts to cut).
``slip_prob`` makes an imperfect teacher whose traces sometimes contain an arithmetic slip: SFT imitates
the slips, and RL with a verifiable reward is what removes them. Everything is deterministic by seed, and
the held-out split never shares a problem with training.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class ArithSpec:
    min_ops: int = 1
    max_ops: int = 3
    max_operand: int = 20
    recheck_prob: float = 0.0
    long_tail_frac: float = 0.0
    long_tail_mult: int = 4  # long-tail problems have this many times max_ops operations
    slip_prob: float = 0.0  # an imperfect teacher: chance that a solver step's result is off by 1-3
    ops: str = "+-*"  # allowed operators

    def __post_init__(self) -> None:
        if not self.ops or set(self.ops) - set("+-*"):
            raise ValueError(f"arith ops must be a non-empty subset of '+-*', got {self.ops!r}")


def _apply(acc: int, op: str, x: int) -> int:
    return acc + x if op == "+" else acc - x if op == "-" else acc * x


def make_problem(rng: random.Random, spec: ArithSpec) -> dict:
    """One problem row: problem text, gold answer, step-by-step solution, difficulty (= number of ops)."""
    long = spec.long_tail_frac > 0 and rng.random() < spec.long_tail_frac
    n_ops = spec.max_ops * spec.long_tail_mult if long else rng.randint(spec.min_ops, spec.max_ops)
    acc = rng.randint(1, spec.max_operand)
    expr, prev_op = str(acc), None
    lines = []
    for _ in range(n_ops):
        op = rng.choice(spec.ops)
        x = rng.randint(2, 9) if op == "*" else rng.randint(1, spec.max_operand)
        if op == "*" and prev_op in ("+", "-"):
            expr = f"({expr})"
        expr = f"{expr}{op}{x}"
        new = _apply(acc, op, x)
        if spec.slip_prob and rng.random() < spec.slip_prob:
            new += rng.choice([-3, -2, -1, 1, 2, 3])  # the slip carries into every later step
        lines.append(f"{acc}{op}{x}={new}")
        if spec.recheck_prob and rng.random() < spec.recheck_prob:
            lines.append(f"check {acc}{op}{x}: {new} ok")
        acc, prev_op = new, op
    solution = "\n".join(lines) + f"\n\\boxed{{{acc}}}"
    # The gold answer is the true value, not the (possibly slipped) trace's last line.
    answer = str(evaluate_expression(expr)) if spec.slip_prob else str(acc)
    return {"problem": expr, "answer": answer, "solution": solution, "difficulty": n_ops, "long": long}


def evaluate_expression(expr: str) -> int:
    """The gold answer computed independently of the solver (Python precedence == standard precedence)."""
    if not set(expr) <= set("0123456789+-*() "):
        raise ValueError(f"not an arithmetic expression: {expr!r}")
    return int(eval(expr, {"__builtins__": {}}))  # noqa: S307 - charset checked above


def make_split(spec: ArithSpec, n_train: int, n_heldout: int, seed: int) -> tuple[list[dict], list[dict]]:
    """Deterministic (train, heldout) rows; no held-out problem text appears in train."""
    return disjoint_split(lambda rng: make_problem(rng, spec), n_train, n_heldout, f"arith-{{}}-{seed}",
                          f"{spec}: raise max_ops or max_operand")


def disjoint_split(draw: Callable[[random.Random], dict], n_train: int, n_heldout: int, rng_name: str,
                   hint: str) -> tuple[list[dict], list[dict]]:
    """(train, heldout) rows from ``draw``: distinct held-out problems, then training problems whose text is
    not among them, each split from its own RNG (``rng_name`` with ``{}`` = "heldout" / "train"), so the
    held-out set does not depend on ``n_train``. ``hint`` says what to change when the problem space is too
    small to fill the splits (instead of drawing forever)."""
    held_rng = random.Random(rng_name.format("heldout"))
    heldout, seen, attempts = [], set(), 0
    while len(heldout) < n_heldout:
        attempts += 1
        if attempts > 50 * n_heldout + 1000:
            raise ValueError(f"cannot draw {n_heldout} distinct held-out problems with {hint}")
        row = draw(held_rng)
        if row["problem"] not in seen:
            seen.add(row["problem"])
            heldout.append({**row, "id": f"heldout-{len(heldout)}"})
    train_rng = random.Random(rng_name.format("train"))
    train, attempts = [], 0
    while len(train) < n_train:
        attempts += 1
        if attempts > 50 * n_train + 1000:
            raise ValueError(f"cannot draw {n_train} training problems disjoint from held-out with {hint}")
        row = draw(train_rng)
        if row["problem"] not in seen:
            train.append({**row, "id": f"train-{len(train)}"})
    return train, heldout
