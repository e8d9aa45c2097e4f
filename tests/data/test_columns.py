"""Column paths into nested rows, message lists, and the test formats of published code sets."""

import json

import pytest

from longcot.data.code_tests import normalize_tests
from longcot.data.columns import ColumnError, map_row, resolve

ROW = {"prompt": [{"role": "system", "content": "S"}, {"role": "user", "content": "Q?"}],
       "reward_model": {"ground_truth": "34", "style": "rule"}, "extra_info": {"index": "abc"}}


def test_dotted_paths_reach_nested_fields_and_list_items():
    assert resolve(ROW, "reward_model.ground_truth") == "34"
    assert resolve(ROW, "prompt.1.content") == "Q?"
    assert resolve(ROW, "prompt.-1.role") == "user"


@pytest.mark.parametrize("path, says", [
    ("reward_model.ground_truh", "no 'ground_truh' under 'reward_model' (keys there: ground_truth, style)"),
    ("prompt.5.content", "a list of 2 item(s)"),
    ("prompt.x", "a list of 2 item(s)"),
    ("answer", "no 'answer' (keys there: extra_info, prompt, reward_model)"),
    ("reward_model.style.name", "a str value, which has no fields"),
])
def test_a_wrong_path_names_the_path_what_exists_and_the_row(path, says):
    with pytest.raises(ColumnError) as e:
        resolve(ROW, path, where="f.jsonl: ")
    msg = str(e.value)
    assert f"column path '{path}'" in msg and says in msg
    assert "top-level columns: extra_info, prompt, reward_model" in msg and '"ground_truth": "34"' in msg


def test_map_row_fills_standard_fields_and_keeps_the_original_columns():
    row = map_row(ROW, {"prompt": "prompt", "answer": "reward_model.ground_truth", "id": "extra_info.index"}, 7)
    assert row["answer"] == "34" and row["id"] == "abc" and row["problem"] == "Q?"
    assert row["prompt"][0] == {"role": "system", "content": "S"} and row["reward_model"]["style"] == "rule"
    assert map_row({"problem": "P", "answer": 1}, {}, 3)["id"] == "3"  # no id column: the row index


def test_map_row_errors_name_the_row_and_the_recipe_key():
    with pytest.raises(ColumnError, match=r"f: row 4: data.columns.answer: column path 'reward_model.gt'"):
        map_row(ROW, {"answer": "reward_model.gt"}, 4, where="f: ")
    with pytest.raises(ColumnError, match="expected a string or a list of {role, content} messages"):
        map_row({"q": [1, 2]}, {"prompt": "q"}, 0)


@pytest.mark.parametrize("tests", [
    [{"input": "1\n", "output": "2\n", "testtype": "stdin"}],
    json.dumps([{"input": "1\n", "output": "2\n", "testtype": "stdin"}]),
    {"inputs": ["1\n"], "outputs": ["2\n"]},
    json.dumps({"inputs": ["1\n"], "outputs": ["2\n"]}),
    {"kind": "io", "cases": [{"input": "1\n", "output": "2\n"}]},
])
def test_published_test_formats_become_the_code_rewards_io_cases(tests):
    assert normalize_tests(tests) == {"kind": "io", "cases": [{"input": "1\n", "output": "2\n"}]}


@pytest.mark.parametrize("tests, says", [
    ({"inputs": [[1, 2]], "outputs": [3], "fn_name": "add"}, "call-based tests (fn_name='add') are not supported"),
    ([{"input": "1", "output": "2", "testtype": "functional"}], "only 'stdin' cases are supported"),
    ("not json", "a tests string must be JSON"),
    ({"inputs": ["1"], "outputs": []}, "1 inputs for 0 outputs"),
    ({"tests": []}, "unrecognised tests"),
])
def test_unsupported_tests_fail_instead_of_scoring_zero(tests, says):
    with pytest.raises(ColumnError, match=says.replace("(", r"\(").replace(")", r"\)")):
        normalize_tests(tests)


def test_a_broken_data_file_names_the_file_and_the_line(tmp_path):
    """`datasets` only says "An error occurred while generating the dataset"; the error names the line now."""
    from longcot.data.sources import DataFileError, load_rows
    from longcot.errors import InputError

    bad = tmp_path / "mine.jsonl"
    bad.write_text('{"problem": "1+1", "answer": "2"}\n{"problem": "2+2", "answer": "4"\n'
                   '{"problem": "3", "answer": "3"}\n')
    with pytest.raises(DataFileError, match=r"mine.jsonl: cannot be read as jsonl: line 2 is not valid JSON "
                                            r"\(Expecting ',' delimiter, column 33\)") as e:
        load_rows(str(bad))
    assert isinstance(e.value, InputError)  # every command prints it as one line
    broken = tmp_path / "mine.parquet"
    broken.write_bytes(b"PAR1 not really parquet")
    with pytest.raises(DataFileError, match="mine.parquet: cannot be read as parquet: "):
        load_rows(str(broken))
