"""Behaviour found by outside conformance runs: "." and "..", times after mmap
writes, and when the space of a removed file comes back."""

from __future__ import annotations

import ctypes
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from conftest import wait_until

_libc = ctypes.CDLL(None, use_errno=True)


class _Dirent(ctypes.Structure):  # struct dirent (glibc, 64-bit)
    _fields_ = [("d_ino", ctypes.c_uint64), ("d_off", ctypes.c_int64), ("d_reclen", ctypes.c_ushort),
                ("d_type", ctypes.c_ubyte), ("d_name", ctypes.c_char * 256)]


_libc.opendir.restype = ctypes.c_void_p
_libc.opendir.argtypes = [ctypes.c_char_p]
_libc.readdir.restype = ctypes.POINTER(_Dirent)
_libc.readdir.argtypes = [ctypes.c_void_p]
_libc.closedir.argtypes = [ctypes.c_void_p]


def readdir(path: Path) -> list[tuple[bytes, int]]:
    """(name, d_ino) of every entry readdir(3) returns, "." and ".." included."""
    handle = _libc.opendir(os.fsencode(path))
    assert handle, os.strerror(ctypes.get_errno())
    entries = []
    try:
        while entry := _libc.readdir(handle):
            entries.append((entry.contents.d_name, entry.contents.d_ino))
    finally:
        _libc.closedir(handle)
    return entries


def test_listings_have_dot_and_dotdot(mnt):
    os.makedirs(mnt.path / "d" / "sub")
    (mnt.path / "d" / "f").write_bytes(b"x")
    ino = lambda *parts: os.stat(mnt.path.joinpath(*parts)).st_ino  # noqa: E731
    root = dict(readdir(mnt.path))
    assert root[b"."] == root[b".."] == ino()  # as on ext4: ".." of the root is the root
    assert dict(readdir(mnt.path / "d")) == {b".": ino("d"), b"..": ino(), b"f": ino("d", "f"),
                                              b"sub": ino("d", "sub")}
    sub = dict(readdir(mnt.path / "d" / "sub"))
    assert sub == {b".": ino("d", "sub"), b"..": ino("d")}
    listed = subprocess.run(["ls", "-a", str(mnt.path / "d")], check=True, capture_output=True, text=True)
    assert listed.stdout.split() == [".", "..", "f", "sub"]


def test_large_listing_has_each_dot_once(mnt):
    names = {f"entry-{i:05}".encode() for i in range(5000)}
    for name in names:
        (mnt.backing / os.fsdecode(name)).touch()
    listed = [name for name, _ in readdir(mnt.path)]
    assert len(listed) == 5002
    assert sorted(listed) == sorted(names | {b".", b".."})


def test_dot_entries_leave_no_lookup_behind(mnt):
    """The kernel takes no lookup reference on "." and ".." in READDIRPLUS: a
    directory listed many times is forgotten once it is gone."""
    baseline = mnt.stats()["gauges"]["inodes"]
    os.mkdir(mnt.path / "d")
    for _ in range(20):
        assert len(readdir(mnt.path / "d")) == 2
        subprocess.run(["ls", "-la", str(mnt.path / "d")], check=True, capture_output=True)
    os.rmdir(mnt.path / "d")
    assert wait_until(lambda: mnt.stats()["gauges"]["inodes"] == baseline, timeout=20)


_MMAP_WRITER = textwrap.dedent("""
    import mmap, sys
    with open(sys.argv[1], "r+b") as f, mmap.mmap(f.fileno(), 4096) as m:
        m[0]            # a read fault first, then the write (as xfs_io mread + mwrite)
        m[0:4] = b"mmap"
""")


def _stat_times(path: Path) -> str:
    """mtime and ctime as coreutils stat (statx with only those fields) sees them."""
    return subprocess.run(["stat", "-c", "%.9Y %.9Z", str(path)], check=True, capture_output=True,
                          text=True).stdout.strip()


def _times_of(st: os.stat_result) -> str:
    return " ".join(f"{ns // 10**9}.{ns % 10**9:09d}" for ns in (st.st_mtime_ns, st.st_ctime_ns))


def test_times_after_mmap_write_are_fresh(mnt):
    f = mnt.path / "f"
    f.write_bytes(bytes(4096))
    first = _stat_times(f)  # the kernel caches these attributes now
    assert first == _times_of(os.stat(mnt.backing / "f"))
    written = os.stat(mnt.backing / "f").st_mtime_ns
    # The mapped write must get a later time than the one cached.
    assert wait_until(lambda: time.time_ns() > written + 50_000_000)
    subprocess.run([sys.executable, "-c", _MMAP_WRITER, str(f)], check=True)
    backing = os.stat(mnt.backing / "f")
    assert backing.st_mtime_ns > written
    assert _stat_times(f) == _times_of(backing)
    assert f.read_bytes()[:4] == b"mmap"


def _free_bytes(path: Path) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def _all_closed(mount) -> bool:
    """Whether the daemon has handled every RELEASE (close(2) sends it asynchronously)."""
    return not any(mount.stats()["gauges"]["open_files"].values())


def test_unlinked_file_space_comes_back_when_nothing_uses_it(tmpfs_dir, mode, mount_factory):
    """Removing a file gives its space back once no open file uses it, without
    waiting for the kernel to forget the inode (FORGET may come much later)."""
    backing = tmpfs_dir("space", "64m")
    mount = mount_factory(mode, backing=backing)
    m = mount.path
    empty = _free_bytes(backing)
    size = 16 << 20
    slack = 1 << 20
    for name in ("closed", "o_path", "open"):
        with open(m / name, "wb") as f:
            f.write(os.urandom(size))
    assert len((m / "closed").read_bytes()) == size
    assert wait_until(lambda: _all_closed(mount))
    assert _free_bytes(backing) <= empty - 3 * size
    # Nothing holds it: the space is back as soon as unlink returns.
    os.unlink(m / "closed")
    assert _free_bytes(backing) >= empty - 2 * size - slack
    # An O_PATH descriptor reads no data: the space comes back too, and
    # fstat through it still answers, as locally (no link left).
    path_fd = os.open(m / "o_path", os.O_PATH)
    try:
        before = os.fstat(path_fd)
        os.unlink(m / "o_path")
        assert _free_bytes(backing) >= empty - size - slack
        after = os.fstat(path_fd)
        assert (after.st_nlink, after.st_size, after.st_mode, after.st_ino) == \
            (0, size, before.st_mode, before.st_ino)
    finally:
        os.close(path_fd)
    # An open file keeps its data until its last close.
    fd = os.open(m / "open", os.O_RDONLY)
    try:
        os.unlink(m / "open")
        assert _free_bytes(backing) <= empty - size
        assert len(os.pread(fd, 8, size - 8)) == 8 and os.fstat(fd).st_nlink == 0
    finally:
        os.close(fd)
    # close(2) sends RELEASE asynchronously; the daemon lets go when it comes.
    assert wait_until(lambda: _free_bytes(backing) >= empty - slack)
