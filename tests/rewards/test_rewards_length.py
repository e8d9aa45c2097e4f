"""Length and format rewards against the formulas in DESIGN.md, and the user-reward error path."""

import math as pymath

import pytest

from longcot.record import Trajectory
from longcot.rewards import REWARDS, RewardSpec, compute_rewards, reward


def traj(n: int, correct: bool | None = None, group: str = "g", text: str = "", finish: str = "stop") -> Trajectory:
    t = Trajectory(prompt_id=f"{group}-{n}", group_id=group, prompt_ids=[], response_ids=list(range(n)),
                   rollout_logprobs=[], finish=finish, response_text=text, meta={"answer": "7"})
    if correct is not None:
        t.rewards["math"] = float(correct)
    return t


def test_k15_length_matches_formula():
    group = [traj(10, True), traj(20, False), traj(30, True), traj(40, False), traj(50, True)]
    got = REWARDS.get("k15_length")(group)
    # lambda = 0.5 - (len - 10) / 40 -> 0.5, 0.25, 0, -0.25, -0.5; wrong: min(0, lambda)
    assert got == pytest.approx([0.5, 0.0, 0.0, -0.25, -0.5])
    assert REWARDS.get("k15_length")([traj(5, True), traj(5, False)]) == [0.0, 0.0]


def test_k15_length_recomputes_correctness_when_missing():
    a, b = traj(10, text="\\boxed{7}"), traj(30, text="\\boxed{8}")
    assert REWARDS.get("k15_length")([a, b]) == pytest.approx([0.5, -0.5])


def test_overlong_dapo_shaping():
    f = REWARDS.get("overlong")
    assert [f(traj(n), max_len=100, cache=20) for n in (50, 80, 90, 100, 120)] == pytest.approx(
        [0.0, 0.0, -0.5, -1.0, -1.0])


def test_cosine_length():
    f = REWARDS.get("cosine_length")
    assert f(traj(0, True), max_len=100) == pytest.approx(2.0)
    assert f(traj(50, True), max_len=100) == pytest.approx(1.5)
    assert f(traj(0, False), max_len=100) == pytest.approx(-10.0)
    assert f(traj(25, False), max_len=100) == pytest.approx(-10 * 0.5 * (1 + pymath.cos(pymath.pi / 4)))
    assert f(traj(100, True), max_len=100) == -10.0
    assert f(traj(10, True, finish="length"), max_len=100) == -10.0


def test_repetition_penalty():
    f = REWARDS.get("repetition")
    assert f(traj(0, text=""), ngram=2) == 0.0
    looped = Trajectory("p", "g", [], [1, 2] * 50, [])
    assert f(looped, ngram=4) == pytest.approx(-(1 - 2 / 97))
    assert f(Trajectory("p", "g", [], list(range(100)), []), ngram=4) == 0.0


def test_format_reward():
    f = REWARDS.get("format")
    assert f(traj(1, text="<think>a</think> \\boxed{1}"), think=True) == 1.0
    assert f(traj(1, text="pre <think>a</think> \\boxed{1}"), think=True) == 0.0
    assert f(traj(1, text="<think>a</think> 1"), think=True) == 0.0
    assert f(traj(1, text="\\boxed{1}", finish="length")) == 0.0
    assert f(traj(1, text="Answer: 1"), boxed=False, pattern=r".*Answer: \d+") == 1.0


def test_components_and_weights_are_logged():
    ts = [traj(10, text="\\boxed{7}"), traj(30, text="\\boxed{8}")]
    specs = [RewardSpec("math"), RewardSpec("k15_length", weight=0.5), RewardSpec("overlong", options={"max_len": 20,
                                                                                                        "cache": 10})]
    metrics = compute_rewards(ts, specs)
    assert ts[0].rewards == {"math": 1.0, "k15_length": 0.5, "overlong": 0.0}
    assert ts[1].rewards == {"math": 0.0, "k15_length": -0.5, "overlong": -1.0}
    assert [t.reward for t in ts] == pytest.approx([1.25, -1.25])
    assert metrics["reward_mean/math"] == 0.5


def test_user_reward_errors_and_timeouts_are_caught_per_sample(caplog):
    @reward("test_flaky")
    def flaky(sample, *, fail_on: str = "bad"):
        if sample.prompt_id == fail_on:
            raise ValueError("boom")
        if sample.prompt_id == "slow":
            while True:
                pass
        return 1.0

    ts = [Trajectory(pid, "g", [], [], [], meta={"id": pid}) for pid in ("ok", "bad", "slow")]
    metrics = compute_rewards(ts, [RewardSpec("test_flaky", on_error=-1.0, timeout_s=0.2, max_error_rate=1.0)])
    assert [t.reward for t in ts] == [1.0, -1.0, -1.0]
    assert metrics["reward_errors/test_flaky"] == 2
    assert "sample bad" in caplog.text and "sample slow" in caplog.text


def test_module_function_reward_and_group_signature():
    ts = [traj(1, group="a"), traj(2, group="a"), traj(3, group="b")]
    compute_rewards(ts, [RewardSpec("tests.rewards.user_rewards:rank_in_group")])
    assert [t.reward for t in ts] == [0.0, 1.0, 0.0]
