"""DAPO dynamic sampling with a scripted generator (rewards per group are fixed patterns)."""

import itertools

import pytest

from longcot.record import Trajectory
from longcot.rl.dynamic_sampling import dynamic_sample, filter_groups, is_uninformative


def make_generator(patterns):
    """generate(n): n new groups whose rewards cycle through ``patterns``; records every request size."""
    counter, cycle, requests = itertools.count(), itertools.cycle(patterns), []

    def generate(n):
        requests.append(n)
        out = []
        for _ in range(n):
            gid = f"g{next(counter)}"
            out += [Trajectory(prompt_id=gid, group_id=gid, prompt_ids=[1], response_ids=[2], rollout_logprobs=[-1.0],
                               reward=r) for r in next(cycle)]
        return out

    return generate, requests


def test_uninformative_groups():
    def g(*rs):
        return [Trajectory("p", "g", [1], [2], [-1.0], reward=r) for r in rs]

    assert is_uninformative(g(1.0, 1.0)) and is_uninformative(g(0.0, 0.0, 0.0)) and is_uninformative(g(0.3))
    assert not is_uninformative(g(1.0, 0.0))
    gen, _ = make_generator([[1, 1], [1, 0], [0, 0], [0.5, 0.25]])
    kept, seen = filter_groups(gen(4))
    assert seen == 4 and [[t.reward for t in grp] for grp in kept] == [[1, 0], [0.5, 0.25]]


def test_refills_until_full():
    # half of the groups are informative: round 0 asks 4, keeps 2; round 1 asks ceil(2 missing * 4 / 2) = 4, keeps 2
    gen, requests = make_generator([[1, 1], [1, 0], [0, 0], [0, 1]])
    trajs, m = dynamic_sample(gen, num_groups=4)
    assert requests == [4, 4]
    gids = {t.group_id for t in trajs}
    assert len(trajs) == 8 and all(len({t.reward for t in trajs if t.group_id == g}) == 2 for g in gids)
    assert m == {"dynamic/kept_fraction": 0.5, "dynamic/rounds": 2.0, "dynamic/groups_generated": 8.0,
                 "dynamic/groups_short": 0.0}


def test_surplus_is_dropped():
    # 1 in 3 informative, need 3: round 0 asks 3 keeps 1; round 1 asks ceil(2 * 3 / 1) = 6 keeps 2 -> exactly 3
    gen, requests = make_generator([[1, 1], [1, 0], [0, 0]])
    trajs, m = dynamic_sample(gen, num_groups=3)
    assert requests == [3, 6] and len({t.group_id for t in trajs}) == 3
    assert m["dynamic/kept_fraction"] == pytest.approx(3 / 9)


def test_cap_on_extra_rounds():
    # nothing informative: 1 + 2 extra rounds, each extra asking the cap 4 * num_groups = 16; nothing kept
    gen, requests = make_generator([[1, 1], [0, 0]])
    trajs, m = dynamic_sample(gen, num_groups=4, max_extra_rounds=2)
    assert requests == [4, 16, 16] and trajs == []
    assert m["dynamic/kept_fraction"] == 0.0 and m["dynamic/groups_short"] == 4.0 and m["dynamic/rounds"] == 3.0


def test_no_extra_rounds_keeps_what_it_has():
    gen, requests = make_generator([[1, 0], [1, 1]])
    trajs, m = dynamic_sample(gen, num_groups=4, max_extra_rounds=0)
    assert requests == [4] and len({t.group_id for t in trajs}) == 2 and m["dynamic/groups_short"] == 2.0
