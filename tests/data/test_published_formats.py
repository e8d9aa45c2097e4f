"""Acceptance (issue 18, point 1): five-row samples of published RL datasets, as published, through the column
mapping, rendered with a Qwen-style chat template with and without thinking, and their gold graded by the rewards.

The samples (tests/data/datasets, README there) follow the hub schemas of DAPO-Math-17k, DeepScaleR, OpenR1-Math
and DeepCoder; the rows are our own."""

from pathlib import Path

import pytest

from longcot.data import Task
from longcot.data.sft_data import sft_pairs
from longcot.data.sources import load_rows
from longcot.data.templates import PromptFormat
from longcot.policies.build import build_tokenizer
from longcot.record import Trajectory
from longcot.rewards.registry import RewardSpec, compute_rewards

DATA = Path(__file__).resolve().parent / "datasets"
DAPO_COLUMNS = {"prompt": "prompt", "answer": "reward_model.ground_truth", "id": "extra_info.index"}
SYSTEM = "You are a careful mathematician."
# gold programs for tests/data/datasets/deepcoder.jsonl, in row order
CODE_GOLD = [
    "n = int(input())\nprint(n * n)",
    "print(sum(map(int, input().split())))",
    "print(input()[::-1])",
    "a, b = map(int, input().split())\nprint(max(a, b))",
    "for i in range(1, int(input()) + 1):\n    print(i)",
]


@pytest.fixture(scope="module")
def tok():
    return build_tokenizer(chat_template=True)


def _traj(row: dict, response: str) -> Trajectory:
    meta = {k: v for k, v in row.items() if k in ("answer", "tests", "id")}
    return Trajectory(prompt_id=row["id"], group_id=row["id"], prompt_ids=[], response_ids=[1] * 8,
                      rollout_logprobs=[], finish="stop", response_text=response, meta=meta)


def _scores(rows: list[dict], responses: list[str], reward: str) -> list[float]:
    trajs = [_traj(r, text) for r, text in zip(rows, responses, strict=True)]
    compute_rewards(trajs, [RewardSpec(reward)])
    return [t.rewards[reward] for t in trajs]


@pytest.mark.parametrize("thinking", [True, False])
def test_dapo_math_17k_message_prompts_render_with_system_prompt_and_thinking_switch(tok, thinking):
    rows = load_rows(str(DATA / "dapo_math_17k.jsonl"), columns=DAPO_COLUMNS, require=("prompt", "answer"))
    assert [r["answer"] for r in rows] == ["7", "25", "24", "8", "2"]
    task = Task(rows, [], PromptFormat("chat", SYSTEM, chat_kwargs={"enable_thinking": thinking}))
    p = task.prompt(rows[0], tok)
    question = rows[0]["prompt"][0]["content"]
    assert p.prompt_text.startswith(f"<|im_start|>system\n{SYSTEM}<|im_end|>\n<|im_start|>user\n{question}<|im_end|>\n")
    tail = "<|im_start|>assistant\n" + ("" if thinking else "<think>\n\n</think>\n\n")
    assert p.prompt_text.endswith(tail) and p.prompt_id == "2f1c8a1e-0b0e-4c1a-9d6e-1a2b3c4d5e01"
    assert tok.unk_token_id not in p.prompt_ids and p.meta["answer"] == "7" and "prompt" not in p.meta


def test_dapo_gold_graded_by_the_math_reward_in_the_format_its_prompt_asks_for():
    rows = load_rows(str(DATA / "dapo_math_17k.jsonl"), columns=DAPO_COLUMNS)
    golds = [r["answer"] for r in rows]
    answer_line = [f"<think>\nwork\n</think>\n\nSteps...\nAnswer: {g}" for g in golds]  # DAPO's requested format
    boxed = [f"The answer is \\boxed{{{g}}}." for g in golds]
    wrong = [f"Answer: {int(g) + 1}" for g in golds]
    unfinished = [f"<think>\nAnswer: {g}" for g in golds]  # still thinking: no answer section
    assert _scores(rows, answer_line, "math") == [1.0] * 5
    assert _scores(rows, boxed, "math") == [1.0] * 5
    assert _scores(rows, wrong, "math") == [0.0] * 5
    assert _scores(rows, unfinished, "math") == [0.0] * 5


@pytest.mark.parametrize("name", ["deepscaler.jsonl", "openr1_math.jsonl"])
def test_flat_problem_answer_sets_render_and_their_latex_gold_grades(tok, name):
    rows = load_rows(str(DATA / name), require=("prompt", "answer"))
    fmt = PromptFormat("chat", user_template="{problem}\nPut the final answer in \\boxed{{}}.",
                       chat_kwargs={"enable_thinking": False})
    text = Task(rows, [], fmt).prompt(rows[0], tok).prompt_text
    assert f"<|im_start|>user\n{rows[0]['problem']}\nPut the final answer in \\boxed{{}}.<|im_end|>" in text
    assert text.endswith("<think>\n\n</think>\n\n")
    golds = [r["answer"] for r in rows]
    assert _scores(rows, [f"<think>x</think>\n\\boxed{{{g}}}" for g in golds], "math") == [1.0] * 5
    assert _scores(rows, ["\\boxed{\\frac{7}{9}}"] * 5, "math") == [0.0] * 5


def test_sft_pairs_from_solutions_and_from_message_conversations(tok):
    deepscaler = load_rows(str(DATA / "deepscaler.jsonl"))
    fmt = PromptFormat("chat", SYSTEM)
    pairs = sft_pairs(deepscaler, Task(deepscaler, [], fmt), tok)
    assert pairs[1][1] == "Subtract 7: $3x = 15$, so $x = \\boxed{5}$."
    assert pairs[1][0].startswith(f"<|im_start|>system\n{SYSTEM}") and pairs[1][0].endswith("<|im_start|>assistant\n")
    r1 = [{k: v for k, v in r.items() if k != "solution"}
          for r in load_rows(str(DATA / "openr1_math.jsonl"), columns={"messages": "messages"})]
    prompt, completion = sft_pairs(r1, Task(r1, [], fmt), tok)[0]
    assert completion.startswith("<think>\n") and completion.endswith("\\boxed{47}$.")
    assert prompt == tok.apply_chat_template([{"role": "system", "content": SYSTEM},
                                              {"role": "user", "content": r1[0]["problem"]}],
                                             tokenize=False, add_generation_prompt=True)


def test_deepcoder_tests_as_published_grade_gold_programs_with_the_code_reward(tok):
    rows = load_rows(str(DATA / "deepcoder.jsonl"), require=("prompt", "tests"))
    assert [r["tests"]["kind"] for r in rows] == ["io"] * 5 and len(rows[3]["tests"]["cases"]) == 3
    text = Task(rows, [], PromptFormat("chat")).prompt(rows[0], tok).prompt_text
    assert "Read an integer n and print n squared." in text
    fenced = [f"<think>\nplan\n</think>\n```python\n{code}\n```" for code in CODE_GOLD]
    assert _scores(rows, fenced, "code") == [1.0] * 5
    off_by_one = ["```python\nprint(int(input()) + 1)\n```"] * 5
    assert _scores(rows, off_by_one, "code") == [0.0] * 5
