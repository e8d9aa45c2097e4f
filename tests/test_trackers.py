"""Experiment trackers: the metrics rows and sample tables reach TensorBoard event files (read back here); a tracker
whose library is missing fails with an install line."""

import importlib.util

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from longcot.config.schema import TrackingConfig
from longcot.record import Trajectory
from longcot.run import RunDir
from longcot.run.trackers import TrackerError, Trackers, check_available


def read_events(path) -> EventAccumulator:
    acc = EventAccumulator(str(path), size_guidance={"scalars": 0, "tensors": 0})
    acc.Reload()
    return acc


def test_metrics_rows_and_sample_tables_land_in_tensorboard(tmp_path):
    run = RunDir(tmp_path / "run")
    run.trackers = Trackers(TrackingConfig(log_with="tensorboard", samples_every=2, num_samples=2), "t", run.root,
                            config={"rl": {"lr": 1e-4}})
    for step in range(3):
        run.log_metrics({"step": step, "reward_mean": 0.1 * step, "accuracy": 0.5, "note": "text is skipped"})
    traj = Trajectory(prompt_id="p", group_id="p@1", prompt_ids=[1], response_ids=[2], rollout_logprobs=[],
                      finish="stop", response_text="a | b\n\\boxed{3}", prompt_text="Q: 1+2\n", reward=1.0)
    assert not run.trackers.wants_samples(0) and run.trackers.wants_samples(1)
    run.trackers.log_samples(1, [traj, traj, traj])
    run.trackers.finish()
    acc = read_events(run.root / "tracking" / "t")
    assert [(e.step, round(e.value, 6)) for e in acc.Scalars("reward_mean")] == [(0, 0.0), (1, 0.1), (2, 0.2)]
    assert "accuracy" in acc.Tags()["scalars"] and "note" not in acc.Tags()["scalars"]
    (table,) = acc.Tensors("samples/text_summary")
    text = table.tensor_proto.string_val[0].decode()
    assert table.step == 1 and "| prompt | response | reward |" in text and "a \\| b<br>\\boxed{3}" in text
    assert text.count("Q: 1+2") == 2  # num_samples rows
    assert (tmp_path / "run" / "metrics.jsonl").read_text().count("\n") == 3  # the jsonl is still written


@pytest.mark.parametrize("name, package", [("wandb", "wandb"), ("mlflow", "mlflow")])
def test_a_missing_tracker_library_fails_with_an_install_line(name, package):
    if importlib.util.find_spec(package) is not None:
        pytest.skip(f"{package} is installed here")
    with pytest.raises(TrackerError, match=f"tracking.log_with={name} needs the '{package}' package.*pip install "
                                           f"{package}.*tracking.log_with=none"):
        check_available(name)
