"""Reading a run's metrics and drawing them: the helpers ``longcot report``, the agent report and the long2short
report all use. They live one floor below the reports so that no report imports another's internals.
"""

from __future__ import annotations

from pathlib import Path

from longcot.jsonl import read_jsonl


def read_metrics(path: str | Path) -> list[dict]:
    """The rows of a run's ``metrics.jsonl`` ([] before the first step)."""
    path = Path(path)
    return read_jsonl(path) if path.is_file() else []


def save_figure(fig, out_png: str | Path, dpi: int = 110) -> Path:
    """Lay out, write ``fig`` to ``out_png`` (creating its folder) and close it; returns the path."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    out = Path(out_png)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=dpi)
    plt.close(fig)
    return out


def plot_metric_grid(rows: list[dict], curves: tuple[tuple[str, str], ...], out_png: str | Path, ncols: int,
                     heldout: dict[str, str] | None = None) -> Path | None:
    """One panel per ``(metrics key, title)`` against the RL step (steps without the key are skipped);
    ``heldout`` maps a panel's key to a periodic eval key drawn over it as points. None without rows."""
    if not rows:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    nrows = -(-len(curves) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.2 * ncols, 3.2 * nrows), squeeze=False)
    flat = list(axes.flat)
    for ax in flat[len(curves):]:  # a last row with fewer panels than columns
        ax.axis("off")
    for ax, (key, title) in zip(flat[: len(curves)], curves, strict=True):
        pts = [(r["step"], r[key]) for r in rows if key in r]
        if pts:
            ax.plot(*zip(*pts, strict=True), lw=1.2)
        ev = [(r["step"], r[heldout[key]]) for r in rows if heldout and key in heldout and heldout[key] in r]
        if ev:
            ax.plot(*zip(*ev, strict=True), "o-", label="held-out")
            ax.legend()
        ax.set_title(title)
        ax.set_xlabel("RL step")
        ax.grid(alpha=0.3)
    return save_figure(fig, out_png)
