"""The synthetic arithmetic task: correct answers, deterministic, held-out disjoint, knobs work."""

from longcot.data.arith import ArithSpec, evaluate_expression, make_split


def test_solver_traces_end_in_the_true_answer():
    train, held = make_split(ArithSpec(max_ops=3, max_operand=20, recheck_prob=0.5), 500, 100, seed=3)
    for row in train + held:
        assert evaluate_expression(row["problem"]) == int(row["answer"])
        assert row["solution"].endswith(f"\\boxed{{{row['answer']}}}")
        assert 1 <= row["difficulty"] <= 3


def test_deterministic_and_disjoint():
    a = make_split(ArithSpec(), 300, 64, seed=0)
    b = make_split(ArithSpec(), 300, 64, seed=0)
    c = make_split(ArithSpec(), 300, 64, seed=1)
    assert a == b and a != c
    train, held = a
    assert not {r["problem"] for r in train} & {r["problem"] for r in held}
    assert len({r["problem"] for r in held}) == 64


def test_recheck_lines_lengthen_traces_and_long_tail_exists():
    plain, _ = make_split(ArithSpec(), 400, 10, seed=0)
    checked, _ = make_split(ArithSpec(recheck_prob=1.0), 400, 10, seed=0)
    mean = lambda rows: sum(len(r["solution"]) for r in rows) / len(rows)
    assert mean(checked) > 1.5 * mean(plain)
    assert all("check" in r["solution"] for r in checked)
    tail, _ = make_split(ArithSpec(long_tail_frac=0.2), 500, 10, seed=0)
    longs = [r for r in tail if r["long"]]
    assert 50 < len(longs) < 150 and all(r["difficulty"] == 12 for r in longs)


def test_imperfect_teacher_slips_but_gold_stays_true():
    train, held = make_split(ArithSpec(max_ops=3, slip_prob=0.3), 600, 50, seed=0)
    wrong = 0
    for row in train + held:
        assert evaluate_expression(row["problem"]) == int(row["answer"])
        boxed = int(row["solution"].rsplit("\\boxed{", 1)[1].rstrip("}"))
        wrong += boxed != int(row["answer"])
    # P(at least one slip) = 1 - 0.7^k over k in 1..3 steps, about 0.5; slips can cancel, rarely
    assert 0.35 < wrong / 650 < 0.65


def test_ops_knob_restricts_operators():
    import pytest

    train, _ = make_split(ArithSpec(min_ops=2, max_ops=4, max_operand=9, ops="+-"), 300, 10, seed=0)
    assert all("*" not in r["problem"] and "(" not in r["problem"] for r in train)
    assert all(2 <= r["difficulty"] <= 4 for r in train)
    with pytest.raises(ValueError, match="subset"):
        make_split(ArithSpec(ops="+/"), 1, 1, seed=0)
