"""Reading a run's metrics and drawing them: the helpers ``longcot report`` and the agent report both use.

They live one floor below both reports so that neither imports the other's internals.
"""

from __future__ import annotations

from pathlib import Path

from longcot.jsonl import read_jsonl


def read_metrics(path: str | Path) -> list[dict]:
    """The rows of a run's ``metrics.jsonl`` ([] before the first step)."""
    path = Path(path)
    return read_jsonl(path) if path.is_file() else []


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
    for ax, (key, title) in zip(axes.flat, curves, strict=True):
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
    fig.tight_layout()
    out = Path(out_png)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
