"""`longcot score` / `longcot rewards list` (acceptance 1: the 10 HumanEval problems of ../shared/data)."""

import json
from pathlib import Path

import pytest

from longcot.rewards.cli import list_main, score_main

HUMANEVAL = Path(__file__).resolve().parents[3] / "shared" / "data" / "humaneval10.jsonl"
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


@pytest.mark.skipif(not HUMANEVAL.exists(), reason="needs ../shared/data/humaneval10.jsonl")
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


def test_score_rejects_unknown_reward_and_option(tmp_path):
    data = tmp_path / "m.jsonl"
    data.write_text('{"id": 1, "response": "x", "answer": 1}\n')
    with pytest.raises(KeyError, match="did you mean 'math'"):
        score_main(["--data", str(data), "--rewards", "mathh", "--out", str(tmp_path / "o")])
    with pytest.raises(KeyError, match="fallback"):
        score_main(["--data", str(data), "--rewards", "math", "--set", "math.fallbak=text", "--out", "o"])


def test_rewards_list_prints_builtins(capsys):
    assert list_main([]) == 0
    out = capsys.readouterr().out
    for name in ("math", "code", "format", "k15_length", "overlong", "cosine_length", "repetition"):
        assert name in out
