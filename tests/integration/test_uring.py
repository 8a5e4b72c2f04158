"""FUSE over io_uring: the native engine's ring transport, and its fallback to /dev/fuse.

The kernel offers the ring at INIT only while fuse's `enable_uring` is Y
(read at INIT, so each test sets it before mounting and puts it back after).
The suite's session fixture (conftest.py) turns it on where it can, so the
native modes run on the ring; these tests check that they really do, and
what only the ring has: its fallbacks, unmounting with requests in its
entries, INTERRUPT and FORGET (which still come on /dev/fuse), and
notifications (written to /dev/fuse beside the ring).
"""

from __future__ import annotations

import errno
import hashlib
import os
import random
import signal
import subprocess
import sys
import textwrap
import threading

import pytest

from conftest import wait_until
from test_faults import assert_daemon_healthy
from zcfs.testing import fuse_uring_setting, ring_skip_reason

MiB = 1 << 20


@pytest.fixture
def uring_on():
    """enable_uring Y for mounts made in the test; skips where the ring cannot run."""
    reason = ring_skip_reason()
    if reason:
        pytest.skip(reason)
    with fuse_uring_setting(True):
        yield


@pytest.fixture
def uring_off():
    """enable_uring N for mounts made in the test."""
    reason = ring_skip_reason()
    if reason:
        pytest.skip(reason)
    with fuse_uring_setting(False):
        yield


def ring_requests(mount) -> int:
    return mount.stats()["gauges"]["ring_requests"]


def test_requests_go_through_the_ring(uring_on, mount_factory):
    """A default mount runs on the ring; every request of a client counts there."""
    mount = mount_factory("native-auto")
    stats = mount.stats()
    assert stats["transport"] == "uring" and stats["transport_fallback"] is None
    before = ring_requests(mount)
    for _ in range(50):
        with pytest.raises(OSError) as absent:
            os.getxattr(mount.path, "user.absent")  # one GETXATTR each, never cached
        assert absent.value.errno == errno.ENODATA
    assert ring_requests(mount) >= before + 50
    assert mount.stats()["ops"]["GETXATTR"]["count"] >= 50


@pytest.mark.parametrize("tier", ["auto", "splice", "off"])
def test_reads_and_writes_through_the_ring(uring_on, mount_factory, tier):
    """Data written and read through the ring, on each tier: passthrough opens, or
    READs answered by preadv into the ring's payload and WRITEs pwritten from it."""
    mount = mount_factory(f"native-{tier}", options=["transport=uring"])
    data = random.Random(7).randbytes(3 * MiB + 123)
    with open(mount.path / "f", "wb") as f:
        f.write(data)
    assert (mount.backing / "f").read_bytes() == data
    mount.drop_cache(mount.path / "f")
    assert hashlib.sha256((mount.path / "f").read_bytes()).digest() == hashlib.sha256(data).digest()
    stats = mount.stats()
    assert stats["transport"] == "uring"
    if tier == "auto":
        assert stats["read"]["passthrough"]["opens"] >= 2
    else:
        assert stats["write"]["copy"]["bytes"] == len(data)
        assert stats["read"]["copy"]["bytes"] >= len(data)
        assert stats["read"]["splice"]["requests"] == 0  # splice needs /dev/fuse


def test_falls_back_to_devfuse_when_not_offered(uring_off, mount_factory):
    """enable_uring N: transport=auto serves on /dev/fuse and says why; transport=uring refuses to mount."""
    mount = mount_factory("native-auto")
    (mount.path / "f").write_bytes(b"x")
    stats = mount.stats()
    assert stats["transport"] == "devfuse" and stats["transport_fallback"] == "uring-not-offered"
    assert stats["gauges"]["ring_requests"] == 0
    # Not offered is every stock kernel's state: stats say so, the log does not
    # (a foreground mount prints only what the user must know).
    assert "io_uring" not in mount.log.read_text()
    with pytest.raises(RuntimeError, match="enable_uring"):
        mount_factory("native-auto", options=["transport=uring"], name="explicit")


@pytest.mark.parametrize("mode", ["native-auto+transport=devfuse", "native-splice", "native-auto+auto_unmount"])
def test_mounts_that_stay_on_devfuse(uring_on, mount_factory, mode):
    """transport=devfuse; by default the splice tier (splicing needs /dev/fuse) and
    auto_unmount (see test_mounting.py's killed daemon): no ring, no fallback."""
    mount = mount_factory(mode)
    os.listdir(mount.path)
    stats = mount.stats()
    assert stats["transport"] == "devfuse" and stats["gauges"]["ring_requests"] == 0
    assert stats["transport_fallback"] is None  # chosen, not fallen back to


