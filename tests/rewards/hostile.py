"""Hostile programs and the checks that nothing of them remains (shared by the root test and the unprivileged run).

Stdlib + longcot only: ``hostile_driver.py`` imports this module as uid 65534 under Debian's python3.11, where
pytest is not importable. Each program is graded through the public ``code`` reward; ``@NAME@`` placeholders
are filled from a :class:`Context` (ports, paths and pids the program attacks). An attack that works changes
the score (a wrong answer or no answer), so the score alone shows whether isolation held; the checks after
each program look for what it could have left: processes, files, connections.
"""

from __future__ import annotations

import os
import secrets
import socket
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from longcot.record import Trajectory
from longcot.rewards.code import code_batch

ADD_TEST = "def check(candidate):\n    assert candidate(2, 3) == 5\n    assert candidate(-1, 1) == 0\n"
GOOD = "def add(a, b):\n    return a + b\n"
GOOD_IO = "print(sum(map(int, input().split())))\n"
LIMITS = {"wall_s": 3.0, "cpu_s": 3}
SANDBOX_UID_MIN = 200000  # as root, executor.Sandbox gives the programs uid 200000 + worker pid
SECRET_ENV = "LONGCOT_HOSTILE_SECRET"
MARK = "lchostile_pwned"  # every file a program writes has this in its name: found whoever's test made it
LEAKED = "def add(a, b):\n    return a + b + (1 if LEAK else 0)\n"  # a wrong answer exactly when the attack worked

