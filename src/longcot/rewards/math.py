"""The math reward: 1.0 when the final answer of a response equals the gold answer, else 0.0.

Only the *final answer* is graded, because a long chain of thought mentions many numbers on the way:

1. the answer section is the text after the last ``</think>``; a response that opens ``<think>`` and never
   closes it has no answer section (it stopped while thinking);
2. in that section the answer is the content of the last ``\\boxed{...}`` (or ``\\fbox``), balanced braces;
3. else, with ``answer_prefix`` set (default ``"Answer:"``), the rest of the last line that starts with it;
4. else, with ``fallback="text"``, math-verify extracts the last expression of the whole answer section
   (lenient; off by default: "no recognisable answer" scores 0).

A response whose ``finish`` is ``length``, ``budget`` or ``repeat`` was cut off, so it earns
``truncated_score`` (default 0.0) without being graded: rewarding a truncated response for a number it
happened to box on the way teaches the policy to ramble.

Equivalence is math-verify's (numbers, LaTeX, sets, intervals, matrices, relations). Gold may be a number,
a LaTeX string (with or without ``$``) or a plain expression. Integer-vs-integer comparisons take an exact
fast path (same verdict as math-verify, no sympy); everything else runs in warm worker processes with a hard
per-sample wall-clock limit (``timeout_s``), so a pathological expression is killed, never waited for.
"""

from __future__ import annotations

import logging
import re

from longcot.record import Trajectory
from longcot.rewards.pool import get_pool
from longcot.rewards.registry import reward

log = logging.getLogger(__name__)
CUT_OFF = ("length", "budget", "repeat")
_INT = re.compile(r"[+-]?\d+")
_SEPARATOR = re.compile(r"(?:[ \t,;$]|and|\\quad|\\qquad|\\text\{\s*and\s*\}|\\,)*")
_BOX = re.compile(r"\\(?:boxed|fbox)\s*\{")


def answer_section(text: str) -> str | None:
    """The text after the last ``</think>``; ``None`` when a ``<think>`` was opened and never closed."""
    if "</think>" in text:
        return text.rsplit("</think>", 1)[1]
    if "<think>" in text:
        return None
    return text


def _boxes(text: str) -> list[tuple[int, int, str]]:
    """Every complete ``\\boxed{...}`` as (start, end, content); nested braces allowed."""
    out = []
    for m in _BOX.finditer(text):
        depth, i = 1, m.end()
        while i < len(text) and depth:
            depth += {"{": 1, "}": -1}.get(text[i], 0)
            i += 1
        if depth == 0 and (not out or m.start() >= out[-1][1]):
            out.append((m.start(), i, text[m.end() : i - 1]))
    return out


def last_boxed(text: str) -> str | None:
    """Content of the last complete ``\\boxed{...}``, or ``None``.

    Boxes separated only by commas, "and" or spaces ("\\boxed{2} and \\boxed{3}") are one answer, "2, 3"; hedging
    this way does not pay, since a list never equals a single gold value.
    """
    boxes = _boxes(text)
    if not boxes:
        return None
    parts = [boxes[-1]]
    for prev in reversed(boxes[:-1]):
        gap = text[prev[1] : parts[0][0]]
        if not _SEPARATOR.fullmatch(gap):
            break
        parts.insert(0, prev)
    return ", ".join(p[2] for p in parts)


def extract_answer(text: str, answer_prefix: str | None = "Answer:") -> str | None:
    """The final answer string of a response (boxed, else ``answer_prefix`` line), or ``None``.

    Used by the reward and by eval (maj@k votes over these strings).
    """
    section = answer_section(text)
    if section is None:
        return None
    boxed = last_boxed(section)
    if boxed is not None:
        return boxed.strip()
    if answer_prefix:
        idx = section.rfind(answer_prefix)
        if idx >= 0:
            line = section[idx + len(answer_prefix) :].strip().split("\n", 1)[0].strip()
            return line.rstrip(".").strip() or None
    return None


def _plain_int(s: str) -> int | None:
    s = s.strip().strip("$").strip()
    return int(s) if _INT.fullmatch(s) else None


