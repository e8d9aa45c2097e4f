"""`longcot score` / `longcot rewards list` (acceptance 1: the 10 HumanEval problems, tests/data/humaneval10.jsonl)."""

import json
from pathlib import Path

import pytest

from longcot.rewards.cli import list_main, score_main

HUMANEVAL = Path(__file__).resolve().parents[1] / "data" / "humaneval10.jsonl"
BREAK = {  # task -> (canonical text, broken text): one small, realistic bug per problem
    "HumanEval/0": ("if idx != idx2:", "if idx == idx2:"),
    "HumanEval/1": ("current_depth == 0", "current_depth == 1"),
    "HumanEval/2": ("number % 1.0", "number // 1.0"),
    "HumanEval/3": ("balance < 0", "balance <= 0"),
    "HumanEval/4": ("sum(abs(x - mean)", "sum((x - mean)"),
    "HumanEval/5": ("numbers[:-1]", "numbers[1:]"),
    "HumanEval/6": ("max(depth, max_depth)", "min(depth, max_depth)"),
    "HumanEval/7": ("substring in x", "substring not in x"),
    "HumanEval/8": ("prod_value = 1", "prod_value = 0"),
    "HumanEval/9": ("max(running_max, n)", "min(running_max, n)"),
}


def humaneval_rows() -> list[dict]:
    rows = []
    for line in HUMANEVAL.read_text().splitlines():
        p = json.loads(line)
        tests = {"kind": "assert", "prompt": p["prompt"], "test": p["test"], "entry_point": p["entry_point"]}
        old, new = BREAK[p["task_id"]]
        assert old in p["canonical_solution"]
        rows.append({"id": p["task_id"], "response": p["canonical_solution"], "tests": tests})
        rows.append({"id": p["task_id"] + "/broken", "response": p["canonical_solution"].replace(old, new),
                     "tests": tests})
    return rows


def test_humaneval_canonical_one_broken_zero(tmp_path):
    data, out = tmp_path / "he.jsonl", tmp_path / "scored.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in humaneval_rows()))
    assert score_main(["--data", str(data), "--rewards", "code", "--out", str(out)]) == 0
    scored = {r["id"]: r for r in map(json.loads, out.read_text().splitlines())}
    assert len(scored) == 20
    for task in BREAK:
        assert scored[task]["reward"] == scored[task]["code"] == 1.0, task
        assert scored[task + "/broken"]["reward"] == 0.0, task


def test_score_math_with_components_weights_and_options(tmp_path, capsys):
    rows = [{"id": 1, "response": "<think>2+2</think> \\boxed{4}", "answer": "4"},
            {"id": 2, "response": "so 5", "answer": 5},
            {"id": 3, "response": "\\boxed{4}", "answer": 4, "finish": "length"}]
    data, out = tmp_path / "m.jsonl", tmp_path / "o.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    argv = ["--data", str(data), "--rewards", "math,format", "--out", str(out), "--set", "math.fallback=text",
            "--weight", "format=0.1"]
    assert score_main(argv) == 0
    got = [json.loads(x) for x in out.read_text().splitlines()]
    assert [g["id"] for g in got] == [1, 2, 3]
    assert [g["math"] for g in got] == [1.0, 1.0, 0.0]
    assert [g["format"] for g in got] == [1.0, 0.0, 0.0]
    assert got[0]["reward"] == pytest.approx(1.1)
    assert '"rows": 3' in capsys.readouterr().out


