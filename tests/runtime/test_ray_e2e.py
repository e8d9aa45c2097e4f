"""``longcot train`` in Ray mode, end to end in a subprocess (its own Ray instance): staleness stays within
``rl.max_off_policy_steps``, every batch is complete, the workers hold the trainer's weights, and no process the run
started outlives it, also when it is interrupted with Ctrl-C, and nothing is written under $HOME."""

import json
import os
import signal

import pytest
from raytest import PROMPTS, N, rows, start_train, watch

pytestmark = pytest.mark.slow


def test_ray_run_stays_within_k_and_leaves_no_process(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    proc = start_train(tmp_path, "ray", ["rl.steps=4"], home=home)
    w = watch(proc)
    out = proc.communicate(timeout=60)[0]
    assert proc.returncode == 0, out[-3000:]
    run = tmp_path / "ray"
    got = rows(run)
    assert [r["step"] for r in got] == [0, 1, 2, 3]
    for r in got:
        assert r["async/staleness_max"] <= 1, r
        assert r["async/batch_samples"] == PROMPTS * N  # never a short batch
        assert r["time/train"] > 0 and "async/busy/worker0" in r and "async/busy/trainer" in r
    assert max(r["async/staleness_max"] for r in got) == 1  # generation did overlap training
    checks = [r["sync_check/gap_max"] for r in got if "sync_check/gap_max" in r]
    assert checks and max(checks) < 1e-4  # each worker's log-probs after loading a version == the trainer's
    assert max(r["tis_weight_mean"] for r in got) < 1.0 or any(r["rollout_logprob_gap"] > 0 for r in got)
    summary = json.loads((run / "summary.json").read_text())
    assert summary["eval"]["after_rl"]["n"] == 8
    assert (run / "checkpoints" / "final" / "config.json").is_file()
    cluster = json.loads((run / "cluster.json").read_text())
    assert len(cluster["workers"]) == 1 and cluster["trainer"]["pid"] != cluster["workers"][0]["pid"]
    assert len(w.seen) >= 4, w.seen  # GCS, raylet, a worker, the trainer... were watched
    assert w.survivors() == []
    assert not os.path.exists(cluster["session_dir"])  # Ray's session files are removed too
    assert list(home.rglob("*")) == []  # nothing under $HOME: no Ray auth token, no caches
    from longcot.report import render

    report = render(run)  # `longcot report RUN` shows the pipeline: staleness, drops, each actor's busy fraction
    assert "staleness (policy versions): mean" in report and "max 1" in report and "samples dropped" in report
    assert "trainer    busy" in report and "worker0    busy" in report


def test_ctrl_c_during_rl_saves_a_state_stops_every_ray_process_and_resumes(tmp_path):
    """Ctrl-C: the step in flight finishes, a training state (with the asynchronous loop's buffer) is written, the
    run exits 130 and leaves no Ray process; ``--resume`` then continues from the next step in Ray mode."""
    proc = start_train(tmp_path, "interrupted", ["rl.steps=50"])
    run = tmp_path / "interrupted"
    w = watch(proc, until=lambda: len(rows(run)) >= 1)
    assert proc.poll() is None, proc.communicate()[0][-3000:]
    proc.send_signal(signal.SIGINT)
    out = proc.communicate(timeout=180)[0]
    assert proc.returncode == 130 and "--resume" in out, out[-2000:]
    assert w.survivors() == []
    done = len(rows(run))
    assert (run / "states" / "latest").read_text().strip() == f"step-{done:08d}"
    proc = start_train(tmp_path, "interrupted", [f"rl.steps={done + 1}", "--resume"])
    out = proc.communicate(timeout=300)[0]
    assert proc.returncode == 0, out[-3000:]
    assert [r["step"] for r in rows(run)] == list(range(done + 1))


@pytest.mark.parametrize("backend", ["local", "ray"])
def test_diverging_updates_stop_the_run_with_one_line(tmp_path, backend):
    """rl.lr=1e30: after the first update every gradient is NaN; the third dropped update in a row stops the run.
    In Ray mode the error is raised in the trainer actor and reaches the driver wrapped by Ray (whose text is the
    remote traceback): either way the user reads the message, exit 1, no traceback."""
    extra = ["rl.steps=8", "rl.lr=1e30", "rl.entropy_coef=0", "rewards=[{name: math}, {name: k15_length, weight: 1.0}]",
             f"cluster.backend={backend}"]
    proc = start_train(tmp_path, backend, extra)
    out = proc.communicate(timeout=600)[0]
    assert proc.returncode == 1, out[-3000:]
    last = out.strip().splitlines()[-1]
    assert last.startswith("longcot train: 3 updates in a row had non-finite gradients"), out[-3000:]
    assert "Traceback" not in out and "RayTaskError" not in out
