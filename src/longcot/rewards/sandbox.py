"""The sandbox server: a warm, isolated "zygote" that forks one jailed child per untrusted program.

Run as ``python -I sandbox.py CONFIG_JSON`` by :class:`longcot.rewards.executor.Sandbox` (stdlib only; it must
not import longcot, which the jail cannot see). Why a zygote: starting an interpreter per sample costs tens of
milliseconds; forking this small, pre-imported process costs about one. Why it never sees secrets: a forked
child inherits its parent's memory, and the program could read it (ctypes), so tests, expected outputs and
the verdict live only in the caller (the trusted side); this process receives code and stdin, nothing else.

The jail (:mod:`longcot.rewards.jail`) is the same for root and for any other user: a user namespace first,
then mount and network namespaces and a read-only root, built once when this server starts; per program a
fork into new PID and IPC namespaces (killing its init, the program, kills every process it made, even after
setsid/double fork), an identity without any capability, ``no_new_privs``, rlimits (CPU, address space, file
size, open files, processes, no core), fresh ``/tmp`` and ``/dev/shm``, and stdin/stdout/stderr as memfds that
only this process reads back (no name the program could swap for a FIFO or a symlink).

``policy="allow_unsafe"`` runs programs without namespaces when the kernel refuses them (rlimits, a session
of their own, every descendant killed and reaped through the child-subreaper bit); ``"required"`` (default)
refuses to start instead. Protocol on fd ``sock`` (a Unix socket): 4-byte big-endian length + JSON.
Hello: ``{"ready", "features", "warnings", "error"}``. ``{"op": "run", "code", "stdin", "limits"}`` ->
``{"exit", "signal", "timed_out", "stdout", "stderr", "cpu_s"}``. ``{"op": "serve", "code", "entry_point",
"limits"}`` -> the program's end of a socket pair (SCM_RIGHTS), then ``{"op": "stop"}`` from the caller ->
the same status reply. The program side of "serve" answers calls ``(args, kwargs)`` (pickle in) with JSON
out: only plain data crosses back, never an object whose ``__eq__`` the program wrote.
"""

from __future__ import annotations

import ctypes
import json
import os
import pickle
import resource
import select
import shutil
import signal
import socket
import struct
import sys
import tempfile
import time
import traceback