def test_score_rejects_unknown_reward_and_option_before_grading(tmp_path, capsys):
    data, out = tmp_path / "m.jsonl", tmp_path / "o.jsonl"
    data.write_text('{"id": 1, "response": "x", "answer": 1}\n')
    assert score_main(["--data", str(data), "--rewards", "mathh", "--out", str(out)]) == 2
    assert "'--rewards': unknown reward 'mathh' (did you mean 'math'?)" in capsys.readouterr().err
    assert score_main(["--data", str(data), "--rewards", "math", "--set", "math.fallbak=text", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "'--set math.*': reward 'math': unknown option 'fallbak' (did you mean 'fallback'?)" in err
    assert not out.exists()


def test_rewards_list_prints_builtins(capsys):
    assert list_main([]) == 0
    out = capsys.readouterr().out
    for name in ("math", "code", "format", "k15_length", "overlong", "cosine_length", "repetition"):
        assert name in out


def _rows(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_score_refuses_to_overwrite_its_input(tmp_path, capsys):
    data = _rows(tmp_path / "m.jsonl", [{"id": 1, "response": "\\boxed{1}", "answer": 1}])
    before = data.read_text()
    for out in (data, tmp_path / "." / "m.jsonl"):
        assert score_main(["--data", str(data), "--rewards", "math", "--out", str(out)]) == 2
        assert "is the input file (--data): refusing to overwrite it" in capsys.readouterr().err
    assert data.read_text() == before


def test_score_marks_reward_errors_in_each_row(tmp_path, capsys):
    data = _rows(tmp_path / "m.jsonl", [{"id": 1, "response": "\\boxed{1}", "answer": 1},
                                        {"id": 2, "response": "\\boxed{1}"},  # no gold answer
                                        {"id": 3, "response": "\\boxed{None}", "answer": None}])
    out = tmp_path / "o.jsonl"
    assert score_main(["--data", str(data), "--rewards", "math", "--out", str(out)]) == 0
    got = [json.loads(x) for x in out.read_text().splitlines()]
    assert "reward_error" not in got[0] and got[0]["math"] == 1.0
    for row in got[1:]:
        assert row["math"] == 0.0 and "no gold answer" in row["reward_error"]["math"]
    captured = capsys.readouterr()
    assert '"rows_with_reward_error": 2' in captured.out and "2 of 3 rows had a reward error" in captured.err


def test_repetition_without_token_ids_is_refused_or_tokenised(tmp_path, capsys):
    from longcot.policies.build import build_tokenizer

    text = "We add the two numbers: 2 + 3 = 5, and check it once more before answering."
    data, out = _rows(tmp_path / "r.jsonl", [{"id": 1, "response": text}]), tmp_path / "o.jsonl"
    assert score_main(["--data", str(data), "--rewards", "repetition", "--out", str(out)]) == 2
    assert "repetition counts token n-grams, but the rows have no response_ids: pass --tokenizer" in \
        capsys.readouterr().err
    build_tokenizer().save_pretrained(tmp_path / "tok")
    assert score_main(["--data", str(data), "--rewards", "repetition", "--tokenizer", str(tmp_path / "tok"),
                       "--out", str(out)]) == 0
    assert json.loads(out.read_text())["repetition"] == 0.0  # ordinary text is not a loop


def test_score_custom_reward_from_a_file_in_the_cwd(tmp_path, monkeypatch):
    (tmp_path / "score_rewards_mod.py").write_text(
        "from longcot.rewards import reward\n\n@reward('test_short_answer')\n"
        "def short(sample, *, limit: int = 10):\n    return float(len(sample.response_text) <= limit)\n")
    _rows(tmp_path / "d.jsonl", [{"id": 1, "response": "42"}, {"id": 2, "response": "x" * 50}])
    monkeypatch.chdir(tmp_path)
    assert score_main(["--data", "d.jsonl", "--rewards", "score_rewards_mod:short",
                       "--set", "score_rewards_mod:short.limit=5", "--out", "o1.jsonl"]) == 0
    got = [json.loads(x) for x in (tmp_path / "o1.jsonl").read_text().splitlines()]
    assert [(g["test_short_answer"], g["reward"]) for g in got] == [(1.0, 1.0), (0.0, 0.0)]  # the registered name
    assert score_main(["--data", "d.jsonl", "--reward-module", "score_rewards_mod.py", "--rewards", "test_short_answer",
                       "--out", "o2.jsonl"]) == 0
    assert (tmp_path / "o2.jsonl").read_text() == (tmp_path / "o1.jsonl").read_text()
