"""stress-ng's filesystem stressors on the mount, all at once, on every mode.

About 25 stressor processes (file data, directories, dentries, hard and
symbolic links, renames, fallocate and hole punching, seeks, shared file
mmaps with msync, xattrs, locks, chmod, utime, copy_file_range) hammer one
mount concurrently for a few seconds with `--verify`, so each checks what
it reads back. Then: stress-ng must exit 0 (2 would be a failed stressor,
3 a resource limit), the daemon must still be alive and serving, stress-ng
must have cleaned up after itself (so every unlink and rmdir worked), and
once the kernel drops its caches the daemon must hold no more backing
fds than before (no open file or inode leaked under load).

ZCFS_STRESS_SECONDS (default 3) sets the run time (scripts/stress_long.sh).
"""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

from conftest import wait_until

SECONDS = int(os.environ.get("ZCFS_STRESS_SECONDS", "3"))

# Flags checked against stress-ng 0.15 (Debian 12); --mmap-file makes the
# mmap stressor map a file in the temp path instead of anonymous memory.
STRESSORS = [
    "--hdd", "2", "--hdd-bytes", "64m",
    "--dir", "2",
    "--dentry", "2",
    "--link", "2",
    "--symlink", "2",
    "--rename", "2",
    "--fallocate", "2", "--fallocate-bytes", "8m",
    "--fpunch", "1",
    "--seek", "2", "--seek-size", "16m",
    "--mmap", "1", "--mmap-file", "--mmap-bytes", "4m",
    "--xattr", "1",
    "--lockf", "1",
    "--flock", "1",
    "--chmod", "1",
    "--utime", "1",
    "--copy-file", "1",
]

EXIT_MEANINGS = {1: "error", 2: "a stressor failed", 3: "resource limit", 4: "stressor not implemented",
                 5: "killed by a signal", 6: "killed (unexpectedly)", 7: "bad metrics"}

pytestmark = pytest.mark.skipif(shutil.which("stress-ng") is None,
                                reason="stress-ng not installed (scripts/setup.sh)")


def backing_fds(pid: int, backing) -> list[str]:
    """What the daemon's fds into the backing dir point at (not its pipes, sockets, /dev/fuse)."""
    real, held = os.path.realpath(backing), []
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except FileNotFoundError:
            continue  # closed meanwhile
        if target == real or target.startswith(real + "/"):
            held.append(target)
    return sorted(held)


def test_stress_ng(mnt, tmp_path):
    pid = mnt.process.pid
    baseline = backing_fds(pid, mnt.backing)
    command = ["stress-ng", "--temp-path", str(mnt.path), *STRESSORS, "--timeout", f"{SECONDS}s",
               "--verify", "--metrics-brief"]
    done = subprocess.run(command, capture_output=True, text=True, cwd=tmp_path, timeout=SECONDS * 10 + 120)
    output = (done.stdout + done.stderr)[-6000:]
    assert done.returncode == 0, \
        f"[{mnt.mode}] stress-ng exit {done.returncode} ({EXIT_MEANINGS.get(done.returncode, '?')}):\n{output}"
    assert "successful run completed" in output, output

    # The daemon is alive and the mount still serves.
    assert mnt.process.poll() is None, f"[{mnt.mode}] the daemon died under stress-ng"
    os.statvfs(mnt.path)
    data = os.urandom(300_000)
    (mnt.path / "after-stress").write_bytes(data)
    assert (mnt.path / "after-stress").read_bytes() == data
    # stress-ng removed everything it made: every unlink and rmdir reached the backing dir.
    assert os.listdir(mnt.path) == ["after-stress"]
    assert os.listdir(mnt.backing) == ["after-stress"]
    (mnt.path / "after-stress").unlink()

    # Once the kernel forgets its inodes, the daemon holds no backing fd it did not hold before.
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("2")
    assert wait_until(lambda: backing_fds(pid, mnt.backing) == baseline, timeout=10), \
        f"[{mnt.mode}] backing fds still held after stress-ng: {backing_fds(pid, mnt.backing)} (before: {baseline})"
