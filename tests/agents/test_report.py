"""``longcot report RUN --sample ID``: an agent tree traced by a real (HF) engine, rendered as text and HTML."""

from __future__ import annotations

import html
import json

import pytest
from transformers import AutoTokenizer

from longcot.agents.driver import AgentEngine
from longcot.agents.report import find_sample, render_sample
from longcot.config.schema import AgentBudget, AgentsConfig
from longcot.policies.build import build_tiny_moe
from longcot.report import main as report_main
from longcot.rollout import build_engine
from longcot.rollout.base import Prompt, SamplingConfig


@pytest.fixture(scope="module")
def traced_run(tmp_path_factory):
    model_dir = build_tiny_moe(tmp_path_factory.mktemp("tiny_moe_report"))
    tok = AutoTokenizer.from_pretrained(model_dir)
    run = tmp_path_factory.mktemp("run")
    engine = build_engine("hf", str(model_dir), tok, batch_size=16, max_model_len=512)
    cfg = AgentsConfig(enabled=True, max_rounds=1, subagent_max_tokens=6,
                       budget=AgentBudget(max_subagents=5, max_subagent_tokens=100))
    agents = AgentEngine(engine, tok, cfg, trace_dir=run / "agents")
    turn = "[a: 1+2]\n[b@worker: 2*3]\n[c after a: {a}+<b>]\n[zz after q: 1]\n[wait]"
    prompt = Prompt("p7", tok("Q: x\n", add_special_tokens=False).input_ids, "Q: x\n",
                    meta={"answer": "9", "orchestrator_turn": turn, "subtasks": [["1+2"], ["2*3"]]})
    (orch,) = agents.generate([prompt], SamplingConfig(n=1, max_tokens=6, seed=0), group_tag="@3")
    return run, orch, agents


def test_text_tree_shows_who_spawned_whom_tasks_answers_tokens(traced_run):
    run, orch, agents = traced_run
    assert json.loads((run / "agents" / "metrics.jsonl").read_text().splitlines()[0])["tag"] == "step3"
    text = render_sample(run, "p7@3#0")  # the id without its tag is enough when unique
    tree = find_sample(run, "step3/p7@3#0")
    subs = {s["name"]: s for s in tree["subagents"]}
    assert list(subs) == ["a", "b", "c"] and subs["c"]["deps"] == ["a"] and subs["c"]["wave"] == 1
    assert subs["c"]["task"] == f"{subs['a']['answer']}+<b>"  # the task as the sub-agent received it
    lines = text.splitlines()
    assert lines[0] == "sample step3/p7@3#0   finish " + orch.finish + "   gold 9"
    assert "3 sub-agents" in lines[2] and f"critical-path tokens {orch.meta['agents']['critical_path_tokens']}" \
        in lines[2]
    spent = orch.meta["agents"]["subagent_tokens"]  # the budget spent, the roles used, the fidelity
    assert lines[3] == (f"sub-agent tokens {spent}; budget: 3/5 sub-agents, {spent}/100 sub-agent tokens; "
                        "roles worker x3; faithful sub-tasks 2/3 of 2 parts")
    order = [ln.split()[1] for ln in lines if ln.startswith(("├─", "└─"))]
    assert order == ["scripted", "sub-agent", "sub-agent", "sub-agent", "observation", "turn"]
    for name, s in subs.items():
        line = next(ln for ln in lines if f"sub-agent {name}@worker" in ln)
        assert f"-> {s['answer'] or '?'!r}" in line and f"({s['tokens']} tok" in line
        assert ("[not a part]" if name == "c" else "[part]") in line
    assert "'zz' depends on unknown sub-agent(s) q" in text  # the error observation is part of the tree


def test_html_page_escapes_and_cli(traced_run, capsys):
    run, _, _ = traced_run
    text = render_sample(run, "step3/p7@3#0")
    page = (run / "agents" / "html" / "step3_p7@3_0.html").read_text()
    assert text.endswith("step3_p7@3_0.html")
    answer_a = find_sample(run, "p7@3#0")["subagents"][0]["answer"]
    assert "+<b>" not in page and f"<code>{html.escape(answer_a)}+&lt;b&gt;</code>" in page
    assert "sub-agent <b>c</b>@worker after a" in page and page.count("<details") == 6
    assert report_main([str(run), "--sample", "p7@3#0"]) == 0
    assert "sub-agent a" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        report_main([str(run), "--sample", "nope"])
    assert "no sample 'nope'" in capsys.readouterr().err
