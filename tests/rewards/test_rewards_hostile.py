"""Hostile programs (rewards acceptance 2, issue 14 acceptance 1), graded through the public ``code`` reward, as
whoever runs pytest (root here) and again as an unprivileged user (uid 65534: the test drops privileges itself).

Each program gets 0 or its honest score (an attack that works turns the score wrong), and after each one no
process, file or connection it made remains, the reward workers and their sandbox servers are alive, and the
same pool still grades a good program. The programs and checks are in ``hostile.py``. On a shared machine the
checks count only this run's processes (root: the uids of this run's sandboxes; uid 65534: the driver's own
PID namespace), so someone else running the suite at the same time cannot make it fail.
"""

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from tests.rewards import hostile

from longcot.rewards.code import check
from longcot.rewards.pool import _POOLS

REPO = Path(__file__).resolve().parents[2]
NOBODY = 65534


@pytest.fixture(scope="module")
def ctx():
    """The attack targets, and a fresh code pool whose workers carry the secret environment variable."""
    context = hostile.Context(repo=str(REPO))
    if "code" in _POOLS:
        _POOLS.pop("code").close()
    assert {"userns", "mount", "net", "pid", "ipc", "pivot_root", "no_userns"} <= set(check()["features"])
    (warm,) = hostile.code_batch([hostile.sample(hostile.GOOD, hostile.ASSERT_TESTS)])
    assert warm == 1.0
    context.baseline, context.files0 = set(hostile.processes()), hostile.tmp_entries()
    context.workers = hostile.code_workers()  # their uids stay "ours" even if a worker is replaced
    yield context
    _POOLS.pop("code").close()
    context.close()


@pytest.mark.parametrize("name,kind", hostile.cases())
def test_hostile_program(ctx, name, kind):
    pids, workers = hostile.attackable_pids(), hostile.code_workers()
    uids = hostile.sandbox_uids([*ctx.workers, *workers])
    assert hostile.grade(name, kind, ctx, pids) == hostile.honest(name, kind), name
    assert hostile.leftovers(ctx.baseline, workers, uids) == []
    assert hostile.stray_files(ctx.files0, uids) + ctx.files() == []
    assert ctx.connections() == []
    assert all(p in hostile.processes() for p in pids[1:]), "a reward worker or sandbox server was killed"
    (good,) = hostile.code_batch([hostile.sample(hostile.GOOD, hostile.ASSERT_TESTS)], limits=hostile.LIMITS)
    assert good == 1.0


def _system_python() -> str:
    """A python outside root's home (the venv's interpreter lives under /root, which uid 65534 cannot enter)."""
    for cand in (f"/usr/bin/python{sys.version_info.major}.{sys.version_info.minor}", "/usr/bin/python3"):
        if os.path.exists(cand):
            return cand
    raise AssertionError("no system python3 under /usr/bin for the unprivileged run")


def _copy_code(dest: Path) -> None:
    """src/longcot and the two hostile modules, in a directory every uid can traverse and read."""
    shutil.copytree(REPO / "src" / "longcot", dest / "src" / "longcot",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    for name in ("hostile.py", "hostile_driver.py"):
        shutil.copy(Path(__file__).with_name(name), dest / name)
    for root, _dirs, files in os.walk(dest):
        os.chmod(root, 0o755)
        for f in files:
            os.chmod(os.path.join(root, f), 0o644)


@pytest.fixture(scope="module")
def unprivileged():
    """Every hostile program, graded by a uid-65534 process (Debian's python, a copy of src/); its JSON report."""
    if os.getuid() != 0:
        pytest.skip("not root: test_hostile_program above already ran unprivileged")
    files0 = hostile.tmp_entries()
    home = Path(tempfile.mkdtemp(prefix="longcot-unpriv-"))
    try:
        _copy_code(home)
        env = {"PATH": "/usr/bin:/bin", "HOME": str(home), "PYTHONPATH": f"{home}/src:{home}",
               "PYTHONDONTWRITEBYTECODE": "1", "LONGCOT_REWARD_WORKERS": "1", "LANG": "C.UTF-8"}
        # a PID namespace of its own (with its own /proc): the driver sees its processes only, not those of
        # someone else running this suite on the same machine, and nothing it started can outlive it
        cmd = ["unshare", "--pid", "--fork", "--mount-proc", "setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}",
               "--clear-groups", "--", _system_python(), str(home / "hostile_driver.py"), str(REPO)]
        proc = subprocess.run(cmd, cwd=home, env=env, capture_output=True, text=True, timeout=900)
        assert proc.returncode == 0, proc.stderr[-3000:]
        report = json.loads(proc.stdout.strip().splitlines()[-1])
    finally:
        shutil.rmtree(home)
    report["after"] = {"files": [p for p in hostile.tmp_entries() - files0 if hostile.MARK in p]}
    return report


def test_unprivileged_jail_has_the_same_isolation(unprivileged):
    assert {"userns", "mount", "net", "pid", "ipc", "pivot_root", "no_userns", "no_caps"} <= set(
        unprivileged["features"])
    assert unprivileged["warm"] == 1.0
    assert unprivileged["after"] == {"files": []}  # processes: the driver's PID namespace ended with it


@pytest.mark.parametrize("name,kind", hostile.cases())
def test_hostile_program_unprivileged(unprivileged, name, kind):
    got = unprivileged[f"{kind}:{name}"]
    assert got["score"] == got["honest"], name
    assert (got["processes"], got["files"], got["connections"]) == ([], [], [])
    assert got["workers_alive"]
