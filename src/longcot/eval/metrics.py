"""Evaluation metrics as pure functions: avg@n, unbiased pass@k, maj@k, bootstrap CI, length statistics.

Conventions (the ones published AIME/MATH numbers use):

* ``avg@n``: mean over problems of the fraction of the n samples that are correct. This is what papers
  call "pass@1 averaged over n samples" (DeepSeek-R1: n=64, T=0.6, top_p=0.95).
* ``pass@k``: the unbiased estimator of Chen et al. (2021), ``1 - C(n-c, k) / C(n, k)`` per problem, averaged
  over problems. It needs ``k <= n``.
* ``maj@k`` (a.k.a. cons@k): majority vote over the *extracted* answers of k samples; the problem counts as
  solved when the winning answer is correct. The n samples are cut into ``n // k`` consecutive blocks of k
  (sample order = engine order) and the result is averaged over blocks, so ``maj@n`` is the vote over all
  samples (DeepSeek's cons@64) and ``maj@1 == avg@n``. Leftover samples (``n % k``) are not used.
  Votes: samples with no extracted answer (``None`` or empty) do not vote; answers are compared after
  :func:`vote_key` (whitespace removed). **Ties are broken by the earliest sample**: among the answers with the
  highest count, the one whose first occurrence has the lowest sample index wins. A block with no votes is
  wrong.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np

log = logging.getLogger(__name__)


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k for one problem with ``c`` correct out of ``n`` samples: ``1 - C(n-c,k)/C(n,k)``.

    Computed as ``1 - prod_{i=n-c+1}^{n} (1 - k/i)`` so that n=1024 does not overflow.
    """
    if not 0 <= c <= n:
        raise ValueError(f"pass_at_k: need 0 <= c <= n, got n={n}, c={c}")
    if not 1 <= k <= n:
        raise ValueError(f"pass_at_k: need 1 <= k <= n, got n={n}, k={k}")
    if n - c < k:
        return 1.0
    return float(1.0 - np.prod(1.0 - k / np.arange(n - c + 1, n + 1)))


def mean_pass_at_k(correct: Sequence[Sequence[bool]], k: int) -> float:
    """pass@k averaged over problems; ``correct[p]`` holds the per-sample correctness of problem p."""
    return float(np.mean([pass_at_k(len(c), int(sum(c)), k) for c in correct]))


def avg_at_n(correct: Sequence[Sequence[bool]]) -> float:
    """Mean over problems of the per-problem fraction correct (each problem weighs the same)."""
    return float(np.mean([np.mean(c) for c in correct]))


def vote_key(answer: str | None) -> str | None:
    """The string majority voting compares: whitespace removed; ``None`` for a missing answer."""
    if answer is None:
        return None
    key = "".join(str(answer).split())
    return key or None


def majority_vote(answers: Sequence[str | None]) -> int | None:
    """Index of the sample whose answer wins the vote (earliest sample on ties), or None if nobody voted."""
    counts: dict[str, int] = {}
    first: dict[str, int] = {}
    for i, a in enumerate(answers):
        key = vote_key(a)
        if key is None:
            continue
        counts[key] = counts.get(key, 0) + 1
        first.setdefault(key, i)
    if not counts:
        return None
    best = max(counts, key=lambda a: (counts[a], -first[a]))
    return first[best]


def maj_at_k(answers: Sequence[str | None], correct: Sequence[bool], k: int) -> float:
    """maj@k for one problem: the mean over the ``n // k`` consecutive blocks of k samples of
    "the block's majority answer is correct" (see the module docstring for ties and missing answers)."""
    n = len(answers)
    if len(correct) != n:
        raise ValueError(f"maj_at_k: {n} answers but {len(correct)} correctness flags")
    if not 1 <= k <= n:
        raise ValueError(f"maj_at_k: need 1 <= k <= n, got n={n}, k={k}")
    wins = []
    for start in range(0, n - k + 1, k):
        winner = majority_vote(answers[start : start + k])
        wins.append(winner is not None and bool(correct[start + winner]))
    return float(np.mean(wins))


def mean_maj_at_k(answers: Sequence[Sequence[str | None]], correct: Sequence[Sequence[bool]], k: int) -> float:
    """maj@k averaged over problems."""
    return float(np.mean([maj_at_k(a, c, k) for a, c in zip(answers, correct, strict=True)]))


