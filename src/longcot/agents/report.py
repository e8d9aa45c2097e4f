"""``longcot report RUN_DIR --sample ID``: one agent tree from a parallel-agent run, as text and as HTML.

:class:`~longcot.agents.driver.AgentEngine` writes ``RUN_DIR/agents/<tag>.jsonl`` (one tree per orchestrator
sample, ``tag`` = ``stepN`` for RL step N, ``eval-NNN`` for evaluation calls). A sample id is
``<tag>/<prompt id><group tag>#<sample>``, e.g. ``step3/train-17@3#0``; the part after the tag is enough
when it is unique. The tree shows who spawned whom, in which round and wave, each task, answer and token
count, and the orchestrator's own turns and observations in order.
"""

from __future__ import annotations

import html
import json
import re
from pathlib import Path

from longcot.plots import plot_metric_grid, read_metrics


def find_sample(run_dir: str | Path, sample_id: str) -> dict:
    """The traced tree of ``sample_id`` (exact, or the unique id whose part after the tag matches)."""
    trace_dir = Path(run_dir) / "agents"
    files = sorted(p for p in trace_dir.glob("*.jsonl") if p.name != "metrics.jsonl")
    if not files:
        raise FileNotFoundError(f"{trace_dir}: no agent traces (was the run made with agents.enabled: true?)")
    exact, suffix, seen = [], [], []
    for path in files:
        for line in path.read_text().splitlines():
            rec = json.loads(line)
            sid = rec["sample_id"]
            seen.append(sid)
            if sid == sample_id:
                exact.append(rec)
            elif sid.split("/", 1)[-1] == sample_id:
                suffix.append(rec)
    if exact:
        return exact[0]
    if len(suffix) == 1:
        return suffix[0]
    if suffix:
        raise KeyError(f"sample id {sample_id!r} is ambiguous: {[r['sample_id'] for r in suffix][:8]}; "
                       "add the tag (e.g. eval-000/...)")
    raise KeyError(f"no sample {sample_id!r} in {trace_dir}; e.g. {seen[:5]}")


def _short(text: str, limit: int = 160) -> str:
    one = text.replace("\n", "\\n")
    return one if len(one) <= limit else one[:limit] + f"... ({len(text)} chars)"


def _events(tree: dict) -> list[tuple[str, dict]]:
    """Orchestrator pieces in order, each round's sub-agents placed just before that round's observation."""
    out = []
    for piece in tree["pieces"]:
        if piece["kind"] == "obs":
            out += [("sub", s) for s in tree["subagents"] if s["round"] == piece["round"]]
        out.append(("piece", piece))
    return out


def _spending(s: dict) -> str:
    """Budget spent (and its limits) and sub-task fidelity, when the run measured them."""
    out = [f"sub-agent tokens {s.get('subagent_tokens', '?')}"]
    if b := s.get("budget"):
        out.append(f"budget: {b['subagents']}/{b['max_subagents'] or 'inf'} sub-agents, "
                   f"{b['tokens']}/{b['max_tokens'] or 'inf'} sub-agent tokens")
    if s.get("roles"):
        out.append("roles " + ", ".join(f"{r} x{n}" for r, n in s["roles"].items()))
    if "faithful_subagents" in s:
        parts = f" of {s['parts']} parts" if s.get("parts") else ""
        out.append(f"faithful sub-tasks {s['faithful_subagents']}/{s['subagents']}{parts}")
    return "; ".join(out)


def _header(tree: dict) -> list[str]:
    s = tree["summary"]
    return [
        f"sample {tree['sample_id']}   finish {tree['finish']}   gold {tree.get('answer')}",
        f"prompt: {_short(tree['prompt'])}",
        f"{s['subagents']} sub-agents ({s['finished_subagents']} finished), {s['rounds']} rounds, {s['turns']} turns; "
        f"critical steps {s['critical_steps']}; critical-path tokens {s['critical_path_tokens']} "
        f"(orchestrator {s['orchestrator_tokens']}); total tokens {s['total_tokens']}",
        _spending(s),
        *([f"problems: {s['problems']}"] if s.get("problems") else []),
    ]


def _mark(sub: dict) -> str:
    """`` [part]`` / `` [not a part]`` after a sub-agent whose fidelity was judged."""
    return {True: " [part]", False: " [not a part]"}.get(sub.get("faithful"), "")


