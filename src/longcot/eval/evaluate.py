"""Generate n samples for every problem in one engine call, grade them, write the outputs.

All ``n x problems`` requests go to the engine at once: vLLM's continuous batching then keeps the device busy
while long responses finish, which is what makes a 32k-token protocol affordable. The same function serves
``longcot eval`` and the trainer's periodic evaluation; :func:`write_outputs` is shared with re-scoring.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from longcot.eval.metrics import summarize
from longcot.record import Trajectory
from longcot.rollout.base import Prompt, SamplingConfig

log = logging.getLogger(__name__)


def response_text(traj: Trajectory, tokenizer) -> str:
    """The engine's decoded text, or a decode of the ids when the engine left it empty."""
    if traj.response_text or tokenizer is None:
        return traj.response_text
    return tokenizer.decode(traj.response_ids, skip_special_tokens=True)


def sample_rows(trajs: list[Trajectory], tokenizer=None) -> list[dict]:
    """What grading and ``samples.jsonl`` keep of each trajectory: its problem, text, length and finish."""
    return [{"id": t.prompt_id, "response": response_text(t, tokenizer), "tokens": len(t.response_ids),
             "finish": t.finish} for t in trajs]


def grade_trajectories(trajs: list[Trajectory], gold: dict[str, str], grader, tokenizer=None,
                       metas: dict[str, dict] | None = None) -> list[dict]:
    """One ``samples.jsonl`` record per trajectory (:func:`grade_rows` of their :func:`sample_rows`)."""
    return grade_rows(sample_rows(trajs, tokenizer), gold, grader, metas)


def grade_rows(rows: list[dict], gold: dict[str, str], grader, metas: dict[str, dict] | None = None) -> list[dict]:
    """One ``samples.jsonl`` record per sample row; ``sample`` counts within a problem in engine order.
    ``metas`` (prompt id -> prompt meta) reach the grader too: the code grader reads its tests there."""
    unknown = {r["id"] for r in rows} - set(gold)
    if unknown:
        raise KeyError(f"engine returned trajectories for unknown prompt ids {sorted(unknown)[:5]}")
    row_metas = None if metas is None else [metas[r["id"]] for r in rows]
    graded = grade_all(grader, [r["response"] for r in rows], [gold[r["id"]] for r in rows],
                       [r["finish"] for r in rows], row_metas)
    counts: dict[str, int] = {}
    records = []
    for row, (extracted, correct), error in zip(rows, graded, grade_errors(grader, len(rows)), strict=True):
        pid = row["id"]
        records.append({
            "id": pid, "sample": counts.get(pid, 0), "response": row["response"], "extracted": extracted,
            "correct": bool(correct), "tokens": row["tokens"], "finish": row["finish"],
        })
        if error:
            records[-1]["reward_error"] = error  # graded wrong because grading failed, not because it is wrong
        counts[pid] = counts.get(pid, 0) + 1
    return records


def grade_errors(grader, n: int) -> list[str | None]:
    """The grader's per-sample failures of its last batch (``None`` where grading worked)."""
    errors = getattr(grader, "last_errors", None)
    return list(errors) if errors is not None and len(errors) == n else [None] * n


def grade_all(grader, responses: list[str], golds: list[str], finishes: list[str],
              metas: list[dict] | None = None) -> list[tuple]:
    """Batch grading when the grader supports it (:class:`~longcot.eval.grading.Grader`), else one by one."""
    if hasattr(grader, "many"):
        return grader.many(responses, golds, finishes, metas)
    return [grader(r, g, f) for r, g, f in zip(responses, golds, finishes, strict=True)]


def write_outputs(records: list[dict], summary: dict, out_dir: str | Path, info: dict[str, Any]) -> Path:
    """``samples.jsonl``, ``summary.json`` (with ``info`` under "config"), ``report.md`` and the PNG."""
    from longcot.eval.report import write_report

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "samples.jsonl", "w") as f:
        for r in records:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    (out / "summary.json").write_text(json.dumps({**summary, "config": info}, indent=2, ensure_ascii=False))
    write_report(summary, out, info)
    return out


def evaluate(
    engine,
    tokenizer,
    prompts: list[Prompt],
    sampling: SamplingConfig,
    grader: Callable,
    out_dir: str | Path | None,
    ks: list[int] = (1,),
    info: dict[str, Any] | None = None,
    generate: Callable[[list[Prompt], SamplingConfig], tuple[list[dict], set[str]]] | None = None,
) -> dict:
    """Sample ``sampling.n`` responses per prompt (gold in ``prompt.meta["answer"]``), grade, summarise.

    Writes the outputs to ``out_dir`` unless it is None and returns the summary dict
    (``{"n", "metrics", "per_problem"}``); ``metrics`` includes generation throughput (tokens/s). ``generate``
    replaces the one engine call: it returns the sample rows (:func:`sample_rows`) in prompt order and the ids of
    problems it did not generate now (``longcot eval``'s :class:`~longcot.eval.resumable.ResumableGeneration`
    reads those back from an interrupted run; they are left out of the throughput).
    """
    # a code problem has tests and no answer; the math grader's rows always have one (checked at load time)
    gold = {p.prompt_id: str(p.meta["answer"]) if "answer" in p.meta else "" for p in prompts}
    metas = {p.prompt_id: p.meta for p in prompts}
    if len(gold) != len(prompts):
        raise ValueError("evaluate: prompt ids must be unique")
    start = time.perf_counter()
    if generate is None:
        rows, resumed = sample_rows(engine.generate(prompts, sampling, group_tag=""), tokenizer), set()
    else:
        rows, resumed = generate(prompts, sampling)
    gen_s = time.perf_counter() - start
    expected = len(prompts) * sampling.n
    if len(rows) != expected:
        raise RuntimeError(f"engine returned {len(rows)} trajectories, expected {expected} (n x problems)")
    start = time.perf_counter()
    records = grade_rows(rows, gold, grader, metas)
    grade_s = time.perf_counter() - start
    summary = summarize(records, ks, gold=gold, seed=sampling.seed or 0)
    tokens = sum(r["tokens"] for r in records)
    new_tokens = sum(r["tokens"] for r in records if r["id"] not in resumed)
    summary["metrics"].update({
        "gen_seconds": gen_s, "grade_seconds": grade_s, "gen_tokens": tokens,
        "tokens_per_s": new_tokens / gen_s if gen_s > 0 else 0.0, "requests": expected,
        "grade_errors": getattr(grader, "errors", 0),
    })
    if resumed:
        summary["metrics"]["resumed_problems"] = len(resumed)
    log.info("eval: %d requests, %d tokens in %.1fs (%.0f tok/s)%s", expected - len(resumed) * sampling.n,
             new_tokens, gen_s, new_tokens / max(gen_s, 1e-9),
             f"; {len(resumed)} problems read back from an interrupted run" if resumed else "")
    if out_dir is not None:
        write_outputs(records, summary, out_dir, info or {})
    return summary