def bootstrap_ci(
    pass_rates: Sequence[float], level: float = 0.95, n_boot: int = 2000, seed: int = 0
) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of per-problem pass rates (problems resampled).

    This measures how much avg@n would move with a different draw of *problems* of the same kind; with 30
    AIME problems it is wide (about +-15 points at 50%), which is why single-run AIME deltas are noisy.
    """
    x = np.asarray(pass_rates, dtype=np.float64)
    if x.size == 0:
        raise ValueError("bootstrap_ci: no problems")
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, x.size, size=(n_boot, x.size))].mean(axis=1)
    alpha = (1.0 - level) / 2
    lo, hi = np.quantile(means, [alpha, 1.0 - alpha])
    return float(lo), float(hi)


def length_stats(lengths: Sequence[int], finishes: Sequence[str]) -> dict[str, float]:
    """Response length mean/p50/p90 (tokens) and the truncation rate (finish == "length")."""
    x = np.asarray(lengths, dtype=np.float64)
    if x.size == 0:
        return {"length/mean": 0.0, "length/p50": 0.0, "length/p90": 0.0, "truncation_rate": 0.0}
    return {
        "length/mean": float(x.mean()),
        "length/p50": float(np.percentile(x, 50)),
        "length/p90": float(np.percentile(x, 90)),
        "truncation_rate": float(np.mean([f == "length" for f in finishes])),
    }


def summarize(
    samples: Sequence[dict], ks: Sequence[int], gold: dict[str, str] | None = None, seed: int = 0
) -> dict:
    """``summary.json``'s content from graded sample records (``id, sample, extracted, correct, tokens, finish``).

    Problems keep their first-seen order and samples their ``sample`` index. ``n`` is the samples per problem;
    when problems differ (re-scored files) it is the smallest count, and each problem still uses all of its
    own samples for avg and pass@k. A k larger than that n is dropped, since pass@k is undefined for k > n.
    """
    by_id: dict[str, list[dict]] = {}
    for s in samples:
        by_id.setdefault(str(s["id"]), []).append(s)
    if not by_id:
        raise ValueError("summarize: no samples")
    for rows in by_id.values():
        rows.sort(key=lambda r: r["sample"])
    correct = [[bool(r["correct"]) for r in rows] for rows in by_id.values()]
    answers = [[r.get("extracted") for r in rows] for rows in by_id.values()]
    n = min(len(c) for c in correct)
    if any(len(c) != n for c in correct):
        log.warning("summarize: problems have between %d and %d samples; n=%d", n, max(map(len, correct)), n)
    dropped = sorted({int(k) for k in ks if int(k) > n})
    if dropped:  # a smoke test with a small n should not need k overridden too
        log.warning("summarize: k=%s > n=%d dropped (pass@k and maj@k need k <= n)", dropped, n)
    ks = sorted({int(k) for k in ks if 1 <= int(k) <= n})
    per_problem = []
    for pid, rows, c, a in zip(by_id, by_id.values(), correct, answers, strict=True):
        winner = majority_vote(a)
        per_problem.append({
            "id": pid,
            "n": len(rows),
            "num_correct": int(sum(c)),
            "pass_rate": float(np.mean(c)),
            "mean_length": float(np.mean([r["tokens"] for r in rows])),
            "truncation_rate": float(np.mean([r["finish"] == "length" for r in rows])),
            "maj_answer": None if winner is None else a[winner],
            "gold": None if gold is None else gold.get(pid),
        })
    rates = [p["pass_rate"] for p in per_problem]
    metrics: dict[str, float | list[float]] = {f"avg@{n}": avg_at_n(correct)}
    metrics[f"avg@{n}_ci95"] = list(bootstrap_ci(rates, seed=seed))
    for k in ks:
        metrics[f"pass@{k}"] = mean_pass_at_k(correct, k)
    for k in ks:
        metrics[f"maj@{k}"] = mean_maj_at_k(answers, correct, k)
    metrics.update(length_stats([s["tokens"] for s in samples], [s["finish"] for s in samples]))
    right = [s["tokens"] for s in samples if s["correct"]]
    # what a length penalty should shorten: correct answers (wrong ones are often truncated or cut short)
    metrics["length/correct_mean"] = float(np.mean(right)) if right else 0.0
    metrics["num_problems"] = len(per_problem)
    metrics["num_samples"] = len(samples)
    metrics["no_answer_rate"] = float(np.mean([vote_key(s.get("extracted")) is None for s in samples]))
    return {"n": n, "metrics": metrics, "per_problem": per_problem}