HOSTILE = {  # name -> (program or [programs run in turn, the last one scored], honest score)
    "fork_bomb": ("import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n", 0.0),
    "memory_bomb": ("x = []\nwhile True:\n    x.append(bytearray(10**8))\n", 0.0),
    "infinite_loop_top": ("while True:\n    pass\n", 0.0),
    "infinite_loop_call": ("def add(a, b):\n    while True:\n        pass\n", 0.0),
    "network": ("import urllib.request\nV = urllib.request.urlopen('http://1.1.1.1', timeout=2).status\n"
                "def add(a, b):\n    return a + b + V - 200\n", 0.0),
    "write_outside": ("import os\nfor p in ['@REPO@/@M@', '@HOME@/@M@', '/@M@', '/usr/@M@', '/etc/@M@']:\n"
                      "    try:\n        open(p, 'w').write('x')\n    except OSError:\n        pass\n"
                      "open('/tmp/@M@_tmp', 'w').write('x')\n"
                      "open('/dev/shm/@M@_shm', 'w').write('x')\n" + GOOD, 1.0),
    "fill_disk": ("for i in range(40):\n    try:\n        open(f'/tmp/@M@_fill{i}', 'wb').write(b'x' * (8 << 20))\n"
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
    "read_tests_from_disk": ("import glob\nLEAK = glob.glob('@REPO@/tests/*') or glob.glob('@HOME@/*')\n"
                             "try:\n    LEAK = LEAK or open('@SELF@').read()\nexcept OSError:\n    pass\n" + LEAKED,
                             1.0),
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
    # ---- issue 14: the same attacks as an ordinary user, and more
    "read_secret_file": ("try:\n    LEAK = open('@SECRET@').read()\nexcept OSError:\n    LEAK = ''\n" + LEAKED, 1.0),
    "write_open_dir": ("LEAK = False\nfor p in ['@OPEN_DIR@/@M@', '@OPEN_DIR@/../@M@']:\n    try:\n"
                       "        open(p, 'w').write('x')\n        LEAK = True\n    except OSError:\n        pass\n"
                       + LEAKED, 1.0),
    "setsid_exec_survivor": ("import subprocess\nsubprocess.Popen(['/bin/sh', '-c', 'trap \"\" HUP TERM; "
                             "(sleep 300 &); exec sleep 300'], start_new_session=True, stdout=subprocess.DEVNULL, "
                             "stderr=subprocess.DEVNULL)\n" + GOOD, 1.0),
    "exec_fork_bomb": ("import os\nos.execv('/bin/sh', ['sh', '-c', 'f() { f | f & }; f'])\n" + GOOD, 0.0),
    "thread_bomb": ("import threading, time\nwhile True:\n    threading.Thread(target=time.sleep, args=(300,), "
                    "daemon=True).start()\n" + GOOD, 0.0),
    "loopback_tcp": ("import socket\ntry:\n    s = socket.create_connection(('127.0.0.1', @PORT@), timeout=1)\n"
                     "    s.sendall(b'pwned')\n    LEAK = True\nexcept OSError:\n    LEAK = False\n" + LEAKED, 1.0),
    "abstract_unix_socket": ("import socket\ntry:\n    s = socket.socket(socket.AF_UNIX)\n"
                             "    s.connect('\\0@ABSTRACT@')\n    s.sendall(b'pwned')\n    LEAK = True\n"
                             "except OSError:\n    LEAK = False\n" + LEAKED, 1.0),
    "unix_socket_file": ("import socket\ntry:\n    s = socket.socket(socket.AF_UNIX)\n    s.connect('@UNIX@')\n"
                         "    s.sendall(b'pwned')\n    LEAK = True\nexcept OSError:\n    LEAK = False\n" + LEAKED, 1.0),
    # the pids of the test process, the reward workers and their sandbox servers (not its own: in a PID
    # namespace of its own the program is pid 1, which may be the driver's number too)
    "signal_known_pids": ("import os, signal\nLEAK = False\nfor pid in set(@PIDS@) - {os.getpid(), os.getpgrp()}:\n"
                          "    for kill in (os.kill, os.killpg):\n        try:\n            kill(pid, signal.SIGKILL)\n"
                          "            LEAK = True\n        except OSError:\n            pass\n" + LEAKED, 1.0),
    "proc_snoop": ("import os\nLEAK = []\nfor p in ['/proc/self/environ', '/proc/1/cmdline', '/proc/mounts', "
                   "'/sys/kernel', '/proc/@TEST_PID@/environ'] + ['/proc/%d/cmdline' % q for q in @PIDS@]:\n"
                   "    try:\n        os.stat(p)\n        LEAK.append(p)\n    except OSError:\n        pass\n"
                   + LEAKED, 1.0),
    "env_secrets": ("import os, posix\nLEAK = any(b'@SECRET_VALUE@' in k + b'=' + v for k, v in posix.environ.items())"
                    " or any('@SECRET_VALUE@' in v for v in os.environ.values())\n" + LEAKED, 1.0),
    "huge_stderr": ("import sys\nwhile True:\n    sys.stderr.write('x' * 65536)\n", 0.0),
    "huge_file": ("import signal\nsignal.signal(signal.SIGXFSZ, signal.SIG_IGN)\ntry:\n"
                  "    with open('@M@_big', 'wb') as f:\n        for _ in range(1024):\n"
                  "            f.write(b'x' * (1 << 20))\nexcept OSError:\n    pass\n" + GOOD, 1.0),
    "escape_namespaces": ("import ctypes, os\nlibc = ctypes.CDLL(None, use_errno=True)\nLEAK = []\n"
                          "for flag, what in ((0x10000000, 'user'), (0x00020000, 'mount'), (0x40000000, 'net')):\n"
                          "    if libc.unshare(flag) == 0:\n        LEAK.append(what)\n"
                          "if libc.mount(b'none', b'/tmp', b'tmpfs', 0, None) == 0:\n    LEAK.append('mount')\n"
                          "try:\n    os.chroot('/tmp')\n    LEAK.append('chroot')\nexcept OSError:\n    pass\n"
                          "for p in ('/usr/@M@', '/etc/@M@', '/@M@'):\n    try:\n        open(p, 'w')\n"
                          "        LEAK.append(p)\n    except OSError:\n        pass\n" + LEAKED, 1.0),
    "leak_between_runs": ([
        "import ctypes, os\nlibc = ctypes.CDLL(None, use_errno=True)\nlibc.shmget(0x4c43, 4096, 0o1666)\n"
        "for p in ('/tmp/@M@_leak', '/dev/shm/@M@_leak', '@M@_leak'):\n    open(p, 'w').write('x')\n" + GOOD,
        "import ctypes, os\nlibc = ctypes.CDLL(None, use_errno=True)\nLEAK = libc.shmget(0x4c43, 0, 0) != -1 or "
        "any(os.path.exists(p) for p in ('/tmp/@M@_leak', '/dev/shm/@M@_leak', '@M@_leak'))\n" + LEAKED], 1.0),
}
IO_NAMES = ["fork_bomb", "memory_bomb", "infinite_loop_top", "huge_output", "sys_exit_0", "network", "daemon_survivor",
            "kill_parent", "setsid_exec_survivor", "exec_fork_bomb", "loopback_tcp", "signal_known_pids",
            "huge_stderr"]
IO_HONEST = {"daemon_survivor": 1.0, "kill_parent": 1.0, "setsid_exec_survivor": 1.0, "loopback_tcp": 1.0,
             "signal_known_pids": 1.0}


def sample(program: str, tests: dict, pid: str = "p") -> Trajectory:
    return Trajectory(prompt_id=pid, group_id="g", prompt_ids=[], response_ids=[], rollout_logprobs=[],
                      response_text=f"```python\n{program}```", meta={"tests": tests})


def _listen(family: int, address) -> socket.socket:
    s = socket.socket(family, socket.SOCK_STREAM)
    s.bind(address)
    s.listen(8)
    s.setblocking(False)
    return s


@dataclass
class Context:
    """What the programs attack, made by the process that runs them (root pytest or the uid-65534 driver)."""

    repo: str
    root: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="longcot-hostile-")))
    listeners: list[socket.socket] = field(default_factory=list)
    secret_value: str = field(default_factory=lambda: secrets.token_hex(8))

    def __post_init__(self) -> None:
        self.root.chmod(0o755)
        (self.root / "secret.txt").write_text("the answer is 42\n")
        (self.root / "secret.txt").chmod(0o644)
        (self.root / "open").mkdir()
        (self.root / "open").chmod(0o777)  # only the jail keeps a program out of a world-writable directory
        self.abstract = f"longcot-hostile-{self.secret_value}"
        self.listeners = [_listen(socket.AF_INET, ("127.0.0.1", 0)), _listen(socket.AF_UNIX, "\0" + self.abstract),
                          _listen(socket.AF_UNIX, str(self.root / "sock"))]
        os.environ[SECRET_ENV] = self.secret_value  # inherited by reward workers started after this

    def render(self, program: str, pids: list[int]) -> str:
        values = {"REPO": self.repo, "SELF": str(Path(__file__).resolve()), "SECRET": str(self.root / "secret.txt"),
                  "OPEN_DIR": str(self.root / "open"), "PORT": str(self.listeners[0].getsockname()[1]),
                  "ABSTRACT": self.abstract, "UNIX": str(self.root / "sock"), "PIDS": repr(pids),
                  "TEST_PID": str(os.getpid()), "HOME": str(Path.home()), "SECRET_VALUE": self.secret_value, "M": MARK}
        for key, value in values.items():
            program = program.replace(f"@{key}@", value)
        return program

    def connections(self) -> list[str]:
        """Connections any listener received (there must be none)."""
        got = []
        for s in self.listeners:
            try:
                conn, _ = s.accept()
                conn.close()
                got.append(str(s.getsockname()))
            except BlockingIOError:
                pass
        return got

    def files(self) -> list[str]:
        """What a program may have written where it should not (the secret is intact, the open dir empty)."""
        hits = [str(p) for p in (self.root / "open").iterdir()]
        if (self.root / "secret.txt").read_text() != "the answer is 42\n":
            hits.append("secret.txt changed")
        hits += [p for p in (f"{self.repo}/{MARK}", f"{Path.home()}/{MARK}", f"/{MARK}", f"/usr/{MARK}", f"/etc/{MARK}",
                             str(self.root / MARK)) if os.path.exists(p)]
        return hits

    def close(self) -> None:
        for s in self.listeners:
            s.close()
        os.environ.pop(SECRET_ENV, None)
        for p in sorted(self.root.rglob("*"), reverse=True):
            p.rmdir() if p.is_dir() and not p.is_symlink() else p.unlink()
        self.root.rmdir()


