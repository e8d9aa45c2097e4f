"""Samplers: determinism, curriculum schedule, and prioritized sampling (acceptance 4 of the RL issue)."""

from collections import Counter

import numpy as np
import pytest

from longcot.data.samplers import SAMPLERS, make_sampler

ROWS = [{"id": f"p{i}", "difficulty": i % 5} for i in range(20)]


@pytest.mark.parametrize("name", ["uniform", "curriculum", "prioritized"])
def test_deterministic_by_seed_and_distinct_within_a_step(name):
    a, b, c = (make_sampler(name, ROWS, seed=s) for s in (3, 3, 4))
    draws_a = [a.sample(6) for _ in range(5)]
    assert draws_a == [b.sample(6) for _ in range(5)]
    assert draws_a != [c.sample(6) for _ in range(5)]
    assert all(len(set(d)) == 6 for d in draws_a)


def test_uniform_covers_every_row_once_per_epoch():
    s = make_sampler("uniform", ROWS, seed=0)
    assert sorted(s.sample(10) + s.sample(10)) == list(range(20))


def test_curriculum_unlocks_harder_rows_over_time():
    # 20 rows, difficulty i % 5 (4 rows per level). start 0.2 -> ceil(0.2 * 20) = 4 rows: all difficulty 0.
    # ramp_steps 4: fraction at step s = 0.2 + 0.8 * s / 4 -> step 2: 0.6 -> 12 rows = difficulties 0, 1, 2.
    s = make_sampler("curriculum", ROWS, seed=0, start_fraction=0.2, ramp_steps=4)
    assert {ROWS[i]["difficulty"] for i in s.sample(4)} == {0}
    s.sample(1)
    assert s.fraction() == pytest.approx(0.6)
    seen = Counter(ROWS[i]["difficulty"] for _ in range(50) for i in s.sample(3))
    assert max(seen) == 4  # by step 4+ every row is unlocked
    s2 = make_sampler("curriculum", ROWS, seed=0, start_fraction=0.2, ramp_steps=4)
    s2.step = 2
    assert sorted(ROWS[i]["difficulty"] for i in s2.sample(12)) == [0] * 4 + [1] * 4 + [2] * 4


def test_curriculum_errors_name_the_column():
    with pytest.raises(KeyError, match="no column 'level'"):
        make_sampler("curriculum", ROWS, column="level")


def test_prioritized_draws_solved_prompts_much_less_often_with_floor():
    # rows p0..p9 always solved, p10..p19 always failed (8 samples each, one update per step)
    floor = 0.05
    s = make_sampler("prioritized", ROWS, seed=0, floor=floor)
    for _ in range(3):
        ids = [f"p{i}" for i in range(20) for _ in range(8)]
        s.update(ids, [1.0 if i < 10 else 0.0 for i in range(20) for _ in range(8)])
    # success 1 -> weight max(1 - 1, 0.05) = 0.05; success 0 -> weight 1.
    # P(solved row) = 0.05 / (10 * 0.05 + 10 * 1) = 0.05 / 10.5 = 0.0047619; P(failed row) = 1 / 10.5 = 0.095238
    p = s.probabilities()
    assert np.allclose(p[:10], 0.05 / 10.5) and np.allclose(p[10:], 1 / 10.5)
    draws = Counter(i for _ in range(20000) for i in s.sample(1))
    solved = sum(draws[i] for i in range(10)) / 20000
    failed = sum(draws[i] for i in range(10, 20)) / 20000
    # expected: solved 10 * 0.0047619 = 0.0476, failed 0.9524; the floor keeps every solved row in rotation
    assert solved == pytest.approx(0.0476, abs=0.006) and failed > 15 * solved
    assert all(draws[i] > 0 for i in range(10))


def test_prioritized_success_rate_tracking():
    s = make_sampler("prioritized", ROWS, seed=0, floor=0.1)
    s.update(["p0", "p0", "p0", "p0"], [True, True, True, False])  # 3/4
    s.update(["p0", "p0"], [0.0, 0.0])  # cumulative: 3/6 = 0.5
    assert s.success[0] == pytest.approx(0.5) and s.weights()[0] == pytest.approx(0.5)
    e = make_sampler("prioritized", ROWS, seed=0, ema=0.5)
    e.update([0, 0], [1.0, 1.0])  # first update: 1.0
    e.update([0, 0], [0.0, 1.0])  # 0.5 * 1.0 + 0.5 * 0.5 = 0.75
    assert e.success[0] == pytest.approx(0.75)
    with pytest.raises(KeyError, match="unknown prompt id 'nope'"):
        s.update(["nope"], [1.0])


def test_prioritized_floor_validation_and_unknown_option():
    with pytest.raises(ValueError, match="floor must be in"):
        make_sampler("prioritized", ROWS, floor=0.0)
    with pytest.raises(KeyError, match="unknown option 'flor'.*did you mean 'floor'"):
        make_sampler("prioritized", ROWS, flor=0.1)
    with pytest.raises(KeyError, match="did you mean 'uniform'"):
        SAMPLERS.get("unifrm")