def _jail_module():
    """:mod:`longcot.rewards.jail`, loaded by path: this file runs as ``python -I sandbox.py`` (no longcot)."""
    import importlib.util

    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "jail.py")
    spec = importlib.util.spec_from_file_location("longcot_jail", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


jail = _jail_module()
PRELOAD = ("typing", "collections", "itertools", "functools", "math", "re", "heapq", "bisect", "string",
           "random", "json", "fractions", "decimal", "statistics", "hashlib", "copy", "dataclasses", "io")
PR_SET_PDEATHSIG, PR_SET_CHILD_SUBREAPER, PR_SET_NO_NEW_PRIVS = 1, 36, 38
CLONE_NEWPID, CLONE_NEWIPC = 0x20000000, 0x08000000
LIBC = jail.LIBC


# ---------------------------------------------------------------- the jailed child (never returns)


def _limit(limits: dict) -> None:
    mb = 1 << 20
    for res, value in ((resource.RLIMIT_CPU, limits["cpu_s"]), (resource.RLIMIT_AS, limits["memory_mb"] * mb),
                       (resource.RLIMIT_FSIZE, limits["file_mb"] * mb), (resource.RLIMIT_NOFILE, limits["files"]),
                       (resource.RLIMIT_NPROC, limits["procs"]), (resource.RLIMIT_CORE, 0)):
        resource.setrlimit(res, (int(value), int(value)))
    LIBC.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)
    LIBC.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def _child(job: dict, workdir: str, stdio: list[int], jailed: bool, root: bool, keep_fd: int) -> None:
    """Set up fds, limits and identity, then run the program. Exit status is the program's."""
    try:
        os.setsid()
        for fd, std in zip(stdio, (0, 1, 2), strict=True):
            os.dup2(fd, std)
        if keep_fd >= 0:  # the call socket of "serve" becomes fd 3
            os.dup2(keep_fd, 3)
        os.closerange(4 if keep_fd >= 0 else 3, 1 << 16)
        _limit(job["limits"])
        if jailed:
            jail.drop_privileges(jail.INNER_UID if root else None)
        os.chdir(workdir)
        os.environ.clear()
        os.environ.update(PATH="/usr/local/bin:/usr/bin:/bin", HOME=workdir, TMPDIR="/tmp", LANG="C.UTF-8",
                          OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", PYTHONIOENCODING="utf-8")
        sys.stdin = open(0, encoding="utf-8", errors="replace", closefd=False)
        sys.stdout = open(1, "w", encoding="utf-8", closefd=False)
        sys.stderr = open(2, "w", encoding="utf-8", closefd=False)
        sys.argv = ["solution.py"]
    except BaseException as e:  # noqa: BLE001 - the caller's start-up probe shows this message
        os.write(2, f"sandbox: could not set up the program: {type(e).__name__}: {e}\n".encode())
        os._exit(125)
    code = 0
    try:
        ns = {"__name__": "__main__", "__builtins__": __builtins__}
        exec(compile(job["code"], "solution.py", "exec"), ns)
        if job["op"] == "serve":
            _serve_calls(ns, job["entry_point"])
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    except BaseException:  # noqa: BLE001
        traceback.print_exc()
        code = 1
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    finally:
        os._exit(code & 0xFF)


def _encode(v, depth: int = 0):
    """Plain data only, by exact type: a subclass (or any object with its own ``__eq__``) is refused."""
    if depth > 64:
        raise ValueError("result nested too deeply")
    t = type(v)
    if v is None or t in (bool, int, float, str):
        return v
    if t is list:
        return [_encode(x, depth + 1) for x in v]
    if t in (tuple, set, frozenset):
        return {t.__name__: [_encode(x, depth + 1) for x in v]}
    if t is dict:
        return {"dict": [[_encode(k, depth + 1), _encode(x, depth + 1)] for k, x in v.items()]}
    if t is complex:
        return {"complex": [v.real, v.imag]}
    if t is bytes:
        return {"bytes": v.decode("latin-1")}
    if t.__module__ == "numpy" and hasattr(v, "tolist"):
        return _encode(v.tolist(), depth + 1)
    raise TypeError(f"the candidate returned a {t.__module__}.{t.__qualname__}, which is not plain data")


def _send(sock: socket.socket, obj) -> None:
    data = json.dumps(obj).encode()
    sock.sendall(struct.pack("!I", len(data)) + data)


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise EOFError
        buf += chunk
    return buf


def _serve_calls(ns: dict, entry_point: str) -> None:
    sock = socket.socket(fileno=3)
    fn = ns.get(entry_point)
    _send(sock, {"ready": callable(fn), "error": None if callable(fn) else f"no function '{entry_point}'"})
    while True:
        try:
            (n,) = struct.unpack("!I", _recv_exact(sock, 4))
            args, kwargs = pickle.loads(_recv_exact(sock, n))
        except EOFError:
            return
        try:
            reply = {"value": _encode(fn(*args, **kwargs))}
        except Exception as e:  # noqa: BLE001 - reported to the checker, which re-raises it by type name
            reply = {"exc": [type(e).__name__, str(e)[:500]]}
        _send(sock, reply)


# ---------------------------------------------------------------- the zygote loop


class Zygote:
    def __init__(self, sock: socket.socket, features: list[str], tmp_mb: int):
        self.sock, self.features, self.tmp_mb = sock, features, tmp_mb
        self.jailed = "pivot_root" in features
        self.root = "uid" in features

    def _prepare(self, job: dict) -> tuple[str, list[int]]:
        """A fresh work directory and the program's stdin/stdout/stderr as memfds (no name the program
        could replace with a FIFO or a symlink before we read it back)."""
        if self.jailed:
            jail.fresh_tmp(self.tmp_mb)
            workdir = "/tmp/work"
            os.makedirs(workdir, mode=0o700)
            if self.root:
                os.chown(workdir, jail.INNER_UID, jail.INNER_UID)
        else:
            workdir = tempfile.mkdtemp(prefix="longcot-sbx-")
        stdio = [os.memfd_create(name) for name in ("stdin", "stdout", "stderr")]
        os.write(stdio[0], (job.get("stdin") or "").encode())
        os.lseek(stdio[0], 0, os.SEEK_SET)
        return workdir, stdio

    def job(self, job: dict) -> dict:
        workdir, stdio = self._prepare(job)
        theirs = ours = None
        if job["op"] == "serve":
            ours, theirs = socket.socketpair()
        try:
            pid = self._spawn(job, workdir, stdio, ours, theirs)
            t0 = time.monotonic()
            if theirs is not None:
                theirs.close()
                socket.send_fds(self.sock, [b"F"], [ours.fileno()])
                ours.close()
            status = self._wait(pid, job["limits"]["wall_s"], watch_caller=ours is not None)
            status["wall_s"] = time.monotonic() - t0
            status.update(self._collect(stdio[1:], job["limits"]["output_kb"] * 1024))
        finally:
            for fd in stdio:
                os.close(fd)
            if self.jailed:
                jail.fresh_tmp(1)  # nothing of this run stays, not even in our private mount namespace
            else:
                shutil.rmtree(workdir, ignore_errors=True)
        return status

    def _spawn(self, job: dict, workdir: str, stdio: list[int], ours, theirs) -> int:
        """Fork the child: in the jail, as the init of new PID and IPC namespaces (raw ``clone``: one fork)."""
        if self.jailed:
            pid = LIBC.syscall(jail.SYS_CLONE, CLONE_NEWPID | CLONE_NEWIPC | signal.SIGCHLD, 0, 0, 0, 0)
        else:
            pid = os.fork()
        if pid < 0:
            raise OSError(ctypes.get_errno(), "clone failed")
        if pid == 0:
            self.sock.close()
            if ours is not None:
                ours.close()
            _child(job, workdir, stdio, self.jailed, self.root, theirs.fileno() if theirs is not None else -1)
        return pid

    def _wait(self, pid: int, wall_s: float, watch_caller: bool) -> dict:
        pidfd = os.pidfd_open(pid)
        deadline = time.monotonic() + wall_s
        timed_out = stopped = False
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                timed_out = True
                break
            ready, _, _ = select.select([pidfd, self.sock] if watch_caller else [pidfd], [], [], left)
            if pidfd in ready:
                break
            if self.sock in ready:
                stopped = True  # the caller sent "stop" (read below) or went away
                break
        if self.jailed:
            os.kill(pid, signal.SIGKILL)  # init of its PID namespace: takes every descendant with it
        else:
            for kill in (os.killpg, os.kill):  # its session's group, then whatever escaped it (below)
                try:
                    kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        _, st, ru = os.wait4(pid, 0)
        os.close(pidfd)
        if not self.jailed:
            jail.reap_descendants()
        if watch_caller:  # "serve" always ends with the caller's "stop", also when the program exited first
            _read(self.sock)
        exited = os.WIFEXITED(st) and not (timed_out or stopped)
        return {"exit": os.WEXITSTATUS(st) if exited else None,
                "signal": os.WTERMSIG(st) if os.WIFSIGNALED(st) and not (timed_out or stopped) else None,
                "timed_out": timed_out, "cpu_s": ru.ru_utime + ru.ru_stime}

    @staticmethod
    def _collect(fds: list[int], cap: int) -> dict:
        out = {}
        for name, fd in zip(("stdout", "stderr"), fds, strict=True):
            data = os.pread(fd, cap + 1, 0)
            out[name] = data[:cap].decode("utf-8", "replace")
            out[name + "_truncated"] = len(data) > cap
        return out


def _read(sock: socket.socket):
    (n,) = struct.unpack("!I", _recv_exact(sock, 4))
    return json.loads(_recv_exact(sock, n))


def start(cfg: dict) -> tuple[list[str], list[str], str | None]:
    """Build the jail as the policy allows: (features, warnings, error that stops the server)."""
    try:
        return jail.build_jail(cfg["uid"], cfg["tmp_mb"], cfg.get("extra_ro", [])), [], None
    except OSError as e:
        reason = f"the code sandbox cannot isolate programs here: {e}"
    if cfg.get("policy", "required") != "allow_unsafe":
        return [], [], reason
    return ["unsafe"], [reason + "; sandbox=allow_unsafe: running programs WITHOUT isolation (rlimits and a "
                        "session of their own only: they can read and write your files and use the network)"], None


def main() -> None:
    cfg = json.loads(sys.argv[1])
    LIBC.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    sock = socket.socket(fileno=cfg["fd"])
    for m in PRELOAD + tuple(cfg.get("preload", ())):
        try:
            __import__(m)
        except ImportError:
            pass
    features, warnings, error = start(cfg)
    LIBC.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    _send(sock, {"ready": error is None, "features": features, "warnings": warnings, "error": error})
    if error is not None:
        return
    z = Zygote(sock, features, cfg["tmp_mb"])
    while True:
        try:
            job = _read(sock)
        except (EOFError, OSError):
            return
        try:
            _send(sock, z.job(job))
        except (BrokenPipeError, ConnectionResetError):
            return
        except Exception as e:  # noqa: BLE001
            _send(sock, {"error": f"{type(e).__name__}: {e}", "trace": traceback.format_exc()[-2000:]})


if __name__ == "__main__":
    main()
