"""Wall time per phase of an RL step, so a metrics row says where the seconds went."""

from __future__ import annotations

import time
from contextlib import contextmanager


class StepTimer:
    """Wall time per phase of a step; ``other`` is what no phase claimed, so the parts sum to the total."""

    def __init__(self) -> None:
        self.start = time.perf_counter()
        self.parts: dict[str, float] = {}

    @contextmanager
    def phase(self, name: str):
        t = time.perf_counter()
        try:
            yield
        finally:
            self.parts[name] = self.parts.get(name, 0.0) + time.perf_counter() - t

    def finish(self) -> dict[str, float]:
        total = time.perf_counter() - self.start
        out = {f"time/{k}": v for k, v in self.parts.items()}
        out["time/other"] = max(total - sum(self.parts.values()), 0.0)
        out["step_seconds"] = total
        return out
