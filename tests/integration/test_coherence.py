"""The mount's page cache against what the backing file sees (issue 19).

* `-o strictatime`: every read reaches the backing file, so its atime moves
  on every read, not only the first (off the passthrough tier the mount's
  page cache would answer the second one without asking the daemon).
* An asynchronous O_DIRECT write (libaio, through fio) while buffered reads
  fill the page cache: a read after the write completes sees the new bytes.

The race in the second is made deterministic, not waited out: a thread
writes the backing file directly from a buffer whose page is missing and
handled by a userfaultfd we never answer until we choose. The backing
filesystem holds the file's inode lock across that fault, so the daemon's
pwrite for the O_DIRECT WRITE waits behind it, while its preads (which
take no inode lock) go on serving the old bytes.
"""

from __future__ import annotations

import ctypes
import fcntl
import mmap
import os
import select
import shutil
import struct
import subprocess
import threading
from pathlib import Path

import pytest

from conftest import wait_until

PAGE = mmap.PAGESIZE


def _atime_into_past(path: Path) -> int:
    """Set the backing atime a year before the mtime (every policy then updates it); returns it."""
    st = path.stat()
    old = st.st_mtime_ns - 365 * 86400 * 10**9
    os.utime(path, ns=(old, st.st_mtime_ns))
    return old


def test_strictatime_every_read_moves_the_backing_atime(mode, mount_factory, tmp_path):
    """Each read through a strictatime mount updates the backing atime, the second read as
    the first (read(2) on one fd, a fresh open, mmap, exec), on every tier."""
    backing = tmp_path / "backing"
    backing.mkdir()
    data = b"x" * 100_000
    (backing / "data").write_bytes(data)
    shutil.copy("/bin/true", backing / "true")
    mount = mount_factory(mode, options=["strictatime"], backing=backing)
    target = mount.path / "data"

    def moved(read) -> None:
        for attempt in range(3):
            old = _atime_into_past(backing / "data")
            read()
            assert (backing / "data").stat().st_atime_ns != old, f"read {attempt + 1} left the atime"

    moved(lambda: target.read_bytes() == data or pytest.fail("wrong bytes"))
    with open(target, "rb") as f:  # one fd: the same pages asked again
        moved(lambda: os.pread(f.fileno(), len(data), 0) == data or pytest.fail("wrong bytes"))
    with open(target, "rb") as f:
        moved(lambda: _mapped_bytes(f.fileno(), mmap.MAP_PRIVATE) == data or pytest.fail("wrong bytes"))
    for _ in range(2):
        old = _atime_into_past(backing / "true")
        assert subprocess.run([mount.path / "true"]).returncode == 0
        assert (backing / "true").stat().st_atime_ns != old, "exec left the atime"


def _mapped_bytes(fd: int, flags: int) -> bytes:
    with mmap.mmap(fd, 0, flags=flags, prot=mmap.PROT_READ) as mapped:
        return mapped[:]


def test_strictatime_shared_mmap(mode, mount_factory):
    """A shared read-only mapping works on a strictatime mount (the native engine asks for
    FUSE_DIRECT_IO_ALLOW_MMAP); the pyfuse3 engine cannot ask for it (libfuse 3.14), and the
    kernel refuses a shared mapping of a direct_io file there with ENODEV, as with cache=never."""
    mount = mount_factory(mode, options=["strictatime"])
    (mount.backing / "f").write_bytes(b"map!" * 1024)
    with open(mount.path / "f", "rb") as f:
        if mode == "pyfuse3":
            with pytest.raises(OSError) as refused:
                _mapped_bytes(f.fileno(), mmap.MAP_SHARED)
            assert refused.value.errno == 19  # ENODEV
        else:
            assert _mapped_bytes(f.fileno(), mmap.MAP_SHARED) == b"map!" * 1024


# -- item 7: an asynchronous O_DIRECT write and buffered readers ----------

_SYS_USERFAULTFD = 323  # x86_64
_UFFDIO_API = 0xC018AA3F
_UFFDIO_REGISTER = 0xC020AA00
_UFFDIO_COPY = 0xC028AA03
_UFFD_API = 0xAA
_UFFDIO_REGISTER_MODE_MISSING = 1
_UFFD_EVENT_PAGEFAULT = 0x12

_libc = ctypes.CDLL(None, use_errno=True)


