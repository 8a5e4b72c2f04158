"""Kernel passthrough (issue #4): the tier chosen per file, and proof that it holds up.

With `--zero-copy auto` a regular file's READ/WRITE/mmap go from the kernel
straight to the backing file (FOPEN_PASSTHROUGH + a backing id), so the
daemon sees OPEN, FLUSH, RELEASE and GETATTR but never READ or WRITE. The
backing id is per inode, shared by every open of it, and freed with the
last RELEASE. These tests check that through the daemon's stats (read
through the mount) and through what clients see:

* the tier per file, and that `splice`/`off` never pass through;
* fallbacks: inside a user namespace (no CAP_SYS_ADMIN in the initial one)
  every open falls back to splice, counted as `passthrough-eperm`, and
  `--zero-copy passthrough` says so in one line; a file whose backing file
  is on a stacked fs is refused alone (`passthrough-eloop`) and retried on
  its next first open;
* many opens of one file at once (O_RDONLY, O_RDWR, O_DIRECT, O_APPEND,
  O_TRUNC, two processes, mmap): no EIO, one backing id, writes seen at
  once, attributes right after writes the daemon never saw;
* no backing id or fd leaks after 100,000 opens, failed opens included;
* unlink and rename while open, and opens racing with releases.

Helpers that must run as another process (a second opener, racing
openers, the daemon inside a user namespace) are small scripts run with
this interpreter; the namespace one is this very file (`--in-namespace`).
"""

from __future__ import annotations

import contextlib
import errno
import json
import mmap
import os
import platform
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

if __name__ == "__main__":  # run inside a user namespace by test_user_namespace_falls_back_to_splice
    sys.path[:0] = [str(Path(__file__).resolve().parents[2]), str(Path(__file__).resolve().parents[1])]

import pytest  # noqa: E402

from conftest import fuse_skip_reason, wait_until  # noqa: E402
from zcfs.testing import Mount, mount_is_listed, start_mount, stop_mount  # noqa: E402

ALL_CLOSED = {"passthrough": 0, "splice": 0, "copy": 0}
PAGE = mmap.PAGESIZE


# -- helpers ---------------------------------------------------------------

def passthrough_unavailable(where: Path) -> str | None:
    """Why kernel passthrough cannot work here (not a zcfs bug), or None."""
    major, minor = (int(x) for x in re.match(r"(\d+)\.(\d+)", platform.release()).groups())
    if (major, minor) < (6, 9):
        return f"kernel {platform.release()} predates FUSE passthrough (6.9)"
    if Path("/proc/self/uid_map").read_text().split() != ["0", "0", "4294967295"]:
        return "not in the initial user namespace (BACKING_OPEN needs CAP_SYS_ADMIN there)"
    capeff = int(re.search(r"CapEff:\s*([0-9a-f]+)", Path("/proc/self/status").read_text()).group(1), 16)
    if not capeff & (1 << 21):
        return "no CAP_SYS_ADMIN"
    fstype = fs_type(where)
    if fstype in ("overlayfs", "fuseblk", "fuse"):
        return f"the backing dir is on {fstype}: a stacked fs, refused with ELOOP"
    return None


def fs_type(path: Path) -> str:
    """The filesystem type of `path` as stat -f names it (ext4 is "ext2/ext3")."""
    return subprocess.run(["stat", "-f", "-c", "%T", str(path)], capture_output=True, text=True).stdout.strip()


def gauges(mount: Mount) -> dict:
    return mount.stats()["gauges"]


def op_count(snapshot: dict, name: str) -> int:
    return snapshot["ops"].get(name, {}).get("count", 0)


def all_released(mount: Mount, timeout: float = 10.0) -> bool:
    """RELEASE is asynchronous: wait until the daemon has seen every close."""
    return wait_until(lambda: (lambda g: g["open_files"] == ALL_CLOSED and g["backing_ids"] == 0)(gauges(mount)),
                      timeout=timeout)


def evict(*paths: Path) -> None:
    """Drop the page cache of files (the mount's and the backing file's) so reads do real I/O."""
    for path in paths:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def aligned(data: bytes) -> mmap.mmap:
    """A page-aligned buffer holding `data` (O_DIRECT wants aligned memory)."""
    buf = mmap.mmap(-1, len(data))
    buf[:] = data
    return buf


def daemon_fds(mount: Mount) -> int:
    return len(os.listdir(f"/proc/{mount.process.pid}/fd"))


