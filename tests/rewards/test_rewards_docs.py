"""docs/rewards.md's custom-reward example, run exactly as written."""

import re
from pathlib import Path

from longcot.record import Trajectory
from longcot.rewards import REWARDS, RewardSpec, compute_rewards

DOC = Path(__file__).resolve().parents[2] / "docs" / "rewards.md"


def test_custom_reward_example_from_docs():
    text = DOC.read_text()
    block = re.search(r"<!-- example:custom-reward.*?```python\n(.*?)```", text, re.S).group(1)
    assert len(block.strip().splitlines()) < 15
    exec(compile(block, str(DOC), "exec"), {})
    assert "concise" in REWARDS
    ts = [Trajectory("a", "g", [], [], [], response_text="x" * 1000),
          Trajectory("b", "g", [], [], [], response_text="x" * 2250),
          Trajectory("c", "g", [], [], [], response_text="x", finish="length")]
    compute_rewards(ts, [RewardSpec("concise", weight=2.0, options={"max_chars": 1500})])
    assert [t.rewards["concise"] for t in ts] == [1.0, 0.5, 0.0]
    assert [t.reward for t in ts] == [2.0, 1.0, 0.0]
