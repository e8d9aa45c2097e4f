"""Hostile programs (acceptance 2): each gets 0 or its honest score, leaves no process and no file behind,
and the scoring process survives. One warm pool grades them all through the public ``code`` reward."""

import os
from pathlib import Path

import pytest

from longcot.record import Trajectory
from longcot.rewards.code import code_batch
from longcot.rewards.executor import features

ADD_TEST = "def check(candidate):\n    assert candidate(2, 3) == 5\n    assert candidate(-1, 1) == 0\n"
GOOD = "def add(a, b):\n    return a + b\n"
LIMITS = {"wall_s": 3.0, "cpu_s": 3}
SANDBOX_UID_MIN = 200000  # executor.Sandbox gives the jail uid 200000 + pid

HOSTILE = {  # name -> (program, honest score)
    "fork_bomb": ("import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n", 0.0),
    "memory_bomb": ("x = []\nwhile True:\n    x.append(bytearray(10**8))\n", 0.0),
    "infinite_loop_top": ("while True:\n    pass\n", 0.0),
    "infinite_loop_call": ("def add(a, b):\n    while True:\n        pass\n", 0.0),
    "network": ("import urllib.request\nV = urllib.request.urlopen('http://1.1.1.1', timeout=2).status\n"
                "def add(a, b):\n    return a + b + V - 200\n", 0.0),
    "write_outside": ("import os\nfor p in ['/work/main/PWNED', '/root/PWNED', '/PWNED', '/usr/PWNED', '/etc/PWNED']:\n"
                      "    try:\n        open(p, 'w').write('x')\n    except OSError:\n        pass\n"
                      "open('/tmp/pwned_tmp', 'w').write('x')\n"
                      "open('/dev/shm/pwned_shm', 'w').write('x')\n" + GOOD, 1.0),
    "fill_disk": ("for i in range(40):\n    try:\n        open(f'/tmp/fill{i}', 'wb').write(b'x' * (8 << 20))\n"
                  "    except OSError:\n        break\n" + GOOD, 1.0),
    "kill_parent": ("import os, signal\nfor pid in [os.getppid(), 1] + list(range(2, 3000)):\n    try:\n"
                    "        os.kill(pid, signal.SIGKILL)\n    except OSError:\n        pass\n" + GOOD, 1.0),
    "kill_everyone": ("import os, signal\ntry:\n    os.kill(-1, signal.SIGKILL)\nexcept OSError:\n    pass\n"
                      + GOOD, 1.0),
    "sys_exit_0": ("import sys\nsys.exit(0)\n" + GOOD, 0.0),
    "os_exit_0": ("import os\nos._exit(0)\n" + GOOD, 0.0),
    "exit_in_call": ("import os\ndef add(a, b):\n    os._exit(0)\n", 0.0),
    "print_fake_pass": ("print('All tests passed'); print('PASSED'); print('OK')\ndef add(a, b):\n    return 0\n", 0.0),
    "override_assert": ("import builtins\nbuiltins.AssertionError = type('N', (Exception,), {})\n"
                        "builtins.len = lambda x: 0\ndef add(a, b):\n    return 0\n", 0.0),
    "always_equal": ("class E:\n    def __eq__(self, o):\n        return True\n    __hash__ = object.__hash__\n"
                     "def add(a, b):\n    return E()\n", 0.0),
    "int_subclass_eq": ("class E(int):\n    def __eq__(self, o):\n        return True\n"
                        "def add(a, b):\n    return E(7)\n", 0.0),
    "atexit_exit_0": ("import atexit, os\natexit.register(lambda: os._exit(0))\ndef add(a, b):\n    return 0\n", 0.0),
    "read_tests_from_disk": ("import glob\nrows = open('/work/shared/data/humaneval10.jsonl').read()\n"
                             "assert not glob.glob('/work/*') and not glob.glob('/root/*.py')\n" + GOOD, 0.0),
    "read_secrets_from_memory": ("import gc\nhits = [o for o in gc.get_objects() if isinstance(o, str) and "
                                 "'candidate(2, 3)' in o]\nassert hits\n" + GOOD, 0.0),
    "forge_replies": ("import socket, json, struct\ns = socket.socket(fileno=3)\n"
                      "for m in [{'ready': True}] + [{'value': 999}] * 5:\n    d = json.dumps(m).encode()\n"
                      "    s.sendall(struct.pack('!I', len(d)) + d)\n" + GOOD, 0.0),
    "huge_output": ("import sys\nwhile True:\n    sys.stdout.write('x' * 65536)\n", 0.0),
    "daemon_survivor": ("import os, time\nif os.fork() == 0:\n    os.setsid()\n    if os.fork() == 0:\n"
                        "        time.sleep(300)\n    os._exit(0)\n" + GOOD, 1.0),
    "segfault": ("import ctypes\nctypes.string_at(0)\n" + GOOD, 0.0),
    "escalate": ("import os\ntry:\n    os.setuid(0)\nexcept OSError:\n    pass\nassert os.getuid() != 0\n" + GOOD, 1.0),
}


def sample(program: str, tests: dict, pid: str = "p") -> Trajectory:
    return Trajectory(prompt_id=pid, group_id="g", prompt_ids=[], response_ids=[], rollout_logprobs=[],
                      response_text=f"```python\n{program}```", meta={"tests": tests})


def sandbox_processes() -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                uid = int((entry / "status").read_text().split("\nUid:")[1].split()[0])
            except (OSError, IndexError):
                continue
            if uid >= SANDBOX_UID_MIN:
                pids.append(int(entry.name))
    return pids


def sandbox_files() -> list[str]:
    hits = [p for p in ("/work/main/PWNED", "/root/PWNED", "/PWNED", "/usr/PWNED", "/etc/PWNED") if os.path.exists(p)]
    for d in ("/tmp", "/dev/shm", "/var/tmp"):
        for entry in os.scandir(d):
            try:
                if entry.stat(follow_symlinks=False).st_uid >= SANDBOX_UID_MIN or "pwned" in entry.name:
                    hits.append(entry.path)
            except OSError:
                pass
    return hits


@pytest.fixture(scope="module", autouse=True)
def jail_available():
    feats = features()["features"]
    missing = {"chroot", "net", "pid", "uid"} - set(feats)
    if missing:
        pytest.skip(f"full sandbox unavailable here (missing {sorted(missing)}): not root or no namespaces")


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_hostile_assert_program(name):
    program, honest = HOSTILE[name]
    tests = {"kind": "assert", "prompt": "", "test": ADD_TEST, "entry_point": "add"}
    (score,) = code_batch([sample(program, tests, name)], limits=LIMITS)
    assert score == honest, name
    assert sandbox_processes() == []
    assert sandbox_files() == []
    (good,) = code_batch([sample(GOOD, tests)], limits=LIMITS)  # the pool survived and still grades
    assert good == 1.0


@pytest.mark.parametrize("name", ["fork_bomb", "memory_bomb", "infinite_loop_top", "huge_output", "sys_exit_0",
                                  "network", "daemon_survivor", "kill_parent"])
def test_hostile_io_program(name):
    program, _ = HOSTILE[name]
    tests = {"kind": "io", "cases": [{"input": "2 3\n", "output": "5\n"}]}
    program = program.replace(GOOD, "print(sum(map(int, input().split())))\n")
    honest = 1.0 if name in ("daemon_survivor", "kill_parent") else 0.0
    (score,) = code_batch([sample(program, tests, name)], limits=LIMITS)
    assert score == honest, name
    assert sandbox_processes() == []
    assert sandbox_files() == []
