"""Shortest rejection sampling (k1.5 long2short): of the n samples of a problem, keep the shortest correct one.

A long-CoT model's lengths vary a lot on one problem; the shortest correct sample is a solution the model itself
can write with the fewest tokens. Supervised fine-tuning on those (``longcot.rl.sft.run_sft``, TRL's SFTTrainer)
moves the policy toward its own short end. Problems where no sample is correct contribute nothing (there is no
correct answer to imitate); a cut-off sample is never correct (the math reward scores it 0).
"""

from __future__ import annotations

from collections.abc import Iterable


def by_problem(records: Iterable[dict]) -> dict[str, list[dict]]:
    """Sample records grouped by problem id, in first-seen order."""
    out: dict[str, list[dict]] = {}
    for r in records:
        out.setdefault(r["id"], []).append(r)
    return out


def shortest_correct(records: Iterable[dict]) -> list[dict]:
    """One record per problem that has a correct sample: its shortest correct one (fewest tokens; ties go to the
    lowest sample index, so the choice does not depend on record order). Problems with none are dropped."""
    kept = []
    for samples in by_problem(records).values():
        correct = [r for r in samples if r["correct"]]
        if correct:
            kept.append(min(correct, key=lambda r: (r["tokens"], r["sample"])))
    return kept


def sft_pairs(kept: list[dict]) -> list[tuple[str, str]]:
    """(prompt, completion) pairs for ``run_sft`` (it appends EOS to each completion)."""
    return [(r["prompt"], r["response"]) for r in kept]


def rejection_stats(records: list[dict], kept: list[dict]) -> dict:
    """How much shorter the kept samples are than the correct samples they were chosen from."""
    correct = [r for r in records if r["correct"]]
    mean = lambda rs: sum(r["tokens"] for r in rs) / max(len(rs), 1)
    return {"problems": len(by_problem(records)), "kept": len(kept),
            "dropped_no_correct": len(by_problem(records)) - len(kept),
            "correct_tokens_mean": mean(correct), "kept_tokens_mean": mean(kept)}
