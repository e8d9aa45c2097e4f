"""Bounded staleness for asynchronous rollouts: which samples may train, and how far generation may run ahead.

Pure bookkeeping, no Ray, so it is tested on its own (tests/runtime/test_admission.py).

Staleness of a sample trained by policy version ``V`` = ``V - v``, where ``v`` is the newest policy version that
produced its tokens (``Segment.policy_version``; with partial rollouts older segments are governed by
``partial.max_staleness`` and corrected by ``rl.rollout_correction`` as in the local runtime). A unit (one
prompt's samples, plus any sub-agent records) is admitted to a batch only if its staleness is at most ``k =
rl.max_off_policy_steps``; older ones are dropped and counted, before they cost an update.

Run-ahead: a chunk of prompts dispatched now samples with the newest published version ``p`` (or newer). The next
batch trains at ``p`` (``p + 1`` while an update is in flight), and batches consume ``P = rl.prompts_per_step``
units each, oldest first, so groups dispatched while at most ``(k + 1 - u) * P`` units are ahead of them (``u`` = 1
from the moment a batch is taken until its update is published) train at a version <= ``p + k``: in steady state
nothing is dropped, and ``k = 0`` is the synchronous loop (the next chunk waits for the update).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from longcot.record import Trajectory


@dataclass
class Unit:
    """One prompt's samples as they arrived: its group (``n`` samples) plus any sub-agent records."""

    key: str
    trajs: list[Trajectory]
    version: int  # newest policy version that produced its tokens
    oldest: int  # oldest policy version among its tokens (partial rollouts: earlier segments)
    worker: int = -1
    delivery: tuple[dict[str, float], int] | None = None  # the engine-wrapper metrics of the call that made it

    @property
    def main(self) -> list[Trajectory]:
        """The samples the group's advantage is computed over (sub-agent records excluded)."""
        return [t for t in self.trajs if t.group_id == self.key]


def unit_key(t: Trajectory) -> str:
    """Sub-agent records carry their orchestrator's group id + ``/sub`` (agents/driver.py)."""
    return t.group_id.removesuffix("/sub")


def versions(trajs: list[Trajectory], default: int) -> tuple[int, int]:
    """(newest, oldest) segment version over ``trajs``; ``default`` when no segment records one."""
    seen = [s.policy_version for t in trajs for s in t.segments]
    return (max(seen), min(seen)) if seen else (default, default)


def split_units(trajs: list[Trajectory], default_version: int, worker: int = -1) -> list[Unit]:
    """The units of one worker reply, in first-seen order."""
    by_key: dict[str, list[Trajectory]] = {}
    for t in trajs:
        by_key.setdefault(unit_key(t), []).append(t)
    out = []
    for key, members in by_key.items():
        newest, oldest = versions(members, default_version)
        out.append(Unit(key, members, newest, oldest, worker))
    return out


def run_ahead_room(prompts_per_step: int, k: int, update_in_flight: bool, ahead: int, remaining: int) -> int:
    """Units that may still be dispatched: ``(k + 1 - u) * P`` minus the ``ahead`` units already dispatched or
    waiting in the driver, and never more than the ``remaining`` units the run still needs."""
    budget = prompts_per_step * max(0, k + 1 - int(update_in_flight))
    return max(0, min(budget, remaining) - ahead)


@dataclass
class Admission:
    """What a batch took from the buffer: admitted units, and the ones it dropped (stale) or filtered."""

    units: list[Unit] = field(default_factory=list)
    stale: list[Unit] = field(default_factory=list)
    uninformative: list[Unit] = field(default_factory=list)

    @property
    def dropped_samples(self) -> int:
        return sum(len(u.trajs) for u in self.stale)


def admit(buffer: deque[Unit], need: int, trainer_version: int, k: int, informative=None,
          into: Admission | None = None) -> Admission:
    """Move units from the front of ``buffer`` into a batch until it holds ``need``: stale ones
    (``trainer_version - unit.version > k``) are dropped, and with ``informative`` (dynamic sampling) the units it
    rejects are filtered out. Stops early when the buffer runs dry; call again with ``into`` as more arrive."""
    out = into if into is not None else Admission()
    while buffer and len(out.units) < need:
        unit = buffer.popleft()
        if trainer_version - unit.version > k:
            out.stale.append(unit)
        elif informative is not None and not informative(unit):
            out.uninformative.append(unit)
        else:
            out.units.append(unit)
    return out


def staleness_metrics(units: list[Unit], trainer_version: int) -> dict[str, float]:
    """``async/staleness_mean``/``max`` over the trained samples (newest segment), and the oldest segment's."""
    per_sample = [(trainer_version - u.version, trainer_version - u.oldest) for u in units for _ in u.main]
    if not per_sample:
        return {"async/staleness_mean": 0.0, "async/staleness_max": 0.0, "async/staleness_oldest_max": 0.0}
    return {"async/staleness_mean": sum(s for s, _ in per_sample) / len(per_sample),
            "async/staleness_max": float(max(s for s, _ in per_sample)),
            "async/staleness_oldest_max": float(max(o for _, o in per_sample))}