# ---- runs inside worker processes (math-verify's own timeouts use signal.alarm: main thread only) ----

_GOLD_CACHE: dict[str, object] = {}
_WORDS = re.compile(r"[A-Za-z]{2,}")
_COMMAND = re.compile(r"\\[A-Za-z]+")
_MATHY = re.compile(r"[A-Za-z\\^{}]")
_ELLIPSIS = re.compile(r"\\[lc]?dots|\.\.\.")
_FIXES = [
    (re.compile(r"\\\\(?=[a-zA-Z])"), r"\\"),  # JSON-style doubled backslash before a command: \\frac
    (re.compile(r"\\\$"), ""),  # a currency sign: \$10
    (re.compile(r"\\math(?:rm|bf|it)\{([^{}]*)\}"), r"\1"),  # \mathrm{e}: math-verify cuts the text there
    (re.compile(r"\\!\s*"), ""),  # negative thin space, e.g. 11,\\! 111
    (re.compile(r"\\[,;: ]"), " "),  # thin spaces
    (re.compile(r"(?<![\d.])(\d{1,3}(?:,\d{3})+)(?![\d,])"), lambda m: m.group(1).replace(",", "")),  # 7,425,000
]


def normalize_latex(text: str) -> str:
    """Rewrite spellings that math-verify mis-parses (see docs/rewards.md, math pairs)."""
    for pattern, repl in _FIXES:
        text = pattern.sub(repl, text)
    return text


def _squash(text: str) -> str:
    text = re.sub(r"\\left|\\right|\\[dt]frac|\s|\$", lambda m: "\\frac" if "frac" in m.group() else "", text)
    return text.rstrip(".")


def _parse(text: str, timeout: int):
    """math-verify's parse; a bare LaTeX string (no ``$``) is retried inside ``$...$``."""
    from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse

    configs = [LatexExtractionConfig(boxed_match_priority=0), ExprExtractionConfig()]
    text = normalize_latex(text)
    tries = [text]
    if "$" not in text and "\\boxed" not in text:
        # Bare math ("\\frac34i", "(x+2)^2") parses whole only inside $...$; prose would parse as a product
        # of letters there, so it goes to the raw expression extractor first.
        prose_or_number = _WORDS.search(_COMMAND.sub("", text)) or not _MATHY.search(text)
        tries.insert(1 if prose_or_number else 0, f"${text}$")
    for t in tries:
        out = parse(t, extraction_config=configs, parsing_timeout=timeout)
        if out:
            return out
    return []


def _numbers_differ(gold_parsed, pred_parsed) -> bool:
    """True when both answers are plain numbers whose relative difference exceeds 1e-4.

    math-verify compares numbers after rounding to 6 decimals, so 1/2004! "equals" 1/2006!; this veto only
    ever turns an "equal" into "not equal".
    """
    import sympy

    g, p = gold_parsed[0], pred_parsed[0]
    if not all(isinstance(x, sympy.Expr) and x.is_number and x.is_real for x in (g, p)):
        return False
    a, b = sympy.N(g, 30), sympy.N(p, 30)
    return bool(abs(a - b) > 1e-4 * max(abs(a), abs(b)))


def _parse_gold(gold: str, timeout: int):
    if gold not in _GOLD_CACHE:
        wrapped = gold if ("$" in gold or "\\boxed" in gold or "\\[" in gold) else f"${gold}$"
        parsed = _parse(wrapped, timeout) or _parse(gold, timeout)
        if len(_GOLD_CACHE) > 4096:
            _GOLD_CACHE.clear()
        _GOLD_CACHE[gold] = parsed
    return _GOLD_CACHE[gold]


def verify_answer(gold: str, pred: str, is_text: bool = False, timeout: int = 3) -> bool:
    """math-verify equivalence of ``pred`` (an extracted answer, or a whole text if ``is_text``) to ``gold``."""
    from math_verify import verify

    if _ELLIPSIS.search(gold) or _ELLIPSIS.search(pred):  # math-verify drops the dots and compares a fragment
        return not is_text and _squash(normalize_latex(gold)) == _squash(normalize_latex(pred))
    gold_parsed = _parse_gold(gold, timeout)
    if not gold_parsed:
        raise ValueError(f"gold answer {gold!r} does not parse")
    if is_text:
        pred_parsed = _parse(pred, timeout)
    else:
        pred_parsed = _parse(f"\\boxed{{{pred}}}", timeout) or _parse(f"${pred}$", timeout) or _parse(pred, timeout)
    if not pred_parsed or not verify(gold_parsed, pred_parsed, timeout_seconds=timeout):
        return False
    return not _numbers_differ(gold_parsed, pred_parsed)


