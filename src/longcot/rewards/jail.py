"""The jail a model-written program runs in: namespaces, a read-only root, no privileges, nothing left behind.

Stdlib only, like :mod:`longcot.rewards.sandbox` (the sandbox server loads this file by path: the jail cannot
see the longcot package). The same for root and for any other user, because it starts with a new **user
namespace** (what unprivileged users may create; bubblewrap and rootless containers rely on the same kernel
feature):

* :func:`build_jail`, once per sandbox server: new user, mount and network namespaces (no network: a loopback
  that is down); nested user namespaces forbidden (``user.max_user_namespaces = 0`` inside ours, a limit that
  is per user namespace and leaves the host alone); ``pivot_root`` onto an empty read-only tmpfs holding
  read-only binds of the system and Python directories only (project files and data sets are invisible; the
  old root is unmounted, not merely hidden as a chroot would leave it);
* per program (the server forks it into new PID and IPC namespaces): :func:`drop_privileges` (as root: a uid
  of its own, ``200000 + worker pid`` outside; otherwise the caller's uid with every capability dropped and
  the bounding set emptied, so exec cannot regain one) and :func:`fresh_tmp` (empty size-capped tmpfs on
  ``/tmp`` and ``/dev/shm`` for every run);
* without namespaces (``sandbox: allow_unsafe`` only), :func:`reap_descendants` kills and reaps everything a
  program started, through the child-subreaper bit, since no PID namespace does it.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys

CLONE_NEWNS, CLONE_NEWNET, CLONE_NEWUSER = 0x00020000, 0x40000000, 0x10000000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_REMOUNT, MS_BIND, MS_REC = 1, 2, 4, 8, 32, 4096, 16384
MS_NOATIME, MS_NODIRATIME, MS_PRIVATE, MS_RELATIME = 1024, 2048, 1 << 18, 1 << 21
MNT_DETACH, AT_FDCWD, AT_RECURSIVE = 2, -100, 0x8000
MOUNT_ATTR_RDONLY, MOUNT_ATTR_NOSUID, MOUNT_ATTR_NODEV = 1, 2, 4
PR_CAPBSET_DROP, PR_SET_SECUREBITS, PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL = 24, 28, 47, 4
# noroot + locked, no_setuid_fixup off + locked, keep_caps off + locked, no_cap_ambient_raise + locked
SECUREBITS = 1 | 2 | 8 | 32 | 64 | 128
INNER_UID = 1000  # the program's uid inside the user namespace
LIBC = ctypes.CDLL(None, use_errno=True)
LIBC.syscall.restype = ctypes.c_long
_ARM = os.uname().machine == "aarch64"
SYS_CLONE, SYS_PIVOT_ROOT, SYS_MOUNT_SETATTR = (220, 41, 442) if _ARM else (56, 155, 442)  # aarch64 / x86_64
USERNS_HINT = ("user namespaces are unavailable to this user: check /proc/sys/user/max_user_namespaces, "
               "kernel.unprivileged_userns_clone (Debian/Ubuntu), AppArmor's "
               "kernel.apparmor_restrict_unprivileged_userns (Ubuntu 24.04), or a container's seccomp profile")


def check(ret: int, what: str) -> None:
    if ret != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def mount(src: str | None, dst: str, fstype: str | None, flags: int, data: str | None = None) -> None:
    enc = lambda s: s.encode() if s is not None else None
    check(LIBC.mount(enc(src), enc(dst), enc(fstype), ctypes.c_ulong(flags), enc(data)), f"mount {dst}")


# ---------------------------------------------------------------- namespaces and the new root


def _enter_namespaces(outer_uid: int) -> str:
    """New user, mount and network namespaces. A process inside a new user namespace cannot write its own id
    maps beyond one line, so a helper forked first (still outside) writes them. Root maps itself and
    ``INNER_UID`` -> ``outer_uid`` (the programs' own uid); anyone else maps ``INNER_UID`` -> itself."""
    uid, gid, me = os.geteuid(), os.getegid(), os.getpid()
    if uid == 0:
        maps = {"uid_map": f"0 0 1\n{INNER_UID} {outer_uid} 1\n", "gid_map": f"0 0 1\n{INNER_UID} {outer_uid} 1\n"}
    else:
        maps = {"setgroups": "deny", "uid_map": f"{INNER_UID} {uid} 1\n", "gid_map": f"{INNER_UID} {gid} 1\n"}
    go_r, go_w = os.pipe()
    res_r, res_w = os.pipe()
    helper = os.fork()
    if helper == 0:
        reply = b"ok"
        try:
            os.close(go_w)
            if os.read(go_r, 1) == b"1":
                for name, text in maps.items():
                    fd = os.open(f"/proc/{me}/{name}", os.O_WRONLY)
                    try:
                        os.write(fd, text.encode())
                    finally:
                        os.close(fd)
        except BaseException as e:  # noqa: BLE001 - reported to the zygote, which reports it to the caller
            reply = f"writing the id maps {maps}: {e}".encode()
        os.write(res_w, reply)
        os._exit(0)
    os.close(go_r)
    os.close(res_w)
    ret = LIBC.unshare(CLONE_NEWUSER | CLONE_NEWNS | CLONE_NEWNET)
    err = ctypes.get_errno()
    os.write(go_w, b"1" if ret == 0 else b"0")
    os.close(go_w)
    reply = os.read(res_r, 4096)
    os.close(res_r)
    os.waitpid(helper, 0)
    if ret != 0:
        raise OSError(err, f"unshare(user, mount, network): {os.strerror(err)}; {USERNS_HINT}")
    if reply != b"ok":
        hint = (f" (as root the programs get uid {outer_uid} of their own, which this user namespace, e.g. a "
                "container's, must map)") if uid == 0 else ""
        raise OSError(reply.decode(errors="replace") + hint)
    return "root" if uid == 0 else "user"


def _forbid_nested_userns() -> bool:
    """No user namespace inside ours: a program could otherwise get capabilities there (mount tmpfs without
    a size cap, more kernel surface). The limit is per user namespace, so this does not touch the host."""
    try:
        with open("/proc/sys/user/max_user_namespaces", "w") as f:
            f.write("0")
        return True
    except OSError:
        return False


def _read_only(path: str, recursive: bool, nodev: bool = True) -> None:
    """Make the mount at ``path`` (and below it, if ``recursive``) read-only and nosuid.

    ``mount_setattr`` (Linux 5.12) only adds flags, so it also works on mounts whose other flags a user
    namespace may not change (locked); older kernels get a remount that restates those flags."""
    attr = (ctypes.c_uint64 * 4)(MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID | (MOUNT_ATTR_NODEV if nodev else 0), 0, 0, 0)
    ret = LIBC.syscall(SYS_MOUNT_SETATTR, AT_FDCWD, path.encode(), AT_RECURSIVE if recursive else 0,
                       ctypes.byref(attr), ctypes.sizeof(attr))
    if ret == 0:
        return
    targets = [path] + (_submounts(path) if recursive else [])
    for target in targets:
        st = os.statvfs(target).f_flag
        flags = MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | (MS_NODEV if nodev else 0)
        for st_flag, ms_flag in ((4, MS_NODEV), (8, MS_NOEXEC), (1024, MS_NOATIME), (2048, MS_NODIRATIME),
                                 (4096, MS_RELATIME)):
            flags |= ms_flag if st & st_flag else 0
        mount(None, target, None, flags)


def _submounts(path: str) -> list[str]:
    with open("/proc/self/mountinfo") as f:
        points = [line.split()[4] for line in f]
    return [p for p in points if p.startswith(path.rstrip("/") + "/")]


def _bind_ro(path: str, root: str) -> None:
    target = root + path
    if os.path.isdir(path):
        os.makedirs(target, exist_ok=True)
    else:
        os.makedirs(os.path.dirname(target), exist_ok=True)
        open(target, "a").close()
    mount(path, target, None, MS_BIND | MS_REC)
    _read_only(target, recursive=True, nodev=not path.startswith("/dev/"))


def _ro_paths(extra: list[str]) -> list[str]:
    """System and Python directories the jail needs, outermost first, symlinks kept as symlinks."""
    paths = ["/usr", "/lib", "/lib64", "/lib32", "/bin", "/sbin", "/etc", sys.base_prefix, sys.prefix]
    paths += [p for p in sys.path if p and os.path.isdir(p) and "-packages" in p] + extra
    out: list[str] = []
    for p in sorted({os.path.abspath(p) for p in paths if os.path.lexists(p)}, key=len):
        if not any(p == q or p.startswith(q + "/") for q in out):
            out.append(p)
    return out


def fresh_tmp(tmp_mb: int) -> None:
    """Empty, size-capped ``/tmp`` and ``/dev/shm`` (inside the jail: a new tmpfs over the old one)."""
    for d in ("/tmp", "/dev/shm"):
        LIBC.umount2(d.encode(), MNT_DETACH)  # EINVAL the first time: nothing mounted there yet
        mount("tmpfs", d, "tmpfs", MS_NOSUID | MS_NODEV, f"mode=1777,size={tmp_mb}m,nr_inodes=4096")


def build_jail(outer_uid: int, tmp_mb: int, extra_ro: list[str]) -> list[str]:
    """Enter the namespaces and pivot into a minimal read-only root; the features it set up (raises OSError)."""
    who = _enter_namespaces(outer_uid)
    features = ["userns", "mount", "net", "uid" if who == "root" else "no_caps"]
    if _forbid_nested_userns():
        features.append("no_userns")
    mount(None, "/", None, MS_REC | MS_PRIVATE)
    mount("tmpfs", "/tmp", "tmpfs", MS_NOSUID | MS_NODEV, "mode=755,size=1m")  # private: invisible outside
    root = "/tmp/.jail"
    os.makedirs(root)
    mount("tmpfs", root, "tmpfs", MS_NOSUID | MS_NODEV, "mode=755,size=1m")
    for p in _ro_paths(extra_ro):
        if os.path.islink(p):
            os.makedirs(os.path.dirname(root + p), exist_ok=True)
            os.symlink(os.readlink(p), root + p)
        else:
            _bind_ro(p, root)
    for dev in ("null", "zero", "urandom", "random", "full"):
        _bind_ro("/dev/" + dev, root)
    for d in ("/tmp", "/dev/shm", "/.old"):
        os.makedirs(root + d, mode=0o755, exist_ok=True)
    check(LIBC.syscall(SYS_PIVOT_ROOT, root.encode(), (root + "/.old").encode()), "pivot_root")
    os.chdir("/")
    check(LIBC.umount2(b"/.old", MNT_DETACH), "umount old root")
    os.rmdir("/.old")
    fresh_tmp(1)
    mount(None, "/", None, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV)
    return features + ["pivot_root", "pid", "ipc"]


# ---------------------------------------------------------------- dropping privileges and reaping


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


def drop_privileges(uid: int | None) -> None:
    """Lose every capability for good: no root semantics on exec, an empty bounding set, no ambient set, then
    the uid of its own (root) or an empty capability set (otherwise)."""
    check(LIBC.prctl(PR_SET_SECUREBITS, SECUREBITS, 0, 0, 0), "securebits")
    for cap in range(64):
        if LIBC.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0:
            break
    LIBC.prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0)
    if uid is not None:
        os.setgroups([])
        os.setgid(uid)
        os.setuid(uid)
    data = (ctypes.c_uint32 * 6)()
    check(LIBC.capset(ctypes.byref(_CapHeader(0x20080522, 0)), data), "capset")


def _children() -> list[int]:
    """Direct children of this process (orphans land here too: we are a child subreaper)."""
    me, kids = os.getpid(), []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            if ppid == me:
                kids.append(int(entry))
    return kids


def reap_descendants() -> int:
    """Kill and reap every process below this one (unsafe mode: no PID namespace does it for us). A child's
    own children are reparented here when it dies, so repeat until none is left; returns how many."""
    killed = 0
    for _ in range(10000):
        kids = _children()
        if not kids:
            break
        for pid in kids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        for pid in kids:
            try:
                os.waitpid(pid, 0)
                killed += 1
            except ChildProcessError:
                pass
    return killed