class StalledWrite:
    """A direct write(2) to a backing file that stops inside the backing filesystem,
    holding the file's inode lock, until `release()`: its source page is missing and
    only our userfaultfd can bring it in."""

    def __init__(self, path: Path, offset: int, data: bytes) -> None:
        assert len(data) == PAGE
        self._data = data
        self._uffd = _libc.syscall(_SYS_USERFAULTFD, os.O_CLOEXEC | os.O_NONBLOCK)
        if self._uffd < 0:
            pytest.skip(f"no userfaultfd here: {os.strerror(ctypes.get_errno())}")
        fcntl.ioctl(self._uffd, _UFFDIO_API, bytearray(struct.pack("QQQ", _UFFD_API, 0, 0)))
        # Private anonymous memory, never touched: its page stays missing.
        self._source = mmap.mmap(-1, PAGE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        self._address = ctypes.addressof(ctypes.c_char.from_buffer(self._source))
        fcntl.ioctl(self._uffd, _UFFDIO_REGISTER,
                    bytearray(struct.pack("QQQQ", self._address, PAGE, _UFFDIO_REGISTER_MODE_MISSING, 0)))
        self._fd = os.open(path, os.O_WRONLY)
        self._thread = threading.Thread(target=os.pwrite, args=(self._fd, self._source, offset))
        self._released = False

    def __enter__(self) -> "StalledWrite":
        self._thread.start()
        # Stalled once the backing filesystem, inode locked, faults on the source page.
        ready, _, _ = select.select([self._uffd], [], [], 30)
        assert ready, "the backing write never faulted"
        event = os.read(self._uffd, 32)
        assert event[0] == _UFFD_EVENT_PAGEFAULT
        return self

    def release(self) -> None:
        """Bring the page in: the stalled write completes, then whatever waited on the lock."""
        if self._released:
            return
        self._released = True
        source = mmap.mmap(-1, PAGE)
        source[:] = self._data
        copy = struct.pack("QQQQq", self._address, ctypes.addressof(ctypes.c_char.from_buffer(source)), PAGE, 0, 0)
        fcntl.ioctl(self._uffd, _UFFDIO_COPY, bytearray(copy))
        self._thread.join()

    def __exit__(self, *exc_info) -> None:
        self.release()
        os.close(self._fd)
        os.close(self._uffd)


def _fio_direct_write(path: Path, offset: int, size: int, fill: bytes) -> subprocess.Popen:
    """One asynchronous O_DIRECT write of `size` bytes of `fill` at `offset` (libaio), not waited for."""
    if shutil.which("fio") is None:
        pytest.skip("fio not installed (scripts/setup.sh)")
    return subprocess.Popen(
        ["fio", "--name=direct", f"--filename={path}", "--rw=write", f"--offset={offset}", f"--size={size}",
         f"--bs={size}", "--ioengine=libaio", "--iodepth=1", "--direct=1", f"--buffer_pattern=0x{fill.hex()}",
         "--fallocate=none", "--invalidate=0", "--output=/dev/null"],
        stdout=subprocess.DEVNULL)


def test_async_direct_write_leaves_no_stale_pages(mode, mount_factory):
    """Buffered reads while an asynchronous O_DIRECT write is under way: once it completes,
    a fresh buffered read returns the new bytes, on every engine and tier.

    The kernel drops the written range from the mount's page cache before the
    write; pages read back in while the WRITE waits in the daemon hold the old
    bytes. After a direct write it completes synchronously it drops them again;
    after an asynchronous one (FUSE_ASYNC_DIO, which libfuse asks for) it does
    not, and only a changed mtime (FUSE_AUTO_INVAL_DATA) would give them away.
    The mtime gives nothing away when a reader's GETATTR lands between the
    daemon's pwrite and the completion (the racing readers of the report), or
    on a backing filesystem whose timestamps are coarser than the write (1 s on
    ext4 with 128-byte inodes, 2 s on FAT): the test puts the mtime back to
    what the kernel last saw, so that only an explicit drop can save the read.
    """
    mount = mount_factory(mode)
    old, new = b"o", b"N"
    size = 16 * PAGE
    (mount.path / "f").write_bytes(old * (2 * size))
    assert (mount.path / "f").read_bytes() == old * (2 * size)  # in the page cache
    passes_through = mount.stats()["read"]["passthrough"]["opens"] > 0
    with StalledWrite(mount.backing / "f", size, old * PAGE) as stalled:  # outside the direct write's range
        writer = _fio_direct_write(mount.path / "f", 0, size, new)
        try:
            # Reads must come after the kernel dropped the range and sent the WRITE, which
            # then waits on the inode lock in the daemon (on passthrough the kernel writes
            # the backing file itself, and no page of the mount's is involved).
            assert wait_until(lambda: passes_through or mount.stats()["gauges"]["in_flight"] >= 2, timeout=30), \
                "the WRITE never reached the daemon"
            assert (mount.path / "f").read_bytes() == old * (2 * size)  # the old bytes, cached again
            seen = (mount.backing / "f").stat()  # the kernel has just asked for these attributes
            stalled.release()
            assert writer.wait(timeout=60) == 0
        finally:
            if writer.poll() is None:
                stalled.release()
                writer.wait(timeout=60)
    assert (mount.backing / "f").read_bytes() == new * size + old * size
    os.utime(mount.backing / "f", ns=(seen.st_atime_ns, seen.st_mtime_ns))
    assert (mount.path / "f").read_bytes() == new * size + old * size, "stale pages after the direct write"


_libc = ctypes.CDLL(None, use_errno=True)
_SYS_GETDENTS64 = 217  # x86_64


def _getdents(fd: int) -> list[str]:
    """One getdents64(2) on `fd` into a 1 KiB buffer: the names it returns, "." and ".."
    left out (one READDIR's worth of at most a page when the kernel asks the daemon,
    which sizes it by the caller's buffer; none at the end)."""
    buf = ctypes.create_string_buffer(1024)
    size = _libc.syscall(_SYS_GETDENTS64, fd, buf, len(buf))
    if size < 0:
        raise OSError(ctypes.get_errno(), "getdents64")
    names, at = [], 0
    while at < size:
        reclen, = struct.unpack_from("<H", buf, at + 16)  # linux_dirent64: ino, off, reclen, type, name
        names.append(buf.raw[at + 19:at + reclen].split(b"\0", 1)[0].decode())
        at += reclen
    return [name for name in names if name not in (".", "..")]


def _listing(path: Path) -> list[str]:
    """The names in a directory in the order listed, read by _getdents from a fresh open."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        names = []
        while more := _getdents(fd):
            names += more
        return names
    finally:
        os.close(fd)


@pytest.mark.parametrize("policy", ["watch", "always"])
def test_kept_listing_never_goes_on_from_an_older_listing(mode, policy, mount_factory):
    """A name created and one removed through the mount show so in every later listing,
    though an open that started listing before the change goes on listing afterwards.

    The kernel keeps a listing (FOPEN_CACHE_DIR) stamped with the directory's
    version when a read at offset 0 starts filling it, and appends what any
    open with that flag reads next at its end. The older open, reading on
    from the daemon's snapshot taken before the change, appended it to the
    listing a newer open had restarted after the change (its stamp current):
    the new name was missing from every later listing (fs.keeps_listing).
    """
    if not mode.startswith("native"):
        pytest.skip("listings are kept by the native engine only")
    mount = mount_factory(mode, options=[f"cache={policy}"])
    names = {f"name-{i:03d}" for i in range(100)}
    candidates = {f"new-{i:02d}" for i in range(20)}
    # The daemon lists in an order of its own, the same in every directory:
    # learn it, to change only names the older open has yet to reach, so
    # that the newer open's first read ends where the older open's did.
    (mount.path / "order").mkdir()
    for name in names | candidates:
        (mount.path / "order" / name).touch()
    order = _listing(mount.path / "order")
    listed = mount.path / "listed"
    listed.mkdir()
    for name in names:
        (listed / name).touch()
    older = os.open(listed, os.O_RDONLY | os.O_DIRECTORY)
    try:
        seen = _getdents(older)  # the daemon's snapshot for `older` is taken
        assert 0 < len(seen) < len(names)
        assert sorted(_listing(listed)) == sorted(names)  # the kept listing completes
        later = order[order.index(seen[-1]) + 1:]
        created = next(name for name in later if name in candidates)
        removed = next(name for name in later if name in names)
        (listed / created).touch()
        (listed / removed).unlink()
        names = names - {removed} | {created}
        newer = os.open(listed, os.O_RDONLY | os.O_DIRECTORY)
        try:
            assert _getdents(newer) == seen  # restarts the kept listing
        finally:
            os.close(newer)
        while _getdents(older):  # goes on from its snapshot
            pass
        assert sorted(_listing(listed)) == sorted(names)
    finally:
        os.close(older)
    assert sorted(_listing(listed)) == sorted(names)
