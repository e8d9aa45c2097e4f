"""A user's own jsonl on the tiny model, end to end: the issue's scenario (SFT off, reward and gradient 0 at every
step) now says why, the first eval is labelled "initial", the held-out split is written, and a TensorBoard tracker
records the same scalars (read back from the event file)."""

import json
import logging
from pathlib import Path

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from longcot.cli import main as cli_main
from longcot.data.export import rows_of, write_jsonl

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_own_jsonl_without_sft_warns_about_zero_signal_and_logs_to_tensorboard(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("LONGCOT_NO_PROGRESS", "1")
    data = write_jsonl(tmp_path / "mine.jsonl", rows_of("arith", 60, 0, 0.0, {"ops": "+-", "max_operand": 9}),
                       drop=("solution",))  # a question/answer file, as users bring
    caplog.set_level(logging.INFO)
    rc = cli_main(["train", str(ROOT / "recipes/tiny/arith-moe.yaml"), f"out_dir={tmp_path}", "name=own",
                   "data.task=dataset", f"data.source={data}", "sft.enabled=false", "rl.steps=3",
                   "rl.prompts_per_step=4", "rollout.n=4", "eval.num_problems=8", "eval.n=1", "eval.every=0",
                   "tracking.log_with=tensorboard", "tracking.samples_every=2"])
    assert rc == 0
    run = tmp_path / "own"
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["reward_mean"] for r in rows] == [0.0] * 3 and [r["grad_norm"] for r in rows] == [0.0] * 3
    summary = json.loads((run / "summary.json").read_text())
    (warning,) = summary["warnings"]
    assert warning["step"] == 2 and warning["condition"] == "no_reward"
    assert "no sample has reward > 0 (math)" in warning["message"] and "docs/data.md" in warning["message"]
    assert "no learning signal for 3 steps" in caplog.text
    assert "initial" in summary["eval"] and "after_sft" not in summary["eval"]
    assert "held-out accuracy of the initial policy (SFT off)" in caplog.text
    split = json.loads((run / "split.json").read_text())
    held = split["heldout"]
    assert held["how"] == "fraction" and held["rows"] == 6
    assert split["train"]["rows"] == 54 - held["train_rows_dropped_as_repeats"]
    events = EventAccumulator(str(run / "tracking" / "own"), size_guidance={"scalars": 0, "tensors": 0})
    events.Reload()
    assert [(e.step, e.value) for e in events.Scalars("reward_mean")] == [(0, 0.0), (1, 0.0), (2, 0.0)]
    assert {"accuracy", "grad_norm", "time/generate"} <= set(events.Tags()["scalars"])
    (table,) = events.Tensors("samples/text_summary")
    assert table.step == 1 and "| prompt | response | reward |" in table.tensor_proto.string_val[0].decode()


@pytest.mark.slow
def test_a_code_dataset_file_trains_with_the_code_reward_and_grader(tmp_path, monkeypatch):
    """Rows with tests, read from a file as a user's code set would be: SFT on their solutions, RL steps scored by
    the code reward in the sandbox, held-out programs graded by running them."""
    monkeypatch.setenv("LONGCOT_NO_PROGRESS", "1")
    data = write_jsonl(tmp_path / "code.jsonl", rows_of("codefit", 80, 0, 0.0, {}))
    rc = cli_main(["train", str(ROOT / "recipes/tiny/code-moe.yaml"), f"out_dir={tmp_path}", "name=code",
                   "data.task=dataset", "data.task_options={}", f"data.source={data}", "sft.num_examples=32",
                   "rl.steps=2",
                   "rl.prompts_per_step=4", "rollout.n=4", "eval.num_problems=4", "eval.n=1", "eval.every=0"])
    assert rc == 0
    run = tmp_path / "code"
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [0, 1] and all("rewards/code" in r for r in rows)
    summary = json.loads((run / "summary.json").read_text())
    assert {"after_sft", "after_rl"} <= set(summary["eval"]) and summary["eval"]["after_rl"]["n"] == 4
    graded = [json.loads(line) for line in (run / "eval" / "after_rl" / "samples.jsonl").read_text().splitlines()]
    assert len(graded) == 4 and all(isinstance(g["correct"], bool) for g in graded)
    assert json.loads((run / "split.json").read_text())["heldout"]["how"] == "fraction"