# ---- in the trainer process ----


def _job(sample: Trajectory, answer_prefix: str | None, fallback: str) -> tuple | float:
    """A pool job for ``sample``, or its score when no math-verify call is needed."""
    gold = sample.meta.get("answer")
    if gold is None or not str(gold).strip():  # never grade against "None" or "": that is a wrong grade
        raise KeyError(f"sample {sample.prompt_id}: no gold answer (meta['answer'] = {gold!r}); the math reward "
                       "needs one")
    gold = str(gold).strip()
    pred = extract_answer(sample.response_text, answer_prefix)
    if pred is None:
        section = answer_section(sample.response_text)
        if fallback == "text" and section and section.strip():
            return (gold, section, True)
        return 0.0
    g, p = _plain_int(gold), _plain_int(pred)
    if g is not None and p is not None:
        return float(g == p)
    return (gold, pred, False)


def _check_options(fallback: str, timeout_s: float) -> None:
    if fallback not in ("none", "text"):
        raise ValueError(f"math reward: fallback must be 'none' or 'text', got {fallback!r}")
    if timeout_s <= 0:
        raise ValueError(f"math reward: timeout_s must be > 0, got {timeout_s}")


def _pool():
    return get_pool("math", preload=("math_verify", "longcot.rewards.math"))


def math_batch(
    samples: list[Trajectory],
    *,
    truncated_score: float = 0.0,
    answer_prefix: str | None = "Answer:",
    fallback: str = "none",
    timeout_s: float = 5.0,
) -> list[float | Exception]:
    """Scores for ``samples`` (an ``Exception`` in place of a score that could not be computed)."""
    _check_options(fallback, timeout_s)
    out: list[float | Exception] = [0.0] * len(samples)
    jobs, where = [], []
    for i, s in enumerate(samples):
        if s.finish in CUT_OFF:
            out[i] = float(truncated_score)
            continue
        try:
            job = _job(s, answer_prefix, fallback)
        except Exception as e:  # noqa: BLE001
            out[i] = e
            continue
        if isinstance(job, tuple):
            jobs.append((*job, max(1, int(timeout_s / 2))))
            where.append(i)
        else:
            out[i] = job
    if jobs:
        results = _pool().map("longcot.rewards.math:verify_answer", jobs, timeout_s)
        for i, (status, value) in zip(where, results, strict=True):
            if status == "ok":
                out[i] = float(bool(value))
            elif status == "timeout":
                out[i] = TimeoutError(f"math grading took over {timeout_s} s")
            else:
                out[i] = RuntimeError(str(value))
    return out


@reward("math")
def math(
    sample: Trajectory,
    *,
    truncated_score: float = 0.0,
    answer_prefix: str | None = "Answer:",
    fallback: str = "none",
    timeout_s: float = 5.0,
) -> float:
    """1.0 if the final answer equals ``sample.meta["answer"]`` (see module docstring), else 0.0."""
    (value,) = math_batch(
        [sample], truncated_score=truncated_score, answer_prefix=answer_prefix, fallback=fallback, timeout_s=timeout_s
    )
    if isinstance(value, Exception):
        raise value
    return value


def validate(*, truncated_score: float = 0.0, answer_prefix: str | None = "Answer:", fallback: str = "none",
             timeout_s: float = 5.0) -> None:
    """Option values, before any work (``longcot.config.validate``)."""
    _check_options(fallback, timeout_s)


math.batch = math_batch  # compute_rewards grades a whole batch at once through the pool when it can
math.validate = validate
math.prepare = lambda **_options: _pool().start()  # prepare_rewards: workers start with the trainer, not mid-step
