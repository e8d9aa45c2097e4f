"""Prompt samplers: which training rows the next RL step draws.

A sampler is built from the training rows, a seed and the recipe's ``data.sampler_options``:
``make_sampler(name, rows, seed=..., **options)``. It has two methods the trainer calls each step:

* ``sample(k) -> list[int]``: k distinct row indices (k <= number of rows), one call per step;
* ``update(prompt_ids, successes)``: per-sample outcomes of the last step (prompt id = ``str(row["id"])``,
  or the row index when rows have no ``id``; success is a bool or a reward in [0, 1]).

And ``state_dict()`` / ``load_state_dict()`` for a resumed run: the generator's state plus whatever the sampler
tracks (the epoch's remaining order, the curriculum position, success statistics), so a resumed run draws
exactly the prompts the uninterrupted one would have.

Samplers are deterministic by seed: the same seed, calls and updates give the same indices.

* ``uniform``: shuffled epochs without replacement.
* ``curriculum`` (k1.5): rows sorted by a difficulty column; a growing easiest fraction of them is unlocked,
  linearly from ``start_fraction`` to all rows over ``ramp_steps`` calls to ``sample``.
* ``prioritized`` (k1.5): P(row) proportional to max(1 - s_row, floor), s_row the tracked success rate of
  that prompt (``init_success`` before its first update); the floor keeps solved prompts in rotation.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterable, Mapping, Sequence

import numpy as np

from longcot.registry import Registry, check_options

SAMPLERS: Registry = Registry("sampler")


class Sampler:
    """Base: row ids, a seeded generator, and a no-op ``update``. Subclasses name their mutable attributes in
    ``_state`` so that :meth:`state_dict` captures them."""

    _state: tuple[str, ...] = ()

    def __init__(self, rows: Sequence[Mapping], seed: int = 0):
        if len(rows) == 0:
            raise ValueError("sampler: no training rows")
        self.n = len(rows)
        self.ids = [str(r["id"]) if isinstance(r, Mapping) and "id" in r else str(i) for i, r in enumerate(rows)]
        self.index = {pid: i for i, pid in enumerate(self.ids)}
        if len(self.index) != self.n:
            raise ValueError("sampler: row ids are not unique")
        self.rng = np.random.default_rng(seed)

    def _check_k(self, k: int, available: int) -> None:
        if not 1 <= k <= available:
            raise ValueError(f"{type(self).__name__}.sample: k={k} but {available} rows are available")

    def sample(self, k: int) -> list[int]:
        raise NotImplementedError

    def update(self, prompt_ids: Iterable[str | int], successes: Iterable[float | bool]) -> None:
        """Outcomes of sampled responses; ignored by samplers that do not adapt."""

    def state_dict(self) -> dict:
        """Everything that decides the next draws: the generator's state and the sampler's own statistics."""
        state = {name: copy.deepcopy(getattr(self, name)) for name in self._state}
        return {"kind": type(self).__name__, "n": self.n, "rng": self.rng.bit_generator.state, **state}

    def load_state_dict(self, state: dict) -> None:
        if state["kind"] != type(self).__name__ or state["n"] != self.n:
            raise ValueError(f"sampler state is for {state['kind']} over {state['n']} rows, not "
                             f"{type(self).__name__} over {self.n}: the training data changed")
        self.rng.bit_generator.state = state["rng"]
        for name in self._state:
            setattr(self, name, copy.deepcopy(state[name]))

    def row_of(self, prompt_id: str | int) -> int:
        """Row index of a prompt id (ints are taken as row indices)."""
        if isinstance(prompt_id, int | np.integer):
            return int(prompt_id)
        if prompt_id not in self.index:
            raise KeyError(f"sampler.update: unknown prompt id '{prompt_id}'")
        return self.index[prompt_id]


@SAMPLERS.register("uniform")
class UniformSampler(Sampler):
    """Shuffled epochs without replacement: every row is drawn once before any is drawn twice."""

    _state = ("_queue",)

    def __init__(self, rows: Sequence[Mapping], seed: int = 0):
        super().__init__(rows, seed)
        self._queue: list[int] = []

    def sample(self, k: int) -> list[int]:
        self._check_k(k, self.n)
        out: list[int] = []
        while len(out) < k:
            if not self._queue:
                self._queue = self.rng.permutation(self.n).tolist()
            i = self._queue.pop()
            if i not in out:  # an epoch boundary inside a batch must not repeat a row
                out.append(i)
        return out


@SAMPLERS.register("curriculum")
class CurriculumSampler(Sampler):
    """Easy-to-hard: the ``ceil(f * n)`` easiest rows (by ``column``, ties broken by row order) are the pool,
    f = start_fraction + (1 - start_fraction) * min(1, step / ramp_steps); sample uniformly from the pool."""

    _state = ("step",)

    def __init__(self, rows: Sequence[Mapping], seed: int = 0, column: str = "difficulty",
                 start_fraction: float = 0.3, ramp_steps: int = 100):
        super().__init__(rows, seed)
        if not 0 < start_fraction <= 1:
            raise ValueError(f"curriculum: start_fraction must be in (0, 1] (got {start_fraction})")
        if ramp_steps < 0:
            raise ValueError(f"curriculum: ramp_steps must be >= 0 (got {ramp_steps})")
        missing = [i for i, r in enumerate(rows) if column not in r]
        if missing:
            raise KeyError(f"curriculum: row {missing[0]} has no column '{column}' (set data.sampler_options.column)")
        self.order = sorted(range(self.n), key=lambda i: (float(rows[i][column]), i))
        self.start_fraction, self.ramp_steps, self.step = start_fraction, ramp_steps, 0

    def fraction(self, step: int | None = None) -> float:
        step = self.step if step is None else step
        progress = 1.0 if self.ramp_steps == 0 else min(1.0, step / self.ramp_steps)
        return self.start_fraction + (1 - self.start_fraction) * progress

    def sample(self, k: int) -> list[int]:
        pool = self.order[: max(k, math.ceil(self.fraction() * self.n - 1e-9))]  # 0.2 + 0.4 != 0.6
        self._check_k(k, len(pool))
        self.step += 1
        return [pool[i] for i in self.rng.choice(len(pool), size=k, replace=False)]


@SAMPLERS.register("prioritized")
class PrioritizedSampler(Sampler):
    """k1.5 prioritized sampling: P(row) proportional to max(1 - success_rate, floor), without replacement
    within a step. Success rate = mean of all outcomes seen for the prompt, or an EMA with weight ``ema``
    on the newest step's mean when ``ema`` is set (tracks a policy that is improving)."""

    _state = ("success", "count")

    def __init__(self, rows: Sequence[Mapping], seed: int = 0, floor: float = 0.05, init_success: float = 0.0,
                 ema: float | None = None):
        super().__init__(rows, seed)
        if not 0 < floor <= 1:
            raise ValueError(f"prioritized: floor must be in (0, 1] (got {floor}); 0 would never draw solved prompts")
        if ema is not None and not 0 < ema <= 1:
            raise ValueError(f"prioritized: ema must be in (0, 1] (got {ema})")
        self.floor, self.ema = floor, ema
        self.success = np.full(self.n, float(init_success))
        self.count = np.zeros(self.n)

    def weights(self) -> np.ndarray:
        return np.maximum(1.0 - self.success, self.floor)

    def probabilities(self) -> np.ndarray:
        """Single-draw probabilities of every row (what ``sample(1)`` uses)."""
        w = self.weights()
        return w / w.sum()

    def sample(self, k: int) -> list[int]:
        self._check_k(k, self.n)
        return self.rng.choice(self.n, size=k, replace=False, p=self.probabilities()).tolist()

    def update(self, prompt_ids: Iterable[str | int], successes: Iterable[float | bool]) -> None:
        per_row: dict[int, list[float]] = {}
        for pid, s in zip(prompt_ids, successes, strict=True):
            per_row.setdefault(self.row_of(pid), []).append(float(s))
        for i, vals in per_row.items():
            step_mean = sum(vals) / len(vals)
            if self.ema is not None and self.count[i] > 0:
                self.success[i] = (1 - self.ema) * self.success[i] + self.ema * step_mean
            else:
                total = self.success[i] * self.count[i] + sum(vals)
                self.success[i] = total / (self.count[i] + len(vals))
            self.count[i] += len(vals)


def make_sampler(name: str, rows: Sequence[Mapping], seed: int = 0, **options) -> Sampler:
    """Build the named sampler; unknown options fail with the closest valid one."""
    cls = SAMPLERS.get(name)
    check_options(cls.__init__, options, where=f"data.sampler_options ({name})")
    return cls(rows, seed=seed, **options)
