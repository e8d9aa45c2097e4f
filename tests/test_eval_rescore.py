"""Re-score mode: a hand-made responses file graded by the real math grader gives exactly the expected metrics."""

import json
from math import comb

import pytest

from longcot.eval.cli import main

GOLD = [{"id": "p1", "problem": "x", "answer": "25"}, {"id": "p2", "problem": "y", "answer": "204"},
        {"id": "p3", "problem": "z", "answer": "1"}]
# (id, response, tokens, finish); interleaved ids on purpose: samples are grouped by id in file order.
RESPONSES = [
    ("p1", "So the answer is $\\boxed{25}$.", 10, "stop"),
    ("p2", "We get \\boxed{204}", 20, "stop"),
    ("p1", "Thus \\boxed{25}", 30, "stop"),
    ("p3", "\\boxed{3}", 40, "stop"),
    ("p1", "Hence \\boxed{24}.", 50, "stop"),
    ("p1", "I could not finish the", 60, "length"),
    ("p2", "\\boxed{200}", 70, "stop"),
    ("p2", "\\boxed{200}", 80, "stop"),
    ("p2", "\\boxed{204}", 90, "stop"),
    ("p3", "\\boxed{3}", 100, "stop"),
    ("p3", "\\boxed{7}", 110, "stop"),
    ("p3", "\\boxed{3}", 120, "stop"),
]


def _write(tmp_path):
    data, resp = tmp_path / "gold.jsonl", tmp_path / "responses.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in GOLD))
    resp.write_text("".join(json.dumps({"id": i, "response": r, "tokens": t, "finish": f}) + "\n"
                            for i, r, t, f in RESPONSES))
    return data, resp


