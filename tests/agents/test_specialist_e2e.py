"""One ``longcot train`` command trains a specialist sub-agent first, then an orchestrator over it (toy sizes)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from longcot.cli import main as cli_main

ROOT = Path(__file__).resolve().parents[2]
TINY = ["sft.num_examples=32", "rl.steps=1", "rl.prompts_per_step=2", "rollout.n=2", "eval.num_problems=2",
        "data.num_heldout=2", "rl.checkpoint_every=0"]


@pytest.mark.slow
def test_wide_specialist_recipe_trains_the_specialist_then_the_orchestrator(tmp_path, monkeypatch):
    monkeypatch.setenv("LONGCOT_NO_PROGRESS", "1")
    specialist = tmp_path / "specialist.yaml"  # the repository's specialist recipe at toy size
    specialist.write_text(f"base: {ROOT / 'recipes/tiny/parl-specialist.yaml'}\nname: spec\n"
                          "sft: {num_examples: 32}\nrl: {steps: 1, prompts_per_step: 2}\nrollout: {n: 2}\n"
                          "data: {num_train: 64, num_heldout: 2}\neval: {num_problems: 2}\n")
    rc = cli_main(["train", str(ROOT / "recipes/tiny/parl-wide-specialist.yaml"), f"out_dir={tmp_path}", "name=orch",
                   *TINY, "data.num_train=16", "rollout.max_tokens=64", "eval.max_tokens=64",
                   f"agents.subagents.calc.recipe={specialist}", "agents.subagent_max_tokens=16",
                   "agents.subagents.calc.max_tokens=8", "agents.budget.max_subagent_tokens=64"])
    assert rc == 0
    assert (tmp_path / "spec" / "checkpoints" / "final" / "config.json").is_file()  # the specialist ran first
    assert json.loads((tmp_path / "spec" / "summary.json").read_text())["eval"]["after_rl"]["n"] == 2
    run = tmp_path / "orch"
    (row,) = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert {"rewards/parl/cost", "rewards/parl/l3", "agents/subagent_tokens_mean", "agents/budget_tokens_frac"} \
        <= set(row)
    assert row["rewards/parl/l3"] == 0.5  # step 0 of the cost term's schedule
    assert "agents/subtask_fidelity" in row or row["agents/subagents_mean"] == 0
