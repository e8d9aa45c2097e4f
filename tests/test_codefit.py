"""The tiny code task: deterministic, disjoint splits; the teacher's clean programs pass their hidden tests through the
real code reward and slipped ones fail; every character fits the tiny tokenizer; rows export as a code dataset."""

import importlib.util
import json
from pathlib import Path

import pytest

from longcot.config import DataConfig
from longcot.data import build_task
from longcot.data.codefit import CodeFitSpec, make_codefit_split, program
from longcot.data.export import main as export_main
from longcot.data.sources import load_rows
from longcot.policies.build import build_tokenizer
from longcot.record import Trajectory
from longcot.rewards.registry import RewardSpec, compute_rewards


def _code_scores(rows: list[dict]) -> list[float]:
    trajs = [Trajectory(prompt_id=r["id"], group_id=r["id"], prompt_ids=[], response_ids=[1], rollout_logprobs=[],
                        finish="stop", response_text=r["solution"], meta={"tests": r["tests"]}) for r in rows]
    compute_rewards(trajs, [RewardSpec("code")])
    return [t.rewards["code"] for t in trajs]


def test_split_is_deterministic_and_disjoint():
    train, held = make_codefit_split(CodeFitSpec(), 300, 50, seed=0)
    assert (train, held) == make_codefit_split(CodeFitSpec(), 300, 50, seed=0)
    assert not {r["problem"] for r in held} & {r["problem"] for r in train}
    row = train[0]
    assert row["problem"].startswith("f(") and row["tests"]["kind"] == "assert" and row["tests"]["entry_point"] == "f"
    assert row["solution"].endswith("    return a*x+b\n```") and "def f(x):\n    a = (" in row["solution"]


def _computes_the_line(row: dict) -> bool:
    """Whether the (trusted, generated) program computes the true line at every test point."""
    scope: dict = {}
    exec(row["solution"].split("```python\n")[1].split("```")[0], scope)  # noqa: S102 - our own generated code
    xs = [-3, 0, 10, int(row["problem"][2:].split(")")[0])]
    return all(scope["f"](x) == row["slope"] * x + row["intercept"] for x in xs)


def test_clean_teacher_programs_pass_hidden_tests_and_slips_fail():
    clean, _ = make_codefit_split(CodeFitSpec(slip_prob=0.0), 40, 0, seed=1)
    assert _code_scores(clean) == [1.0] * 40
    slipped, _ = make_codefit_split(CodeFitSpec(slip_prob=0.5), 200, 0, seed=1)
    scores = _code_scores(slipped)
    for r, s in zip(slipped, scores, strict=True):  # the sandboxed verdict agrees with running the program here
        assert (s == 1.0) == _computes_the_line(r), (r["solution"], s)
    assert 0.2 < sum(scores) / len(scores) < 0.45  # (1 - 0.5)^2 clean, plus slips that floor division hides


def test_every_character_is_in_the_tiny_vocabulary():
    tok = build_tokenizer()
    train, held = make_codefit_split(CodeFitSpec(slip_prob=0.3), 500, 50, seed=0)
    text = "".join(f"Q: {r['problem']}\n{r['solution']}" for r in train + held)
    assert tok.unk_token_id not in tok(text, add_special_tokens=False).input_ids


def test_task_options_are_checked():
    with pytest.raises(KeyError, match="unknown codefit option.*max_slop"):
        build_task(DataConfig(task="codefit", task_options={"max_slop": 3}, num_train=10, num_heldout=5))
    task = build_task(DataConfig(task="codefit", num_train=20, num_heldout=5, task_options={"hidden_points": [-1]}))
    assert task.split["heldout"]["how"] == "synthetic" and len(task.heldout) == 5
    assert all("candidate(-1)" in r["tests"]["test"] for r in task.train)


def test_export_writes_a_code_dataset_the_dataset_task_reads(tmp_path):
    out = tmp_path / "code.jsonl"
    assert export_main(["codefit", str(out), "--n", "30", "--slip-prob", "0.2"]) == 0
    first = json.loads(out.read_text().splitlines()[0])
    assert {"problem", "tests", "solution", "id"} <= set(first)
    rows = load_rows(str(out), require=("prompt", "tests", "solution"))
    assert len(rows) == 30 and rows[0]["tests"] == first["tests"]


def test_the_benchmark_reads_which_numbers_a_program_miscopied(tmp_path):
    """benchmarks/code_task.py's copy-error count (the figures in docs/data.md) on the teacher's own programs: a
    clean copy, a slip in each computing line, and a response not in the program's shape."""
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "code_task.py"
    spec = importlib.util.spec_from_file_location("code_task_benchmark", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    responses = [program(2, 4, -7, 11, -7),  # f(2)=-7, f(4)=11 copied right
                 program(2, 4, -7, 12, -7),  # the slope line miscopies y2
                 program(2, 4, -7, 11, -8),  # the intercept line miscopies y1
                 "```python\ndef f(x):\n    return 9*x-25\n```"]
    stage = tmp_path / "eval" / "after_rl"
    stage.mkdir(parents=True)
    stage.joinpath("samples.jsonl").write_text("".join(json.dumps({"id": "h0", "response": r}) + "\n"
                                                       for r in responses))
    assert bench.copy_errors(tmp_path, "after_rl", {"h0": "f(2)=-7, f(4)=11"}) == {
        "all_numbers_right": 0.25, "slope_line_miscopied": 0.25, "intercept_line_miscopied": 0.25, "other_shape": 0.25}
