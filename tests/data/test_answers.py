"""Training rows without a gold answer: an error naming the row, or (data.skip_missing_answers) a counted skip."""

import json

import pytest

from longcot.config import load_recipe
from longcot.data import build_task
from longcot.errors import InputError


def _recipe(path, *extra):
    return load_recipe(None, ["data.task=dataset", f"data.source={path}", "data.num_heldout=1", *extra])


def test_a_training_row_without_answer_is_an_error_or_a_counted_skip(tmp_path):
    rows = [{"id": str(i), "problem": f"{i}+1", "answer": str(i + 1)} for i in range(20)]
    rows[7]["answer"] = None
    rows[11]["answer"] = " "
    path = tmp_path / "train.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(InputError, match=r"row 7 \(id '7'\) has no gold answer .*2 of 20 rows lack one.*"
                                         r"data.skip_missing_answers=true"):
        build_task(_recipe(path).data, needs=("prompt", "answer"))
    task = build_task(_recipe(path, "data.skip_missing_answers=true").data, needs=("prompt", "answer"))
    assert task.skipped_no_answer == 2 and len(task.train) + len(task.heldout) == 18
    assert all(r["answer"].strip() for r in task.train + task.heldout)
