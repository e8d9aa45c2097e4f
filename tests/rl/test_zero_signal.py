"""The zero-signal watch names why RL is not learning, once per streak."""

from longcot.record import Trajectory
from longcot.rl.zero_signal import ZeroSignalWatch, diagnose


def _trajs(rewards: list[list[float]], finish: str = "stop", text: str = "7+5=12") -> list[Trajectory]:
    return [Trajectory(prompt_id=str(g), group_id=f"{g}@0", prompt_ids=[1], response_ids=[1, 2], rollout_logprobs=[],
                       finish=finish, response_text=text, reward=r)
            for g, group in enumerate(rewards) for r in group]


def test_diagnose_names_each_cause():
    assert diagnose(_trajs([[0, 1], [0, 0]]), {}, ["math"]) is None
    cond, msg = diagnose(_trajs([[0, 0], [0, 0]], text="blah blah"), {}, ["math"])
    assert cond == "no_reward" and "no sample has reward > 0 (math)" in msg and "answer format" in msg
    assert "'blah blah'" in msg
    cond, msg = diagnose(_trajs([[0, 0]]), {"reward_errors/math": 2.0}, ["math"])
    assert "the rewards failed" in msg
    cond, msg = diagnose(_trajs([[0, 0]], finish="length"), {}, ["math"])
    assert cond == "all_truncated" and "rollout.max_tokens" in msg
    cond, msg = diagnose(_trajs([[1, 1], [1, 1]]), {}, ["math"])
    assert cond == "no_spread" and "too easy" in msg
    cond, msg = diagnose(_trajs([[1, 1], [0, 0]]), {}, ["math"])
    assert cond == "no_spread" and "advantage is 0" in msg


def test_watch_warns_once_after_patience_steps_and_rearms_after_signal(caplog):
    watch = ZeroSignalWatch(patience=3, reward_names=["math"])
    dead, alive = _trajs([[0, 0]]), _trajs([[0, 1]])
    got = [watch.observe(s, {"grad_norm": 0.0}, dead) for s in range(5)]
    assert got[:2] == [None, None] and got[2] and got[3:] == [None, None]
    assert "RL step 2: no learning signal for 3 steps: no sample has reward > 0" in got[2]
    assert "docs/data.md" in got[2] and "no learning signal" in caplog.text
    assert watch.observe(5, {"grad_norm": 0.5}, alive) is None and watch.streak == 0
    assert [watch.observe(s, {"grad_norm": 0.0}, dead) for s in range(6, 9)][-1] is not None
    assert [w["step"] for w in watch.warnings] == [2, 8] and watch.warnings[0]["condition"] == "no_reward"


def test_zero_gradient_with_rewards_that_differ_is_reported_too():
    watch = ZeroSignalWatch(patience=1)
    msg = watch.observe(0, {"grad_norm": 0.0}, _trajs([[0, 1]]))
    assert msg and "gradient norm is 0 although rewards differ" in msg
