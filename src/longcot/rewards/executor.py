"""The trusted side of code grading: drives a sandbox server and computes the verdict itself.

Runs inside a reward worker process (see :mod:`longcot.rewards.pool`), which owns one sandbox server
(:mod:`longcot.rewards.sandbox`). The split is the point: the untrusted program only ever gets its code and
its stdin; tests, expected outputs and the verdict stay here. So nothing the program does (exit early with
status 0, print "PASSED", replace builtins or ``AssertionError``, return an object whose ``__eq__`` is always
true, read files, signal other processes) changes the score it gets:

* io tests: the program runs once per case with the case's input; its stdout is compared here, line by line
  (trailing whitespace ignored); a case passes only on exit status 0 within the limits.
* assert tests (HumanEval style, program = prompt + completion + test + ``check(entry_point)``): the program
  (prompt + completion) runs in the jail and serves calls to ``entry_point``; ``check`` runs *here* (with the
  prompt's helpers) against a proxy that ships arguments in and plain data back. A check that returns passes.
"""

from __future__ import annotations

import ast
import atexit
import builtins
import json
import logging
import os
import pickle
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass

from longcot.rewards import sandbox as _sandbox_module
from longcot.rewards.errors import RewardSetupError

log = logging.getLogger(__name__)
MAX_FRAME = 8 << 20  # bytes a program may send back for one call


@dataclass
class Limits:
    """Per program run (per case for io tests, per whole check for assert tests)."""

    wall_s: float = 5.0
    cpu_s: int = 5
    memory_mb: int = 1024
    file_mb: int = 16
    files: int = 64
    procs: int = 32
    output_kb: int = 1024
    tmp_mb: int = 64


def _frame(obj) -> bytes:
    data = json.dumps(obj).encode()
    return struct.pack("!I", len(data)) + data


def _read_frame(sock: socket.socket, cap: int = MAX_FRAME):
    head = _recv(sock, 4)
    (n,) = struct.unpack("!I", head)
    if n > cap:
        raise ValueError(f"reply of {n} bytes is over the {cap}-byte limit")
    return json.loads(_recv(sock, n))


