"""``report.md`` (protocol, headline metrics, per-problem table) and ``pass_rate_vs_length.png``.

The scatter of per-problem pass rate against mean response length shows at a glance whether a model spends
its tokens on the problems it fails (long, truncated, wrong) or thinks long and succeeds.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

PLOT_NAME = "pass_rate_vs_length.png"
PROTOCOL_KEYS = ("model", "dataset", "template", "n", "temperature", "top_p", "top_k", "max_tokens", "seed", "grader")


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4f}"
    if isinstance(v, list) and all(isinstance(x, float) for x in v):
        return "[" + ", ".join(f"{x:.4f}" for x in v) + "]"
    return str(v)


def _metric_order(metrics: dict) -> list[str]:
    """avg@n and its CI first, then pass@k and maj@k by k, then the rest in insertion order."""
    head = [k for k in metrics if k.startswith("avg@")]
    by_k = lambda prefix: sorted((k for k in metrics if k.startswith(prefix)), key=lambda k: int(k.split("@")[1]))
    ordered = head + by_k("pass@") + by_k("maj@")
    return ordered + [k for k in metrics if k not in ordered]


def render_markdown(summary: dict, info: dict[str, Any]) -> str:
    lines = ["# Evaluation report", ""]
    protocol = {k: info[k] for k in PROTOCOL_KEYS if k in info}
    if protocol:
        lines += ["| protocol | value |", "| --- | --- |"]
        lines += [f"| {k} | `{_fmt(v)}` |" for k, v in protocol.items()]
        lines.append("")
    m = summary["metrics"]
    lines += [f"## Metrics (n = {summary['n']} samples per problem)", "", "| metric | value |", "| --- | --- |"]
    lines += [f"| {k} | {_fmt(m[k])} |" for k in _metric_order(m)]
    lines += ["", "pass@k: unbiased estimator 1 - C(n-c,k)/C(n,k) averaged over problems. maj@k: majority vote over",
              "extracted answers in consecutive blocks of k samples, ties to the earliest sample, missing answers",
              "do not vote. CI: 95% percentile bootstrap over problems.", ""]
    unit = info.get("length_unit", "tokens")
    lines += ["## Per problem", "",
              f"| id | pass rate | correct / n | mean length ({unit}) | truncated | majority | gold |",
              "| --- | --- | --- | --- | --- | --- | --- |"]
    for p in summary["per_problem"]:
        maj = "" if p["maj_answer"] is None else str(p["maj_answer"]).replace("|", "\\|")
        lines.append(f"| {p['id']} | {p['pass_rate']:.3f} | {p['num_correct']} / {p['n']} | {p['mean_length']:.0f} | "
                     f"{p['truncation_rate']:.2f} | `{maj}` | `{p['gold']}` |")
    lines += ["", f"![per-problem pass rate vs mean length]({PLOT_NAME})", ""]
    return "\n".join(lines)


def plot_pass_rate_vs_length(summary: dict, path: str | Path, unit: str = "tokens") -> None:
    """``unit``: what the lengths count (``tokens``, or ``chars`` when re-scored responses had neither token
    counts nor a tokenizer), so the axis says what was measured."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    probs = summary["per_problem"]
    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    ax.scatter([p["mean_length"] for p in probs], [p["pass_rate"] for p in probs], s=18, alpha=0.7)
    ax.set_xlabel(f"mean response length ({unit})")
    ax.set_ylabel("pass rate (fraction of samples correct)")
    ax.set_ylim(-0.05, 1.05)
    avg = next((v for k, v in summary["metrics"].items() if k.startswith("avg@") and "_" not in k), None)
    ax.set_title(f"{len(probs)} problems, n={summary['n']}" + (f", avg={avg:.3f}" if avg is not None else ""))
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def write_report(summary: dict, out_dir: str | Path, info: dict[str, Any]) -> None:
    out = Path(out_dir)
    (out / "report.md").write_text(render_markdown(summary, info))
    plot_pass_rate_vs_length(summary, out / PLOT_NAME, info.get("length_unit", "tokens"))
