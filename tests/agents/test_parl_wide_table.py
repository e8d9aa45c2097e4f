"""benchmarks/parl_wide.py's stage breakdown of decomposed tuple answers: each stage (directives, sub-agents, the
final copy) is counted on its own, so a table can say which one a run loses its accuracy in."""

from __future__ import annotations

import importlib.util
import random
from pathlib import Path

from longcot.data.compound import CompoundSpec, decomposed_turns, make_compound

SPEC = importlib.util.spec_from_file_location(
    "parl_wide", Path(__file__).resolve().parents[2] / "benchmarks" / "parl_wide.py")
parl_wide = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(parl_wide)


def trace(row: dict, sub_answers: list[str], final: str, fidelity: float) -> dict:
    """An agent trace as the driver writes it (agents/*.jsonl), reduced to the fields the table reads."""
    first, obs, _ = decomposed_turns(row)
    return {"prompt": f"Q: {row['problem']}\n", "answer": row["answer"], "summary": {"subtask_fidelity": fidelity},
            "subagents": [{"name": p["name"], "answer": a} for p, a in zip(row["parts"], sub_answers, strict=True)],
            "pieces": [{"text": first}, {"text": obs}, {"text": final}]}


def test_stages_are_counted_apart():
    spec = CompoundSpec(ops="+-", dep_prob=0.0, min_parts=4, max_parts=4, combine="tuple")
    row = make_compound(random.Random(3), spec)
    gold = [str(p["value"]) for p in row["parts"]]
    wrong = [gold[0], str(int(gold[1]) + 1), *gold[2:]]
    right_final, wrong_final = f"\\boxed{{{row['answer']}}}", "\\boxed{(" + ", ".join(wrong) + ")}"
    traces = [trace(row, gold, right_final, 1.0),  # every stage right
              trace(row, wrong, wrong_final, 1.0),  # a sub-agent wrong, copied faithfully
              trace(row, gold, wrong_final, 0.75),  # a directive off the problem, a miscopy
              {**trace(row, gold, right_final, 1.0), "subagents": []}]  # serial: not counted
    assert parl_wide.tuple_stages(traces) == {"samples": 3, "directives_all_faithful": round(2 / 3, 4),
                                              "subagents_all_right": round(2 / 3, 4),
                                              "final_copies_subagents": round(2 / 3, 4)}
    assert parl_wide.tuple_stages(traces[3:]) is None
