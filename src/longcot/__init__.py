"""longcot: reinforcement learning for long chain-of-thought reasoning (Kimi k1.5 / K2.5 style)."""

from longcot.record import AgentInfo, Segment, Trajectory

__all__ = ["AgentInfo", "Segment", "Trajectory"]


def _version() -> str:
    """The installed distribution's version (pyproject.toml is the one place it is written)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("longcot")
    except PackageNotFoundError:
        return "unknown (not installed: pip install -e .)"


__version__ = _version()
