"""Held-out rows of a dataset come from their own source/split or a seeded random fraction, never the file's head;
SFT data errors come before any work."""

import json
from pathlib import Path

import pytest

from longcot.config import DataConfig, EvalConfig, load_recipe
from longcot.data import build_task, needed_fields
from longcot.data.sft_data import SFTDataError, sft_rows

DATA = Path(__file__).resolve().parent / "datasets"


def _jsonl(path: Path, n: int) -> str:
    path.write_text("".join(json.dumps({"problem": f"{i}+1=?", "answer": str(i + 1)}) + "\n" for i in range(n)))
    return str(path)


def test_fraction_is_a_seeded_random_sample_not_the_head(tmp_path):
    src = _jsonl(tmp_path / "p.jsonl", 50)
    cfg = DataConfig(task="dataset", source=src, num_heldout=256, seed=3)
    task = build_task(cfg, EvalConfig(fraction=0.2))
    ids = [r["id"] for r in task.heldout]
    assert len(ids) == 10 and ids != [str(i) for i in range(10)]
    assert set(ids).isdisjoint(r["id"] for r in task.train) and len(task.train) == 40
    assert build_task(cfg, EvalConfig(fraction=0.2)).heldout == task.heldout  # same seed, same rows
    other = build_task(DataConfig(task="dataset", source=src, seed=4), EvalConfig(fraction=0.2))
    assert [r["id"] for r in other.heldout] != ids
    info = task.split["heldout"]
    assert info["how"] == "fraction" and info["seed"] == 3 and info["ids"] == ids and info["overlap_with_train"] == 0
    assert task.split["train"]["rows"] == 40


def test_eval_source_is_its_own_file_and_overlap_is_reported(tmp_path, caplog):
    src = _jsonl(tmp_path / "train.jsonl", 20)
    cfg = DataConfig(task="dataset", source=src)
    task = build_task(cfg, EvalConfig(source=str(DATA / "aime_2024.jsonl")), ("prompt", "answer"))
    assert len(task.train) == 20 and [r["id"] for r in task.heldout] == ["60", "61", "62", "63", "64"]
    assert task.split["heldout"]["how"] == "eval.source"
    dup = _jsonl(tmp_path / "dup.jsonl", 3)  # the first three training problems again
    task = build_task(cfg, EvalConfig(source=dup))
    assert task.split["heldout"]["overlap_with_train"] == 3 and "3 of 3 held-out problems also appear" in caplog.text


def test_eval_split_equal_to_the_training_split_is_refused(tmp_path):
    src = _jsonl(tmp_path / "p.jsonl", 20)
    with pytest.raises(ValueError, match="held-out rows would be training rows"):
        build_task(DataConfig(task="dataset", source=src), EvalConfig(source=src))
    with pytest.raises(ValueError, match="eval.source / eval.split need data.task=dataset"):
        build_task(DataConfig(task="arith"), EvalConfig(split="test"))


def test_needed_fields_follow_the_rewards_and_the_grader(tmp_path):
    assert needed_fields([], "math") == ("prompt", "answer")
    assert needed_fields([], "code") == ("prompt", "tests")
    src = _jsonl(tmp_path / "p.jsonl", 20)
    with pytest.raises(KeyError, match="no 'tests' field: map it with data.columns.tests=<column path>"):
        build_task(DataConfig(task="dataset", source=src), EvalConfig(), needed_fields([], "code"))


def test_sft_without_a_completion_column_fails_before_work_and_says_what_to_map(tmp_path):
    src = _jsonl(tmp_path / "p.jsonl", 20)
    recipe = load_recipe(None, ["data.task=dataset", f"data.source={src}"])
    task = build_task(recipe.data, recipe.eval)
    with pytest.raises(SFTDataError) as e:
        sft_rows(recipe, task)
    msg = str(e.value)
    assert "SFT is on (sft.enabled)" in msg and "sft.columns.solution=<path>" in msg and "sft.enabled=false" in msg
    assert "Columns: answer, id, problem" in msg


def test_sft_source_with_its_own_mapping(tmp_path):
    src = _jsonl(tmp_path / "p.jsonl", 20)
    recipe = load_recipe(None, ["data.task=dataset", f"data.source={src}", f"sft.source={DATA / 'openr1_math.jsonl'}",
                                "sft.columns={messages: messages}"])
    rows = sft_rows(recipe, build_task(recipe.data, recipe.eval))
    assert len(rows) == 5 and "solution" not in rows[0] and rows[0]["messages"][1]["role"] == "assistant"


def test_sft_rows_that_are_held_out_problems_are_reported(tmp_path, caplog):
    src = _jsonl(tmp_path / "p.jsonl", 20)
    worked = tmp_path / "w.jsonl"
    worked.write_text("".join(json.dumps({"problem": f"{i}+1=?", "solution": f"\\boxed{{{i + 1}}}"}) + "\n"
                              for i in range(20)))  # every problem of the source, held-out ones included
    recipe = load_recipe(None, ["data.task=dataset", f"data.source={src}", f"sft.source={worked}", "eval.fraction=0.2"])
    sft_rows(recipe, build_task(recipe.data, recipe.eval))
    assert "4 SFT rows of sft.source" in caplog.text and "overstates generalisation" in caplog.text


def test_a_random_fraction_keeps_repeats_of_held_out_problems_out_of_training(tmp_path):
    src = tmp_path / "rep.jsonl"
    src.write_text("".join(json.dumps({"problem": f"{i % 10}+1=?", "answer": str(i % 10 + 1)}) + "\n"
                           for i in range(40)))  # 10 problems, 4 copies each
    task = build_task(DataConfig(task="dataset", source=str(src)), EvalConfig(fraction=0.1))
    held = {r["problem"] for r in task.heldout}
    assert len(task.heldout) == 4 and not held & {r["problem"] for r in task.train}
    info = task.split["heldout"]
    assert info["overlap_with_train"] == 0 and info["train_rows_dropped_as_repeats"] == 40 - 4 - len(task.train)
    assert len(task.train) == 40 - 4 * len(held)
