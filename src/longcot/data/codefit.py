"""A tiny code task: write the Python function that fits two examples, graded by running it on hidden tests.

A problem shows two points of a line, ``f(3)=11, f(5)=17``. The solver does no arithmetic in its head: it writes a
program that computes the slope and the intercept from the numbers it copies out of the prompt (program-aided
reasoning), in a fenced block::

    ```python
    def f(x):
        a = (17-11)//(5-3)
        b = 11-a*3
        return a*x+b
    ```

The row's ``tests`` are HumanEval-style asserts (the format ``longcot score`` and the ``code`` reward read) on
the two given points *and* on points the prompt never shows. The structure has to be right (which number goes
where, the order of each difference, the integer division) and every number copied exactly. ``slip_prob`` makes
an imperfect teacher: each of the two computing lines miscopies one number of the prompt by 1-3 with that
probability. SFT imitates the slips; RL with the code reward, which runs the program in the sandbox, is what
removes them. Rows look like a code dataset's (``problem``, ``tests``, ``solution``), so
``python -m longcot.data.export codefit FILE`` writes them as a file that ``data.task: dataset`` reads like any
published set. Deterministic by seed; the held-out split shares no problem with training.

(A first version had the solver compute ``a=17-14=3``, ``3*4=12``, ``b=14-12=2`` in its head and write the
constants: the tiny model got 13-54% of those steps right after SFT and 5% of the programs, too little for RL to
work with; docs/data.md.)
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from longcot.data.arith import disjoint_split


@dataclass(frozen=True)
class CodeFitSpec:
    max_x: int = 9  # the first example's x is in [0, max_x]
    max_gap: int = 3  # the second example's x is the first's + 1..max_gap
    max_slope: int = 9  # slope a in [-max_slope, max_slope], never 0
    max_intercept: int = 30  # intercept b in [-max_intercept, max_intercept]
    slip_prob: float = 0.0  # imperfect teacher: chance that a computing line miscopies a number by 1-3
    hidden_points: tuple[int, ...] = (-3, 0, 10)  # test points the prompt does not show

    def __post_init__(self) -> None:
        if self.max_x < 0 or self.max_gap < 1 or self.max_slope < 1 or self.max_intercept < 0:
            raise ValueError(f"codefit: need max_x >= 0, max_gap >= 1, max_slope >= 1, max_intercept >= 0 ({self})")
        if not 0.0 <= self.slip_prob < 1.0:
            raise ValueError(f"codefit: slip_prob must be in [0, 1), got {self.slip_prob}")


def _num(value: int) -> str:
    """A number as the program writes it: negatives in parentheses (``17-(-11)``, never ``17--11``)."""
    return str(value) if value >= 0 else f"({value})"


def _miscopy(rng: random.Random, value: int) -> int:
    return value + rng.choice([-3, -2, -1, 1, 2, 3])


def program(x1: int, x2: int, a_y1: int, a_y2: int, b_y1: int) -> str:
    """The fenced Python block computing slope and intercept from the numbers it copied (``a_*``: in the slope
    line, ``b_y1``: in the intercept line; a clean copy has ``a_y1 == b_y1 == y1`` and ``a_y2 == y2``)."""
    return (f"```python\ndef f(x):\n    a = ({_num(a_y2)}-{_num(a_y1)})//({x2}-{x1})\n    b = {_num(b_y1)}-a*{x1}\n"
            "    return a*x+b\n```")


def tests_for(a: int, b: int, xs: list[int]) -> dict:
    """HumanEval-style tests of ``f`` (the ``code`` reward's ``assert`` kind) at every x in ``xs``."""
    lines = [f"    assert candidate({x}) == {a * x + b}" for x in xs]
    return {"kind": "assert", "prompt": "", "test": "def check(candidate):\n" + "\n".join(lines) + "\n",
            "entry_point": "f"}


def make_problem(rng: random.Random, spec: CodeFitSpec) -> dict:
    """One row: problem text, tests, the (possibly slipped) solution, and the true slope/intercept."""
    x1 = rng.randint(0, spec.max_x)
    x2 = x1 + rng.randint(1, spec.max_gap)
    a = rng.choice([v for v in range(-spec.max_slope, spec.max_slope + 1) if v])
    b = rng.randint(-spec.max_intercept, spec.max_intercept)
    y1, y2 = a * x1 + b, a * x2 + b
    # the teacher's copies of the numbers in each computing line (a slip changes one of them by 1-3)
    a_y2, a_y1, b_y1 = y2, y1, y1
    if spec.slip_prob and rng.random() < spec.slip_prob:
        if rng.random() < 0.5:
            a_y2 = _miscopy(rng, y2)
        else:
            a_y1 = _miscopy(rng, y1)
    if spec.slip_prob and rng.random() < spec.slip_prob:
        b_y1 = _miscopy(rng, y1)
    solution = program(x1, x2, a_y1, a_y2, b_y1)
    xs = sorted({x1, x2, *spec.hidden_points})
    return {"problem": f"f({x1})={y1}, f({x2})={y2}", "tests": tests_for(a, b, xs), "solution": solution,
            "slope": a, "intercept": b, "difficulty": x2 - x1}


def make_codefit_split(spec: CodeFitSpec, n_train: int, n_heldout: int, seed: int) -> tuple[list, list]:
    """Deterministic (train, heldout) rows with disjoint problems."""
    return disjoint_split(lambda rng: make_problem(rng, spec), n_train, n_heldout, f"codefit-{{}}-{seed}",
                          f"{spec}: raise max_x, max_gap, max_slope or max_intercept")


def spec_from(cfg) -> CodeFitSpec:
    """The spec from a recipe's ``data`` section: ``data.slip_prob`` plus ``data.task_options``."""
    known = set(CodeFitSpec.__dataclass_fields__) - {"slip_prob"}
    unknown = set(cfg.task_options) - known
    if unknown:
        raise KeyError(f"data.task_options: unknown codefit option(s) {sorted(unknown)}; valid: {sorted(known)}")
    options = dict(cfg.task_options)
    if "hidden_points" in options:
        options["hidden_points"] = tuple(options["hidden_points"])
    return CodeFitSpec(slip_prob=cfg.slip_prob, **options)
