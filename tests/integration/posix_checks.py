"""A table of POSIX checks, each run on a fresh zcfs mount (like go-fuse's posixtest).

Every check takes (mnt, backing): the mountpoint and the backing directory
of a mount of an empty directory, as `pathlib.Path`s. It acts through the
mount and asserts both what the mount shows and what landed in the backing
directory. The mount caches attributes and entries for about a second, so a
check that changes the backing directory directly either does so before the
mount has looked the name up, or sits in UNCACHED_CHECKS (run on a mount
with attr_timeout=0,entry_timeout=0).

All checks run as root (the integration fixtures skip otherwise).
"""

from __future__ import annotations

import ctypes
import errno
import mmap
import os
import socket
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Callable

CHECKS: list[Callable[[Path, Path], None]] = []
UNCACHED_CHECKS: list[Callable[[Path, Path], None]] = []


def check(fn: Callable[[Path, Path], None]) -> Callable[[Path, Path], None]:
    CHECKS.append(fn)
    return fn


def uncached_check(fn: Callable[[Path, Path], None]) -> Callable[[Path, Path], None]:
    UNCACHED_CHECKS.append(fn)
    return fn


def check_id(fn: Callable) -> str:
    return fn.__name__.removeprefix("check_")


# -- helpers ----------------------------------------------------------------

_libc = ctypes.CDLL(None, use_errno=True)
AT_FDCWD = -100
RENAME_NOREPLACE = 1
RENAME_EXCHANGE = 2
UTIME_NOW = (1 << 30) - 1
UTIME_OMIT = (1 << 30) - 2


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


def renameat2(old: Path, new: Path, flags: int) -> None:
    if _libc.renameat2(AT_FDCWD, os.fsencode(old), AT_FDCWD, os.fsencode(new), ctypes.c_uint(flags)) < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), str(old))


def utimensat(path: Path, atime: tuple[int, int], mtime: tuple[int, int]) -> None:
    """utimensat(2) with raw (sec, nsec) pairs, so UTIME_NOW/UTIME_OMIT can be passed."""
    times = (_Timespec * 2)(_Timespec(*atime), _Timespec(*mtime))
    if _libc.utimensat(AT_FDCWD, os.fsencode(path), times, 0) < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), str(path))


def expect_errno(code: int, fn: Callable, *args, **kwargs) -> None:
    """Assert that fn(*args) fails with errno `code`."""
    try:
        fn(*args, **kwargs)
    except OSError as exc:
        assert exc.errno == code, f"{_call(fn, args)}: expected {errno.errorcode[code]}, got {exc!r}"
    else:
        raise AssertionError(f"{_call(fn, args)}: expected {errno.errorcode[code]}, it succeeded")


def _call(fn: Callable, args: tuple) -> str:
    shown = ", ".join(r if len(r := repr(a)) < 200 else r[:60] + "..." for a in args)
    return f"{getattr(fn, '__name__', fn)}({shown})"


def put(path: Path, data: bytes = b"", mode: int | None = None) -> None:
    path.write_bytes(data)
    if mode is not None:
        os.chmod(path, mode)


