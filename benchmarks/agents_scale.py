"""Sub-agents per second at 1, 16, 128 and 256 concurrent sub-agents: one engine batch vs one by one.

    OMP_NUM_THREADS=1 python benchmarks/agents_scale.py [--counts 1 16 128 256] [--tokens 32] [--repeats 5]

An orchestrator's scripted first turn spawns N independent sub-agents (``[s0: 1+0] [s1: 1+1] ... [wait]``); the
:class:`~longcot.agents.driver.AgentEngine` runs them on the tiny MoE in vLLM, either all in one engine batch
(``agents.schedule: dependency``, what a PARL rollout does) or one engine call per sub-agent (``sequential``), then
the orchestrator reads the N answers (one turn of 1 token). The model is freshly initialised and sampled greedily,
so both schedules generate the same tokens (up to ``--tokens`` per sub-agent; the random model rarely stops
earlier) and do the same work.
Reported: the median over ``--repeats`` of N / (wall time of the whole ``generate`` call; the two schedules
alternate within each repeat, so a busy host slows both alike), the ratio of the two schedules, and the engine
calls and largest batch the driver logged. Results go to ``benchmarks/results/agents_scale.json``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from transformers import AutoTokenizer

from longcot.agents.driver import AgentEngine
from longcot.config.schema import AgentsConfig
from longcot.policies.build import build_tiny_moe
from longcot.rollout import build_engine
from longcot.rollout.base import Prompt, SamplingConfig

RESULTS = Path(__file__).parent / "results" / "agents_scale.json"


def run_once(engine, tok, count: int, tokens: int, schedule: str, seed: int) -> tuple[float, dict]:
    """Seconds for one orchestrator that spawns ``count`` sub-agents, and the driver's metrics."""
    turn = "".join(f"[s{i}: {i}+{i % 9}]\n" for i in range(count)) + "[wait]"
    cfg = AgentsConfig(enabled=True, max_rounds=1, max_subagents_per_round=max(count, 1), schedule=schedule,
                       subagent_max_tokens=tokens, subagent_temperature=0.0)
    agents = AgentEngine(engine, tok, cfg)
    text = "Q: wide\n"
    prompt = Prompt("bench", tok(text, add_special_tokens=False).input_ids, text,
                    meta={"answer": "0", "orchestrator_turn": turn})
    t0 = time.perf_counter()
    (orch,) = agents.generate([prompt], SamplingConfig(n=1, temperature=0.0, max_tokens=1, seed=seed))
    seconds = time.perf_counter() - t0
    if orch.meta["agents"]["subagents"] != count:
        raise RuntimeError(f"expected {count} sub-agents to run, got {orch.meta['agents']['subagents']}")
    return seconds, agents.last_metrics


def measure(engine, tok, count: int, tokens: int, repeats: int) -> dict:
    """Both schedules, alternating within each repeat (a busy host slows both alike), medians over repeats."""
    times: dict[str, list[float]] = {"dependency": [], "sequential": []}
    metrics: dict[str, dict] = {}
    for r in range(repeats):
        for schedule in times:
            seconds, metrics[schedule] = run_once(engine, tok, count, tokens, schedule, seed=r)
            times[schedule].append(seconds)
    out = {}
    for schedule, label in (("dependency", "batched"), ("sequential", "one_by_one")):
        median, m = statistics.median(times[schedule]), metrics[schedule]
        out[label] = {"subagents_per_s": round(count / median, 2), "seconds_median": round(median, 3),
                      "seconds": [round(t, 3) for t in times[schedule]],
                      "engine_calls": int(m["agents/subagent_engine_calls"]),
                      "batch_max": int(m["agents/subagent_batch_max"]),
                      "subagent_tokens": int(m["agents/subagent_tokens_mean"])}
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--counts", type=int, nargs="+", default=[1, 16, 128, 256])
    ap.add_argument("--tokens", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--out", default=str(RESULTS))
    args = ap.parse_args(argv)
    model_dir = str(build_tiny_moe(tempfile.mkdtemp(prefix="tiny_moe_")))
    tok = AutoTokenizer.from_pretrained(model_dir)
    engine = build_engine("vllm", model_dir, tok, max_model_len=512, seed=0)
    run_once(engine, tok, 4, args.tokens, "dependency", seed=0)  # warm-up: the first calls compile and allocate
    rows = []
    try:
        for count in args.counts:
            row = {"subagents": count, **measure(engine, tok, count, args.tokens, args.repeats)}
            row["speedup"] = round(row["batched"]["subagents_per_s"] / row["one_by_one"]["subagents_per_s"], 2)
            rows.append(row)
            print(json.dumps(row), flush=True)
    finally:
        engine.shutdown()
    given = sys.argv[1:] if argv is None else argv
    result = {"command": " ".join(["OMP_NUM_THREADS=1 python benchmarks/agents_scale.py", *given]),
              "threads": torch.get_num_threads(), "tokens_per_subagent": args.tokens, "repeats": args.repeats,
              "engine": "vllm (in-process, CPU, tiny MoE 3.4M params, float32)", "rows": rows}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
