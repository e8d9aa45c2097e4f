"""Plot helpers shared by the report modules (one floor below them, so no two reports import each other)."""

from __future__ import annotations

from pathlib import Path


def save_figure(fig, out_png: str | Path, dpi: int = 110) -> Path:
    """Lay out, write ``fig`` to ``out_png`` (creating its folder) and close it; returns the path."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    out = Path(out_png)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=dpi)
    plt.close(fig)
    return out