def test_rescore_hand_made_file_gives_exact_metrics(tmp_path):
    data, resp = _write(tmp_path)
    out = tmp_path / "out"
    assert main(["--responses", str(resp), "--dataset", str(data), "--k", "1,2,4", "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    m = summary["metrics"]
    assert summary["n"] == 4
    # correct: p1 2/4, p2 2/4, p3 0/4
    assert m["avg@4"] == pytest.approx(1 / 3)
    assert m["pass@1"] == pytest.approx(1 / 3)
    assert m["pass@2"] == pytest.approx((2 * (1 - comb(2, 2) / comb(4, 2))) / 3)  # 5/9
    assert m["pass@4"] == pytest.approx(2 / 3)
    # maj@4: p1 "25" (2 votes, the missing answer does not vote), p2 tie 204/200 -> earliest "204", p3 "3"
    assert m["maj@4"] == pytest.approx(2 / 3)
    # maj@2 blocks: p1 [25,25] ok, [24,-] wrong; p2 [204,200] -> 204 ok, [200,204] -> 200 wrong; p3 wrong
    assert m["maj@2"] == pytest.approx(1 / 3)
    assert m["maj@1"] == pytest.approx(1 / 3)
    assert m["truncation_rate"] == pytest.approx(1 / 12)
    assert m["length/mean"] == pytest.approx(65.0)
    assert m["no_answer_rate"] == pytest.approx(1 / 12)
    per = {p["id"]: p for p in summary["per_problem"]}
    assert [per[i]["num_correct"] for i in ("p1", "p2", "p3")] == [2, 2, 0]
    assert per["p2"]["maj_answer"] == "204" and per["p3"]["maj_answer"] == "3"
    assert per["p1"]["mean_length"] == pytest.approx(37.5)

    samples = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert len(samples) == 12
    assert set(samples[0]) == {"id", "sample", "response", "extracted", "correct", "tokens", "finish"}
    p1 = [s for s in samples if s["id"] == "p1"]
    assert [s["sample"] for s in p1] == [0, 1, 2, 3]
    assert [s["correct"] for s in p1] == [True, True, False, False]
    assert p1[3]["extracted"] is None
    report = (out / "report.md").read_text()
    assert "| pass@2 | 0.5556 |" in report and "| p2 | 0.500 | 2 / 4 |" in report
    assert (out / "pass_rate_vs_length.png").stat().st_size > 1000


def test_rescore_rejects_unknown_and_missing_ids(tmp_path, capsys):
    data, resp = _write(tmp_path)
    bad = tmp_path / "bad.jsonl"
    bad.write_text(resp.read_text() + json.dumps({"id": "nope", "response": "\\boxed{1}"}) + "\n")
    assert main(["--responses", str(bad), "--dataset", str(data), "--out", str(tmp_path / "o1")]) == 2
    assert "1 response ids are not in the dataset, e.g. ['nope']" in capsys.readouterr().err
    partial = tmp_path / "partial.jsonl"
    partial.write_text("".join(line + "\n" for line in resp.read_text().splitlines() if '"p3"' not in line))
    assert main(["--responses", str(partial), "--dataset", str(data), "--out", str(tmp_path / "o2")]) == 2
    assert "1 dataset problems have no responses, e.g. ['p3']" in capsys.readouterr().err
    assert main(["--responses", str(partial), "--dataset", str(data), "--k", "1,4", "--allow-missing",
                 "--out", str(tmp_path / "o3")]) == 0
    m = json.loads((tmp_path / "o3" / "summary.json").read_text())["metrics"]
    assert m["avg@4"] == pytest.approx(0.5) and m["missing_problems"] == 1


def test_rescore_never_overwrites_its_input(tmp_path, capsys):
    data, resp = _write(tmp_path)
    samples = tmp_path / "samples.jsonl"  # a longcot eval output, re-scored into its own directory
    samples.write_text(resp.read_text())
    assert main(["--responses", str(samples), "--dataset", str(data), "--out", str(tmp_path)]) == 2
    assert "would overwrite its input" in capsys.readouterr().err
    assert samples.read_text() == resp.read_text()


def test_length_axis_says_characters_when_characters_were_counted(tmp_path, monkeypatch):
    import matplotlib.axes

    labels = []
    monkeypatch.setattr(matplotlib.axes.Axes, "set_xlabel", lambda self, text, *a, **k: labels.append(text))
    data, resp = _write(tmp_path)
    chars = tmp_path / "chars.jsonl"  # no "tokens" field and no --tokenizer: lengths are characters
    chars.write_text("".join(json.dumps({"id": i, "response": r}) + "\n" for i, r, _, _ in RESPONSES))
    assert main(["--responses", str(chars), "--dataset", str(data), "--out", str(tmp_path / "c")]) == 0
    assert main(["--responses", str(resp), "--dataset", str(data), "--out", str(tmp_path / "t")]) == 0
    assert labels == ["mean response length (chars)", "mean response length (tokens)"]
    assert "mean length (chars)" in (tmp_path / "c" / "report.md").read_text()
    assert json.loads((tmp_path / "c" / "summary.json").read_text())["config"]["length_unit"] == "chars"


def test_a_problem_without_gold_answer_is_an_error_or_a_counted_skip(tmp_path, capsys):
    from longcot.eval.config import DatasetConfig
    from longcot.eval.dataset import load_problems_counted

    data = tmp_path / "gold.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in [*GOLD, {"id": "p4", "problem": "w"}]))
    (tmp_path / "x").mkdir()
    _, resp = _write(tmp_path / "x")
    assert main(["--responses", str(resp), "--dataset", str(data), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "row 3 (id 'p4') has no gold answer (answer = None)" in err and "dataset.skip_missing_answers" in err
    rows, skipped = load_problems_counted(DatasetConfig(source=str(data), skip_missing_answers=True))
    assert [r["id"] for r in rows] == ["p1", "p2", "p3"] and skipped == ["p4"]
    # re-scoring generations that include the skipped problem: its responses are dropped and counted
    with resp.open("a") as f:
        f.write(json.dumps({"id": "p4", "response": "\\boxed{1}", "tokens": 5}) + "\n")
    out = tmp_path / "skip"
    assert main(["--responses", str(resp), "--dataset", str(data), "--out", str(out),
                 "dataset.skip_missing_answers=true"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n"] == 4 and summary["metrics"]["skipped_responses"] == 1
    assert summary["metrics"]["avg@4"] == pytest.approx(1 / 3)  # p1 2/4, p2 2/4, p3 0/4, as without p4


def picky(sample) -> float:
    """A grader that cannot grade some responses (for the per-row error marks)."""
    if "boom" in sample.response_text:
        raise ValueError("cannot parse boom")
    return float(sample.response_text.strip() == sample.meta["answer"])


def test_a_grading_failure_is_marked_in_its_row(tmp_path):
    data, _ = _write(tmp_path)
    resp = tmp_path / "r.jsonl"
    resp.write_text("".join(json.dumps({"id": i, "response": r}) + "\n"
                            for i, r in [("p1", "25"), ("p2", "boom"), ("p3", "1")]))
    out = tmp_path / "o"
    assert main(["--responses", str(resp), "--dataset", str(data), "--k", "1", "--grader",
                 "tests.test_eval_rescore:picky", "--out", str(out)]) == 0
    rows = [json.loads(x) for x in (out / "samples.jsonl").read_text().splitlines()]
    assert [r.get("reward_error") for r in rows] == [None, "ValueError: cannot parse boom", None]
    assert [r["correct"] for r in rows] == [True, False, True]
    assert json.loads((out / "summary.json").read_text())["metrics"]["grade_errors"] == 1