_HOLDER = r"""
import json, os, sys
try:
    fd = os.open(sys.argv[1], int(sys.argv[2]))
except OSError as exc:
    print(json.dumps({"ok": False, "errno": exc.errno}), flush=True)
    raise SystemExit(0)
print(json.dumps({"ok": True}), flush=True)
for line in sys.stdin:
    cmd = json.loads(line)
    op = cmd["op"]
    try:
        if op == "pwrite":
            out = os.pwrite(fd, bytes.fromhex(cmd["data"]), cmd["off"])
        elif op == "write":
            out = os.write(fd, bytes.fromhex(cmd["data"]))
        elif op == "pread":
            out = os.pread(fd, cmd["n"], cmd["off"]).hex()
        elif op == "fsync":
            out = os.fsync(fd)
        elif op == "fstat":
            out = os.fstat(fd).st_size
        reply = {"ok": True, "out": out}
    except OSError as exc:
        reply = {"ok": False, "errno": exc.errno}
    print(json.dumps(reply), flush=True)
os.close(fd)
"""


class Holder:
    """Another process holding its own open of a file through the mount."""

    def __init__(self, path: Path, flags: int) -> None:
        self.proc = subprocess.Popen([sys.executable, "-c", _HOLDER, str(path), str(flags)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        first = json.loads(self.proc.stdout.readline() or '{"ok": false, "errno": 0}')
        if not first["ok"]:
            self.close()
            raise OSError(first["errno"], f"open in another process: {os.strerror(first['errno'])}")

    def __call__(self, op: str, **args):
        if "data" in args:
            args["data"] = args["data"].hex()
        self.proc.stdin.write(json.dumps({"op": op, **args}) + "\n")
        self.proc.stdin.flush()
        reply = json.loads(self.proc.stdout.readline())
        if not reply["ok"]:
            raise OSError(reply["errno"], os.strerror(reply["errno"]))
        return bytes.fromhex(reply["out"]) if op == "pread" else reply["out"]

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.close()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc.stdout.close()


# -- fixtures --------------------------------------------------------------

@pytest.fixture
def pt_mount(mount_factory, tmp_path) -> Mount:
    """A native-auto mount where kernel passthrough can work (else skip: not our bug)."""
    reason = fuse_skip_reason() or passthrough_unavailable(tmp_path)
    if reason:
        pytest.skip(reason)
    mount = mount_factory("native-auto")
    assert "passthrough" in mount.stats()["capabilities"], "kernel >= 6.9 but passthrough not negotiated"
    return mount


# -- the tier chosen per file ----------------------------------------------

def test_regular_file_passes_through(pt_mount):
    m = pt_mount
    data = os.urandom(4 << 20)
    (m.backing / "big").write_bytes(data)
    before = m.stats()
    assert before["gauges"]["backing_ids"] == 0

    fd = os.open(m.path / "big", os.O_RDWR)
    try:
        opened = m.stats()
        assert opened["read"]["passthrough"]["opens"] == before["read"]["passthrough"]["opens"] + 1
        assert opened["write"]["passthrough"]["opens"] == before["write"]["passthrough"]["opens"] + 1
        assert opened["gauges"]["open_files"] == {"passthrough": 1, "splice": 0, "copy": 0}
        assert opened["gauges"]["backing_ids"] == 1
        assert opened["fallbacks"] == {}

        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)  # (another open would count too)
        evict(m.backing / "big")
        got = bytearray()
        while chunk := os.read(fd, 1 << 20):
            got += chunk
        assert got == data
        patch = os.urandom(1 << 20)
        assert os.pwrite(fd, patch, 1 << 20) == len(patch)
        assert os.pwrite(fd, b"tail", len(data)) == 4  # grows the file
        os.fsync(fd)
        used = m.stats()
    finally:
        os.close(fd)

    # No byte went through the daemon: no READ or WRITE request, no splice or copy.
    for direction in ("read", "write"):
        for tier in ("splice", "copy"):
            assert used[direction][tier] == before[direction][tier], (direction, tier)
    assert op_count(used, "READ") == 0
    assert op_count(used, "WRITE") == 0
    assert op_count(used, "OPEN") == op_count(before, "OPEN") + 1
    expected = data[:1 << 20] + patch + data[2 << 20:] + b"tail"
    assert (m.backing / "big").read_bytes() == expected
    assert all_released(m)
    assert m.stats()["gauges"]["open_files"] == ALL_CLOSED


def test_created_file_passes_through(pt_mount):
    m = pt_mount
    before = m.stats()
    with open(m.path / "new", "wb") as f:  # CREATE, not OPEN
        assert gauges(m)["open_files"]["passthrough"] == 1
        assert gauges(m)["backing_ids"] == 1
        f.write(b"n" * 300_000)
    after = m.stats()
    assert op_count(after, "CREATE") == op_count(before, "CREATE") + 1
    assert op_count(after, "WRITE") == 0
    assert after["write"]["passthrough"]["opens"] == before["write"]["passthrough"]["opens"] + 1
    assert (m.backing / "new").read_bytes() == b"n" * 300_000
    assert os.stat(m.path / "new").st_size == 300_000
    # CREATE with O_DIRECT: the kernel's own backing file gets O_DIRECT, ours does not.
    fd = os.open(m.path / "direct", os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_DIRECT, 0o644)
    try:
        assert os.pwritev(fd, [aligned(b"d" * PAGE * 2)], 0) == 2 * PAGE
        buf = aligned(bytes(PAGE))
        assert os.preadv(fd, [buf], PAGE) == PAGE and buf[:] == b"d" * PAGE
        if fs_type(m.backing) in ("ext2/ext3", "xfs", "btrfs"):
            # Proof that O_DIRECT reached the backing file: it refuses an unaligned write.
            with pytest.raises(OSError) as refused:
                os.pwrite(fd, b"x", 1)
            assert refused.value.errno == errno.EINVAL
    finally:
        os.close(fd)
    assert (m.backing / "direct").read_bytes() == b"d" * (2 * PAGE)
    assert op_count(m.stats(), "WRITE") == op_count(m.stats(), "READ") == 0
    assert all_released(m)


def test_explicit_passthrough_mode_passes_through_without_notes(mount_factory, tmp_path):
    reason = fuse_skip_reason() or passthrough_unavailable(tmp_path)
    if reason:
        pytest.skip(reason)
    m = mount_factory("native-passthrough")
    assert m.notes == []
    (m.backing / "f").write_bytes(b"abc")
    with open(m.path / "f", "rb") as f:
        assert gauges(m)["backing_ids"] == 1
        assert f.read() == b"abc"
    assert op_count(m.stats(), "READ") == 0
    assert "kernel passthrough is not possible" not in m.log.read_text()


@pytest.mark.parametrize("mode, tier", [("native-splice", "splice"), ("native-off", "copy")])
def test_splice_and_off_never_pass_through(mode, tier, mount_factory):
    m = mount_factory(mode)
    data = os.urandom(1 << 20)
    (m.backing / "f").write_bytes(data)
    before = m.stats()
    fd = os.open(m.path / "f", os.O_RDWR)
    try:
        g = gauges(m)
        assert g["open_files"] == {**ALL_CLOSED, tier: 1}
        assert g["backing_ids"] == 0
        evict(m.path / "f")
        assert os.pread(fd, len(data), 0) == data
        os.pwrite(fd, b"w" * 8192, 0)
    finally:
        os.close(fd)
    after = m.stats()
    assert after["read"]["passthrough"]["opens"] == before["read"]["passthrough"]["opens"] == 0
    assert after["read"][tier]["requests"] > before["read"][tier]["requests"]
    assert op_count(after, "READ") > 0
    assert op_count(after, "WRITE") > 0
    assert after["fallbacks"] == {}
    assert all_released(m)


# -- fallbacks -------------------------------------------------------------

NS_FILES = 5


def _in_namespace(tmp: Path) -> dict:
    """Runs inside `unshare -Urm`: mount three ways, use the files, unmount; report."""
    backing = tmp / "ns-backing"
    names = sorted(p.name for p in backing.iterdir())
    report: dict = {}

    # 1. auto, foreground daemon through the test helper (ready pipe, --log)
    (tmp / "ns-auto").mkdir()
    mount = start_mount(backing, tmp / "ns-auto", "native-auto", log=tmp / "ns-auto.log")
    try:
        contents_ok = True
        for name in names:
            with open(mount.path / name, "r+b") as f:
                contents_ok &= f.read() == (backing / name).read_bytes()
                f.seek(0)
                f.write(b"W")
        wait = time.monotonic() + 10
        while mount.stats()["gauges"]["open_files"] != ALL_CLOSED and time.monotonic() < wait:
            time.sleep(0.05)
        report["auto"] = {"notes": mount.notes, "stats": mount.stats(), "contents_ok": contents_ok,
                          "written": all((backing / n).read_bytes()[:1] == b"W" for n in names)}
    finally:
        stop_mount(mount)
    report["auto"]["log"] = (tmp / "ns-auto.log").read_text()

    # 2. --zero-copy passthrough through the background launcher
    mnt = tmp / "ns-launcher"
    mnt.mkdir()
    launched = subprocess.run([sys.executable, "-m", "zcfs", str(backing), str(mnt), "--zero-copy", "passthrough"],
                              capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL)
    report["launcher"] = {"rc": launched.returncode, "stderr": launched.stderr}
    if mount_is_listed(mnt):
        report["launcher"]["read"] = (mnt / names[0]).read_bytes().decode()

        def stats() -> dict:
            return json.loads(os.getxattr(mnt, "user.zcfs.stats"))
        # A spliced READ is counted once its reply is out, so the client can
        # ask for stats first: wait for the count, not for a time.
        wait = time.monotonic() + 10
        while stats()["read"]["splice"]["requests"] < 1 and time.monotonic() < wait:
            time.sleep(0.05)
        report["launcher"]["stats"] = stats()
        subprocess.run(["umount", str(mnt)], check=True)  # the daemon sees ENODEV and exits

    # 3. --zero-copy passthrough in the foreground, logging to stderr
    mnt = tmp / "ns-foreground"
    mnt.mkdir()
    daemon = subprocess.Popen([sys.executable, "-m", "zcfs", str(backing), str(mnt), "-f", "--zero-copy", "passthrough"],
                              stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 20
        while not mount_is_listed(mnt) and daemon.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        # Listed once mount(2) returned; the warning comes right after INIT.
        while time.monotonic() < deadline and daemon.poll() is None:
            try:
                os.getxattr(mnt, "user.zcfs.stats")
                break
            except OSError:
                time.sleep(0.05)
        report["foreground"] = {"read": (mnt / names[0]).read_bytes().decode()}
    finally:
        subprocess.run(["umount", str(mnt)], capture_output=True)
        try:
            _, stderr = daemon.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            daemon.kill()
            _, stderr = daemon.communicate()
    report["foreground"]["stderr"] = stderr
    report["foreground"]["rc"] = daemon.returncode
    return report


def _processes_under(path: Path) -> list[int]:
    """Live processes whose command line names `path` (only ever ours: it is this test's tmp dir)."""
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and int(entry) != os.getpid():
            try:
                args = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if any(os.fsencode(str(path)) in a for a in args):
                pids.append(int(entry))
    return pids


def _data_fallbacks(stats: dict) -> dict[str, int]:
    """The tiers' fallbacks, without the watch's (a user namespace has no watch either: test_watch.py)."""
    return {reason: n for reason, n in stats["fallbacks"].items() if not reason.startswith("watch-")}


@contextlib.contextmanager
def _pipe_pages_soft_unlimited():
    """fs.pipe-user-pages-soft off for the block, then put back.

    Outside the initial namespace's CAP_SYS_RESOURCE, a pipe cannot grow
    once its user's pipes hold more than the soft limit (64 MiB), and the
    namespace's daemon counts as uid 0, whose pipes are every other
    daemon's of the suite too: its splice pipes then stay small
    (splice-pipe-too-small, seen once in a full run). This test is about the
    passthrough fallback, not that quota.
    """
    knob = Path("/proc/sys/fs/pipe-user-pages-soft")
    before = knob.read_text()
    knob.write_text("0")  # 0: no soft limit
    try:
        yield
    finally:
        knob.write_text(before)


def test_user_namespace_falls_back_to_splice(tmp_path):
    """Rootless container case: the daemon lacks CAP_SYS_ADMIN in the initial namespace."""
    reason = fuse_skip_reason()
    if reason:
        pytest.skip(reason)
    if subprocess.run(["unshare", "-Urm", "true"], capture_output=True).returncode != 0:
        pytest.skip("cannot create a user namespace here")
    backing = tmp_path / "ns-backing"
    backing.mkdir()
    for i in range(NS_FILES):
        (backing / f"f{i}").write_bytes(f"file {i} ".encode() * 100)
    try:
        with _pipe_pages_soft_unlimited():
            run = subprocess.run(
                ["unshare", "-Urm", "--propagation", "private", sys.executable, __file__, "--in-namespace",
                 str(tmp_path)], capture_output=True, text=True, timeout=90, stdin=subprocess.DEVNULL)
    finally:
        # The mounts live only in that namespace, which dies with its last
        # process: every daemon must have ended (each was unmounted).
        wait_until(lambda: not _processes_under(tmp_path), timeout=5)
        leftovers = _processes_under(tmp_path)
        for pid in leftovers:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    assert run.returncode == 0, run.stderr
    assert leftovers == []
    report = json.loads(run.stdout.splitlines()[-1])

    auto = report["auto"]
    assert auto["contents_ok"] and auto["written"]
    stats = auto["stats"]
    # Every opened file fell back to splice, one count per open file; nothing passed through.
    assert _data_fallbacks(stats) == {"passthrough-eperm": NS_FILES}
    assert stats["read"]["passthrough"]["opens"] == 0
    assert stats["read"]["splice"]["requests"] >= NS_FILES
    assert op_count(stats, "WRITE") >= NS_FILES
    assert stats["gauges"]["backing_ids"] == 0
    assert auto["notes"] == []  # auto: no warning, only an info line in the log
    assert "kernel passthrough is not possible here (passthrough-eperm" in auto["log"]

    expected = ("zcfs: kernel passthrough is not possible here (passthrough-eperm: the daemon lacks "
                "CAP_SYS_ADMIN in the initial user namespace); using splice")
    launcher = report["launcher"]
    assert launcher["rc"] == 0, launcher["stderr"]
    assert launcher["stderr"].splitlines() == [expected]
    assert launcher["read"] == "Wile 0 " + "file 0 " * 99  # as the first mount wrote it
    assert _data_fallbacks(launcher["stats"]) == {"passthrough-eperm": 1}
    assert launcher["stats"]["read"]["splice"]["requests"] >= 1
    assert launcher["stats"]["zero_copy"] == "passthrough"

    foreground = report["foreground"]
    assert foreground["read"] == "Wile 0 " + "file 0 " * 99
    assert foreground["rc"] == 0
    warned = [line for line in foreground["stderr"].splitlines() if "passthrough is not possible" in line]
    assert len(warned) == 1 and warned[0].endswith(expected[len("zcfs: "):]), foreground["stderr"]


def test_refused_file_uses_splice_alone_and_is_retried(tmp_path):
    """A backing file on a stacked fs (here another zcfs mount) is refused with ELOOP, alone."""
    reason = fuse_skip_reason() or passthrough_unavailable(tmp_path)
    if reason:
        pytest.skip(reason)
    outer_backing, inner_backing = tmp_path / "outer-backing", tmp_path / "inner-backing"
    for path in (outer_backing / "sub", inner_backing, tmp_path / "outer"):
        path.mkdir(parents=True)
    (outer_backing / "top").write_bytes(b"top " * 1000)
    (inner_backing / "deep").write_bytes(b"deep" * 1000)
    outer = start_mount(outer_backing, tmp_path / "outer", "native-auto")
    inner = None
    try:
        inner = start_mount(inner_backing, outer_backing / "sub", "native-auto")
        top, deep = outer.path / "top", outer.path / "sub" / "deep"
        with open(top, "rb") as t, open(deep, "r+b") as d:
            g = outer.stats()
            assert g["fallbacks"] == {"passthrough-eloop": 1}
            assert g["gauges"]["open_files"] == {"passthrough": 1, "splice": 1, "copy": 0}
            assert g["gauges"]["backing_ids"] == 1
            # A second open of the refused file joins its tier: no new attempt, no EIO.
            with open(deep, "rb") as d2:
                d.write(b"DEEP")
                d.flush()
                assert d2.read(8) == b"DEEPdeep"
                g = outer.stats()
                assert g["fallbacks"] == {"passthrough-eloop": 1}
                assert g["gauges"]["open_files"] == {"passthrough": 1, "splice": 2, "copy": 0}
            assert t.read(4) == b"top "
        assert all_released(outer)
        # Refused for that file only, and only for then: the next first open asks again.
        with open(deep, "rb") as d, open(top, "rb"):
            assert d.read(4) == b"DEEP"
            g = outer.stats()
            assert g["fallbacks"] == {"passthrough-eloop": 2}
            assert g["gauges"]["open_files"] == {"passthrough": 1, "splice": 1, "copy": 0}
        assert all_released(outer)
    finally:
        stop_mount(outer)  # first: it holds files of the inner mount
        if inner is not None:
            stop_mount(inner)


# -- several opens of one file at once ------------------------------------

def test_many_opens_of_one_file(pt_mount):
    m = pt_mount
    path, backing = m.path / "shared", m.backing / "shared"
    backing.write_bytes(bytes(range(256)) * 64)  # 16 KiB
    size = 16384
    fds: list[int] = []
    holders: list[Holder] = []

    def opened(flags: int) -> int:
        fds.append(os.open(path, flags))
        return fds[-1]

    try:
        ro = opened(os.O_RDONLY)
        rw = opened(os.O_RDWR)
        direct = opened(os.O_RDWR | os.O_DIRECT)
        direct_ro = opened(os.O_RDONLY | os.O_DIRECT)
        holders.append(other := Holder(path, os.O_RDWR))
        holders.append(appender := Holder(path, os.O_WRONLY | os.O_APPEND))
        g = gauges(m)
        assert g["open_files"] == {"passthrough": 6, "splice": 0, "copy": 0}
        assert g["backing_ids"] == 1  # one per inode, shared by every open

        # Writes through any open are seen by every other at once.
        os.pwrite(rw, b"A" * PAGE, 0)
        assert os.pread(ro, PAGE, 0) == b"A" * PAGE
        assert other("pread", off=0, n=PAGE) == b"A" * PAGE
        buf = aligned(bytes(PAGE))
        assert os.preadv(direct_ro, [buf], 0) == PAGE and buf[:] == b"A" * PAGE
        assert os.pwritev(direct, [aligned(b"D" * PAGE)], PAGE) == PAGE
        assert os.pread(ro, PAGE, PAGE) == b"D" * PAGE
        assert other("pread", off=PAGE, n=PAGE) == b"D" * PAGE
        other("pwrite", off=2 * PAGE, data=b"O" * 100)
        assert os.pread(ro, 100, 2 * PAGE) == b"O" * 100
        assert os.preadv(direct_ro, [buf], 2 * PAGE) == PAGE and buf[:100] == b"O" * 100

        # Attributes right after writes the daemon never saw: size and mtime.
        for write in (lambda: appender("write", data=b"tail"),            # O_APPEND, other process
                      lambda: os.pwrite(rw, b"grow", size + 4),           # extends
                      lambda: os.pwrite(rw, b"same", 0),                  # same size: mtime only
                      lambda: os.pwritev(direct, [aligned(b"d" * PAGE)], 3 * PAGE)):
            cached = os.stat(path)  # fills the attribute cache (attr_timeout 1 s)
            time.sleep(0.02)  # past the timestamp granularity
            write()
            st, bst = os.stat(path), os.stat(backing)
            assert (st.st_size, st.st_mtime_ns) == (bst.st_size, bst.st_mtime_ns)
            assert st.st_mtime_ns > cached.st_mtime_ns
        size += 8
        assert os.stat(path).st_size == size
        assert os.pread(ro, 8, size - 8) == b"tailgrow"

        # A shared writable mapping through one open, read() through the others.
        mm = mmap.mmap(rw, size)
        try:
            cached = os.stat(path)
            time.sleep(0.02)
            mm[100:105] = b"MMAP!"
            # stat first: a passthrough read() would invalidate the cached atime,
            # and with it make the next stat ask the daemon anyway.
            st, bst = os.stat(path), os.stat(backing)
            assert st.st_mtime_ns == bst.st_mtime_ns > cached.st_mtime_ns
            assert os.pread(ro, 5, 100) == b"MMAP!"
            assert other("pread", off=100, n=5) == b"MMAP!"
            mm.flush()
            st, bst = os.stat(path), os.stat(backing)
            assert st.st_mtime_ns == bst.st_mtime_ns
        finally:
            mm.close()

        for fd in (ro, rw, direct):
            os.fsync(fd)
        other("fsync")
        assert backing.read_bytes()[100:105] == b"MMAP!"

        # Truncation through one open: size and data agree everywhere at once.
        os.ftruncate(rw, 5000)
        assert os.stat(path).st_size == 5000 == os.fstat(ro).st_size
        assert other("fstat") == 5000
        assert len(os.pread(ro, size, 0)) == 5000
        # O_TRUNC by another process while all the others are open.
        holders.append(trunc := Holder(path, os.O_WRONLY | os.O_TRUNC))
        assert os.stat(path).st_size == 0 == backing.stat().st_size
        assert os.pread(ro, 100, 0) == b""
        trunc("write", data=b"fresh")
        appender("write", data=b"+")
        assert os.pread(ro, 100, 0) == b"fresh+"
        assert other("pread", off=0, n=100) == b"fresh+"
        assert os.stat(path).st_size == 6

        s = m.stats()
        assert s["gauges"]["backing_ids"] == 1
        assert s["gauges"]["open_files"] == {"passthrough": 7, "splice": 0, "copy": 0}
        assert op_count(s, "READ") == 0 and op_count(s, "WRITE") == 0
        assert s["fallbacks"] == {}
        assert not any(op["errors"].get("EIO") for op in s["ops"].values())
    finally:
        for fd in fds:
            os.close(fd)
        for holder in holders:
            holder.close()
    assert all_released(m)


def test_unlink_and_rename_while_open(pt_mount):
    m = pt_mount
    path = m.path / "doomed"
    (m.backing / "doomed").write_bytes(b"old" * 1000)
    fd = os.open(path, os.O_RDWR)
    fds = [fd]
    try:
        os.unlink(path)
        assert not (m.backing / "doomed").exists()
        os.pwrite(fd, b"still", 0)
        assert os.pread(fd, 8, 0) == b"stilldol"
        assert os.fstat(fd).st_size == 3000
        assert os.fstat(fd).st_nlink == 0

        # The name again: another inode, with its own backing id.
        fds.append(new := os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644))
        os.write(new, b"new")
        g = gauges(m)
        assert g["backing_ids"] == 2
        assert g["open_files"]["passthrough"] == 2
        assert os.pread(fd, 5, 0) == b"still"
        assert (m.backing / "doomed").read_bytes() == b"new"

        # Renamed while open (through the mount): the open goes on, a reopen joins it.
        os.rename(path, m.path / "moved")
        fds.append(again := os.open(m.path / "moved", os.O_RDONLY))
        os.pwrite(new, b"NEW", 0)
        assert os.pread(again, 3, 0) == b"NEW"
        assert gauges(m)["backing_ids"] == 2
        # Renamed behind the mount's back: the kernel's backing file follows the inode.
        os.rename(m.backing / "moved", m.backing / "moved2")
        os.pwrite(new, b"!", 3)
        assert (m.backing / "moved2").read_bytes() == b"NEW!"
        assert os.pread(again, 4, 0) == b"NEW!"
    finally:
        for f in fds:
            os.close(f)
    assert all_released(m)
    assert op_count(m.stats(), "READ") == op_count(m.stats(), "WRITE") == 0


_RACER = r"""
import errno, json, mmap, os, sys, time
path, seconds, role = sys.argv[1], float(sys.argv[2]), sys.argv[3]
content = open(path + ".expected", "rb").read()
buf = mmap.mmap(-1, 4096)
flags = [os.O_RDONLY, os.O_RDWR, os.O_RDONLY | os.O_DIRECT, os.O_RDWR | os.O_DIRECT, os.O_WRONLY]
opens, errors, bad = 0, [], 0
end = time.monotonic() + seconds
i = 0
while time.monotonic() < end:
    i += 1
    try:
        if role == "create":  # CREATE opens, racing too
            name = f"{path}.new{os.getpid()}"
            fd = os.open(name, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
            os.write(fd, b"x" * 100)
            bad += os.pread(fd, 200, 0) != b"x" * 100
            os.close(fd)
            os.unlink(name)
        else:
            fl = flags[i % len(flags)]
            fd = os.open(path, fl)
            if fl & os.O_ACCMODE != os.O_WRONLY:
                if fl & os.O_DIRECT:
                    os.preadv(fd, [buf], 0)
                    bad += buf[:] != content[:4096]
                else:
                    bad += os.pread(fd, len(content), 0) != content
            if fl & os.O_ACCMODE != os.O_RDONLY and not fl & os.O_DIRECT:
                os.pwrite(fd, content[8192:8192 + 512], 8192)  # the same bytes again
            os.close(fd)
        opens += 1
    except OSError as exc:
        errors.append(errno.errorcode.get(exc.errno, str(exc.errno)))
print(json.dumps({"opens": opens, "errors": errors, "bad": bad}))
"""


def test_opens_racing_with_releases(pt_mount):
    """Opens of one file from several processes while others close it (RELEASE is asynchronous)."""
    m = pt_mount
    content = os.urandom(64 * 1024)
    (m.backing / "hot").write_bytes(content)
    (m.backing / "hot.expected").write_bytes(content)
    racers = [subprocess.Popen([sys.executable, "-c", _RACER, str(m.path / "hot"), "3", role],
                               stdout=subprocess.PIPE, text=True)
              for role in ("open", "open", "open", "create")]
    results = [json.loads(r.communicate(timeout=60)[0]) for r in racers]
    for result in results:
        assert result["errors"] == [] and result["bad"] == 0, result
        assert result["opens"] > 50, result
    assert all_released(m)
    s = m.stats()
    assert s["fallbacks"] == {}
    assert op_count(s, "READ") == 0 and op_count(s, "WRITE") == 0
    assert s["read"]["passthrough"]["opens"] >= sum(r["opens"] for r in results)
    assert (m.backing / "hot").read_bytes() == content


# -- no leaks --------------------------------------------------------------

FILES, ROUNDS, WORKERS = 1000, 50, 4

_OPENER = r"""
import json, os, sys
root, first, step, count, rounds = sys.argv[1], *map(int, sys.argv[2:6])
refused_file, refused_dir = sys.argv[6], sys.argv[7]
flags = (os.O_RDONLY, os.O_RDWR, os.O_WRONLY, os.O_RDONLY | os.O_DIRECT)
opened, refused, unexpected = 0, 0, []
for r in range(rounds):
    for i in range(first, count, step):
        try:
            fd = os.open(f"{root}/f{i}", flags[(i + r) % len(flags)])
        except OSError as exc:
            unexpected.append(f"f{i}: {exc}")
            continue
        opened += 1
        os.close(fd)
        if i % 97 == 0 and refused_file:  # errors in the middle: opens the daemon refuses
            for path, fl in ((refused_file, os.O_RDWR), (f"{refused_dir}/new{first}", os.O_CREAT | os.O_WRONLY)):
                try:
                    os.close(os.open(path, fl, 0o644))
                    unexpected.append(f"{path} opened")
                except PermissionError:
                    refused += 1
print(json.dumps({"opened": opened, "refused": refused, "unexpected": unexpected[:5]}))
"""


def test_no_backing_id_or_fd_leaks(pt_mount):
    """50,000 opens and closes (4 processes), with refused opens mixed in: nothing left behind."""
    m = pt_mount
    for i in range(FILES):
        (m.backing / f"f{i}").write_bytes(b"%d" % i)
    refused_file, refused_dir = m.backing / "locked", m.backing / "locked-dir"
    refused_file.write_bytes(b"locked")
    refused_dir.mkdir()
    immutable = all(subprocess.run(["chattr", "+i", str(p)], capture_output=True).returncode == 0
                    for p in (refused_file, refused_dir))
    try:
        # Use every inode once, so the fd baseline holds their O_PATH fds
        # (a lookup alone opens none; a request on the inode opens it by handle).
        for i in range(FILES):
            os.listxattr(m.path / f"f{i}")
        if immutable:
            os.listxattr(m.path / "locked")
            os.listxattr(m.path / "locked-dir")
        baseline = daemon_fds(m)
        workers = [subprocess.Popen(
            [sys.executable, "-c", _OPENER, str(m.path), str(k), str(WORKERS), str(FILES), str(ROUNDS),
             str(m.path / "locked") if immutable else "", str(m.path / "locked-dir")],
            stdout=subprocess.PIPE, text=True) for k in range(WORKERS)]
        results = [json.loads(w.communicate(timeout=100)[0]) for w in workers]
    finally:
        subprocess.run(["chattr", "-i", str(refused_file), str(refused_dir)], capture_output=True)
    for result in results:
        assert result["unexpected"] == [], result
    assert sum(r["opened"] for r in results) == FILES * ROUNDS
    if immutable:
        assert sum(r["refused"] for r in results) > 0
    assert all_released(m, timeout=30)
    s = m.stats()
    assert s["gauges"]["backing_ids"] == 0
    assert s["gauges"]["open_files"] == ALL_CLOSED
    assert s["read"]["passthrough"]["opens"] == FILES * ROUNDS
    assert s["fallbacks"] == {}
    assert op_count(s, "RELEASE") == FILES * ROUNDS
    assert daemon_fds(m) <= baseline + 8  # a leak per open would show in the thousands


if __name__ == "__main__":
    if sys.argv[1:2] == ["--in-namespace"]:
        print(json.dumps(_in_namespace(Path(sys.argv[2]))))
