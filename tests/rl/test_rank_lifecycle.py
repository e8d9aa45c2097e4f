"""Trainer ranks never outlive the driver: killed (kill -9), interrupted (Ctrl-C) or failed, no rank is left."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from longcot.policies.build import build_tiny_moe

DRIVER = Path(__file__).with_name("rank_driver.py")


@pytest.fixture(scope="module")
def policy(tmp_path_factory):
    return build_tiny_moe(tmp_path_factory.mktemp("m"), seed=0, num_hidden_layers=1)


def start_driver(policy, mode: str) -> tuple[subprocess.Popen, list[int]]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parents[2] / "src"),
                                                         os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen([sys.executable, str(DRIVER), str(policy), mode], stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True, env=env)
    line = proc.stdout.readline()
    assert line, "the driver exited before its ranks were up"
    return proc, json.loads(line)["ranks"]


def gone(pids: list[int], within_s: float = 30.0) -> bool:
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        if not any(_alive(p) for p in pids):
            return True
        time.sleep(0.2)
    return False


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    return stat.exists() and stat.read_text().split()[2] != "Z"  # a zombie has exited


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT])
def test_ranks_die_with_the_driver(policy, sig):
    proc, ranks = start_driver(policy, "wait")
    assert len(ranks) == 2 and all(_alive(p) for p in ranks)
    proc.send_signal(sig)
    proc.wait(timeout=60)
    assert gone(ranks), f"ranks {ranks} outlived a driver stopped by {sig.name}"


@pytest.mark.slow
def test_a_failing_rank_reports_its_traceback_and_close_stops_every_rank(policy):
    proc, ranks = start_driver(policy, "fail")
    out = [json.loads(line) for line in proc.stdout]
    proc.wait(timeout=60)
    assert "trainer rank 0 failed" in out[0]["error"] and "Traceback" in out[0]["error"]
    assert out[1] == {"closed": True} and proc.returncode == 0
    assert gone(ranks)
