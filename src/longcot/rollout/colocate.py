"""Colocated GPU memory: the rollout engine gives its GPU memory back while the trainer updates the policy.

When vLLM and the trainer share a GPU, the engine's weights and KV cache (``gpu_memory_utilization`` of the
device) sit idle during the update, which needs the room for activations. vLLM's sleep mode frees them:
``sleep(level=1)`` offloads the weights to CPU and discards the KV cache; ``wake_up()`` restores both before
the weight sync and the next generation. It is CUDA only (a no-op on CPU, DESIGN.md), needs the engine built
with ``enable_sleep_mode=True`` (``rollout.engine_options: {enable_sleep_mode: true}``), and is untested here:
no GPU was lent to the task that wrote it (docs/training.md).

Level 1, not 2 (which also drops the weights, since the sync overwrites them): an update that trains nothing
(dynamic sampling kept no group) is followed by no sync, and the engine must still hold valid weights.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any


def sleeping_engine(engine: Any) -> Any | None:
    """The engine (or the one a wrapper holds: ``inner``, ``engine``) that can release its GPU memory, if any."""
    seen = set()
    while engine is not None and id(engine) not in seen:
        seen.add(id(engine))
        if callable(getattr(engine, "release_memory", None)):
            return engine
        engine = getattr(engine, "inner", None) or getattr(engine, "engine", None)
    return None


@contextlib.contextmanager
def engine_memory_released(engine: Any) -> Iterator[bool]:
    """Around a trainer update: the engine sleeps inside (if it can: yields whether it did) and is awake after,
    also when the update raises."""
    target = sleeping_engine(engine)
    released = bool(target is not None and target.release_memory())
    try:
        yield released
    finally:
        if released:
            target.restore_memory()