def mode_of(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


class umask:
    """Set the process umask for a block (the test process is the mount's client)."""

    def __init__(self, mask: int) -> None:
        self.mask = mask

    def __enter__(self) -> None:
        self.old = os.umask(self.mask)

    def __exit__(self, *exc) -> None:
        os.umask(self.old)


_SAME_ATTRS = ("st_mode", "st_nlink", "st_uid", "st_gid", "st_size", "st_rdev", "st_blocks",
               "st_mtime_ns", "st_ctime_ns", "st_atime_ns")


def assert_same_stat(through_mount: os.stat_result, in_backing: os.stat_result, what: str,
                     attrs: tuple[str, ...] = _SAME_ATTRS) -> None:
    for name in attrs:
        got, want = getattr(through_mount, name), getattr(in_backing, name)
        assert got == want, f"{what}: {name} is {got} through the mount, {want} in the backing dir"


# -- lookup and getattr -----------------------------------------------------

@check
def check_getattr_matches_backing(mnt: Path, backing: Path) -> None:
    # Made in the backing dir before the mount ever looked these names up.
    put(backing / "file", os.urandom(12345), 0o640)
    os.chown(backing / "file", 1234, 5678)
    os.utime(backing / "file", ns=(1_500_000_000_987_654_321, 1_600_000_000_123_456_789))
    os.link(backing / "file", backing / "hardlink")
    (backing / "dir").mkdir(0o751)
    for sub in ("a", "b", "c"):
        (backing / "dir" / sub).mkdir()
    os.symlink("file", backing / "symlink")
    os.mkfifo(backing / "fifo", 0o604)
    put(backing / "empty", b"", 0o000)
    for name in ("file", "hardlink", "dir", "symlink", "fifo", "empty", "dir/a"):
        assert_same_stat(os.lstat(mnt / name), os.lstat(backing / name), name)
    assert os.stat(mnt / "file").st_nlink == 2
    assert os.stat(mnt / "dir").st_nlink == 5  # ext4-style: 2 + 3 subdirectories
    assert os.lstat(mnt / "symlink").st_size == len("file")
    assert os.stat(mnt / "symlink").st_size == 12345  # followed
    root_m, root_b = os.stat(mnt), os.stat(backing)
    assert_same_stat(root_m, root_b, "mount root", ("st_mode", "st_nlink", "st_uid", "st_gid", "st_mtime_ns"))


@check
def check_getattr_through_open_fd(mnt: Path, backing: Path) -> None:
    with open(mnt / "f", "wb") as f:
        f.write(b"x" * 1000)
        f.flush()
        st = os.fstat(f.fileno())
        assert st.st_size == 1000
        assert stat.S_ISREG(st.st_mode)
        assert st.st_ino == os.stat(mnt / "f").st_ino
    assert os.stat(backing / "f").st_size == 1000


@check
def check_lookup_errors(mnt: Path, backing: Path) -> None:
    put(mnt / "file", b"data")
    expect_errno(errno.ENOENT, os.stat, mnt / "missing")
    expect_errno(errno.ENOENT, os.stat, mnt / "missing" / "deeper")
    expect_errno(errno.ENOTDIR, os.stat, mnt / "file" / "x")
    expect_errno(errno.ENOTDIR, os.listdir, mnt / "file")
    expect_errno(errno.ENOENT, os.listdir, mnt / "missing")
    assert os.path.samefile(f"{mnt}/./file", mnt / "file")  # (pathlib drops ".")
    (mnt / "d").mkdir()
    assert os.path.samefile(mnt / "d" / "..", mnt)
    assert os.path.samefile(mnt / "..", mnt.parent)  # ".." of the mount root leaves the mount


@check
def check_mtime_and_size_follow_writes(mnt: Path, backing: Path) -> None:
    put(mnt / "f", b"old")
    os.utime(mnt / "f", ns=(1_000_000_000_000_000_000, 1_000_000_000_000_000_000))
    before = os.stat(mnt / "f")
    with open(mnt / "f", "ab") as f:
        f.write(b"new data")
    after = os.stat(mnt / "f")
    assert after.st_size == 11
    assert after.st_mtime_ns > before.st_mtime_ns
    assert_same_stat(after, os.stat(backing / "f"), "f", ("st_size", "st_mtime_ns", "st_ctime_ns"))
    # A new entry changes the directory's mtime and nlink (mkdir).
    os.utime(mnt, ns=(0, 0))
    (mnt / "sub").mkdir()
    root = os.stat(mnt)
    assert root.st_mtime_ns > 0
    assert_same_stat(root, os.stat(backing), "mount root", ("st_nlink", "st_mtime_ns"))


# -- setattr ----------------------------------------------------------------

@check
def check_chmod(mnt: Path, backing: Path) -> None:
    put(mnt / "f", b"#!/bin/sh\n")
    for mode in (0o000, 0o640, 0o755, 0o4755, 0o2755, 0o6755, 0o1644, 0o7777, 0o600):
        os.chmod(mnt / "f", mode)
        assert mode_of(backing / "f") == mode, oct(mode)
        assert mode_of(mnt / "f") == mode, oct(mode)
    (mnt / "d").mkdir()
    for mode in (0o2775, 0o1777, 0o700, 0o3755):
        os.chmod(mnt / "d", mode)
        assert mode_of(backing / "d") == mode, oct(mode)
        assert mode_of(mnt / "d") == mode, oct(mode)
    fd = os.open(mnt / "f", os.O_RDONLY)
    try:
        os.fchmod(fd, 0o4711)
    finally:
        os.close(fd)
    assert mode_of(backing / "f") == 0o4711
    assert stat.S_ISREG(os.stat(backing / "f").st_mode)


@check
def check_chown(mnt: Path, backing: Path) -> None:
    put(mnt / "f", b"x", 0o644)
    os.chown(mnt / "f", 1234, 5678)
    st = os.stat(backing / "f")
    assert (st.st_uid, st.st_gid) == (1234, 5678)
    os.chown(mnt / "f", -1, 42)  # group only
    st = os.stat(backing / "f")
    assert (st.st_uid, st.st_gid) == (1234, 42)
    os.chown(mnt / "f", 7, -1)  # owner only
    assert (os.stat(mnt / "f").st_uid, os.stat(mnt / "f").st_gid) == (7, 42)
    assert (os.stat(backing / "f").st_uid, os.stat(backing / "f").st_gid) == (7, 42)
    # lchown changes the link, not its target
    os.symlink("f", mnt / "l")
    os.lchown(mnt / "l", 99, 98)
    assert (os.lstat(backing / "l").st_uid, os.lstat(backing / "l").st_gid) == (99, 98)
    assert (os.stat(backing / "f").st_uid, os.stat(backing / "f").st_gid) == (7, 42)
    # chown of a setuid/setgid executable clears both bits, as on any local fs
    os.chmod(mnt / "f", 0o6755)
    os.chown(mnt / "f", 0, 0)
    assert mode_of(backing / "f") == 0o755
    assert mode_of(mnt / "f") == 0o755


@check
def check_truncate(mnt: Path, backing: Path) -> None:
    put(mnt / "f", b"0123456789")
    os.truncate(mnt / "f", 100_000)  # up: a zero-filled tail
    assert os.stat(backing / "f").st_size == 100_000
    assert (mnt / "f").read_bytes() == b"0123456789" + bytes(100_000 - 10)
    os.truncate(mnt / "f", 4)  # down
    assert os.stat(mnt / "f").st_size == 4
    assert (backing / "f").read_bytes() == b"0123"
    assert (mnt / "f").read_bytes() == b"0123"
    os.truncate(mnt / "f", 0)
    assert (backing / "f").read_bytes() == b""


@check
def check_ftruncate(mnt: Path, backing: Path) -> None:
    fd = os.open(mnt / "f", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        os.write(fd, b"abcdefgh")
        os.ftruncate(fd, 3)
        assert os.fstat(fd).st_size == 3
        assert (backing / "f").read_bytes() == b"abc"
        os.ftruncate(fd, 8192)
        assert os.pread(fd, 8192, 0) == b"abc" + bytes(8189)
        assert os.stat(backing / "f").st_size == 8192
    finally:
        os.close(fd)
    # ftruncate needs a writable fd, through the mount as anywhere
    fd = os.open(mnt / "f", os.O_RDONLY)
    try:
        expect_errno(errno.EINVAL, os.ftruncate, fd, 0)
    finally:
        os.close(fd)
    assert os.stat(backing / "f").st_size == 8192


@check
def check_root_keeps_setuid_on_write_and_truncate(mnt: Path, backing: Path) -> None:
    # root has CAP_FSETID: writing or truncating keeps setuid/setgid bits
    put(mnt / "f", b"0123456789", 0o6755)
    os.truncate(mnt / "f", 5)
    assert mode_of(backing / "f") == 0o6755
    with open(mnt / "f", "ab") as f:
        f.write(b"more")
    assert mode_of(backing / "f") == 0o6755
    assert mode_of(mnt / "f") == 0o6755
    assert (backing / "f").read_bytes() == b"01234more"


@check
def check_utime_exact(mnt: Path, backing: Path) -> None:
    put(mnt / "f", b"x")
    atime, mtime = 1_234_567_890_111_222_333, 1_300_000_000_444_555_666
    os.utime(mnt / "f", ns=(atime, mtime))
    for where in (backing / "f", mnt / "f"):
        st = os.stat(where)
        assert (st.st_atime_ns, st.st_mtime_ns) == (atime, mtime), where
    # times before the epoch
    os.utime(mnt / "f", ns=(-1_000_000_000, -2_500_000_000))
    st = os.stat(backing / "f")
    assert (st.st_atime_ns, st.st_mtime_ns) == (-1_000_000_000, -2_500_000_000)
    # through an open fd (futimens)
    fd = os.open(mnt / "f", os.O_RDONLY)
    try:
        os.utime(fd, ns=(5_000_000_001, 6_000_000_002))
    finally:
        os.close(fd)
    st = os.stat(backing / "f")
    assert (st.st_atime_ns, st.st_mtime_ns) == (5_000_000_001, 6_000_000_002)


@check
def check_utime_now(mnt: Path, backing: Path) -> None:
    put(mnt / "f", b"x")
    os.utime(mnt / "f", ns=(1_000_000_000, 1_000_000_000))
    before = time.time_ns()
    os.utime(mnt / "f", None)  # both to now
    after = time.time_ns()
    for where in (backing / "f", mnt / "f"):
        st = os.stat(where)
        for value in (st.st_atime_ns, st.st_mtime_ns):
            assert before - 10**9 <= value <= after + 10**9, where
    os.utime(mnt / "f", ns=(1_000_000_000, 2_000_000_000))
    utimensat(mnt / "f", (0, UTIME_NOW), (0, UTIME_NOW))
    st = os.stat(backing / "f")
    assert st.st_atime_ns > 10**18 and st.st_mtime_ns > 10**18


@check
def check_utime_omit(mnt: Path, backing: Path) -> None:
    put(mnt / "f", b"x")
    os.utime(mnt / "f", ns=(1_000_000_000_000_000_001, 1_100_000_000_000_000_002))
    utimensat(mnt / "f", (0, UTIME_OMIT), (1_200_000_000, 3))  # mtime only
    st = os.stat(backing / "f")
    assert (st.st_atime_ns, st.st_mtime_ns) == (1_000_000_000_000_000_001, 1_200_000_000_000_000_003)
    utimensat(mnt / "f", (1_300_000_000, 4), (0, UTIME_OMIT))  # atime only
    st = os.stat(backing / "f")
    assert (st.st_atime_ns, st.st_mtime_ns) == (1_300_000_000_000_000_004, 1_200_000_000_000_000_003)
    utimensat(mnt / "f", (0, UTIME_NOW), (0, UTIME_OMIT))  # atime now, mtime kept
    st = os.stat(backing / "f")
    assert st.st_atime_ns > 1_600_000_000 * 10**9
    assert st.st_mtime_ns == 1_200_000_000_000_000_003
    utimensat(mnt / "f", (0, UTIME_OMIT), (0, UTIME_NOW))  # mtime now, atime kept
    st2 = os.stat(backing / "f")
    assert st2.st_atime_ns == st.st_atime_ns
    assert st2.st_mtime_ns > 1_600_000_000 * 10**9
    assert (os.stat(mnt / "f").st_atime_ns, os.stat(mnt / "f").st_mtime_ns) == (st2.st_atime_ns, st2.st_mtime_ns)


@check
def check_utime_symlink_itself(mnt: Path, backing: Path) -> None:
    put(mnt / "target", b"x")
    os.utime(mnt / "target", ns=(10**18, 10**18))
    os.symlink("target", mnt / "link")
    os.utime(mnt / "link", ns=(2 * 10**9, 3 * 10**9), follow_symlinks=False)
    st = os.lstat(backing / "link")
    assert (st.st_atime_ns, st.st_mtime_ns) == (2 * 10**9, 3 * 10**9)
    assert os.stat(backing / "target").st_mtime_ns == 10**18


# -- symlinks ---------------------------------------------------------------

@check
def check_symlink_readlink(mnt: Path, backing: Path) -> None:
    put(mnt / "target", b"content")
    os.symlink("target", mnt / "rel")
    os.symlink("/nonexistent/dangling/target", mnt / "dangling")
    long_target = "x" * 4095
    os.symlink(long_target, mnt / "long")
    os.symlink(b"\xff\xfe-not-utf8", bytes(mnt / "odd"))
    (mnt / "dir").mkdir()
    os.symlink("../target", mnt / "dir" / "up")
    for name, target in (("rel", "target"), ("dangling", "/nonexistent/dangling/target"),
                         ("long", long_target), ("dir/up", "../target")):
        assert os.readlink(backing / name) == target
        assert os.readlink(mnt / name) == target
        assert stat.S_ISLNK(os.lstat(backing / name).st_mode)
        assert stat.S_ISLNK(os.lstat(mnt / name).st_mode)
    assert os.readlink(bytes(backing / "odd")) == b"\xff\xfe-not-utf8"
    assert os.readlink(bytes(mnt / "odd")) == b"\xff\xfe-not-utf8"
    assert (mnt / "rel").read_bytes() == b"content"
    assert (mnt / "dir" / "up").read_bytes() == b"content"
    expect_errno(errno.ENOENT, os.stat, mnt / "dangling")
    expect_errno(errno.EEXIST, os.symlink, "other", mnt / "rel")
    expect_errno(errno.EINVAL, os.readlink, mnt / "target")
    expect_errno(errno.ENAMETOOLONG, os.symlink, "y" * 4096, mnt / "toolong")
    assert not os.path.lexists(backing / "toolong")


@check
def check_symlink_loops(mnt: Path, backing: Path) -> None:
    os.symlink("self", mnt / "self")
    os.symlink("b", mnt / "a")
    os.symlink("a", mnt / "b")
    expect_errno(errno.ELOOP, os.stat, mnt / "self")
    expect_errno(errno.ELOOP, open, mnt / "a")
    put(mnt / "file", b"x")
    os.symlink("file", mnt / "tofile")
    expect_errno(errno.ELOOP, os.open, mnt / "tofile", os.O_RDONLY | os.O_NOFOLLOW)
    assert os.readlink(backing / "self") == "self"


@check
def check_symlink_to_dir_and_create_through_dangling(mnt: Path, backing: Path) -> None:
    (mnt / "real").mkdir()
    os.symlink("real", mnt / "alias")
    put(mnt / "alias" / "inside", b"via link")
    assert (backing / "real" / "inside").read_bytes() == b"via link"
    assert os.listdir(mnt / "alias") == ["inside"]
    # O_CREAT through a dangling symlink creates its target
    os.symlink("made-by-open", mnt / "dangling")
    fd = os.open(mnt / "dangling", os.O_WRONLY | os.O_CREAT, 0o600)
    os.write(fd, b"!")
    os.close(fd)
    assert (backing / "made-by-open").read_bytes() == b"!"
    assert os.path.islink(backing / "dangling")
    # ... but not with O_EXCL
    os.symlink("other-target", mnt / "dangling2")
    expect_errno(errno.EEXIST, os.open, mnt / "dangling2", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    assert not os.path.lexists(backing / "other-target")


# -- mknod ------------------------------------------------------------------

@check
def check_mkfifo(mnt: Path, backing: Path) -> None:
    with umask(0):
        os.mkfifo(mnt / "fifo", 0o640)
    st = os.lstat(backing / "fifo")
    assert stat.S_ISFIFO(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o640
    assert stat.S_ISFIFO(os.lstat(mnt / "fifo").st_mode)
    # a FIFO on the mount works as a FIFO (the kernel serves it, not the daemon)
    reader = os.open(mnt / "fifo", os.O_RDONLY | os.O_NONBLOCK)
    writer = os.open(mnt / "fifo", os.O_WRONLY)
    try:
        os.write(writer, b"through the pipe")
        assert os.read(reader, 100) == b"through the pipe"
    finally:
        os.close(writer)
        os.close(reader)
    expect_errno(errno.EEXIST, os.mkfifo, mnt / "fifo")


@check
def check_unix_socket(mnt: Path, backing: Path) -> None:
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        server.bind(str(mnt / "sock"))
        server.listen(1)
        st = os.lstat(backing / "sock")
        assert stat.S_ISSOCK(st.st_mode)
        assert stat.S_ISSOCK(os.lstat(mnt / "sock").st_mode)
        client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            client.connect(str(mnt / "sock"))
            conn, _ = server.accept()
            client.sendall(b"ping")
            assert conn.recv(4) == b"ping"
            conn.close()
        finally:
            client.close()
    finally:
        server.close()
    os.unlink(mnt / "sock")
    assert not os.path.lexists(backing / "sock")


@check
def check_mknod_char_device(mnt: Path, backing: Path) -> None:
    rdev = os.makedev(1, 3)
    with umask(0):
        os.mknod(mnt / "null", 0o666 | stat.S_IFCHR, rdev)
    st = os.lstat(backing / "null")
    assert stat.S_ISCHR(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o666
    assert st.st_rdev == rdev
    through = os.lstat(mnt / "null")
    assert stat.S_ISCHR(through.st_mode) and through.st_rdev == rdev
    with umask(0):
        os.mknod(mnt / "regular", 0o604 | stat.S_IFREG)
    st = os.lstat(backing / "regular")
    assert stat.S_ISREG(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o604


# -- directories ------------------------------------------------------------

@check
def check_mkdir_rmdir(mnt: Path, backing: Path) -> None:
    with umask(0):
        os.mkdir(mnt / "d", 0o751)
        os.mkdir(mnt / "d" / "sub", 0o2700)  # mkdir(2) ignores S_ISGID in its mode
    assert mode_of(backing / "d") == 0o751
    assert mode_of(backing / "d" / "sub") == 0o700
    assert os.stat(mnt / "d").st_nlink == 3
    expect_errno(errno.EEXIST, os.mkdir, mnt / "d")
    expect_errno(errno.ENOENT, os.mkdir, mnt / "missing" / "x")
    expect_errno(errno.ENOTEMPTY, os.rmdir, mnt / "d")
    put(mnt / "file")
    expect_errno(errno.ENOTDIR, os.rmdir, mnt / "file")
    expect_errno(errno.ENOTDIR, os.mkdir, mnt / "file" / "x")
    expect_errno(errno.ENOENT, os.rmdir, mnt / "missing")
    expect_errno(errno.EINVAL, os.rmdir, f"{mnt}/d/sub/.")
    os.rmdir(mnt / "d" / "sub")
    assert os.stat(mnt / "d").st_nlink == 2
    os.rmdir(mnt / "d")
    assert not os.path.exists(backing / "d")
    expect_errno(errno.ENOENT, os.stat, mnt / "d")


@check
def check_unlink(mnt: Path, backing: Path) -> None:
    put(mnt / "f", b"x")
    os.symlink("f", mnt / "l")
    os.unlink(mnt / "l")  # the link, not the target
    assert not os.path.lexists(backing / "l")
    assert (backing / "f").exists()
    os.unlink(mnt / "f")
    assert not os.path.lexists(backing / "f")
    expect_errno(errno.ENOENT, os.stat, mnt / "f")
    expect_errno(errno.ENOENT, os.unlink, mnt / "f")
    (mnt / "d").mkdir()
    expect_errno(errno.EISDIR, os.unlink, mnt / "d")
    assert (backing / "d").is_dir()


# -- rename -----------------------------------------------------------------

@check
def check_rename_plain_and_over_existing(mnt: Path, backing: Path) -> None:
    put(mnt / "a", b"A")
    os.rename(mnt / "a", mnt / "b")
    assert not os.path.exists(backing / "a") and (backing / "b").read_bytes() == b"A"
    expect_errno(errno.ENOENT, os.stat, mnt / "a")
    put(mnt / "c", b"C")
    ino_c = os.stat(mnt / "c").st_ino
    os.rename(mnt / "c", mnt / "b")  # over an existing file
    assert (backing / "b").read_bytes() == b"C"
    assert (mnt / "b").read_bytes() == b"C"
    assert os.stat(mnt / "b").st_ino == ino_c
    assert sorted(os.listdir(backing)) == ["b"]
    # renaming one hard link onto another is a no-op that keeps both
    os.link(mnt / "b", mnt / "b2")
    os.rename(mnt / "b", mnt / "b2")
    assert sorted(os.listdir(backing)) == ["b", "b2"]


@check
def check_rename_across_dirs(mnt: Path, backing: Path) -> None:
    (mnt / "d1").mkdir()
    (mnt / "d2").mkdir()
    put(mnt / "d1" / "f", b"moving")
    os.rename(mnt / "d1" / "f", mnt / "d2" / "g")
    assert (backing / "d2" / "g").read_bytes() == b"moving"
    assert os.listdir(backing / "d1") == []
    (mnt / "d1" / "sub").mkdir()
    put(mnt / "d1" / "sub" / "deep", b"deep")
    os.rename(mnt / "d1" / "sub", mnt / "d2" / "sub")  # a whole directory
    assert (backing / "d2" / "sub" / "deep").read_bytes() == b"deep"
    assert (mnt / "d2" / "sub" / "deep").read_bytes() == b"deep"
    assert os.stat(mnt / "d1").st_nlink == 2 and os.stat(mnt / "d2").st_nlink == 3
    # its ".." now leads to the new parent
    assert os.path.samefile(mnt / "d2" / "sub" / "..", mnt / "d2")


@check
def check_rename_errors(mnt: Path, backing: Path) -> None:
    (mnt / "d").mkdir()
    (mnt / "full").mkdir()
    put(mnt / "full" / "x")
    (mnt / "empty").mkdir()
    put(mnt / "f", b"f")
    expect_errno(errno.ENOENT, os.rename, mnt / "missing", mnt / "x")
    expect_errno(errno.ENOTEMPTY, os.rename, mnt / "d", mnt / "full")
    expect_errno(errno.EISDIR, os.rename, mnt / "f", mnt / "d")
    expect_errno(errno.ENOTDIR, os.rename, mnt / "d", mnt / "f")
    expect_errno(errno.EINVAL, os.rename, mnt / "d", mnt / "d" / "inside")
    os.rename(mnt / "d", mnt / "empty")  # over an empty directory is fine
    assert sorted(os.listdir(backing)) == ["empty", "f", "full"]


@check
def check_rename_noreplace(mnt: Path, backing: Path) -> None:
    put(mnt / "a", b"A")
    put(mnt / "b", b"B")
    expect_errno(errno.EEXIST, renameat2, mnt / "a", mnt / "b", RENAME_NOREPLACE)
    assert (backing / "a").read_bytes() == b"A" and (backing / "b").read_bytes() == b"B"
    renameat2(mnt / "a", mnt / "c", RENAME_NOREPLACE)
    assert sorted(os.listdir(backing)) == ["b", "c"]
    assert (mnt / "c").read_bytes() == b"A"


@check
def check_rename_exchange(mnt: Path, backing: Path) -> None:
    put(mnt / "a", b"A")
    (mnt / "dir").mkdir()
    put(mnt / "dir" / "inner", b"inner")
    renameat2(mnt / "a", mnt / "dir", RENAME_EXCHANGE)  # file <-> directory
    assert (backing / "dir").read_bytes() == b"A"
    assert (backing / "a" / "inner").read_bytes() == b"inner"
    assert (mnt / "dir").read_bytes() == b"A"
    assert (mnt / "a" / "inner").read_bytes() == b"inner"
    (mnt / "other").mkdir()
    put(mnt / "other" / "b", b"B")
    renameat2(mnt / "dir", mnt / "other" / "b", RENAME_EXCHANGE)  # across directories
    assert (backing / "dir").read_bytes() == b"B"
    assert (backing / "other" / "b").read_bytes() == b"A"
    expect_errno(errno.ENOENT, renameat2, mnt / "dir", mnt / "missing", RENAME_EXCHANGE)
    expect_errno(errno.EINVAL, renameat2, mnt / "dir", mnt / "x", RENAME_EXCHANGE | RENAME_NOREPLACE)


@check
def check_rename_exdev(mnt: Path, backing: Path) -> None:
    put(mnt / "f", b"x")
    outside = mnt.parent / f"outside-{os.getpid()}-{mnt.name}"
    try:
        expect_errno(errno.EXDEV, os.rename, mnt / "f", outside)
        expect_errno(errno.EXDEV, os.link, mnt / "f", outside)
        put(outside, b"y")
        expect_errno(errno.EXDEV, os.rename, outside, mnt / "g")
    finally:
        if os.path.lexists(outside):
            os.unlink(outside)
    assert sorted(os.listdir(backing)) == ["f"]


@check
def check_rename_over_open_file(mnt: Path, backing: Path) -> None:
    put(mnt / "target", b"old contents")
    put(mnt / "new", b"new contents")
    with open(mnt / "target", "rb") as held:
        os.rename(mnt / "new", mnt / "target")
        assert held.read() == b"old contents"  # the replaced file lives on while open
        assert (mnt / "target").read_bytes() == b"new contents"
        assert (backing / "target").read_bytes() == b"new contents"
        assert os.fstat(held.fileno()).st_nlink == 0
    assert sorted(os.listdir(backing)) == ["target"]


# -- hard links -------------------------------------------------------------

@check
def check_hard_links(mnt: Path, backing: Path) -> None:
    put(mnt / "orig", b"shared")
    (mnt / "other").mkdir()
    os.link(mnt / "orig", mnt / "same-dir")
    os.link(mnt / "orig", mnt / "other" / "cross-dir")
    inos = {os.stat(mnt / p).st_ino for p in ("orig", "same-dir", "other/cross-dir")}
    assert len(inos) == 1
    for p in ("orig", "same-dir", "other/cross-dir"):
        assert os.stat(mnt / p).st_nlink == 3
    assert os.stat(backing / "orig").st_nlink == 3
    assert os.stat(backing / "orig").st_ino == os.stat(backing / "other" / "cross-dir").st_ino
    with open(mnt / "same-dir", "ab") as f:
        f.write(b" and changed")
    assert (mnt / "other" / "cross-dir").read_bytes() == b"shared and changed"
    os.unlink(mnt / "orig")
    assert os.stat(mnt / "same-dir").st_nlink == 2
    assert os.stat(mnt / "other" / "cross-dir").st_nlink == 2
    expect_errno(errno.EEXIST, os.link, mnt / "same-dir", mnt / "other" / "cross-dir")
    (mnt / "dir").mkdir()
    expect_errno(errno.EPERM, os.link, mnt / "dir", mnt / "dirlink")
    expect_errno(errno.ENOENT, os.link, mnt / "missing", mnt / "x")


@check
def check_hard_link_to_symlink(mnt: Path, backing: Path) -> None:
    os.symlink("nowhere", mnt / "sym")
    os.link(mnt / "sym", mnt / "sym2", follow_symlinks=False)
    assert os.lstat(backing / "sym2").st_ino == os.lstat(backing / "sym").st_ino
    assert os.readlink(mnt / "sym2") == "nowhere"
    assert os.lstat(mnt / "sym").st_nlink == 2


# -- open flags and create --------------------------------------------------

@check
def check_open_trunc_append_excl(mnt: Path, backing: Path) -> None:
    put(mnt / "f", b"0123456789")
    fd = os.open(mnt / "f", os.O_WRONLY | os.O_TRUNC)
    os.close(fd)
    assert (backing / "f").read_bytes() == b""
    assert os.stat(mnt / "f").st_size == 0
    put(mnt / "f", b"start")
    fd = os.open(mnt / "f", os.O_WRONLY | os.O_APPEND)
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        os.write(fd, b"-end")
        os.write(fd, b"-more")
    finally:
        os.close(fd)
    assert (backing / "f").read_bytes() == b"start-end-more"
    expect_errno(errno.EEXIST, os.open, mnt / "f", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    assert (backing / "f").read_bytes() == b"start-end-more"
    fd = os.open(mnt / "new", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    os.close(fd)
    assert (backing / "new").exists()
    fd = os.open(mnt / "f", os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)  # existing: mode ignored
    os.close(fd)
    assert (backing / "f").read_bytes() == b""
    expect_errno(errno.ENOENT, os.open, mnt / "nope", os.O_RDONLY)
    expect_errno(errno.ENOTDIR, os.open, mnt / "f", os.O_RDONLY | os.O_DIRECTORY)
    (mnt / "d").mkdir()
    expect_errno(errno.EISDIR, os.open, mnt / "d", os.O_WRONLY)
    expect_errno(errno.EISDIR, os.open, mnt / "d", os.O_RDWR)


@check
def check_open_flags_nofollow_sync_noatime(mnt: Path, backing: Path) -> None:
    # cp -a and rsync open regular files with O_NOFOLLOW
    put(mnt / "f", b"data")
    for flags in (os.O_RDONLY | os.O_NOFOLLOW, os.O_WRONLY | os.O_NOFOLLOW | os.O_APPEND,
                  os.O_RDWR | os.O_NOATIME, os.O_WRONLY | os.O_SYNC | os.O_APPEND,
                  os.O_WRONLY | os.O_DSYNC | os.O_APPEND, os.O_RDONLY | os.O_CLOEXEC):
        fd = os.open(mnt / "f", flags)
        try:
            if flags & os.O_APPEND:
                os.write(fd, b"+")
            else:
                assert os.pread(fd, 4, 0) == b"data"
        finally:
            os.close(fd)
    assert (backing / "f").read_bytes() == b"data+++"
    (mnt / "d").mkdir()
    fd = os.open(mnt / "d", os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    os.close(fd)
    fd = os.open(mnt / "new", os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_EXCL, 0o644)
    os.close(fd)
    assert (backing / "new").exists()


@check
def check_o_direct(mnt: Path, backing: Path) -> None:
    block = 4096
    data = os.urandom(4 * block)
    out = mmap.mmap(-1, len(data))  # page-aligned buffers, as O_DIRECT wants
    out[:] = data
    fd = os.open(mnt / "f", os.O_WRONLY | os.O_CREAT | os.O_DIRECT, 0o644)
    try:
        assert os.pwritev(fd, [out], 0) == len(data)
        assert os.pwritev(fd, [memoryview(out)[:block]], 8 * block) == block  # still aligned
    finally:
        os.close(fd)
    expected = data + bytes(4 * block) + data[:block]
    assert (backing / "f").read_bytes() == expected
    into = mmap.mmap(-1, len(expected))
    fd = os.open(mnt / "f", os.O_RDONLY | os.O_DIRECT)
    try:
        assert os.preadv(fd, [into], 0) == len(expected)
    finally:
        os.close(fd)
    assert into[:] == expected


@check
def check_create_mode_exact_umask0(mnt: Path, backing: Path) -> None:
    with umask(0):
        for i, mode in enumerate((0o600, 0o644, 0o666, 0o755, 0o4755, 0o2755, 0o1777, 0o000, 0o777)):
            fd = os.open(mnt / f"f{i}", os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
            os.close(fd)
            assert mode_of(backing / f"f{i}") == mode, oct(mode)
            assert mode_of(mnt / f"f{i}") == mode, oct(mode)
        for i, mode in enumerate((0o777, 0o700, 0o2775, 0o1777)):
            os.mkdir(mnt / f"d{i}", mode)
            assert mode_of(backing / f"d{i}") == mode & ~0o2000, oct(mode)  # as mkdir(2) does
            assert mode_of(mnt / f"d{i}") == mode & ~0o2000, oct(mode)


@check
def check_create_mode_umask022(mnt: Path, backing: Path) -> None:
    with umask(0o022):
        for i, mode in enumerate((0o666, 0o777, 0o640, 0o4777, 0o622)):
            fd = os.open(mnt / f"f{i}", os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
            os.close(fd)
            assert mode_of(backing / f"f{i}") == mode & ~0o022, oct(mode)
        os.mkdir(mnt / "d", 0o777)
        os.mkfifo(mnt / "p", 0o666)
    assert mode_of(backing / "d") == 0o755
    assert mode_of(backing / "p") == 0o644
    with umask(0o077):
        put(mnt / "private", b"s")
    assert mode_of(backing / "private") == 0o600


@check
def check_create_owner_is_root(mnt: Path, backing: Path) -> None:
    put(mnt / "f", b"x")
    (mnt / "d").mkdir()
    for name in ("f", "d"):
        st = os.stat(backing / name)
        assert (st.st_uid, st.st_gid) == (0, 0)


# -- data -------------------------------------------------------------------

@check
def check_write_read_offsets(mnt: Path, backing: Path) -> None:
    data = os.urandom(3 * 1024 * 1024 + 17)
    fd = os.open(mnt / "f", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        assert os.write(fd, data) == len(data)
        assert os.pwrite(fd, b"PATCH", 4096 - 2) == 5  # across a page boundary
        assert os.pwrite(fd, b"END", len(data) + 100) == 3  # past EOF: a hole
        expected = bytearray(data)
        expected[4094:4099] = b"PATCH"
        expected += bytes(100) + b"END"
        assert os.fstat(fd).st_size == len(expected)
        assert os.pread(fd, 10, 4090) == bytes(expected[4090:4100])
        assert os.pread(fd, 1000, len(expected) - 3) == b"END"
        assert os.pread(fd, 10, len(expected) + 5) == b""
        os.lseek(fd, 0, os.SEEK_SET)
        chunks = []
        while chunk := os.read(fd, 65536):
            chunks.append(chunk)
        assert b"".join(chunks) == bytes(expected)
    finally:
        os.close(fd)
    assert (backing / "f").read_bytes() == bytes(expected)


@check
def check_sparse_large_offset(mnt: Path, backing: Path) -> None:
    offset = 5 * 1024**3 + 123  # beyond 32 bits
    fd = os.open(mnt / "f", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        os.pwrite(fd, b"far away", offset)
        assert os.pread(fd, 8, offset) == b"far away"
        assert os.pread(fd, 4, offset - 4) == bytes(4)
    finally:
        os.close(fd)
    st = os.stat(backing / "f")
    assert st.st_size == offset + 8
    assert st.st_blocks * 512 < 1024 * 1024  # still sparse
    with open(backing / "f", "rb") as f:
        f.seek(offset)
        assert f.read() == b"far away"


@check
def check_two_handles_see_each_other(mnt: Path, backing: Path) -> None:
    put(mnt / "f", b"")
    with open(mnt / "f", "r+b", buffering=0) as a, open(mnt / "f", "rb", buffering=0) as b:
        a.write(b"hello")
        assert b.read() == b"hello"
        a.seek(0)
        a.write(b"J")
        b.seek(0)
        assert b.read() == b"Jello"
    assert (backing / "f").read_bytes() == b"Jello"


@check
def check_mmap_shared_write(mnt: Path, backing: Path) -> None:
    put(mnt / "f", bytes(8192))
    with open(mnt / "f", "r+b") as f:
        with mmap.mmap(f.fileno(), 8192) as m:
            m[100:105] = b"mmap!"
            m[8000:8003] = b"end"
            m.flush()
    data = (backing / "f").read_bytes()
    assert data[100:105] == b"mmap!" and data[8000:8003] == b"end" and len(data) == 8192
    with open(mnt / "f", "rb") as f, mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ) as m:
        assert m[100:105] == b"mmap!"


@check
def check_flush_fsync_fdatasync(mnt: Path, backing: Path) -> None:
    fd = os.open(mnt / "f", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        os.write(fd, b"durable")
        os.fsync(fd)
        os.fdatasync(fd)
        assert (backing / "f").read_bytes() == b"durable"
        dup = os.dup(fd)
        os.close(dup)  # FLUSH without RELEASE
        os.write(fd, b"!")
        assert (backing / "f").read_bytes() == b"durable!"
    finally:
        os.close(fd)
    dfd = os.open(mnt, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dfd)  # FSYNCDIR
        os.fdatasync(dfd)
    finally:
        os.close(dfd)
    fd = os.open(mnt / "f", os.O_RDONLY)
    try:
        os.fsync(fd)  # fsync of a read-only fd is allowed
    finally:
        os.close(fd)


@check
def check_copy_file_range(mnt: Path, backing: Path) -> None:
    data = os.urandom(200_000)
    put(mnt / "src", data)
    src = os.open(mnt / "src", os.O_RDONLY)
    dst = os.open(mnt / "dst", os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        copied = 0
        while copied < 150_000:
            n = os.copy_file_range(src, dst, 150_000 - copied, 1000 + copied, 10 + copied)
            assert n > 0
            copied += n
    finally:
        os.close(src)
        os.close(dst)
    assert (backing / "dst").read_bytes() == bytes(10) + data[1000:151_000]
    assert (mnt / "dst").read_bytes() == bytes(10) + data[1000:151_000]


@check
def check_fallocate(mnt: Path, backing: Path) -> None:
    fd = os.open(mnt / "f", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        os.write(fd, b"head")
        os.posix_fallocate(fd, 0, 1024 * 1024)
        assert os.fstat(fd).st_size == 1024 * 1024
        assert os.pread(fd, 8, 0) == b"head" + bytes(4)
    finally:
        os.close(fd)
    assert os.stat(backing / "f").st_size == 1024 * 1024
    assert (backing / "f").read_bytes()[:4] == b"head"


@check
def check_exec_from_mount(mnt: Path, backing: Path) -> None:
    put(mnt / "script.sh", b"#!/bin/sh\necho \"ran with $1\"\n", 0o755)
    out = subprocess.run([str(mnt / "script.sh"), "arg"], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0 and out.stdout == "ran with arg\n"
    put(mnt / "not-exec.sh", b"#!/bin/sh\n", 0o644)
    expect_errno(errno.EACCES, subprocess.run, [str(mnt / "not-exec.sh")])


@check
def check_parallel_io(mnt: Path, backing: Path) -> None:
    """Eight threads creating, writing, reading back and renaming files at once."""
    errors: list[BaseException] = []
    payloads = {f"t{t}-f{i}": os.urandom(1000 * (i + 1) + t) for t in range(8) for i in range(15)}

    def worker(t: int) -> None:
        try:
            (mnt / f"dir{t}").mkdir()
            for i in range(15):
                name = f"t{t}-f{i}"
                path = mnt / f"dir{t}" / f"{name}.tmp"
                with open(path, "wb") as f:
                    f.write(payloads[name])
                assert path.read_bytes() == payloads[name]
                os.rename(path, mnt / f"dir{t}" / name)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, errors
    for name, data in payloads.items():
        t = name.split("-")[0][1:]
        assert (backing / f"dir{t}" / name).read_bytes() == data
    assert sum(len(os.listdir(backing / f"dir{t}")) for t in range(8)) == len(payloads)


_LOCK_PROBE = """
import fcntl, os, sys
fd = os.open(sys.argv[1], os.O_RDWR)
out = []
for name, take in (("flock", lambda: fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)),
                   ("posix", lambda: fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB))):
    try:
        take()
        out.append(name + ":got")
    except OSError as exc:
        out.append(name + ":" + str(exc.errno))
print(" ".join(out))
"""


@check
def check_locks_between_processes(mnt: Path, backing: Path) -> None:
    import fcntl

    put(mnt / "lockfile", b"x" * 100)

    def probe() -> str:
        out = subprocess.run([sys.executable, "-c", _LOCK_PROBE, str(mnt / "lockfile")],
                             capture_output=True, text=True, timeout=30)
        assert out.returncode == 0, out.stderr
        return out.stdout.strip()

    fd = os.open(mnt / "lockfile", os.O_RDWR)
    try:
        assert probe() == "flock:got posix:got"  # nobody holds them yet
        fcntl.flock(fd, fcntl.LOCK_EX)
        fcntl.lockf(fd, fcntl.LOCK_EX)
        assert probe() == f"flock:{errno.EAGAIN} posix:{errno.EAGAIN}"
        fcntl.flock(fd, fcntl.LOCK_UN)
        fcntl.lockf(fd, fcntl.LOCK_UN)
        assert probe() == "flock:got posix:got"
    finally:
        os.close(fd)


# -- readdir ----------------------------------------------------------------

@check
def check_readdir_many_entries(mnt: Path, backing: Path) -> None:
    (backing / "big").mkdir()
    names = {f"entry-{i:05d}-{'x' * (i % 50)}" for i in range(2000)}
    for name in names:
        (backing / "big" / name).touch()
    (mnt / "big" / "through-mount").touch()
    names.add("through-mount")
    listing = os.listdir(mnt / "big")
    assert len(listing) == len(set(listing)), "an entry was listed twice"
    assert set(listing) == names
    with os.scandir(mnt / "big") as it:
        scanned = [e.name for e in it]
    assert sorted(scanned) == sorted(names)
    assert os.listdir(mnt / "big") == listing  # a second listing is identical


@check
def check_readdir_types_and_inodes(mnt: Path, backing: Path) -> None:
    put(mnt / "file")
    (mnt / "dir").mkdir()
    os.symlink("dir", mnt / "link")
    os.mkfifo(mnt / "fifo")
    with os.scandir(mnt) as it:
        entries = {e.name: e for e in it}
    assert set(entries) == {"file", "dir", "link", "fifo"}
    assert entries["file"].is_file(follow_symlinks=False)
    assert entries["dir"].is_dir(follow_symlinks=False)
    assert entries["link"].is_symlink()
    assert not entries["fifo"].is_file(follow_symlinks=False)
    assert stat.S_ISFIFO(entries["fifo"].stat(follow_symlinks=False).st_mode)
    for name, entry in entries.items():
        assert entry.inode() == os.lstat(mnt / name).st_ino, name
    assert os.listdir(mnt / "dir") == []


@check
def check_readdir_odd_names(mnt: Path, backing: Path) -> None:
    root = bytes(mnt)
    names = [b"\xff\xfe", b"caf\xc3\xa9", b"with space", b"new\nline", b"-dash", b"a" * 255, b"\x01ctl", b"*?[]"]
    for name in names:
        fd = os.open(root + b"/" + name, os.O_WRONLY | os.O_CREAT, 0o644)
        os.write(fd, name)
        os.close(fd)
    os.mkdir(root + b"/dir\xff")
    expected = set(names) | {b"dir\xff"}
    assert set(os.listdir(bytes(backing))) == expected
    listing = os.listdir(root)
    assert sorted(listing) == sorted(expected)
    for name in names:
        with open(root + b"/" + name, "rb") as f:
            assert f.read() == name


@check
def check_name_too_long(mnt: Path, backing: Path) -> None:
    ok, too_long = "n" * 255, "n" * 256
    put(mnt / ok, b"fits")
    assert (backing / ok).read_bytes() == b"fits"
    expect_errno(errno.ENAMETOOLONG, os.open, mnt / too_long, os.O_WRONLY | os.O_CREAT, 0o644)
    expect_errno(errno.ENAMETOOLONG, os.stat, mnt / too_long)
    expect_errno(errno.ENAMETOOLONG, os.mkdir, mnt / too_long)
    expect_errno(errno.ENAMETOOLONG, os.rename, mnt / ok, mnt / too_long)
    expect_errno(errno.ENAMETOOLONG, os.symlink, "t", mnt / too_long)
    expect_errno(errno.ENAMETOOLONG, os.link, mnt / ok, mnt / too_long)
    assert os.listdir(backing) == [ok]


_CHURN = """
import os, sys
d, stop = sys.argv[1], sys.argv[2]
i = 0
while not os.path.exists(stop):
    path = os.path.join(d, "churn-%02d" % (i % 40))
    if i % 80 < 40:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o644))
    else:
        os.unlink(path)
    i += 1
print(i)
"""


@check
def check_readdir_while_changing(mnt: Path, backing: Path) -> None:
    """Listings stay whole while another process adds and removes entries."""
    (mnt / "d").mkdir()
    stable = {f"stable-{i:04d}" for i in range(300)}
    for name in stable:
        (backing / "d" / name).touch()
    stop = mnt.parent / f"{mnt.name}.stop-churn"
    churn = subprocess.Popen([sys.executable, "-c", _CHURN, str(mnt / "d"), str(stop)],
                             stdout=subprocess.PIPE, text=True)
    try:
        for _ in range(25):
            listing = os.listdir(mnt / "d")
            assert len(listing) == len(set(listing)), "an entry was listed twice"
            assert stable <= set(listing), "an unchanged entry was skipped"
            assert all(n in stable or n.startswith("churn-") for n in listing)
    finally:
        stop.touch()
        out, _ = churn.communicate(timeout=30)
        stop.unlink()
    assert churn.returncode == 0
    assert int(out) > 0  # it did churn


@check
def check_rewinddir_sees_new_entries(mnt: Path, backing: Path) -> None:
    (mnt / "a").touch()
    fd = os.open(mnt, os.O_RDONLY | os.O_DIRECTORY)
    try:
        assert os.listdir(fd) == ["a"]
        (mnt / "b").touch()
        assert sorted(os.listdir(fd)) == ["a", "b"]  # listdir(fd) rewinds first
    finally:
        os.close(fd)


# -- statfs -----------------------------------------------------------------

@check
def check_statfs(mnt: Path, backing: Path) -> None:
    m, b = os.statvfs(mnt), os.statvfs(backing)
    assert m.f_namemax == 255
    for name in ("f_bsize", "f_frsize", "f_blocks", "f_files", "f_namemax"):
        assert getattr(m, name) == getattr(b, name), name
    for name in ("f_bfree", "f_bavail"):  # other processes may write meanwhile
        assert abs(getattr(m, name) - getattr(b, name)) <= max(b.f_blocks // 100, 1000), name
    for name in ("f_ffree", "f_favail"):
        assert abs(getattr(m, name) - getattr(b, name)) <= max(b.f_files // 100, 1000), name
    sub = mnt / "sub"
    sub.mkdir()
    assert os.statvfs(sub).f_blocks == m.f_blocks


# -- xattrs -----------------------------------------------------------------

@check
def check_xattrs(mnt: Path, backing: Path) -> None:
    put(mnt / "f", b"x")
    assert os.listxattr(mnt / "f") == []
    os.setxattr(mnt / "f", "user.one", b"1")
    os.setxattr(mnt / "f", "user.two", b"\x00binary\xff")
    os.setxattr(mnt / "f", "user.empty", b"")
    os.setxattr(mnt / "f", "trusted.root-only", b"t")
    assert os.getxattr(backing / "f", "user.two") == b"\x00binary\xff"
    assert os.getxattr(backing / "f", "trusted.root-only") == b"t"
    assert os.getxattr(mnt / "f", "user.one") == b"1"
    assert os.getxattr(mnt / "f", "user.empty") == b""
    assert sorted(os.listxattr(mnt / "f")) == sorted(os.listxattr(backing / "f"))
    assert {"user.one", "user.two", "user.empty", "trusted.root-only"} <= set(os.listxattr(mnt / "f"))
    os.setxattr(mnt / "f", "user.one", b"replaced", os.XATTR_REPLACE)
    assert os.getxattr(backing / "f", "user.one") == b"replaced"
    expect_errno(errno.EEXIST, os.setxattr, mnt / "f", "user.one", b"x", os.XATTR_CREATE)
    expect_errno(errno.ENODATA, os.setxattr, mnt / "f", "user.nope", b"x", os.XATTR_REPLACE)
    expect_errno(errno.ENODATA, os.getxattr, mnt / "f", "user.missing")
    os.removexattr(mnt / "f", "user.one")
    expect_errno(errno.ENODATA, os.getxattr, backing / "f", "user.one")
    expect_errno(errno.ENODATA, os.getxattr, mnt / "f", "user.one")
    expect_errno(errno.ENODATA, os.removexattr, mnt / "f", "user.one")
    assert "user.one" not in os.listxattr(mnt / "f")
    # on a directory, and through an open fd
    (mnt / "d").mkdir()
    os.setxattr(mnt / "d", "user.dir", b"yes")
    assert os.getxattr(backing / "d", "user.dir") == b"yes"
    fd = os.open(mnt / "f", os.O_RDONLY)
    try:
        os.setxattr(fd, "user.fd", b"via fd")
        assert os.getxattr(fd, "user.fd") == b"via fd"
    finally:
        os.close(fd)
    assert os.getxattr(backing / "f", "user.fd") == b"via fd"
    # user.* xattrs are not allowed on symlinks (the kernel says EPERM)
    os.symlink("f", mnt / "l")
    expect_errno(errno.EPERM, os.setxattr, mnt / "l", "user.x", b"1", follow_symlinks=False)
    os.setxattr(mnt / "l", "trusted.on-link", b"L", follow_symlinks=False)
    assert os.getxattr(backing / "l", "trusted.on-link", follow_symlinks=False) == b"L"
    assert os.getxattr(mnt / "l", "trusted.on-link", follow_symlinks=False) == b"L"


@check
def check_xattr_large_value(mnt: Path, backing: Path) -> None:
    """The largest value the backing filesystem takes, up to 64 KiB, round-trips.

    ext4 without ea_inode stops at about a block; test_posix also runs a
    tmpfs-backed mount where a full 64 KiB value fits.
    """
    probe = backing / "xattr-probe"  # never looked up through the mount
    probe.touch()
    try:
        size = 64 * 1024
        backing_error = None
        try:
            os.setxattr(probe, "user.big", b"p" * size)
        except OSError as exc:
            backing_error = exc.errno
    finally:
        probe.unlink()
    put(mnt / "f", b"x")
    value = os.urandom(size)
    if backing_error is not None:
        expect_errno(backing_error, os.setxattr, mnt / "f", "user.big", value)
        value = value[:2000]  # fits in an ext4 block with room to spare
    os.setxattr(mnt / "f", "user.big", value)
    assert os.getxattr(backing / "f", "user.big") == value
    assert os.getxattr(mnt / "f", "user.big") == value
    names = ["user.name-%03d" % i + "n" * 40 for i in range(10)]
    for name in names:
        os.setxattr(mnt / "f", name, b"v")
    assert set(names) <= set(os.listxattr(mnt / "f"))


# -- access -----------------------------------------------------------------

@check
def check_access_as_root(mnt: Path, backing: Path) -> None:
    put(mnt / "none", b"", 0o000)
    put(mnt / "plain", b"", 0o644)
    put(mnt / "exec", b"", 0o100)
    (mnt / "closed-dir").mkdir(0o000)
    os.chmod(mnt / "closed-dir", 0o000)
    assert os.access(mnt / "none", os.R_OK | os.W_OK)  # root reads and writes anything
    assert not os.access(mnt / "none", os.X_OK)  # ... but executes only what someone may
    assert not os.access(mnt / "plain", os.X_OK)
    assert os.access(mnt / "exec", os.X_OK)
    assert os.access(mnt / "closed-dir", os.R_OK | os.W_OK | os.X_OK)
    assert os.access(mnt / "plain", os.F_OK)
    assert not os.access(mnt / "missing", os.F_OK)
    with open(mnt / "none", "rb") as f:  # and open agrees
        assert f.read() == b""


# -- open files outliving their names ---------------------------------------

@check
def check_unlink_open_file(mnt: Path, backing: Path) -> None:
    put(mnt / "f", b"still here")
    fd = os.open(mnt / "f", os.O_RDWR)
    try:
        os.unlink(mnt / "f")
        assert not os.path.lexists(backing / "f")
        expect_errno(errno.ENOENT, os.stat, mnt / "f")
        assert os.pread(fd, 100, 0) == b"still here"
        os.pwrite(fd, b"STILL", 0)
        assert os.pread(fd, 100, 0) == b"STILL here"
        st = os.fstat(fd)
        assert st.st_nlink == 0 and st.st_size == 10
        os.ftruncate(fd, 5)
        assert os.fstat(fd).st_size == 5
        os.fchmod(fd, 0o600)
        assert stat.S_IMODE(os.fstat(fd).st_mode) == 0o600
        # a new file under the old name is a different file
        put(mnt / "f", b"newcomer")
        assert os.pread(fd, 100, 0) == b"STILL"
        assert (mnt / "f").read_bytes() == b"newcomer"
        assert os.stat(mnt / "f").st_ino != os.fstat(fd).st_ino
    finally:
        os.close(fd)
    assert os.listdir(backing) == ["f"]
    assert (backing / "f").read_bytes() == b"newcomer"


@check
def check_unlink_open_dir(mnt: Path, backing: Path) -> None:
    (mnt / "d").mkdir()
    fd = os.open(mnt / "d", os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.rmdir(mnt / "d")
        assert not os.path.lexists(backing / "d")
        assert os.listdir(fd) == []
        expect_errno(errno.ENOENT, os.open, "x", os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fd)
    finally:
        os.close(fd)


# -- caching off: changes made directly in the backing dir ------------------

@uncached_check
def check_backing_changes_show_through(mnt: Path, backing: Path) -> None:
    put(mnt / "f", b"one")
    assert os.listdir(mnt) == ["f"]
    assert os.stat(mnt / "f").st_size == 3
    put(backing / "g", b"made in backing")
    assert sorted(os.listdir(mnt)) == ["f", "g"]
    assert (mnt / "g").read_bytes() == b"made in backing"
    os.chmod(backing / "f", 0o600)
    os.utime(backing / "f", ns=(10**9, 2 * 10**9))
    st = os.stat(mnt / "f")
    assert stat.S_IMODE(st.st_mode) == 0o600 and st.st_mtime_ns == 2 * 10**9
    os.rename(backing / "f", backing / "renamed")
    expect_errno(errno.ENOENT, os.stat, mnt / "f")
    assert (mnt / "renamed").read_bytes() == b"one"
    os.unlink(backing / "g")
    expect_errno(errno.ENOENT, os.stat, mnt / "g")
    assert os.listdir(mnt) == ["renamed"]


@uncached_check
def check_backing_content_change_not_stale(mnt: Path, backing: Path) -> None:
    put(mnt / "f", b"version one")
    assert (mnt / "f").read_bytes() == b"version one"
    time.sleep(0.01)  # a different mtime
    put(backing / "f", b"VERSION TWO, longer")
    assert (mnt / "f").read_bytes() == b"VERSION TWO, longer"


@uncached_check
def check_backing_replaced_by_other_type(mnt: Path, backing: Path) -> None:
    put(mnt / "x", b"file")
    assert stat.S_ISREG(os.stat(mnt / "x").st_mode)
    os.unlink(backing / "x")
    (backing / "x").mkdir()
    (backing / "x" / "inside").touch()
    assert stat.S_ISDIR(os.stat(mnt / "x").st_mode)
    assert os.listdir(mnt / "x") == ["inside"]
    os.rename(backing / "x", backing / "moved")
    os.symlink("moved", backing / "x")
    assert os.readlink(mnt / "x") == "moved"
    assert os.listdir(mnt / "x") == ["inside"]
