"""The math reward: final-answer extraction, equivalence, truncation, malformed input, hard time limit."""

import pytest

from longcot.record import Trajectory
from longcot.rewards import REWARDS, RewardSpec, compute_rewards
from longcot.rewards.math import extract_answer, math_batch


def traj(text: str, answer, finish: str = "stop", pid: str = "p") -> Trajectory:
    return Trajectory(prompt_id=pid, group_id="g", prompt_ids=[], response_ids=[0] * 8, rollout_logprobs=[],
                      finish=finish, response_text=text, meta={"answer": answer})


def score(text: str, answer, finish: str = "stop", **opts) -> float:
    return REWARDS.get("math")(traj(text, answer, finish), **opts)


@pytest.mark.parametrize("text, gold", [
    ("<think>3+4=7, 7*2=14</think>\nSo the result is \\boxed{14}.", "14"),
    ("\\boxed{14}", 14),                                  # gold as a number
    ("The answer: \\boxed{004}", "4"),                    # leading zeros
    ("\\boxed{\\frac{1}{2}}", "0.5"),                     # LaTeX vs decimal
    ("\\boxed{\\dfrac12}", "$\\frac{1}{2}$"),             # gold as LaTeX
    ("\\boxed{2\\sqrt{2}}", "sqrt(8)"),                   # gold as an expression
    ("\\boxed{\\{1,2\\}}", "\\{2,1\\}"),                  # sets
    ("reasoning ...\nAnswer: 42", "42"),                  # "Answer:" form
    ("first \\boxed{3}, then corrected: \\boxed{5}", "5"),  # last box wins
])
def test_right_answers_score_one(text, gold):
    assert score(text, gold) == 1.0


@pytest.mark.parametrize("text, gold", [
    ("\\boxed{15}", "14"),
    ("<think>so it is \\boxed{14}</think> final: \\boxed{13}", "14"),  # only the part after </think> counts
    ("<think>the answer is \\boxed{14}", "14"),          # never finished thinking: no answer
    ("\\boxed{\\frac{1}{3}}", "0.5"),
    ("I think 14 is right", "14"),                       # no boxed, no Answer: -> strict default gives 0
    ("\\boxed{14", "14"),                                # unbalanced brace: malformed
    ("", "14"),
    ("\\boxed{}", "14"),
    ("\\boxed{AZYUK14}", "14"),
])
def test_wrong_or_malformed_answers_score_zero(text, gold):
    assert score(text, gold) == 0.0


def test_truncated_response_earns_nothing_by_default():
    assert score("\\boxed{14}", "14", finish="length") == 0.0
    assert score("\\boxed{14}", "14", finish="length", truncated_score=-1.0) == -1.0
    assert score("\\boxed{14}", "14", finish="stop") == 1.0


def test_fallback_text_and_answer_prefix_options():
    assert score("so it is 14", "14", fallback="text") == 1.0
    assert score("Answer: 14", "14", answer_prefix=None) == 0.0
    assert extract_answer("a \\boxed{x^{2}} b") == "x^{2}"
    assert extract_answer("<think>\\boxed{1}") is None


def test_pathological_input_is_killed_at_the_time_limit():
    evil = "\\boxed{" + "9^" * 40 + "9}"  # a power tower: sympy would run for ever
    out = math_batch([traj(evil, "2"), traj("\\boxed{2}", "2")], timeout_s=2.0)
    assert out[1] == 1.0  # the batch came back: the stuck grade did not hold the others
    assert out[0] == 0.0 or isinstance(out[0], TimeoutError), out[0]


def test_compute_rewards_counts_a_missing_gold_as_an_error():
    t_ok, t_bad = traj("\\boxed{1}", "1"), traj("\\boxed{1}", None, pid="bad")
    del t_bad.meta["answer"]
    metrics = compute_rewards([t_ok, t_bad], [RewardSpec("math", on_error=-0.5, max_error_rate=1.0)])
    assert (t_ok.reward, t_bad.reward) == (1.0, -0.5)
    assert metrics["reward_errors/math"] == 1


def test_side_by_side_boxes_are_one_answer():
    assert extract_answer("x = \\boxed{2} and \\boxed{3}") == "2, 3"
    assert score("roots: \\boxed{2} and \\boxed{3}", "\\{3, 2\\}") == 1.0
    assert score("roots: \\boxed{2} and \\boxed{3}", "3") == 0.0  # hedging does not pay


def test_math_pairs_agreement_with_text_fallback():
    """Acceptance 3: >= 90% agreement on the "math" rows of math_pairs.jsonl (copied into tests/data)."""
    import json
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "data" / "math_pairs.jsonl"
    rows = [r for r in map(json.loads, path.read_text().splitlines()) if r["label_kind"] == "math"]
    out = math_batch([traj(r["pred"], r["gold"]) for r in rows], fallback="text", timeout_s=120)  # busy host
    agree = sum((v == 1.0) == r["equal"] for v, r in zip(out, rows, strict=True))
    assert len(rows) == 68 and agree == 67, agree  # docs/rewards.md: the one disagreement is a 2-decimal rounding