def test_unmount_with_requests_in_flight(uring_on, mount_factory):
    """Clients hammering the ring while the mount is lazily unmounted: the daemon exits."""
    mount = mount_factory("native-off")
    (mount.backing / "f").write_bytes(os.urandom(MiB))
    (mount.backing / "d").mkdir()
    done = [0] * 4
    errors: list[int] = []

    def hammer(n: int) -> None:
        try:
            while True:
                os.stat(mount.path / "f")
                with open(mount.path / "f", "rb", buffering=0) as f:
                    f.read(MiB)
                os.listdir(mount.path / "d")
                done[n] += 1
        except OSError as exc:  # the mount went away under us
            errors.append(exc.errno)

    threads = [threading.Thread(target=hammer, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    try:
        assert wait_until(lambda: min(done) >= 3, timeout=60), done
        subprocess.run(["umount", "-l", str(mount.path)], check=True)
        assert mount.process.wait(timeout=60) == 0, "the daemon did not end cleanly"
    finally:
        for thread in threads:
            thread.join(timeout=60)
    assert not any(thread.is_alive() for thread in threads), "a client hangs"
    assert len(errors) == 4


_INTERRUPTED_READER = """
    import hashlib, mmap, os, signal, sys
    path, digest, stop = sys.argv[1], sys.argv[2], sys.argv[3]
    signal.signal(signal.SIGUSR1, lambda *_: None)
    buf = mmap.mmap(-1, 1 << 20)
    fd = os.open(path, os.O_RDONLY | os.O_DIRECT)
    size = os.fstat(fd).st_size
    print("started", flush=True)
    while not os.path.exists(stop):
        h = hashlib.sha256()
        for offset in range(0, size, 1 << 20):
            n = os.preadv(fd, [buf], offset)  # EINTR is retried (PEP 475)
            h.update(buf[:n])
        assert h.hexdigest() == digest, "a read returned wrong data"
    signal.signal(signal.SIGUSR1, signal.SIG_IGN)  # the parent may still be signalling
"""


def _interrupts(mount) -> int:
    return mount.stats()["ops"].get("INTERRUPT", {}).get("count", 0)


def test_interrupted_ring_requests(uring_on, mount_factory, tmp_path):
    """Signals during READs on the ring: INTERRUPT comes on /dev/fuse, the data is right,
    the daemon serves on."""
    mount = mount_factory("native-off")
    data = random.Random(3).randbytes(8 * MiB)
    (mount.backing / "big").write_bytes(data)
    stop = tmp_path / "stop"
    client = subprocess.Popen([sys.executable, "-c", textwrap.dedent(_INTERRUPTED_READER), str(mount.path / "big"),
                               hashlib.sha256(data).hexdigest(), str(stop)], stdout=subprocess.PIPE, text=True)
    try:
        assert client.stdout.readline().strip() == "started"

        def signalled_until_interrupted() -> bool:
            # A signal interrupts a request only if it lands while one is in
            # flight: signal until the daemon has seen an INTERRUPT.
            for _ in range(20):
                if client.poll() is not None:
                    return True  # the reader failed: reported below
                os.kill(client.pid, signal.SIGUSR1)
                os.sched_yield()
            return _interrupts(mount) > 0

        assert wait_until(signalled_until_interrupted, timeout=120), "no INTERRUPT reached the daemon"
        stop.touch()
        client.wait(timeout=120)
    finally:
        client.kill()
        client.wait()
    assert client.returncode == 0, "the reader failed (wrong data or an error)"
    stats = mount.stats()
    assert stats["transport"] == "uring" and stats["read"]["copy"]["requests"] > 0
    assert _interrupts(mount) > 0
    before = ring_requests(mount)
    os.listdir(mount.path)
    assert ring_requests(mount) > before
    assert_daemon_healthy(mount)


def test_forget_reaches_the_daemon(uring_on, mount_factory):
    """FORGETs come on /dev/fuse beside the ring: the daemon's inodes fall after drop_caches."""
    mount = mount_factory("native-auto")
    for i in range(300):
        (mount.backing / f"f{i}").touch()
    for i in range(300):
        os.stat(mount.path / f"f{i}")
    inodes = mount.stats()["gauges"]["inodes"]
    assert inodes > 300 and mount.stats()["transport"] == "uring"
    with open("/proc/sys/vm/drop_caches", "w") as knob:
        knob.write("2")
    assert wait_until(lambda: mount.stats()["gauges"]["inodes"] < 100, timeout=30), mount.stats()["gauges"]
    assert mount.stats()["ops"].get("BATCH_FORGET", mount.stats()["ops"].get("FORGET", {})).get("count", 0) > 0


def test_watch_notifications_beside_the_ring(uring_on, mount_factory):
    """cache=watch: a change made in the backing dir shows through a ring mount."""
    mount = mount_factory("native-auto", options=["cache=watch"])
    (mount.backing / "f").write_text("old")
    assert (mount.path / "f").read_text() == "old"
    (mount.backing / "f").write_text("new, longer")
    assert wait_until(lambda: (mount.path / "f").read_text() == "new, longer", timeout=30)
    (mount.backing / "g").write_text("g")
    assert wait_until(lambda: "g" in os.listdir(mount.path), timeout=30)
    stats = mount.stats()
    assert stats["transport"] == "uring" and sum(stats["invalidations"].values()) > 0