def _who(sub: dict) -> str:
    role = f"@{sub['role']}" if sub.get("role") else ""
    after = f" after {','.join(sub['deps'])}" if sub["deps"] else ""
    return f"{sub['name']}{role}{after}"


def render_text(tree: dict) -> str:
    lines = _header(tree) + ["orchestrator"]
    events = _events(tree)
    for i, (kind, item) in enumerate(events):
        branch = "└─" if i == len(events) - 1 else "├─"
        if kind == "piece":
            label = {"gen": "turn", "obs": "observation", "scripted": "scripted turn"}[item["kind"]]
            lines.append(f"{branch} {label} (round {item['round']}, {item['tokens']} tok): {_short(item['text'])}")
        else:
            votes = f" votes {item['votes']}" if len(item["votes"]) > 1 else ""
            lines.append(f"{branch}   sub-agent {_who(item)} [round {item['round']}, wave {item['wave']}]"
                         f" task {item['task']!r}{_mark(item)} -> {item['answer'] or '?'!r}{votes} "
                         f"({item['tokens']} tok, {'/'.join(item['finish'])})")
            for resp in item["responses"][:1]:
                lines.append(f"│       {_short(resp, 120)}")
    return "\n".join(lines)


def render_html(tree: dict) -> str:
    """A self-contained page: the summary, then every turn, observation and sub-agent as a collapsible block."""
    e = html.escape
    parts = [f"<!doctype html><meta charset='utf-8'><title>{e(tree['sample_id'])}</title>",
             "<style>body{font-family:sans-serif;max-width:1000px;margin:2em auto}pre{white-space:pre-wrap;"
             "background:#f6f6f6;padding:.5em}.gen{border-left:4px solid #2a7}.obs{border-left:4px solid #999}"
             ".sub{border-left:4px solid #27c;margin-left:2em}.scripted{border-left:4px solid #c72}"
             "details{margin:.4em 0;padding-left:.6em}</style>",
             f"<h2>{e(tree['sample_id'])}</h2>", *[f"<p>{e(line)}</p>" for line in _header(tree)[1:]]]
    for kind, item in _events(tree):
        if kind == "piece":
            parts.append(f"<details open class='{item['kind']}'><summary>{e(item['kind'])} (round {item['round']},"
                         f" {item['tokens']} tokens)</summary><pre>{e(item['text'])}</pre></details>")
        else:
            after = f" after {', '.join(item['deps'])}" if item["deps"] else ""
            role = f"@{item['role']}" if item.get("role") else ""
            body = "".join(f"<pre>{e(r)}</pre>" for r in item["responses"])
            parts.append(f"<details class='sub'><summary>sub-agent <b>{e(item['name'])}</b>{e(role)}{e(after)}: "
                         f"<code>{e(item['task'])}</code>{e(_mark(item))} &rarr; <b>{e(item['answer'] or '?')}</b> "
                         f"(round {item['round']}, wave {item['wave']}, {item['tokens']} tokens)</summary>"
                         f"{body}</details>")
    return "\n".join(parts) + "\n"


def render_sample(run_dir: str | Path, sample_id: str) -> str:
    """The text tree of one sample; also writes ``RUN_DIR/agents/html/<id>.html`` and names it at the end."""
    tree = find_sample(run_dir, sample_id)
    out = Path(run_dir) / "agents" / "html" / (re.sub(r"[^A-Za-z0-9_.@-]+", "_", tree["sample_id"]) + ".html")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(render_html(tree))
    return render_text(tree) + f"\nhtml: {out}"


AGENT_CURVES = (("accuracy", "train accuracy"), ("agents/multi_agent_frac", "samples with >= 2 sub-agents"),
                ("agents/critical_path_tokens_mean", "critical-path tokens"),
                ("agents/subagents_mean", "sub-agents per sample"), ("agents/subtask_fidelity", "sub-task fidelity"),
                ("agents/subagent_tokens_mean", "sub-agent tokens per sample"),
                ("rewards/parl/parallel", "r_parallel (credited)"), ("rewards/parl/l1", "l1 (annealed)"))


def plot_agent_curves(run_dir: str | Path, out_png: str | Path | None = None) -> Path | None:
    """Per-step PARL curves of a run (``metrics.jsonl``) into ``RUN/agents/curves.png``; None without rows."""
    out = Path(out_png) if out_png else Path(run_dir) / "agents" / "curves.png"
    return plot_metric_grid(read_metrics(Path(run_dir) / "metrics.jsonl"), AGENT_CURVES, out, ncols=4)