def processes() -> dict[int, tuple[int, int, str]]:
    """pid -> (uid, ppid, command) of every process."""
    out = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                status = (entry / "status").read_text()
                uid = int(status.split("\nUid:")[1].split()[0])
                ppid = int(status.split("\nPPid:")[1].split()[0])
                cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")[:120]
            except (OSError, IndexError, ValueError):
                continue
            out[int(entry.name)] = (uid, ppid, cmd)
    return out


def code_workers() -> list[int]:
    """Pids of the code reward's pool workers in this process."""
    from longcot.rewards.pool import _POOLS

    pool = _POOLS.get("code")
    return [w.proc.pid for w in pool._workers] if pool is not None else []


def sandbox_uids(workers: list[int]) -> set[int] | None:
    """The uids programs of this process's sandboxes run as: as root, 200000 + the pid of whoever started the
    sandbox (a worker, or this process for a start-up check), so another user's run of this suite on the same
    machine is not mistaken for ours; otherwise our own uid (None)."""
    return {SANDBOX_UID_MIN + p for p in (os.getpid(), *workers)} if os.getuid() == 0 else None


def _ours(uid: int, uids: set[int] | None) -> bool:
    return uid in uids if uids is not None else uid == os.getuid()


def leftovers(baseline: set[int], workers: list[int], uids: set[int] | None) -> list[str]:
    """Processes a program left: any new process with one of our sandbox ``uids`` (or, unprivileged, our own
    uid) that is not us, a reward worker or its sandbox server; and any child of a sandbox server (a program
    that outlived its run)."""
    me, procs = os.getpid(), processes()
    servers = {p for p, (_, ppid, _) in procs.items() if ppid in workers}
    bad = []
    for pid, (uid, ppid, cmd) in procs.items():
        if pid in baseline or pid == me or pid in workers or pid in servers:
            continue
        if _ours(uid, uids) or ppid in servers:
            bad.append(f"{pid} uid={uid} ppid={ppid} {cmd}")
    return bad


