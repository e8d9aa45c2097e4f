"""The k1.5 length-penalty schedule: zero during warm-up, then constant."""

import pytest

from longcot.rl.length_penalty import length_penalty_weight


def test_schedule():
    assert [length_penalty_weight(s, warmup=3, weight=0.5) for s in range(6)] == [0.0, 0.0, 0.0, 0.5, 0.5, 0.5]
    assert length_penalty_weight(0, warmup=0, weight=0.2) == 0.2
    with pytest.raises(ValueError, match="warmup must be >= 0"):
        length_penalty_weight(0, warmup=-1, weight=0.2)
