"""Reward throughput: sandboxed code executions/s and math grades/s, side by side with naive baselines.

    OMP_NUM_THREADS=1 python benchmarks/rewards.py --workers 2 --samples 200

Code: the 10 HumanEval problems of tests/data (canonical solutions, cycled to --samples programs).
  pool  = the `code` reward: warm worker pool, each driving a warm sandbox server (jail, per-run PID ns).
  naive = one `python program.py` subprocess per sample (program = prompt + completion + test + check),
          --workers at a time, no sandbox at all (so the comparison flatters the baseline).
Math: --samples responses with LaTeX answers (math-verify path) and with integer answers (fast path).
  naive = math-verify in one process, one call after another (no time limit).
Medians of --repeats runs, all in this one process, one thread per process.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from longcot.record import Trajectory
from longcot.rewards.code import code_batch
from longcot.rewards.math import math_batch, verify_answer
from longcot.rewards.pool import get_pool

DATA = Path(__file__).resolve().parents[1] / "tests" / "data" / "humaneval10.jsonl"


def traj(text: str, meta: dict) -> Trajectory:
    return Trajectory("p", "g", [], [], [], response_text=text, meta=meta)


def code_samples(n: int) -> list[Trajectory]:
    probs = [json.loads(x) for x in DATA.read_text().splitlines()]
    out = []
    for i in range(n):
        p = probs[i % len(probs)]
        tests = {"kind": "assert", "prompt": p["prompt"], "test": p["test"], "entry_point": p["entry_point"]}
        out.append(traj(p["canonical_solution"], {"tests": tests}))
    return out


def naive_code(samples: list[Trajectory], workers: int) -> list[float]:
    def one(s: Trajectory) -> float:
        t = s.meta["tests"]
        program = t["prompt"] + s.response_text + "\n" + t["test"] + f"\ncheck({t['entry_point']})\n"
        with tempfile.TemporaryDirectory() as d:
            path = os.path.join(d, "program.py")
            Path(path).write_text(program)
            try:
                r = subprocess.run([sys.executable, path], cwd=d, capture_output=True, timeout=10)
            except subprocess.TimeoutExpired:
                return 0.0
        return float(r.returncode == 0)

    with ThreadPoolExecutor(workers) as ex:
        return list(ex.map(one, samples))


def math_samples(n: int, latex: bool) -> list[Trajectory]:
    out = []
    for i in range(n):
        if latex:
            text = f"<think>...</think> so \\boxed{{\\frac{{{i + 1}}}{{{i + 2}}}}}"
            out.append(traj(text, {"answer": f"{i + 1}/{i + 2}"}))
        else:
            out.append(traj(f"<think>...</think> so \\boxed{{{i}}}", {"answer": str(i)}))
    return out


def naive_math(samples: list[Trajectory]) -> list[float]:
    from longcot.rewards.math import extract_answer

    return [float(verify_answer(s.meta["answer"], extract_answer(s.response_text))) for s in samples]


def timed(fn, repeats: int) -> tuple[float, list]:
    times, result = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), result


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--samples", type=int, default=200)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    os.environ["LONGCOT_REWARD_WORKERS"] = str(args.workers)
    n, rows = args.samples, []
    cs = code_samples(n)
    get_pool("code", preload=("longcot.rewards.executor",))
    code_batch(cs[: 2 * args.workers])  # warm-up: start the workers and their sandbox servers
    t_pool, r_pool = timed(lambda: code_batch(cs), args.repeats)
    t_naive, r_naive = timed(lambda: naive_code(cs, args.workers), args.repeats)
    assert sum(r_pool) == n and sum(r_naive) == n, (sum(r_pool), sum(r_naive))
    rows.append(("code: `code` reward (warm pool + jail)", n / t_pool))
    rows.append(("code: naive subprocess per sample, no jail", n / t_naive))
    math_batch(math_samples(4, True))  # warm-up
    for latex in (True, False):
        ms = math_samples(n, latex)
        t, r = timed(lambda ms=ms: math_batch(ms), args.repeats)
        assert sum(r) == n
        kind = "LaTeX answers (math-verify)" if latex else "integer answers (fast path)"
        rows.append((f"math: `math` reward, {kind}", n / t))
    t, r = timed(lambda: naive_math(math_samples(n, True)), args.repeats)
    assert sum(r) == n
    rows.append(("math: naive in-process math-verify, one after another (LaTeX)", n / t))
    print(f"workers={args.workers} samples={n} repeats={args.repeats} cpus={os.cpu_count()}")
    print("| what | per second |\n| --- | ---: |")
    for what, rate in rows:
        print(f"| {what} | {rate:.1f} |")
    print(f"code speed-up over naive: {t_naive / t_pool:.1f}x")


if __name__ == "__main__":
    main()
