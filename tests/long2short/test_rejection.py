"""Shortest rejection sampling keeps the shortest correct sample of each problem and drops problems with none."""

from longcot.long2short.rejection import rejection_stats, sft_pairs, shortest_correct


def rec(pid, i, tokens, correct, finish="stop"):
    return {"id": pid, "sample": i, "prompt": f"Q: {pid}\n", "response": f"{pid}-{i}", "tokens": tokens,
            "correct": correct, "finish": finish}


RECORDS = [
    # p1: the shortest sample (5 tokens) is wrong; the shortest correct is sample 2 (9 tokens)
    rec("p1", 0, 20, True), rec("p1", 1, 5, False), rec("p1", 2, 9, True), rec("p1", 3, 30, True),
    # p2: no correct sample (one cut off at the budget): dropped
    rec("p2", 0, 12, False), rec("p2", 1, 64, False, finish="length"),
    # p3: two correct samples of equal length: the lower sample index wins, whatever the record order
    rec("p3", 1, 7, True), rec("p3", 0, 7, True), rec("p3", 2, 15, True),
]


def test_keeps_the_shortest_correct_sample_per_problem_and_drops_problems_without_one():
    kept = shortest_correct(RECORDS)
    assert [(r["id"], r["sample"]) for r in kept] == [("p1", 2), ("p3", 0)]
    assert sft_pairs(kept) == [("Q: p1\n", "p1-2"), ("Q: p3\n", "p3-0")]


def test_stats_count_what_was_kept_and_dropped():
    kept = shortest_correct(RECORDS)
    s = rejection_stats(RECORDS, kept)
    assert (s["problems"], s["kept"], s["dropped_no_correct"]) == (3, 2, 1)
    assert s["kept_tokens_mean"] == 8.0  # (9 + 7) / 2
    assert s["correct_tokens_mean"] == (20 + 9 + 30 + 7 + 7 + 15) / 6


def test_nothing_correct_keeps_nothing():
    assert shortest_correct([rec("p", 0, 3, False)]) == []
