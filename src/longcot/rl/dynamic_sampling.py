"""DAPO dynamic sampling: drop groups whose rewards are all equal and refill the batch.

A group where every sample got the same reward (all solved or all failed) has zero advantage under every
group-relative estimator, so it costs a forward/backward pass and contributes only noise (KL, entropy
terms) and a smaller effective batch. DAPO (Yu et al. 2025) over-samples until the batch holds
``num_groups`` informative groups. Here the generation is a callback, so this module never sees an engine:

    trajs, metrics = dynamic_sample(lambda n: score(engine.generate(sampler.sample(n))), num_groups=16)

The number of extra generation rounds is capped (``max_extra_rounds``); when the cap is hit the step
trains on the groups it has (possibly none: the trainer skips the step) and reports the shortfall.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from longcot.record import Trajectory, groups


def is_uninformative(group: list[Trajectory], tol: float = 1e-9) -> bool:
    """True when all rewards in the group are equal (within ``tol``); a group of one sample is uninformative."""
    rewards = [t.reward for t in group]
    return max(rewards) - min(rewards) <= tol


def filter_groups(trajs: list[Trajectory], tol: float = 1e-9) -> tuple[list[list[Trajectory]], int]:
    """The informative groups of ``trajs`` (each a list of trajectories, in first-seen order) and the
    number of groups seen."""
    all_groups = list(groups(trajs).values())
    return [g for g in all_groups if not is_uninformative(g, tol)], len(all_groups)


def dynamic_sample(generate: Callable[[int], list[Trajectory]], num_groups: int, max_extra_rounds: int = 2,
                   tol: float = 1e-9, max_request_factor: float = 4.0) -> tuple[list[Trajectory], dict[str, float]]:
    """Collect ``num_groups`` informative groups from ``generate(n)`` (n new prompts, scored trajectories).

    Round 0 asks for ``num_groups``. Each extra round asks for the missing groups divided by the kept
    fraction seen so far (so a 50% keep rate asks for twice the missing number), at most
    ``max_request_factor * num_groups``. Surplus informative groups are dropped (as in DAPO).

    Metrics: ``dynamic/kept_fraction`` (informative / generated groups over all rounds, the number to watch:
    near 0 means the task is too easy or too hard for the policy), ``dynamic/rounds``,
    ``dynamic/groups_generated``, ``dynamic/groups_short`` (groups missing when the cap was hit).
    """
    if num_groups < 1 or max_extra_rounds < 0:
        raise ValueError(f"dynamic_sample: need num_groups >= 1 and max_extra_rounds >= 0 "
                         f"(got {num_groups}, {max_extra_rounds})")
    kept: list[list[Trajectory]] = []
    generated = rounds = 0
    request = num_groups
    while rounds <= max_extra_rounds:
        new_groups, seen = filter_groups(generate(request), tol)
        kept.extend(new_groups)
        generated += seen
        rounds += 1
        missing = num_groups - len(kept)
        if missing <= 0:
            break
        cap = math.ceil(max_request_factor * num_groups)
        request = min(-(-missing * generated // len(kept)), cap) if kept else cap  # integer ceil, no float drift
    informative = len(kept)
    kept = kept[:num_groups]
    metrics = {
        "dynamic/kept_fraction": informative / generated if generated else 0.0,
        "dynamic/rounds": float(rounds),
        "dynamic/groups_generated": float(generated),
        "dynamic/groups_short": float(num_groups - len(kept)),
    }
    return [t for g in kept for t in g], metrics

