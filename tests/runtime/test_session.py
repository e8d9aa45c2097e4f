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