def _recv(sock: socket.socket, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = sock.recv(min(n - len(buf), 1 << 20))
        if not chunk:
            raise EOFError("connection closed")
        buf += chunk
    return buf


POLICIES = ("required", "allow_unsafe")
PROBE = "import os\nprint('ok', os.path.exists({marker!r}))\n"


class SandboxUnavailable(RewardSetupError):
    """The jail cannot start on this machine (or a program cannot run in it): stop, do not grade 0."""


class Sandbox:
    """One sandbox server process (started lazily, restarted when it dies), checked by a probe at start."""

    def __init__(self, policy: str = "required", tmp_mb: int = 64):
        if policy not in POLICIES:
            raise ValueError(f"code reward: sandbox must be one of {list(POLICIES)}, got {policy!r}")
        self.policy, self.tmp_mb = policy, tmp_mb
        self.proc: subprocess.Popen | None = None
        self.sock: socket.socket | None = None
        self.features: list[str] = []
        self.warnings: list[str] = []

    def _start(self) -> None:
        ours, theirs = socket.socketpair()
        cfg = {"fd": theirs.fileno(), "uid": 200000 + os.getpid(), "tmp_mb": self.tmp_mb, "policy": self.policy}
        # An empty environment: a forked program can read its parent's original environment block (posix.environ),
        # and the trainer's may hold tokens.
        self.proc = subprocess.Popen([sys.executable, "-I", _sandbox_module.__file__, json.dumps(cfg)],
                                     pass_fds=[theirs.fileno()], stdin=subprocess.DEVNULL, env={})
        theirs.close()
        self.sock = ours
        try:
            hello = _read_frame(ours)
        except (EOFError, OSError, ValueError) as e:
            self.close()
            raise SandboxUnavailable(f"the code sandbox server died at start ({e})") from None
        self.features, self.warnings = hello["features"], hello["warnings"]
        if not hello["ready"]:
            self.close()
            raise SandboxUnavailable(f"{hello['error']}. Enable user namespaces (the jail needs one, for root "
                                     "too: e.g. sysctl user.max_user_namespaces, or a container started with "
                                     "them), or, only for programs you trust, set the code reward's option "
                                     "'sandbox: allow_unsafe' (runs them without isolation)")
        for w in self.warnings:
            log.warning("code sandbox: %s", w)
        self._probe()

    def _probe(self) -> None:
        """Run a tiny program: a jail that starts but cannot run anything (an unmapped uid in a container,
        a missing library) would otherwise score every sample 0 without a word; a jail that can see the
        caller's files is no jail."""
        with tempfile.NamedTemporaryFile(prefix="longcot-probe-") as marker:
            st = self.run(PROBE.format(marker=marker.name), "", Limits(wall_s=20, cpu_s=10))
        jailed = "unsafe" not in self.features
        if st["exit"] != 0 or not st["stdout"].startswith("ok"):
            self.close()
            raise SandboxUnavailable(f"the code sandbox started but a test program failed in it (exit {st['exit']}, "
                                     f"signal {st['signal']}, timed out {st['timed_out']}): {st['stderr'][-500:]}")
        if jailed and st["stdout"].split()[1] != "False":
            self.close()
            raise SandboxUnavailable("the code sandbox started but a program in it could see the caller's /tmp")

    def ensure(self) -> Sandbox:
        if self.proc is None or self.proc.poll() is not None:
            self.close()
            self._start()
        return self

    def close(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
        if self.sock is not None:
            self.sock.close()
        self.proc = self.sock = None

    def run(self, code: str, stdin: str, limits: Limits) -> dict:
        """Run ``code`` as ``__main__`` with ``stdin``; the status, stdout and stderr."""
        self.ensure()
        self.sock.sendall(_frame({"op": "run", "code": code, "stdin": stdin, "limits": asdict(limits)}))
        return self._status()

    def serve(self, code: str, entry_point: str, limits: Limits) -> socket.socket:
        """Start ``code`` serving calls to ``entry_point``; the socket to call it on. End with :meth:`stop`."""
        self.ensure()
        self.sock.sendall(_frame({"op": "serve", "code": code, "entry_point": entry_point,
                                  "limits": asdict(limits)}))
        _, fds, _, _ = socket.recv_fds(self.sock, 1, 1)
        return socket.socket(fileno=fds[0])

    def stop(self) -> dict:
        self.sock.sendall(_frame({"op": "stop"}))
        return self._status()

    def _status(self) -> dict:
        reply = _read_frame(self.sock, cap=1 << 26)
        if "error" in reply:
            raise RuntimeError(f"sandbox server: {reply['error']}")
        return reply


_SANDBOX: Sandbox | None = None


@atexit.register
def _close_sandbox() -> None:
    """Stop and reap this process's sandbox server when the reward worker exits (the pool closes it)."""
    if _SANDBOX is not None:
        _SANDBOX.close()


def sandbox(policy: str = "required") -> Sandbox:
    """This process's sandbox server (restarted when the policy changes)."""
    global _SANDBOX
    if _SANDBOX is not None and _SANDBOX.policy != policy:
        _SANDBOX.close()
        _SANDBOX = None
    if _SANDBOX is None:
        _SANDBOX = Sandbox(policy)
    return _SANDBOX.ensure()


# ------------------------------------------------------------------ io tests


def _lines(text: str) -> list[str]:
    lines = [line.rstrip() for line in text.strip("\n").split("\n")]
    while lines and not lines[-1]:
        lines.pop()
    return lines


def run_io(code: str, cases: list[dict], limits: dict, mode: str = "all", policy: str = "required") -> dict:
    """Score ``code`` on stdin/stdout ``cases``; ``mode="all"`` stops at the first failing case."""
    lim, box, passed, details = Limits(**limits), sandbox(policy), 0, []
    for case in cases:
        st = box.run(code, str(case.get("input", "")), lim)
        ok = st["exit"] == 0 and not st["stdout_truncated"] and _lines(st["stdout"]) == _lines(str(case["output"]))
        passed += ok
        details.append({"ok": ok, "exit": st["exit"], "signal": st["signal"], "timed_out": st["timed_out"],
                        "stderr": st["stderr"][-300:]})
        if not ok and mode == "all":
            break
    score = passed / len(cases) if mode == "fraction" else float(passed == len(cases))
    return {"score": score, "passed": passed, "total": len(cases), "cases": details}


# ------------------------------------------------------------------ assert tests

_TAGS = {"tuple": tuple, "set": set, "frozenset": frozenset}


def _decode(v):
    """Plain data back from the program's JSON (see ``sandbox._encode``)."""
    if isinstance(v, list):
        return [_decode(x) for x in v]
    if isinstance(v, dict):
        ((tag, x),) = v.items()
        if tag in _TAGS:
            return _TAGS[tag](_decode(i) for i in x)
        if tag == "dict":
            return {_decode(k): _decode(val) for k, val in x}
        if tag == "complex":
            return complex(float(x[0]), float(x[1]))
        if tag == "bytes":
            return str(x).encode("latin-1")
        raise ValueError(f"unknown tag {tag!r}")
    if v is None or type(v) in (bool, int, float, str):
        return v
    raise ValueError(f"unexpected {type(v).__name__}")


def _exception(name: str, msg: str) -> Exception:
    cls = getattr(builtins, str(name), None)
    if isinstance(cls, type) and issubclass(cls, Exception):
        try:
            return cls(msg)
        except Exception:  # noqa: BLE001 - e.g. UnicodeDecodeError needs more arguments
            pass
    return RuntimeError(f"{name}: {msg}")


class Remote:
    """Stands in for the candidate function inside ``check``: each call runs in the jail."""

    def __init__(self, sock: socket.socket, deadline: float):
        self.sock, self.deadline, self.dead, self.calls = sock, deadline, False, 0

    def _read(self):
        self.sock.settimeout(max(1e-3, self.deadline - time.monotonic()))
        try:
            return _read_frame(self.sock)
        except Exception as e:  # noqa: BLE001 - timeout, EOF, garbage: the candidate is gone for good
            self.dead = True
            raise TimeoutError(f"candidate did not answer: {type(e).__name__}: {e}") from None

    def start(self) -> None:
        hello = self._read()
        if not (isinstance(hello, dict) and hello.get("ready") is True):
            self.dead = True
            raise RuntimeError(f"program did not define the entry point: {hello!r}")

    def __call__(self, *args, **kwargs):
        if self.dead:
            raise RuntimeError("the candidate process is gone")
        self.calls += 1
        data = pickle.dumps((args, kwargs))
        try:
            self.sock.sendall(struct.pack("!I", len(data)) + data)
        except OSError as e:
            self.dead = True
            raise RuntimeError(f"candidate is gone: {e}") from None
        reply = self._read()
        try:
            if "exc" in reply:
                exc = _exception(*reply["exc"])
            else:
                return _decode(reply["value"])
        except Exception as e:  # noqa: BLE001 - malformed reply
            self.dead = True
            raise RuntimeError(f"malformed reply from the candidate: {e}") from None
        raise exc


def _counting(test: str) -> ast.Module:
    """``test`` with each top-level statement of ``check`` that asserts wrapped to count passes and fails."""
    tree = ast.parse(test)
    for node in tree.body:
        if isinstance(node, ast.FunctionDef) and node.name == "check":
            body = []
            for st in node.body:
                if any(isinstance(n, ast.Assert) for n in ast.walk(st)):
                    wrap = ast.parse("try:\n pass\nexcept Exception:\n __lc__[1] += 1\nelse:\n __lc__[0] += 1").body[0]
                    wrap.body = [st]
                    st = wrap
                body.append(st)
            node.body = body
    return ast.fix_missing_locations(tree)


def _alarm(signum, frame):
    raise TimeoutError("check() ran past its wall-clock limit")


def run_assert(prompt: str, completion: str, test: str, entry_point: str, limits: dict, mode: str = "all",
               policy: str = "required") -> dict:
    """Score a HumanEval-style problem: ``check(entry_point)`` runs here, the candidate in the jail."""
    lim, box = Limits(**limits), sandbox(policy)
    program = prompt + completion if completion[:1].isspace() else prompt + "\n" + completion
    remote = Remote(box.serve(program, entry_point, lim), time.monotonic() + lim.wall_s)
    ns: dict = {"__name__": "__check__", "__lc__": [0, 0]}
    ok, error = False, None
    previous = signal.signal(signal.SIGALRM, _alarm)
    signal.setitimer(signal.ITIMER_REAL, lim.wall_s + 1.0)  # backstop for a check that loops by itself
    try:
        remote.start()
        exec(compile(prompt, "prompt.py", "exec"), ns)
        exec(compile(_counting(test) if mode == "fraction" else test, "test.py", "exec"), ns)
        ns["check"](remote)
        ok = True
    except BaseException as e:  # noqa: BLE001 - any failure of check is a failed test, never our crash
        error = f"{type(e).__name__}: {e}"[:300]
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
        remote.sock.close()
        st = box.stop()
    good, bad = ns["__lc__"]
    if mode == "fraction":
        score = good / (good + bad) if ok and good + bad else 0.0
    else:
        score = float(ok)
    return {"score": score, "passed": good, "failed": bad, "calls": remote.calls, "error": error,
            "timed_out": st["timed_out"], "stderr": st["stderr"][-300:]}


def grade(tests: dict, code: str, limits: dict, mode: str, policy: str = "required") -> dict:
    """Pool entry point: score ``code`` on ``tests`` (``{"kind": "io" | "assert", ...}``)."""
    kind = tests.get("kind")
    if kind == "io":
        return run_io(code, list(tests["cases"]), limits, mode, policy)
    if kind == "assert":
        return run_assert(tests.get("prompt", ""), code, tests["test"], tests["entry_point"], limits, mode, policy)
    raise ValueError(f"tests.kind must be 'io' or 'assert', got {kind!r}")


def features(policy: str = "required") -> dict:
    """What isolation the sandbox server achieved on this machine (raises :class:`SandboxUnavailable`)."""
    box = sandbox(policy)
    return {"features": box.features, "warnings": box.warnings}


def check_sandbox(policy: str = "required") -> dict:
    """Start a sandbox server in this process, run the probe, stop it: the start-up check before any work
    (``longcot train``/``score`` call it through the code reward's ``check``). Raises :class:`SandboxUnavailable`."""
    box = Sandbox(policy)
    try:
        box.ensure()
        return {"features": box.features, "warnings": box.warnings}
    finally:
        box.close()