def stray_files(baseline: set[str], uids: set[int] | None) -> list[str]:
    """New entries in the shared temporary directories that one of our programs made, or that carry ``MARK``."""
    hits = []
    for d in ("/tmp", "/dev/shm", "/var/tmp"):
        for entry in os.scandir(d):
            try:
                uid = entry.stat(follow_symlinks=False).st_uid
            except OSError:
                continue
            if MARK in entry.name or (_ours(uid, uids) and entry.path not in baseline):
                hits.append(entry.path)
    return hits


def tmp_entries() -> set[str]:
    return {e.path for d in ("/tmp", "/dev/shm", "/var/tmp") for e in os.scandir(d)}


ASSERT_TESTS = {"kind": "assert", "prompt": "", "test": ADD_TEST, "entry_point": "add"}


def grade(name: str, kind: str, ctx: Context, pids: list[int]) -> float:
    """Grade the program ``name`` (assert or io style); a list of programs runs in turn, the last is scored."""
    program, _ = HOSTILE[name]
    programs = program if isinstance(program, list) else [program]
    if kind == "io":
        tests = {"kind": "io", "cases": [{"input": "2 3\n", "output": "5\n"}]}
        programs = [p.replace(GOOD, GOOD_IO).replace(LEAKED, "print(sum(map(int, input().split())) + bool(LEAK))\n")
                    for p in programs]
    else:
        tests = ASSERT_TESTS
    score = None
    for p in programs:
        (score,) = code_batch([sample(ctx.render(p, pids), tests, name)], limits=LIMITS)
    return score


def honest(name: str, kind: str) -> float:
    return IO_HONEST.get(name, 0.0) if kind == "io" else HOSTILE[name][1]


def attackable_pids() -> list[int]:
    """This process, its reward workers and their sandbox servers: what a program would like to kill."""
    workers = code_workers()
    return [os.getpid()] + workers + [p for p, (_, ppid, _) in processes().items() if ppid in workers]


def cases() -> list[tuple[str, str]]:
    return [(n, "assert") for n in sorted(HOSTILE)] + [(n, "io") for n in IO_NAMES]

