"""longcot: reinforcement learning for long chain-of-thought reasoning (Kimi k1.5 / K2.5 style)."""

from longcot.record import AgentInfo, Segment, Trajectory

__all__ = ["AgentInfo", "Segment", "Trajectory"]
__version__ = "0.1.0"
