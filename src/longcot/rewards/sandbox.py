"""The sandbox server: a warm, isolated "zygote" that forks one jailed child per untrusted program.

Run as ``python -I sandbox.py CONFIG_JSON`` by :class:`longcot.rewards.executor.Sandbox` (stdlib only; it must
not import longcot, which the jail cannot see). Why a zygote: starting an interpreter per sample costs tens of
milliseconds; forking this small, pre-imported process costs about one. Why it never sees secrets: a forked
child inherits its parent's memory, and the program could read it (ctypes), so tests, expected outputs and
the verdict live only in the caller (the trusted side); this process receives code and stdin, nothing else.

Isolation, set up once at start when running as root (each step degrades to a warning otherwise):
new mount, network and IPC namespaces (no network: only a down loopback; no SysV/POSIX IPC objects);
a chroot whose root is an empty read-only tmpfs with read-only binds of the system and Python directories
only (so project files and data sets are invisible) and fresh size-capped tmpfs on /tmp and /dev/shm.
Per program: a new PID namespace (raw clone; killing its init, the program, kills every process it made,
even after setsid/double fork), a dedicated unprivileged uid (cannot signal this process or its caller,
cannot write outside /tmp), no_new_privs, rlimits (CPU, address space, file size, open files, processes,
no core), a fresh work directory, and everything under /tmp and /dev/shm wiped afterwards.

Protocol on fd ``sock`` (a Unix socket): 4-byte big-endian length + JSON, request then reply.
``{"op": "run", "code", "stdin", "limits"}`` -> ``{"exit", "signal", "timed_out", "stdout", "stderr", "cpu_s"}``.
``{"op": "serve", "code", "entry_point", "limits"}`` -> the program's end of a socket pair (SCM_RIGHTS), then
``{"op": "stop"}`` from the caller -> the same status reply. The program side of "serve" answers calls
``(args, kwargs)`` (pickle in) with JSON out: only plain data crosses back, never an object whose ``__eq__``
the program wrote.
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

CLONE_NEWNS, CLONE_NEWIPC, CLONE_NEWNET, CLONE_NEWPID = 0x00020000, 0x08000000, 0x40000000, 0x20000000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 1, 2, 4, 32, 4096, 16384, 1 << 18
PR_SET_PDEATHSIG, PR_SET_NO_NEW_PRIVS, PR_SET_CHILD_SUBREAPER = 1, 38, 36
PRELOAD = ("typing", "collections", "itertools", "functools", "math", "re", "heapq", "bisect", "string",
           "random", "json", "fractions", "decimal", "statistics", "hashlib", "copy", "dataclasses", "io")
LIBC = ctypes.CDLL(None, use_errno=True)
LIBC.syscall.restype = ctypes.c_long
SYS_CLONE = 56 if os.uname().machine == "x86_64" else 220  # x86_64 / aarch64


def _check(ret: int, what: str) -> None:
    if ret != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def _mount(src: str | None, dst: str, fstype: str | None, flags: int, data: str | None = None) -> None:
    enc = lambda s: s.encode() if s is not None else None
    _check(LIBC.mount(enc(src), enc(dst), enc(fstype), ctypes.c_ulong(flags), enc(data)), f"mount {dst}")


def _bind_ro(path: str, root: str) -> None:
    target = root + path
    if os.path.isdir(path):
        os.makedirs(target, exist_ok=True)
    else:
        os.makedirs(os.path.dirname(target), exist_ok=True)
        open(target, "a").close()
    _mount(path, target, None, MS_BIND | MS_REC)
    _mount(None, target, None, MS_BIND | MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV)


def _ro_paths(extra: list[str]) -> list[str]:
    """System and Python directories the jail needs, outermost first, symlinks kept as symlinks."""
    paths = ["/usr", "/lib", "/lib64", "/lib32", "/bin", "/sbin", "/etc", sys.base_prefix, sys.prefix]
    paths += [p for p in sys.path if p and os.path.isdir(p) and "site-packages" in p] + extra
    out: list[str] = []
    for p in sorted({os.path.abspath(p) for p in paths if os.path.lexists(p)}, key=len):
        if not any(p == q or p.startswith(q + "/") for q in out):
            out.append(p)
    return out


def build_jail(tmp_mb: int, extra_ro: list[str]) -> list[str]:
    """Enter new namespaces and chroot into a minimal read-only root; returns the features that worked."""
    features = []
    for flag, name in ((CLONE_NEWNS, "mount"), (CLONE_NEWNET, "net"), (CLONE_NEWIPC, "ipc")):
        if LIBC.unshare(flag) == 0:
            features.append(name)
    if "ipc" in features:  # no SysV or POSIX IPC objects at all: nothing can outlive a run there
        for knob, value in (("kernel/shmmni", "0"), ("kernel/msgmni", "0"), ("kernel/sem", "0 0 0 0"),
                            ("fs/mqueue/queues_max", "0")):
            try:
                with open("/proc/sys/" + knob, "w") as f:
                    f.write(value)
            except OSError:
                pass
    if "mount" not in features:
        return features
    _mount(None, "/", None, MS_REC | MS_PRIVATE)
    root = "/tmp/.jail"
    _mount("tmpfs", "/tmp", "tmpfs", MS_NOSUID | MS_NODEV, "mode=755,size=1m")  # private: invisible outside
    os.makedirs(root)
    _mount("tmpfs", root, "tmpfs", MS_NOSUID | MS_NODEV, "mode=755,size=1m")
    for p in _ro_paths(extra_ro):
        if os.path.islink(p):
            os.makedirs(os.path.dirname(root + p), exist_ok=True)
            os.symlink(os.readlink(p), root + p)
        else:
            _bind_ro(p, root)
    for dev in ("null", "zero", "urandom", "random", "full"):
        _bind_ro("/dev/" + dev, root)
    for d, mode in (("/tmp", "1777"), ("/dev/shm", "1777")):
        os.makedirs(root + d, exist_ok=True)
        _mount("tmpfs", root + d, "tmpfs", MS_NOSUID | MS_NODEV, f"mode={mode},size={tmp_mb}m,nr_inodes=4096")
    _mount(None, root, None, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV)
    os.chroot(root)
    os.chdir("/")
    return features + ["chroot"]


# ---------------------------------------------------------------- the jailed child (never returns)


def _limit(limits: dict, uid: int | None) -> None:
    mb = 1 << 20
    for res, value in ((resource.RLIMIT_CPU, limits["cpu_s"]), (resource.RLIMIT_AS, limits["memory_mb"] * mb),
                       (resource.RLIMIT_FSIZE, limits["file_mb"] * mb), (resource.RLIMIT_NOFILE, limits["files"]),
                       (resource.RLIMIT_NPROC, limits["procs"]), (resource.RLIMIT_CORE, 0)):
        resource.setrlimit(res, (int(value), int(value)))
    LIBC.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)
    LIBC.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if uid is not None:
        os.setgroups([])
        os.setgid(uid)
        os.setuid(uid)


def _child(job: dict, workdir: str, uid: int | None, keep_fd: int) -> None:
    """Set up fds, limits and identity, then run the program. Exit status is the program's."""
    try:
        os.setsid()
        stdin = os.open(os.path.join(workdir, ".stdin"), os.O_RDONLY)
        out = os.open(os.path.join(workdir, ".stdout"), os.O_WRONLY)
        err = os.open(os.path.join(workdir, ".stderr"), os.O_WRONLY)
        for fd, std in ((stdin, 0), (out, 1), (err, 2)):
            os.dup2(fd, std)
        if keep_fd >= 0:  # the call socket of "serve" becomes fd 3
            os.dup2(keep_fd, 3)
        os.closerange(4 if keep_fd >= 0 else 3, 1 << 16)
        _limit(job["limits"], uid)
        os.chdir(workdir)
        os.environ.clear()
        os.environ.update(PATH="/usr/local/bin:/usr/bin:/bin", HOME=workdir, TMPDIR="/tmp", LANG="C.UTF-8",
                          OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", PYTHONIOENCODING="utf-8")
        sys.stdin = open(0, encoding="utf-8", errors="replace", closefd=False)
        sys.stdout = open(1, "w", encoding="utf-8", closefd=False)
        sys.stderr = open(2, "w", encoding="utf-8", closefd=False)
        sys.argv = ["solution.py"]
    except BaseException:  # noqa: BLE001
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


def _wipe(path: str) -> None:
    for name in os.listdir(path):
        p = os.path.join(path, name)
        if os.path.isdir(p) and not os.path.islink(p):
            shutil.rmtree(p, ignore_errors=True)
        else:
            try:
                os.unlink(p)
            except OSError:
                pass


class Zygote:
    def __init__(self, sock: socket.socket, uid: int | None, features: list[str]):
        self.sock, self.uid, self.features = sock, uid, features
        # In the jail /tmp and /dev/shm are private tmpfs, wiped after every program; without it, only our
        # own directory (never the host's /tmp).
        self.scratch = ["/tmp", "/dev/shm"] if "chroot" in features else [tempfile.mkdtemp(prefix="longcot-sbx-")]

    def _prepare(self, job: dict) -> str:
        workdir = os.path.join(self.scratch[0], "work")
        os.makedirs(workdir, mode=0o700)
        with open(os.path.join(workdir, ".stdin"), "w", encoding="utf-8") as f:
            f.write(job.get("stdin") or "")
        for name in (".stdout", ".stderr"):
            open(os.path.join(workdir, name), "w").close()
        if self.uid is not None:
            for p in (workdir, *(os.path.join(workdir, n) for n in (".stdin", ".stdout", ".stderr"))):
                os.chown(p, self.uid, self.uid)
        return workdir

    def job(self, job: dict) -> dict:
        workdir = self._prepare(job)
        theirs = ours = None
        if job["op"] == "serve":
            ours, theirs = socket.socketpair()
        pid = self._spawn(job, workdir, ours, theirs)
        t0 = time.monotonic()
        if theirs is not None:
            theirs.close()
            socket.send_fds(self.sock, [b"F"], [ours.fileno()])
            ours.close()
        status = self._wait(pid, job["limits"]["wall_s"], watch_caller=ours is not None)
        status["wall_s"] = time.monotonic() - t0
        status.update(self._collect(workdir, job["limits"]["output_kb"] * 1024))
        for d in self.scratch:
            _wipe(d)
        return status

    def _spawn(self, job: dict, workdir: str, ours, theirs) -> int:
        """Fork the jailed child as the init of a new PID namespace (raw ``clone``: one fork, no helper)."""
        flags = CLONE_NEWPID if "pid" in self.features else 0
        pid = LIBC.syscall(SYS_CLONE, flags | signal.SIGCHLD, 0, 0, 0, 0) if flags else os.fork()
        if pid < 0:
            raise OSError(ctypes.get_errno(), "clone failed")
        if pid == 0:
            self.sock.close()
            if ours is not None:
                ours.close()
            _child(job, workdir, self.uid, theirs.fileno() if theirs is not None else -1)
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
        os.kill(pid, signal.SIGKILL)  # init of its PID namespace: takes every descendant with it
        _, st, ru = os.wait4(pid, 0)
        os.close(pidfd)
        if watch_caller:  # "serve" always ends with the caller's "stop", also when the program exited first
            _read(self.sock)
        exited = os.WIFEXITED(st) and not (timed_out or stopped)
        return {"exit": os.WEXITSTATUS(st) if exited else None,
                "signal": os.WTERMSIG(st) if os.WIFSIGNALED(st) and not (timed_out or stopped) else None,
                "timed_out": timed_out, "cpu_s": ru.ru_utime + ru.ru_stime}

    @staticmethod
    def _collect(workdir: str, cap: int) -> dict:
        out = {}
        for name in ("stdout", "stderr"):
            try:
                with open(os.path.join(workdir, "." + name), "rb") as f:
                    data = f.read(cap + 1)
            except OSError:
                data = b""
            out[name] = data[:cap].decode("utf-8", "replace")
            out[name + "_truncated"] = len(data) > cap
        return out


def _read(sock: socket.socket):
    (n,) = struct.unpack("!I", _recv_exact(sock, 4))
    return json.loads(_recv_exact(sock, n))


def main() -> None:
    cfg = json.loads(sys.argv[1])
    LIBC.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    sock = socket.socket(fileno=cfg["fd"])
    for m in PRELOAD + tuple(cfg.get("preload", ())):
        try:
            __import__(m)
        except ImportError:
            pass
    features: list[str] = []
    warnings: list[str] = []
    uid = None
    if os.geteuid() == 0:
        try:
            features = build_jail(cfg["tmp_mb"], cfg.get("extra_ro", []))
        except OSError as e:
            warnings.append(f"jail: {e}")
        uid = cfg["uid"]
        features.append("uid")
    else:
        warnings.append("not root: no namespaces, chroot or separate uid; rlimits and process groups only")
    LIBC.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    if uid is not None and "mount" in features:
        features.append("pid")
    z = Zygote(sock, uid, features)
    _send(sock, {"ready": True, "features": features, "warnings": warnings, "uid": uid})
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
