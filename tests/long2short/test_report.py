"""The token-efficiency report: baselines once per model and seed, each run against its own long evaluation."""

import json

import pytest

from longcot.long2short.report import markdown_table, read_run, report, table_rows


def ev(acc, correct_len, all_len=None):
    return {"accuracy": acc, "correct_len_mean": correct_len, "response_len_mean": all_len or correct_len + 1}


def write_run(root, name, method, seed=0, short=None, **block):
    d = root / name
    d.mkdir()
    b = {"method": method, "seed": seed, "long_model": "runs/long", "result_model": f"{d}/ckpt",
         "long": ev(0.9, 50.0), **block}
    if short:
        b.update(short=short, short_model="runs/short")
    (d / "summary.json").write_text(json.dumps({"long2short": b}))
    return d


def test_rows_table_and_plot(tmp_path):
    runs = [write_run(tmp_path, "m", "merge", short=ev(0.91, 24.0), result=ev(0.88, 25.0),
                      correct_len_change=-0.5, accuracy_change=-0.02),
            write_run(tmp_path, "r0", "rl", result=ev(0.93, 24.0), correct_len_change=-0.52, accuracy_change=0.03),
            write_run(tmp_path, "r1", "rl", seed=1, long=ev(0.92, 51.0), result=ev(0.9, 25.0),
                      correct_len_change=-0.51, accuracy_change=-0.02)]
    rows = table_rows([read_run(d) for d in runs])
    # the long model once per evaluation seed, the short model once, then the three runs
    assert [(r["name"], r["seed"]) for r in rows] == [("long model", 0), ("short model", 0), ("long model", 1),
                                                      ("m", 0), ("r0", 0), ("r1", 1)]
    table = markdown_table(rows)
    assert "| r0 | rl | 0 | 0.930 | +3.0 | 24.0 | -52% | 25.0 |" in table
    assert "| long model | long | 1 | 0.920 | - | 51.0 | - | 52.0 |" in table
    png, out = tmp_path / "plot.png", tmp_path / "table.json"
    assert report([str(d) for d in runs], str(png), str(out)) == table
    assert png.stat().st_size > 5000 and len(json.loads(out.read_text())["rows"]) == 6


def test_a_directory_that_is_not_a_finished_long2short_run_is_an_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no summary.json"):
        read_run(tmp_path)
    (tmp_path / "summary.json").write_text(json.dumps({"eval": {}}))
    with pytest.raises(ValueError, match="no finished long2short block"):
        read_run(tmp_path)
