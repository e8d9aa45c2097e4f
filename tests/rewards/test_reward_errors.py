"""Nothing silent in scoring (issue 14): failures are marked per sample, on_error zero|raise|number, a per-step
error rate that stops training, a reward that cannot run stops at once, no grade against a missing answer, no
token-level score of text without tokens, and components keep a registered reward's name."""

import pytest

from longcot.config.loader import build
from longcot.record import Trajectory
from longcot.rewards import REWARDS, RewardSpec, compute_rewards, reward
from longcot.rewards.errors import RewardError, RewardSetupError


def traj(pid: str, text: str = "\\boxed{1}", answer="1", ids=None) -> Trajectory:
    return Trajectory(pid, "g", [], list(ids or []), [], response_text=text, meta={"id": pid, "answer": answer})


@reward("test_fails_on_bad")
def fails_on_bad(sample, *, fail_on: str = "bad") -> float:
    if sample.prompt_id.startswith(fail_on):
        raise ValueError(f"cannot grade {sample.prompt_id}")
    return 1.0


def test_a_failure_is_marked_on_the_sample_and_scored_zero():
    ts = [traj(f"ok{i}") for i in range(19)] + [traj("bad0")]  # 1 of 20 = 5%, under the default 10%
    metrics = compute_rewards(ts, [RewardSpec("test_fails_on_bad")])
    assert ts[-1].reward_errors == {"test_fails_on_bad": "ValueError: cannot grade bad0"}
    assert ts[-1].rewards["test_fails_on_bad"] == 0.0 and all(not t.reward_errors for t in ts[:-1])
    assert metrics["reward_errors/test_fails_on_bad"] == 1


@reward("test_ratio")
def ratio(sample) -> float:
    """A user's formula with a 0/0 for some samples (NaN), and a per-group one returning an infinity."""
    return float("nan") if sample.prompt_id.startswith("bad") else 1.0


def inf_in_group(group) -> list[float]:
    return [float("inf")] + [1.0] * (len(group) - 1)


inf_in_group.per_group = True


def test_a_nan_or_inf_reward_is_a_reward_error_not_a_value():
    """NaN passed on would make the group's advantages, the loss and then every weight NaN, silently."""
    ts = [traj(f"ok{i}") for i in range(19)] + [traj("bad0")]
    metrics = compute_rewards(ts, [RewardSpec("test_ratio")])
    assert ts[-1].reward_errors == {"test_ratio": "ValueError: returned nan, not a finite number"}
    assert ts[-1].reward == 0.0 and metrics["reward_errors/test_ratio"] == 1
    group = [traj(f"ok{i}") for i in range(3)]
    compute_rewards(group, [RewardSpec(f"{__name__}:inf_in_group", max_error_rate=1.0)])
    assert all(t.reward == 0.0 and "not a finite number" in t.reward_errors[f"{__name__}:inf_in_group"]
               for t in group)


def test_on_error_raise_stops_at_the_first_failure_with_its_sample_id():
    with pytest.raises(RewardError, match="failed on sample bad0: ValueError: cannot grade bad0"):
        compute_rewards([traj("ok"), traj("bad0")], [RewardSpec("test_fails_on_bad", on_error="raise")])


def test_error_rate_over_the_maximum_stops_the_step_with_the_first_error():
    ts = [traj("ok"), traj("bad0"), traj("bad1")]
    with pytest.raises(RewardError, match=r"failed on 2 of 3 samples .*over its max_error_rate 0.5; first failure: "
                                          r"sample bad0: ValueError: cannot grade bad0"):
        compute_rewards(ts, [RewardSpec("test_fails_on_bad", max_error_rate=0.5)])
    # longcot score marks rows instead of stopping
    compute_rewards(ts, [RewardSpec("test_fails_on_bad", max_error_rate=0.5, on_error=-1.0)], enforce=False)
    assert [t.reward for t in ts] == [1.0, -1.0, -1.0] and [bool(t.reward_errors) for t in ts] == [False, True, True]


def test_on_error_in_a_recipe_is_zero_raise_or_a_number():
    assert build(RewardSpec, {"name": "math"}).on_error == "zero"
    assert build(RewardSpec, {"name": "math", "on_error": "raise"}).on_error == "raise"
    assert build(RewardSpec, {"name": "math", "on_error": -1}).on_error == -1.0
    with pytest.raises(ValueError, match="did you mean 'raise'"):
        build(RewardSpec, {"name": "math", "on_error": "rasie"})
    with pytest.raises(ValueError, match="max_error_rate must be in"):
        RewardSpec("math", max_error_rate=2.0)


def test_a_reward_that_cannot_run_here_is_never_scored():
    @reward("test_no_jail")
    def no_jail(sample) -> float:
        return 1.0

    def batch(samples):
        raise RewardSetupError("the sandbox cannot start")

    no_jail.batch = batch
    with pytest.raises(RewardSetupError):
        compute_rewards([traj("a")], [RewardSpec("test_no_jail", max_error_rate=1.0)], enforce=False)


@pytest.mark.parametrize("answer", [None, "", "  "])
def test_math_never_grades_against_a_missing_answer(answer):
    t = traj("p", "\\boxed{None}", answer)
    compute_rewards([t], [RewardSpec("math", max_error_rate=1.0)])
    assert t.rewards["math"] == 0.0
    assert "no gold answer" in t.reward_errors["math"]


def test_repetition_needs_token_ids():
    loop = traj("loop", ids=[5, 6] * 20)
    text = traj("text", "The answer follows from the identity above, so x = 3.")  # no ids
    compute_rewards([loop, text], [RewardSpec("repetition", max_error_rate=1.0)])
    assert loop.rewards["repetition"] < -0.5
    assert "needs token ids" in text.reward_errors["repetition"]


def test_module_function_of_a_registered_reward_keeps_its_registered_name():
    t = traj("p")
    compute_rewards([t], [RewardSpec("tests.rewards.test_reward_errors:fails_on_bad", weight=2.0)])
    assert t.rewards == {"test_fails_on_bad": 1.0} and t.reward == 2.0
    assert REWARDS.name_of(fails_on_bad) == "test_fails_on_bad"
