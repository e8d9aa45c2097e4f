"""Why decomposition helps on the wide task: per-part accuracy of one checkpoint, written serially vs by sub-agents.

    OMP_NUM_THREADS=1 python benchmarks/parl_wide_probe.py RECIPE CHECKPOINT [--problems 128] --out RESULT.json

On the recipe's held-out problems, greedy, the same checkpoint answers each problem two ways:

* **serial**: the response is forced to start the serial trace (the prompt ends with ``a:``), so the policy works
  every part itself; a part counts as right when its ``x=value`` line has the part's value. Reported per part
  position (a, b, c, ...) and for the whole answer;
* **decomposed (oracle split)**: the orchestrator's first turn is the exact decomposition (a scripted turn, as in
  the tests), so only the sub-agents and the orchestrator's final turn are the policy's: per-part accuracy is the
  sub-agents', and "all parts" is the share of problems whose observation holds every part's value.

The gap between the two per-part curves is what a faithful orchestrator can gain; the recipe's own held-out
evaluations show what it does gain.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

from longcot.agents.driver import AgentEngine
from longcot.config import Recipe, load
from longcot.data import build_task
from longcot.data.compound import decomposed_turns
from longcot.policies.load import load_tokenizer
from longcot.rewards.math import extract_answer
from longcot.rollout import build_engine
from longcot.rollout.base import Prompt, SamplingConfig


def _rates(right: list[int], seen: list[int]) -> list[float]:
    return [round(a / b, 4) if b else 0.0 for a, b in zip(right, seen, strict=True)]


def serial(engine, tok, task, rows: list[dict], max_tokens: int) -> dict:
    prompts = []
    for r in rows:
        p = task.prompt(r, tok)
        text = p.prompt_text + "a:"
        prompts.append(Prompt(p.prompt_id, tok(text, add_special_tokens=False).input_ids, text, meta=p.meta))
    outs = engine.generate(prompts, SamplingConfig(n=1, temperature=0.0, max_tokens=max_tokens))
    width = max(len(r["parts"]) for r in rows)
    right, seen, solved = [0] * width, [0] * width, 0
    for r, t in zip(rows, outs, strict=True):
        text = "a:" + t.response_text
        solved += extract_answer(text) == r["answer"]
        for j, p in enumerate(r["parts"]):
            m = re.search(rf"^{p['name']}=(-?\d+)$", text, re.M)
            seen[j] += 1
            right[j] += bool(m and int(m.group(1)) == p["value"])
    return {"accuracy": solved / len(rows), "part_accuracy_by_position": _rates(right, seen),
            "response_tokens_mean": sum(len(t.response_ids) for t in outs) / len(outs)}


def decomposed(engine, tok, task, rows: list[dict], recipe: Recipe) -> dict:
    agents = AgentEngine(engine, tok, recipe.agents)
    prompts = []
    for r in rows:
        p = task.prompt(r, tok)
        prompts.append(Prompt(p.prompt_id, p.prompt_ids, p.prompt_text,
                              meta={**p.meta, "orchestrator_turn": decomposed_turns(r)[0]}))
    outs = agents.generate(prompts, SamplingConfig(n=1, temperature=0.0, max_tokens=recipe.eval.max_tokens, seed=0))
    by_id = {r["id"]: r for r in rows}
    width = max(len(r["parts"]) for r in rows)
    right, seen = [0] * width, [0] * width
    for t in agents.last_subagents:
        row = by_id[t.prompt_id]
        j = next(i for i, p in enumerate(row["parts"]) if p["name"] == t.meta["agents"]["name"])
        seen[j] += 1
        right[j] += extract_answer(t.response_text) == str(row["parts"][j]["value"])
    all_parts = sum(all(f"[{p['name']} = {p['value']}]" in t.response_text for p in r["parts"])
                    for r, t in zip(rows, outs, strict=True))
    solved = sum(extract_answer(t.response_text) == r["answer"] for r, t in zip(rows, outs, strict=True))
    return {"accuracy": solved / len(rows), "all_parts_right": all_parts / len(rows),
            "part_accuracy_by_position": _rates(right, seen),
            "critical_path_tokens_mean": agents.last_metrics["agents/critical_path_tokens_mean"]}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("recipe")
    ap.add_argument("checkpoint")
    ap.add_argument("--problems", type=int, default=128)
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    recipe = load(Recipe, args.recipe)
    task = build_task(recipe.data)
    rows = task.heldout[: args.problems]
    tok = load_tokenizer(args.checkpoint)
    engine = build_engine("vllm", args.checkpoint, tok, max_model_len=recipe.rollout.max_model_len, seed=0,
                          **recipe.rollout.engine_options)
    try:
        result = {"command": " ".join(["python benchmarks/parl_wide_probe.py", *(sys.argv[1:] if argv is None
                                                                                  else argv)]),
                  "checkpoint": args.checkpoint, "problems": len(rows),
                  "serial": serial(engine, tok, task, rows, recipe.eval.max_tokens),
                  "decomposed_oracle_split": decomposed(engine, tok, task, rows, recipe)}
    finally:
        engine.shutdown()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
