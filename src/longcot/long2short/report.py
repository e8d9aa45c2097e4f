"""The token-efficiency table and plot (k1.5 Figure 7): held-out accuracy against mean response length, for every
long2short run plus the long and short baselines.

``longcot long2short report RUN_DIR... [--out plot.png] [--json table.json]`` reads each run's ``summary.json``
(its ``long2short`` block), prints a markdown table and draws the PNG. Lengths are the mean length, in tokens, of
the *correct* held-out responses (what the acceptance of a method is measured on); the table also gives the mean
of all responses.
"""

from __future__ import annotations

import json
from pathlib import Path

from longcot.plots import save_figure

# method -> (marker, colour, legend label)
STYLES = {"long": ("*", "black", "long model"), "short": ("*", "grey", "short model (merge input)"),
          "merge": ("s", "C0", "merge"), "shortest_rejection": ("^", "C1", "shortest rejection sampling"),
          "dpo": ("D", "C2", "DPO"), "rl": ("o", "C3", "long2short RL")}


def read_run(run_dir: str | Path) -> dict:
    """A run's ``long2short`` block with its name; a clear error for a directory that is not a long2short run."""
    path = Path(run_dir) / "summary.json"
    if not path.is_file():
        raise FileNotFoundError(f"{run_dir}: no summary.json (not a run directory, or the run has not finished)")
    block = json.loads(path.read_text()).get("long2short")
    if not block or "result" not in block:
        raise ValueError(f"{run_dir}: summary.json has no finished long2short block (run `longcot long2short`)")
    return {"name": Path(run_dir).name, **block}


def baselines(runs: list[dict]) -> list[dict]:
    """The long model (one row per evaluation seed) and every short model a merge run evaluated."""
    rows, seen = [], set()
    for r in runs:
        for label in ("long", "short"):
            ev = r.get(label)
            if ev is None:
                continue
            model = r["long_model"] if label == "long" else r.get("short_model", "")
            key = (label, model, r["seed"])
            if key not in seen:
                seen.add(key)
                rows.append({"name": f"{label} model", "method": label, "seed": r["seed"], "model": model, **ev})
    return rows


def table_rows(runs: list[dict]) -> list[dict]:
    """Baselines first, then each run with its change against the long model of the same seed."""
    out = baselines(runs)
    for r in runs:
        out.append({"name": r["name"], "method": r["method"], "seed": r["seed"], "model": r["result_model"],
                    **r["result"], "correct_len_change": r["correct_len_change"],
                    "accuracy_change": r["accuracy_change"], "long_weight": r.get("long_weight")})
    return out


def markdown_table(rows: list[dict]) -> str:
    lines = ["| run | method | seed | accuracy (avg@n) | vs long (points) | correct length (tokens) | vs long | "
             "all responses (tokens) |", "|---|---|---|---|---|---|---|---|"]
    fmt = lambda v, spec: "-" if v is None else format(v, spec)
    for r in rows:
        change, acc = r.get("correct_len_change"), r.get("accuracy_change")
        lines.append(f"| {r['name']} | {r['method']} | {r['seed']} | {r['accuracy']:.3f} | "
                     f"{fmt(None if acc is None else 100 * acc, '+.1f')} | {fmt(r['correct_len_mean'], '.1f')} | "
                     f"{fmt(None if change is None else 100 * change, '+.0f')}{'' if change is None else '%'} | "
                     f"{fmt(r['response_len_mean'], '.1f')} |")
    return "\n".join(lines)


def plot_efficiency(rows: list[dict], out_png: str | Path, title: str = "long2short token efficiency") -> Path:
    """Accuracy against mean correct-response length, one point per row: a colour and marker per method (baselines
    as stars), filled for seed 0 and open for other seeds; merge points carry their long-model weight."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.2, 4.8))
    labelled = set()
    for r in (r for r in rows if r["correct_len_mean"] is not None):  # a model with no correct answer has no x
        marker, color, label = STYLES.get(r["method"], ("x", "C7", r["method"]))
        x, y = r["correct_len_mean"], r["accuracy"]
        ax.plot(x, y, marker, ms=15 if marker == "*" else 8, color=color, zorder=3,
                markerfacecolor=color if r["seed"] == 0 else "none", label=None if label in labelled else label)
        labelled.add(label)
        if r.get("long_weight") is not None:
            ax.annotate(f"w={r['long_weight']:g}", (x, y), textcoords="offset points", xytext=(6, -10), fontsize=8)
    ax.set_xlabel("mean length of correct held-out responses (tokens)")
    ax.set_ylabel("held-out accuracy")
    ax.set_title(f"{title} (open markers: seed 1)" if any(r["seed"] for r in rows) else title)
    ax.grid(alpha=0.3)
    if labelled:
        ax.legend(fontsize=8, loc="best")
    return save_figure(fig, out_png, dpi=120)


def report(run_dirs: list[str], out_png: str | None = None, out_json: str | None = None) -> str:
    """The markdown table (returned), and the PNG / JSON when asked for."""
    runs = [read_run(d) for d in run_dirs]
    rows = table_rows(runs)
    if out_png:
        plot_efficiency(rows, out_png)
    if out_json:
        Path(out_json).parent.mkdir(parents=True, exist_ok=True)
        Path(out_json).write_text(json.dumps({"runs": [str(d) for d in run_dirs], "rows": rows}, indent=2))
    return markdown_table(rows)
