"""A daemon ends once its mount is gone, after heavy use, whatever else holds a copy.

The kernel ends a FUSE connection only when the last copy of its mount goes,
and every mount namespace made while it was mounted (`unshare -m`, a
service's private namespace) holds a copy. Daemons used to serve such a copy
for as long as it lived, minutes after `fusermount3 -u` had succeeded.
"""

from __future__ import annotations

import concurrent.futures
import os
import subprocess

import pytest

DEADLINE = 60  # seconds for a condition that holds within milliseconds on an idle machine


def _heavy_use(root) -> None:
    """Many small files made, written, read, listed, renamed and removed from several threads."""
    def worker(n: int) -> None:
        sub = root / f"w{n}"
        sub.mkdir()
        for i in range(300):
            path = sub / f"f{i}"
            path.write_bytes(os.urandom(64) * (i % 7 + 1))
            assert len(path.read_bytes()) == 64 * (i % 7 + 1)
            os.rename(path, sub / f"g{i}")
        assert len(os.listdir(sub)) == 300
        for i in range(0, 300, 2):
            os.unlink(sub / f"g{i}")
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        list(pool.map(worker, range(4)))


def test_daemon_exits_when_its_mount_is_gone(mode, mount_factory):
    mount = mount_factory(mode)
    _heavy_use(mount.path)
    (mount.path / "seen").write_bytes(b"seen\n")
    # A private mount namespace made now holds a copy of the mount, in use.
    holder = subprocess.Popen(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c",
         f'cat "{mount.path}/seen"; exec sleep 100000'],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "seen\n"
        assert subprocess.run(["fusermount3", "-u", str(mount.path)]).returncode == 0
        try:
            mount.process.wait(timeout=DEADLINE)
        except subprocess.TimeoutExpired:
            pytest.fail(f"the daemon outlived its unmount by {DEADLINE} s")
        # The copy is cut off, as if the daemon had died.
        inside = subprocess.run(["nsenter", "-t", str(holder.pid), "-m", "stat", str(mount.path / "seen")],
                                capture_output=True, text=True)
        assert inside.returncode != 0 and "not connected" in inside.stderr, inside
    finally:
        holder.kill()
        holder.wait()
        holder.stdout.close()
        holder.stderr.close()
    assert mount.process.returncode == 0
