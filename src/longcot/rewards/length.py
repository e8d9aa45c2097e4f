"""Length and shape rewards: Kimi k1.5 length reward, DAPO overlong shaping, cosine length scaling,
n-gram repetition penalty. Lengths are response token counts, ``len(sample.response_ids)``.

Rewards that depend on correctness (``k15_length``, ``cosine_length``) read it from ``sample.rewards`` under
the name given by ``correctness`` (default ``"math"``): list the correctness reward *before* them in the recipe
and they reuse its score (no second grading). When that component is missing they compute it by calling the
reward of that name on the sample. A score above ``threshold`` (0.5) counts as correct.
"""

from __future__ import annotations

from math import cos, pi

from longcot.record import Trajectory
from longcot.rewards.math import CUT_OFF
from longcot.rewards.registry import REWARDS, reward


def is_correct(sample: Trajectory, correctness: str = "math", threshold: float = 0.5) -> bool:
    """Correctness of ``sample`` from an earlier component, else from the reward called ``correctness``."""
    if correctness in sample.rewards:
        return sample.rewards[correctness] > threshold
    value = REWARDS.get(correctness)(sample)
    if isinstance(value, dict):
        value = value[correctness]
    return float(value) > threshold


@reward("k15_length", per_group=True)
def k15_length(group: list[Trajectory], *, correctness: str = "math", threshold: float = 0.5) -> list[float]:
    """Kimi k1.5: lambda_i = 0.5 - (len_i - min_len) / (max_len - min_len) over the group (0 if all equal);
    a correct response gets lambda_i, a wrong one min(0, lambda_i). Short correct answers are rewarded and
    long wrong ones penalised; short wrong ones are never rewarded for being short."""
    lengths = [len(t.response_ids) for t in group]
    lo, hi = min(lengths), max(lengths)
    if hi == lo:
        return [0.0] * len(group)
    out = []
    for t, n in zip(group, lengths, strict=True):
        lam = 0.5 - (n - lo) / (hi - lo)
        out.append(lam if is_correct(t, correctness, threshold) else min(0.0, lam))
    return out


@reward("overlong")
def overlong(sample: Trajectory, *, max_len: int = 4096, cache: int = 512) -> float:
    """DAPO soft overlong punishment: 0 up to max_len - cache, then linear down to -1 at max_len, -1 beyond."""
    if not 0 < cache <= max_len:
        raise ValueError(f"overlong: need 0 < cache <= max_len, got cache={cache}, max_len={max_len}")
    n, start = len(sample.response_ids), max_len - cache
    if n <= start:
        return 0.0
    return (start - n) / cache if n <= max_len else -1.0


@reward("cosine_length")
def cosine_length(
    sample: Trajectory,
    *,
    max_len: int = 4096,
    correct_short: float = 2.0,
    correct_long: float = 1.0,
    wrong_short: float = -10.0,
    wrong_long: float = 0.0,
    exceed: float = -10.0,
    correctness: str = "math",
    threshold: float = 0.5,
) -> float:
    """Cosine length scaling (Yeo et al. 2025, "Demystifying Long Chain-of-Thought Reasoning in LLMs").

    r = lo + (hi - lo) * (1 + cos(pi * L / max_len)) / 2 goes from the "short" value at L = 0 to the "long" value
    at max_len: correct answers prefer short, wrong ones prefer long (keep thinking). Cut-off or longer: exceed.
    """
    n = len(sample.response_ids)
    if n >= max_len or sample.finish in CUT_OFF:
        return exceed
    short, long = (correct_short, correct_long) if is_correct(sample, correctness, threshold) else (
        wrong_short, wrong_long)
    return long + 0.5 * (short - long) * (1.0 + cos(pi * n / max_len))


@reward("repetition")
def repetition(sample: Trajectory, *, ngram: int = 8, max_penalty: float = -1.0) -> float:
    """max_penalty * (fraction of repeated token n-grams): 0 for no repeats, max_penalty for a loop.

    Needs ``response_ids``: a sample with text but no token ids is an error, never scored on some other unit
    (``longcot score`` tokenises with ``--tokenizer`` or refuses before grading)."""
    _validate_repetition(ngram=ngram)
    seq = sample.response_ids
    if not seq and sample.response_text:
        raise ValueError(f"sample {sample.prompt_id}: repetition needs token ids (response_ids) and has none")
    grams = [tuple(seq[i : i + ngram]) for i in range(len(seq) - ngram + 1)]
    if not grams:
        return 0.0
    return max_penalty * (1.0 - len(set(grams)) / len(grams))


def _validate_correctness(*, correctness: str = "math", **_options) -> None:
    """The reward that judges correctness exists (before any work, not at the first sample)."""
    REWARDS.get(correctness)


def _validate_overlong(*, max_len: int = 4096, cache: int = 512) -> None:
    if not 0 < cache <= max_len:
        raise ValueError(f"overlong: need 0 < cache <= max_len, got cache={cache}, max_len={max_len}")


k15_length.validate = _validate_correctness
cosine_length.validate = _validate_correctness
overlong.validate = _validate_overlong


def _validate_repetition(*, ngram: int = 8, max_penalty: float = -1.0) -> None:
    if ngram < 1:
        raise ValueError(f"repetition: ngram must be >= 1, got {ngram}")


repetition.validate = _validate_repetition
