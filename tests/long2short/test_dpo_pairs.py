"""DPO pairs are built as docs/long2short.md says: chosen = shortest correct; rejected = correct samples at least
long_ratio x longer and wrong samples longer than the chosen one; cut-off samples never; longest first."""

import pytest

from longcot.long2short.dpo import build_pairs, pair_stats


def rec(i, tokens, correct, finish="stop", pid="p"):
    return {"id": pid, "sample": i, "prompt": "Q: 1+1\n", "response": f"r{i}", "tokens": tokens,
            "correct": correct, "finish": finish}


SAMPLES = [
    rec(0, 10, True),    # chosen: the shortest correct
    rec(1, 14, True),    # correct but 1.4x: not long enough to reject
    rec(2, 15, True),    # correct and exactly 1.5x: rejected candidate
    rec(3, 40, True),    # correct, 4x: rejected candidate (the longest)
    rec(4, 8, False),    # wrong but shorter than the chosen one: only with wrong="any"
    rec(5, 12, False),   # wrong and longer: rejected candidate
    rec(6, 99, False, finish="length"),  # cut off: never used
]


def test_k15_rule_longest_candidates_first():
    pairs = build_pairs(SAMPLES, long_ratio=1.5, wrong="longer", pairs_per_problem=10)
    assert [p["chosen"] for p in pairs] == ["r0"] * 3
    assert [p["rejected"] for p in pairs] == ["r3", "r2", "r5"]
    assert [p["rejected_correct"] for p in pairs] == [True, True, False]
    assert build_pairs(SAMPLES, pairs_per_problem=1)[0]["rejected"] == "r3"


@pytest.mark.parametrize("wrong, expected", [("any", ["r3", "r2", "r5", "r4"]), ("none", ["r3", "r2"])])
def test_wrong_option(wrong, expected):
    assert [p["rejected"] for p in build_pairs(SAMPLES, wrong=wrong, pairs_per_problem=10)] == expected


def test_long_ratio_option():
    assert [p["rejected"] for p in build_pairs(SAMPLES, long_ratio=1.3, wrong="none", pairs_per_problem=10)] == \
        ["r3", "r2", "r1"]


def test_a_repeated_text_is_one_candidate():
    repeats = [rec(0, 10, True), {**rec(1, 30, True), "response": "same"}, {**rec(2, 30, True), "response": "same"},
               rec(3, 20, True)]
    assert [p["rejected"] for p in build_pairs(repeats, pairs_per_problem=5)] == ["same", "r3"]


def test_problems_without_a_correct_sample_or_a_candidate_give_no_pair():
    no_correct = [rec(0, 5, False, pid="a"), rec(1, 9, False, pid="a")]
    no_candidate = [rec(0, 10, True, pid="b"), rec(1, 11, True, pid="b"), rec(2, 4, False, pid="b")]
    assert build_pairs(no_correct + no_candidate) == []


def test_pair_stats():
    s = pair_stats(build_pairs(SAMPLES, pairs_per_problem=10))
    assert s == {"pairs": 3, "problems": 1, "rejected_correct_frac": 2 / 3, "chosen_tokens_mean": 10.0,
                 "rejected_tokens_mean": (40 + 15 + 12) / 3}
