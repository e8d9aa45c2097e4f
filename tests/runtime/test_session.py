"""What a local Ray instance leaves behind when its run is killed: the next run removes those session directories,
and only those (no live process names them, and they are not brand new)."""

import os
import subprocess
import sys
import time

from longcot.runtime.session import remove_stale_sessions


def aged(path, seconds: float):
    path.mkdir()
    (path / "session_latest").mkdir()
    then = time.time() - seconds
    os.utime(path, (then, then))
    return path


def test_only_dead_and_old_session_directories_are_removed(tmp_path):
    dead = aged(tmp_path / "lcray-dead", 3600)
    fresh = aged(tmp_path / "lcray-fresh", 5)  # a run that has made its directory and is starting Ray
    live = aged(tmp_path / "lcray-live", 3600)
    other = aged(tmp_path / "ray-not-ours", 3600)
    # a process that names the directory on its command line, as Ray's GCS, raylet and agents do
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", f"--session-dir={live}/s"])
    try:
        assert remove_stale_sessions(tmp_path) == [dead]
    finally:
        holder.kill()
        holder.wait()
    assert not dead.exists() and fresh.exists() and live.exists() and other.exists()
    assert remove_stale_sessions(tmp_path) == [live]  # its process is gone now


def test_a_cluster_address_nobody_answers_fails_at_once_with_what_to_do(tmp_path):
    """cluster.address=host:port with nothing listening: Ray retried for minutes (over 3 measured) before failing
    with a traceback; the run stops in seconds with one error that says how to start the cluster. In a fresh
    process: a Ray instance this one holds would be used instead."""
    import socket

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    code = ("from longcot.config.schema import ClusterConfig; from longcot.runtime.session import RaySession; "
            f"RaySession(ClusterConfig(backend='ray', address='127.0.0.1:{port}'))")
    start = time.monotonic()
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "RAY_ADDRESS": ""})
    assert time.monotonic() - start < 60
    assert out.returncode != 0 and "ClusterNotFoundError: cluster.address=127.0.0.1" in out.stderr, out.stderr[-2000:]
    assert "Connection refused" in out.stderr and "ray start --head" in out.stderr
