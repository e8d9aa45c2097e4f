"""The wide-task comparison table (docs/agents.md, "The wide task"): held-out numbers of finished runs side by side.

    python benchmarks/parl_wide.py --out benchmarks/results/parl_wide.json RUN_DIR [RUN_DIR ...]

For each run directory (``longcot train recipes/tiny/parl-wide*.yaml``) it reads ``summary.json`` (the evaluations
after SFT and after RL) and, for agent runs, the traces of the last evaluation (``agents/eval-*.jsonl``), and
reports per evaluation: accuracy, the latency measure (agent runs: critical-path tokens; serial runs: response
tokens, which are their critical path), sub-task fidelity and part coverage, sub-agent tokens per sample and per
solved problem, the roles used, and the RL budget (steps x prompts x samples) the run spent. For tuple answers it
also says where decomposed samples go wrong (``tuple_stages``): directives that are all the problem's parts, every
sub-agent right, and a final answer that lists the sub-agents' answers in order (each stage can fail alone).
"""

from __future__ import annotations

import argparse
import json
import re
from collections import Counter
from pathlib import Path

import yaml

from longcot.rewards.math import last_boxed


def _eval_traces(run: Path) -> list[dict]:
    """The agent trees of the run's last evaluation call (the held-out eval after RL)."""
    files = sorted((run / "agents").glob("eval-*.jsonl"))
    return [json.loads(line) for line in files[-1].read_text().splitlines()] if files else []


def _row(ev: dict, agents: bool) -> dict:
    acc = ev["accuracy"]
    row = {"accuracy": round(acc, 4), "n": ev["n"]}
    if agents:
        sub_tokens = ev.get("agents/subagent_tokens_mean")
        row |= {"critical_path_tokens": round(ev["agents/critical_path_tokens_mean"], 1),
                "subagents_per_sample": round(ev["agents/subagents_mean"], 2),
                "subtask_fidelity": ev.get("agents/subtask_fidelity"), "part_coverage": ev.get("agents/part_coverage"),
                "subagent_tokens_per_sample": None if sub_tokens is None else round(sub_tokens, 1),
                "subagent_tokens_per_solved": None if sub_tokens is None or not acc else round(sub_tokens / acc, 1),
                "roles": {k.rsplit("/", 1)[1]: round(v, 3) for k, v in ev.items() if k.startswith("agents/role_frac/")}}
    else:
        row["critical_path_tokens"] = round(ev["response_len_mean"], 1)  # one agent: its response is the path
    return row


_FIND = re.compile(r"find \(([^)]*)\)")


def _items(tuple_text: str | None) -> list[str] | None:
    """``(1, -2, 3)`` -> ``["1", "-2", "3"]``; None when the text is not a tuple."""
    if tuple_text is None or not (tuple_text.startswith("(") and tuple_text.endswith(")")):
        return None
    return tuple_text[1:-1].split(", ")


def tuple_stages(traces: list[dict]) -> dict | None:
    """Of the decomposed samples of a tuple task (``find (a, b, ...)``), the fraction whose directives are all
    faithful, whose sub-agents are all right, and whose final answer copies the sub-agents' answers in order. None
    when no sample decomposed or the task is not a tuple."""
    faithful = subs_right = copied = n = 0
    for t in traces:
        names, gold = _FIND.search(t["prompt"]), _items(t["answer"])
        if not t["subagents"] or names is None or gold is None:
            continue
        n += 1
        answers = {s["name"]: s["answer"] for s in t["subagents"]}
        by_part = [answers.get(name.strip()) for name in names.group(1).split(",")]
        faithful += t["summary"].get("subtask_fidelity") == 1.0
        subs_right += by_part == gold
        copied += _items(last_boxed(t["pieces"][-1]["text"])) == by_part  # the box the reward grades
    if not n:
        return None
    return {"samples": n, "directives_all_faithful": round(faithful / n, 4),
            "subagents_all_right": round(subs_right / n, 4), "final_copies_subagents": round(copied / n, 4)}


def summarize(run: Path) -> dict:
    summary = json.loads((run / "summary.json").read_text())
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    agents = bool(cfg["agents"]["enabled"])
    rl = cfg["rl"]
    out = {"run": str(run), "seed": cfg["seed"], "agents": agents,
           "rl_samples": rl["steps"] * rl["prompts_per_step"] * cfg["rollout"]["n"] if rl["enabled"] else 0,
           "eval": {stage: _row(ev, agents) for stage, ev in summary.get("eval", {}).items()}}
    traces = _eval_traces(run) if agents else []
    if traces:  # the last eval's samples: how many decomposed, and the roles they used
        out["last_eval_samples"] = {"decomposed_frac": sum(t["summary"]["subagents"] > 0 for t in traces) / len(traces),
                                    "roles": dict(Counter(s.get("role", "?") for t in traces for s in t["subagents"])),
                                    "tuple_stages": tuple_stages(traces)}
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+")
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    rows = [summarize(Path(r)) for r in args.runs]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"runs": rows}, indent=2) + "\n")
    for r in rows:
        after = r["eval"].get("after_rl", {})
        print(f"{r['run']}: seed {r['seed']} agents {r['agents']} rl_samples {r['rl_samples']} after RL {after}")
        if stages := r.get("last_eval_samples", {}).get("tuple_stages"):
            print(f"  decomposed samples of the last eval: {stages}")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
