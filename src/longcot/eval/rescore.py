"""Grade existing generations without a model: anyone's ``{"id", "response"}`` rows, same metrics and outputs.

Each row is one sample; an id appears once per sample. Optional fields are used when present: ``sample``
(index; else file order within the id), ``tokens`` (length; else the tokenizer's count when one is given,
else characters, recorded as ``length_unit``) and ``finish`` (else ``"stop"``). A ``samples.jsonl`` written
by ``longcot eval`` is itself a valid input. Ids missing from the dataset are errors; dataset problems with
no responses are errors too unless ``allow_missing`` (a skipped hard problem would inflate the score).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from longcot.errors import InputError, MissingKeyError
from longcot.eval.evaluate import grade_all, grade_errors, write_outputs
from longcot.eval.metrics import summarize


def read_responses(path: str | Path) -> list[dict]:
    rows = []
    with open(path) as f:
        for i, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise InputError(f"{path}:{i}: not valid JSON ({e.msg})") from e
            missing = [k for k in ("id", "response") if k not in row]
            if missing:
                raise MissingKeyError(f"{path}:{i}: missing {missing}; each row needs 'id' and 'response'")
            rows.append(row)
    if not rows:
        raise InputError(f"{path}: no responses")
    return rows


def _length(row: dict, tokenizer) -> int:
    if "tokens" in row:
        return int(row["tokens"])
    if tokenizer is not None:
        return len(tokenizer(row["response"], add_special_tokens=False)["input_ids"])
    return len(row["response"])


def rescore(
    rows: list[dict],
    gold: dict[str, str],
    grader: Callable,
    ks: list[int],
    out_dir: str | Path | None = None,
    tokenizer=None,
    allow_missing: bool = False,
    info: dict | None = None,
    skipped: list[str] | None = None,
) -> dict:
    """Grade ``rows`` against ``gold`` (id -> answer), summarise, and write the outputs to ``out_dir``.
    ``skipped``: ids of dataset problems dropped for lacking a gold answer (``dataset.skip_missing_answers``);
    responses to them are left out and counted (``skipped_responses``), not reported as unknown ids."""
    drop = set(skipped or ()) - set(gold)
    n_rows = len(rows)
    rows = [r for r in rows if str(r["id"]) not in drop]
    if not rows:
        raise InputError(f"all {n_rows} responses answer problems skipped for lacking a gold answer")
    unknown = sorted({str(r["id"]) for r in rows} - set(gold))
    if unknown:
        raise MissingKeyError(f"{len(unknown)} response ids are not in the dataset, e.g. {unknown[:5]}")
    missing = [pid for pid in gold if pid not in {str(r["id"]) for r in rows}]
    if missing and not allow_missing:
        raise InputError(f"{len(missing)} dataset problems have no responses, e.g. {missing[:5]} "
                         "(pass --allow-missing to score only the answered ones)")
    pids = [str(r["id"]) for r in rows]
    finishes = [r.get("finish", "stop") for r in rows]
    graded = grade_all(grader, [r["response"] for r in rows], [gold[p] for p in pids], finishes)
    counts: dict[str, int] = {}
    records = []
    errors = grade_errors(grader, len(rows))
    for r, pid, finish, (extracted, correct), error in zip(rows, pids, finishes, graded, errors, strict=True):
        records.append({
            "id": pid, "sample": int(r.get("sample", counts.get(pid, 0))), "response": r["response"],
            "extracted": extracted, "correct": bool(correct), "tokens": _length(r, tokenizer), "finish": finish,
        })
        if error:
            records[-1]["reward_error"] = error
        counts[pid] = counts.get(pid, 0) + 1
    summary = summarize(records, ks, gold={pid: gold[pid] for pid in counts})
    summary["metrics"]["missing_problems"] = len(missing)
    summary["metrics"]["skipped_responses"] = n_rows - len(rows)
    summary["metrics"]["grade_errors"] = getattr(grader, "errors", 0)
    unit = "tokens" if all("tokens" in r for r in rows) or tokenizer is not None else "chars"
    if out_dir is not None:
        write_outputs(records, summary, out_dir, {**(info or {}), "mode": "rescore", "length_unit": unit})
    return summary
