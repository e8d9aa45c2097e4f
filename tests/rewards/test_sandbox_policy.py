"""``sandbox: required | allow_unsafe`` and the start-up probe, on a kernel that refuses namespaces.

No mock: each case runs in a real user namespace (``unshare -Urpf``, which any user may create here) where
``user.max_user_namespaces`` is 0, so the sandbox's own ``unshare`` fails exactly as on a machine without user
namespaces; or where only one uid is mapped, as in a container, so the programs' uid cannot be mapped.
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from longcot.rewards import executor
from longcot.rewards.executor import Limits, Sandbox, SandboxUnavailable

SRC = Path(__file__).resolve().parents[2] / "src"
SCRIPT = r"""
import json, logging, os, sys
logging.basicConfig(level=logging.WARNING, format="LOG %(message)s")
from longcot.record import Trajectory
from longcot.rewards import RewardSpec, compute_rewards
from longcot.rewards.code import check, code_batch
from longcot.rewards.executor import SandboxUnavailable

policy = sys.argv[1]
tests = {"kind": "io", "cases": [{"input": "2 3\n", "output": "5\n"}]}
good = "print(sum(map(int, input().split())))\n"
daemon = ("import os, subprocess\nsubprocess.Popen(['/bin/sh', '-c', 'exec sleep 321'], start_new_session=True)\n"
          "if os.fork() == 0:\n    os.setsid()\n    if os.fork() == 0:\n"
          "        os.execv('/bin/sleep', ['sleep', '322'])\n    os._exit(0)\n" + good)
def traj(program):
    return Trajectory("p", "g", [], [], [], response_text=f"```python\n{program}```", meta={"tests": tests})
out = {}
try:
    out["features"] = check(sandbox=policy)["features"]
    out["scores"] = [code_batch([traj(p)], sandbox=policy)[0] for p in (good, daemon)]
    out["left"] = [p for p in os.listdir("/proc")
                   if p.isdigit() and b"sleep\x0032" in open(f"/proc/{p}/cmdline", "rb").read()]
except SandboxUnavailable as e:
    out["error"] = str(e)
try:
    compute_rewards([traj(good)], [RewardSpec("code", options={"sandbox": policy})])
    out["compute_rewards"] = "scored"
except SandboxUnavailable as e:
    out["compute_rewards"] = "raised"
print("JSON" + json.dumps(out))
"""


def run_without_userns(policy: str, disable_userns: bool = True) -> tuple[dict, str]:
    inner = "echo 0 > /proc/sys/user/max_user_namespaces && " if disable_userns else ""
    # its own PID namespace and /proc: the "left" check sees this run's processes, nobody else's
    cmd = ["unshare", "-Urpf", "--mount-proc", "sh", "-c", inner + 'exec "$0" -c "$1" "$2"', sys.executable, SCRIPT,
           policy]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300,
                          env={"PYTHONPATH": str(SRC), "PATH": "/usr/bin:/bin", "LONGCOT_REWARD_WORKERS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = next(x for x in proc.stdout.splitlines() if x.startswith("JSON"))
    return json.loads(line[4:]), proc.stderr


def test_required_refuses_with_a_clear_error_when_namespaces_are_unavailable():
    out, _ = run_without_userns("required")
    assert "cannot isolate programs here" in out["error"] and "max_user_namespaces" in out["error"]
    assert "allow_unsafe" in out["error"]  # says how to allow unsandboxed execution
    assert out["compute_rewards"] == "raised"  # never graded 0 in silence


def test_allow_unsafe_runs_programs_warns_and_reaps_every_descendant():
    out, stderr = run_without_userns("allow_unsafe")
    assert out["features"] == ["unsafe"]
    assert out["scores"] == [1.0, 1.0]
    assert out["left"] == []  # the setsid'd and double-forked sleepers were killed and reaped
    assert out["compute_rewards"] == "scored"
    assert "WITHOUT isolation" in stderr and "LOG code reward: sandbox=allow_unsafe" in stderr


def test_a_uid_the_container_does_not_map_stops_with_a_clear_error():
    out, _ = run_without_userns("required", disable_userns=False)  # only uid 0 is mapped in `unshare -Ur`
    assert "id maps" in out["error"] and "must map" in out["error"]


def test_probe_stops_a_jail_that_cannot_run_programs(monkeypatch):
    monkeypatch.setattr(executor, "PROBE", "import sys\nsys.stderr.write('no libc here')\nsys.exit(3)\n#{marker}")
    box = Sandbox()
    with pytest.raises(SandboxUnavailable, match="a test program failed in it .exit 3.*no libc here"):
        box.ensure()
    assert box.proc is None  # the server was stopped, not left running


def test_sandbox_option_is_validated():
    with pytest.raises(ValueError, match="sandbox must be one of"):
        Sandbox("maybe")
    assert Limits().wall_s > 0


def test_the_sandbox_side_imports_without_numpy_or_torch():
    """The unprivileged jail runs longcot's reward modules under a system Python that has neither numpy nor torch
    (tests/rewards/test_rewards_hostile.py): an import of either on that path breaks the code reward there. Run the
    imports with both blocked, so a stray one fails here, fast, whichever Python CI has."""
    import subprocess
    import sys
    from pathlib import Path

    src = Path(__file__).resolve().parents[2] / "src"
    code = (
        "import sys\n"
        "class Block:\n"
        "    @staticmethod\n"
        "    def find_spec(name, path=None, target=None):\n"
        "        if name.split('.')[0] in ('numpy', 'torch'):\n"
        "            raise ImportError(f'{name} imported on the sandbox side')\n"
        f"sys.meta_path.insert(0, Block)\nsys.path.insert(0, {str(src)!r})\n"
        "import longcot.rewards.code, longcot.rewards.sandbox, longcot.record\n")
    done = subprocess.run([sys.executable, "-I", "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
