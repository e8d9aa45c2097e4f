"""Metric functions against closed forms and hand-counted cases."""

from math import comb

import pytest

from longcot.eval.metrics import (
    avg_at_n,
    bootstrap_ci,
    length_stats,
    maj_at_k,
    majority_vote,
    mean_maj_at_k,
    mean_pass_at_k,
    pass_at_k,
    summarize,
)


def test_pass_at_k_known_case():
    assert pass_at_k(5, 2, 2) == pytest.approx(0.7)
    assert pass_at_k(4, 1, 2) == pytest.approx(0.5)


@pytest.mark.parametrize("n", [1, 4, 16, 64])
def test_pass_at_k_matches_binomial_closed_form(n):
    for c in range(n + 1):
        for k in range(1, n + 1):
            want = 1.0 - comb(n - c, k) / comb(n, k)
            assert pass_at_k(n, c, k) == pytest.approx(want, abs=1e-12), (n, c, k)


def test_pass_at_1_is_fraction_correct_and_large_n_is_finite():
    assert pass_at_k(16, 5, 1) == pytest.approx(5 / 16)
    assert pass_at_k(1024, 3, 512) == pytest.approx(1 - comb(1021, 512) / comb(1024, 512))


def test_pass_at_k_rejects_bad_arguments():
    with pytest.raises(ValueError, match="k <= n"):
        pass_at_k(4, 1, 5)
    with pytest.raises(ValueError, match="c <= n"):
        pass_at_k(4, 5, 1)


def test_mean_pass_at_k_and_avg_weigh_problems_equally():
    correct = [[True, False, False, False], [True, True, True, True]]
    assert avg_at_n(correct) == pytest.approx((0.25 + 1.0) / 2)
    assert mean_pass_at_k(correct, 2) == pytest.approx((0.5 + 1.0) / 2)


def test_majority_vote_tie_goes_to_earliest_sample():
    # "3" and "5" both have two votes; "3" appears first (index 0), so it wins.
    assert majority_vote(["3", "5", "5", "3"]) == 0
    assert majority_vote(["5", "3", "3", "5"]) == 0
    assert maj_at_k(["3", "5", "5", "3"], [False, True, True, False], 4) == 0.0
    assert maj_at_k(["5", "3", "3", "5"], [True, False, False, True], 4) == 1.0


def test_majority_vote_ignores_missing_answers_and_whitespace():
    assert majority_vote([None, "", "7"]) == 2
    assert majority_vote([None, None]) is None
    assert maj_at_k([None, None], [False, False], 2) == 0.0
    # "1 / 2" and "1/2" are the same vote: 2 votes beat "3"'s 1 even though "3" is earliest.
    assert majority_vote(["3", "1 / 2", "1/2"]) == 1


def test_maj_at_k_averages_consecutive_blocks():
    answers = ["1", "1", "2", "2", "2", "9"]
    correct = [True, True, False, False, False, False]
    # blocks of 2: ["1","1"] ok, ["2","2"] wrong, ["2","9"] -> tie, "2" earliest, wrong
    assert maj_at_k(answers, correct, 2) == pytest.approx(1 / 3)
    # blocks of 4: ["1","1","2","2"] -> tie, "1" earliest -> correct; leftover 2 samples unused
    assert maj_at_k(answers, correct, 4) == 1.0
    # maj@n: "2" has three votes -> wrong; maj@1 equals the mean correctness
    assert maj_at_k(answers, correct, 6) == 0.0
    assert maj_at_k(answers, correct, 1) == pytest.approx(2 / 6)
    assert mean_maj_at_k([answers, ["4"] * 6], [correct, [True] * 6], 6) == 0.5


def test_bootstrap_ci_brackets_the_mean_and_is_deterministic():
    rates = [0.0, 0.25, 0.5, 1.0, 1.0, 0.0, 0.75, 0.5]
    lo, hi = bootstrap_ci(rates, seed=1)
    assert lo < sum(rates) / len(rates) < hi
    assert (lo, hi) == bootstrap_ci(rates, seed=1)
    assert bootstrap_ci([0.5, 0.5, 0.5]) == (0.5, 0.5)


def test_length_stats():
    s = length_stats([10, 20, 30, 40, 100], ["stop", "stop", "stop", "stop", "length"])
    assert s == {"length/mean": 40.0, "length/p50": 30.0, "length/p90": pytest.approx(76.0), "truncation_rate": 0.2}


def test_summarize_keys_and_values():
    rows = [
        {"id": "a", "sample": i, "extracted": x, "correct": x == "7", "tokens": 10 * (i + 1), "finish": "stop"}
        for i, x in enumerate(["7", "8", "7", "8"])
    ] + [
        {"id": "b", "sample": i, "extracted": None, "correct": False, "tokens": 50, "finish": "length"}
        for i in range(4)
    ]
    out = summarize(rows, ks=[1, 2, 4, 8], gold={"a": "7", "b": "1"})
    m = out["metrics"]
    assert out["n"] == 4
    assert m["avg@4"] == pytest.approx(0.25)
    assert m["pass@1"] == pytest.approx(0.25)
    assert m["pass@2"] == pytest.approx((1 - comb(2, 2) / comb(4, 2)) / 2)
    assert m["pass@4"] == 0.5 and "pass@8" not in m
    assert m["maj@4"] == 0.5  # a: tie 7/8 -> earliest "7" is right; b: no votes
    assert m["maj@2"] == 0.5
    assert m["truncation_rate"] == 0.5 and m["no_answer_rate"] == 0.5
    assert m["length/correct_mean"] == 20.0  # the two right answers of a: 10 and 30 tokens
    assert [p["id"] for p in out["per_problem"]] == ["a", "b"]
    assert out["per_problem"][0]["maj_answer"] == "7" and out["per_problem"][0]["mean_length"] == 25.0
