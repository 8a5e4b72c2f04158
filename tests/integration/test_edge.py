"""Edge cases through a real mount, on every engine and tier (issue #6).

These complement posix_checks.py, which already covers a 5 GiB sparse
write/read, an aligned O_DIRECT round trip, mmap write + flush, a fifo and a
unix socket used within one process, hard links across directories, rename
over and unlink of an open file, 255-byte and non-UTF-8 names, 4095-byte
symlink targets, and (test_posix.py) a 64 KiB xattr on tmpfs. Here: what
those leave out.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import mmap
import os
import socket
import stat
import struct
import subprocess
import sys
import textwrap

import pytest

from conftest import MODES

GiB = 1 << 30
PAGE = mmap.PAGESIZE


def expect_errno(code: int, fn, *args, **kwargs) -> None:
    with pytest.raises(OSError) as info:
        fn(*args, **kwargs)
    assert info.value.errno == code, f"{fn.__name__}: {errno.errorcode.get(info.value.errno)}, " \
                                     f"expected {errno.errorcode[code]}"


def assert_daemon_healthy(mount) -> None:
    """The daemon still runs and logged no traceback (an unexpected exception)."""
    assert mount.process.poll() is None, "the daemon died"
    log = mount.log.read_text() if mount.log.exists() else ""
    assert "Traceback" not in log, log[-3000:]


def on_passthrough(mount) -> bool:
    """Whether the files open on `mount` are served by kernel passthrough."""
    if mount.engine != "native":
        return False
    return mount.stats()["gauges"]["open_files"]["passthrough"] > 0


def _child(code: str, *args: str) -> subprocess.Popen:
    """A Python child running `code` with `args`, talking over stdin/stdout lines."""
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(code), *args], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)


# -- sparse files, SEEK_DATA/SEEK_HOLE, offsets past 4 GiB ------------------

# (offset, bytes) written into an otherwise sparse file: the first page, one
# at 1 MiB, one straddling 4 GiB (the 32-bit boundary) and one at 5 GiB.
EXTENTS = [(0, 4 * PAGE), (1 << 20, 2 * PAGE), (4 * GiB - 2 * PAGE, 4 * PAGE), (5 * GiB, PAGE)]
SPARSE_SIZE = 6 * GiB  # a trailing hole after the last extent


def _probe_offsets() -> list[int]:
    offsets = {0, 1, SPARSE_SIZE - 1, SPARSE_SIZE, SPARSE_SIZE + 1, 7 * GiB}
    for start, length in EXTENTS:
        offsets |= {start - 1, start, start + 1, start + length - 1, start + length, start + length + PAGE}
    return sorted(o for o in offsets if o >= 0)


def _seek(fd: int, offset: int, whence: int) -> int | str:
    try:
        return os.lseek(fd, offset, whence)
    except OSError as exc:
        return errno.errorcode[exc.errno]


def _pattern(offset: int, length: int) -> bytes:
    seed = hashlib.sha256(str(offset).encode()).digest()
    return (seed * (length // len(seed) + 1))[:length]


def test_seek_data_hole_and_io_past_4gib(mnt):
    """SEEK_DATA/SEEK_HOLE answer as the backing file does; I/O across 2**32 is exact.

    pyfuse3 (3.5) has no lseek handler, so libfuse answers LSEEK with ENOSYS
    and the kernel falls back to its generic answer (all data, one hole at
    EOF), which is correct but not sparse-aware.
    """
    path, backing = mnt.path / "sparse", mnt.backing / "sparse"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        for start, length in EXTENTS:
            assert os.pwrite(fd, _pattern(start, length), start) == length
        os.ftruncate(fd, SPARSE_SIZE)
        os.fsync(fd)
        assert os.fstat(fd).st_size == SPARSE_SIZE
        bfd = os.open(backing, os.O_RDONLY)
        try:
            expected = {(o, w): _seek(bfd, o, w) for o in _probe_offsets()
                        for w in (os.SEEK_DATA, os.SEEK_HOLE)}
        finally:
            os.close(bfd)
        got = {(o, w): _seek(fd, o, w) for o, w in expected}
        if mnt.engine == "pyfuse3":
            generic = {(o, w): ("ENXIO" if o >= SPARSE_SIZE else o if w == os.SEEK_DATA else SPARSE_SIZE)
                       for o, w in expected}
            assert got == generic
        else:
            assert got == expected
            # the backing file really is sparse: the answers are not the generic ones
            assert got[(0, os.SEEK_HOLE)] < EXTENTS[1][0]
            assert got[(EXTENTS[1][0] + 3 * PAGE, os.SEEK_DATA)] == EXTENTS[2][0]
        # reads and a mapping across the 32-bit boundary, and in the holes
        start, length = EXTENTS[2]
        assert os.pread(fd, length, start) == _pattern(start, length)
        assert os.pread(fd, 2 * PAGE, 4 * GiB - PAGE) == _pattern(start, length)[PAGE:3 * PAGE]
        assert os.pread(fd, PAGE, 3 * GiB) == bytes(PAGE)
        assert os.pread(fd, 100, SPARSE_SIZE - 50) == bytes(50)
        with mmap.mmap(fd, 2 * PAGE, offset=4 * GiB) as m:
            assert m[:] == _pattern(start, length)[2 * PAGE:]
            m[:5] = b"MAPPD"
            m.flush()
        with open(backing, "rb") as f:
            f.seek(4 * GiB)
            assert f.read(5) == b"MAPPD"
        # copy_file_range at offsets past 4 GiB, into another sparse file
        out = os.open(mnt.path / "copy", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            copied = 0
            while copied < PAGE:
                n = os.copy_file_range(fd, out, PAGE - copied, 5 * GiB + copied, 4 * GiB + 1 + copied)
                assert n > 0
                copied += n
            assert os.pread(out, PAGE, 4 * GiB + 1) == _pattern(5 * GiB, PAGE)
            assert os.fstat(out).st_size == 4 * GiB + 1 + PAGE
        finally:
            os.close(out)
    finally:
        os.close(fd)
    st = os.stat(backing)
    assert st.st_blocks * 512 < 64 << 20, "the file lost its holes"
    with open(mnt.backing / "copy", "rb") as f:
        f.seek(4 * GiB + 1)
        assert f.read() == _pattern(5 * GiB, PAGE)
    assert_daemon_healthy(mnt)


# -- names ------------------------------------------------------------------

def test_names_at_the_limit_in_every_role(mnt):
    """255-byte names (multi-byte UTF-8 and invalid UTF-8) as dirs, link and rename targets."""
    root = bytes(mnt.path)
    utf8 = "\u00e9".encode() * 127 + b"!"  # 255 bytes, 128 characters
    raw = b"\xff\xfe" * 127 + b"\x80"  # 255 bytes, not UTF-8 at all
    assert len(utf8) == len(raw) == 255
    os.mkdir(root + b"/" + raw)
    with open(root + b"/" + raw + b"/" + utf8, "wb") as f:
        f.write(b"deep")
    os.link(root + b"/" + raw + b"/" + utf8, root + b"/" + utf8)
    os.rename(root + b"/" + raw + b"/" + utf8, root + b"/" + raw + b"/" + raw)
    os.symlink(raw + b"/" + raw, root + b"/" + b"l" * 255)
    os.setxattr(root + b"/" + raw, "user.name", utf8)
    back = bytes(mnt.backing)
    assert sorted(os.listdir(back)) == sorted([raw, utf8, b"l" * 255])
    assert os.listdir(back + b"/" + raw) == [raw]
    assert sorted(os.listdir(root)) == sorted([raw, utf8, b"l" * 255])
    with open(root + b"/" + b"l" * 255, "rb") as f:  # through the symlink
        assert f.read() == b"deep"
    assert os.stat(root + b"/" + utf8).st_ino == os.stat(root + b"/" + raw + b"/" + raw).st_ino
    assert os.getxattr(back + b"/" + raw, "user.name") == utf8
    expect_errno(errno.ENAMETOOLONG, os.mkdir, root + b"/" + raw + b"/" + raw + b"x")
    assert_daemon_healthy(mnt)


# -- a huge directory -------------------------------------------------------

HUGE = 100_000


@pytest.fixture
def tmpfs_backing(tmpfs_dir):
    """A tmpfs backing dir, requested before mount_factory so it is unmounted after the mount.

    Creating 100,000 files on the test machine's ext4 takes ~25 s; on tmpfs ~1 s.
    """
    return tmpfs_dir("tmpfs-backing", "256m")


# Readdir is engine code (pyfuse3's or ours) and does not depend on the data
# tier, so one mode per engine is enough.
ENGINE_MODES = list({m.split("-")[0]: m for m in reversed(MODES)}.values())


@pytest.mark.parametrize("mode", ENGINE_MODES)
def test_directory_of_100000_entries(tmpfs_backing, mode, mount_factory):
    big = tmpfs_backing / "big"
    big.mkdir()
    # names of every length from 7 to 206 bytes, so replies break at odd places
    names = {f"{i:06d}-" + "n" * (i % 200) for i in range(HUGE)}
    dfd = os.open(big, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for name in names:
            os.mknod(name, 0o644 | stat.S_IFREG, dir_fd=dfd)
    finally:
        os.close(dfd)
    os.mkdir(big / "a-dir")
    names.add("a-dir")
    mount = mount_factory(mode, backing=tmpfs_backing)
    with os.scandir(mount.path / "big") as listing:
        entries = [(e.name, e.is_dir(follow_symlinks=False), e.inode()) for e in listing]
    listed = [name for name, _, _ in entries]
    assert len(listed) == len(names), f"{len(listed)} entries listed, {len(names)} exist"
    assert len(set(listed)) == len(listed), "an entry was listed twice"
    assert set(listed) == names
    assert [name for name, is_dir, _ in entries if is_dir] == ["a-dir"]
    assert len({ino for _, _, ino in entries}) == len(names), "two entries share an inode number"
    # a second pass, through a fresh handle, agrees; so does a stat of one entry
    assert sorted(os.listdir(mount.path / "big")) == sorted(listed)
    sample = f"{HUGE - 1:06d}-" + "n" * ((HUGE - 1) % 200)
    assert os.stat(mount.path / "big" / sample).st_ino == dict((n, i) for n, _, i in entries)[sample]
    assert_daemon_healthy(mount)


# -- open files while their names change ------------------------------------

def test_hard_links_across_directories_while_open(mnt):
    for d in ("a", "b", "c"):
        os.mkdir(mnt.path / d)
    fd = os.open(mnt.path / "a" / "f", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        os.write(fd, b"one")
        os.link(mnt.path / "a" / "f", mnt.path / "b" / "g")
        assert os.fstat(fd).st_nlink == 2
        os.write(fd, b"+two")
        assert (mnt.path / "b" / "g").read_bytes() == b"one+two"
        with open(mnt.path / "b" / "g", "ab") as other:
            other.write(b"+three")
        assert os.pread(fd, 100, 0) == b"one+two+three"
        os.rename(mnt.path / "a" / "f", mnt.path / "c" / "h")
        os.unlink(mnt.path / "b" / "g")
        assert os.fstat(fd).st_nlink == 1
        os.pwrite(fd, b"ONE", 0)
        assert (mnt.path / "c" / "h").read_bytes() == b"ONE+two+three"
        # a link made in the backing dir shows the same inode through the mount
        os.link(mnt.backing / "c" / "h", mnt.backing / "a" / "made-in-backing")
        ino = os.fstat(fd).st_ino
        assert os.stat(mnt.path / "a" / "made-in-backing").st_ino == ino
        assert os.stat(mnt.path / "c" / "h").st_ino == ino
    finally:
        os.close(fd)
    assert os.stat(mnt.backing / "c" / "h").st_nlink == 2
    assert sorted(p.name for p in mnt.backing.rglob("*")) == ["a", "b", "c", "h", "made-in-backing"]
    assert_daemon_healthy(mnt)


def test_orphaned_open_files_keep_working(mnt):
    """Writes to a file renamed over or unlinked go to the orphan, never to the new name."""
    (mnt.path / "target").write_bytes(b"old")
    (mnt.path / "new").write_bytes(b"new")
    fd = os.open(mnt.path / "target", os.O_RDWR)
    try:
        os.rename(mnt.path / "new", mnt.path / "target")
        os.pwrite(fd, b"-written-after", 3)
        assert os.pread(fd, 100, 0) == b"old-written-after"
        assert (mnt.path / "target").read_bytes() == b"new"
        assert (mnt.backing / "target").read_bytes() == b"new"
        with mmap.mmap(fd, 3) as m:  # the orphan can still be mapped
            m[:] = b"OLD"
            m.flush()
        assert os.pread(fd, 3, 0) == b"OLD"
        fd2 = os.open(mnt.path / "target", os.O_RDWR)
        try:
            os.unlink(mnt.path / "target")
            os.pwrite(fd2, b"NEW", 0)
            assert os.pread(fd2, 10, 0) == b"NEW"
            assert os.fstat(fd2).st_nlink == 0 and os.fstat(fd).st_nlink == 0
            assert os.fstat(fd).st_ino != os.fstat(fd2).st_ino
        finally:
            os.close(fd2)
        assert os.pread(fd, 100, 0) == b"OLD-written-after"
    finally:
        os.close(fd)
    assert os.listdir(mnt.backing) == []  # no hidden leftovers (.fuse_hidden...)
    assert os.listdir(mnt.path) == []
    assert_daemon_healthy(mnt)


# -- O_DIRECT and mmap coherence --------------------------------------------

def test_o_direct_alignment_and_coherence(mnt):
    """Unaligned O_DIRECT works through FUSE; on passthrough the backing fs's rules apply.

    With kernel passthrough the kernel hands O_DIRECT I/O to the backing
    file, so it is refused exactly as the backing filesystem refuses it
    (EINVAL for unaligned buffers/offsets on ext4). Elsewhere FUSE carries
    any buffer to the daemon.
    """
    (mnt.path / "f").write_bytes(b"." * (4 * PAGE))
    (mnt.backing / "probe").write_bytes(b"." * (4 * PAGE))
    cached = os.open(mnt.path / "f", os.O_RDONLY)
    direct = os.open(mnt.path / "f", os.O_RDWR | os.O_DIRECT)
    try:
        assert os.pread(cached, 8, 0) == b"........"  # now in the mount's page cache
        passthrough = on_passthrough(mnt)
        if mnt.mode == "native-auto":
            assert passthrough, "native-auto did not pass through (see the daemon log)"
        aligned = mmap.mmap(-1, PAGE)
        aligned[:] = b"A" * PAGE
        assert os.pwritev(direct, [aligned], PAGE) == PAGE
        assert os.pread(cached, 4, PAGE) == b"AAAA", "O_DIRECT write left stale cached pages"
        pfd = os.open(mnt.backing / "probe", os.O_RDWR | os.O_DIRECT)
        try:
            backing_answer = _outcome(lambda: os.pwrite(pfd, b"unaligned", 3))
        finally:
            os.close(pfd)
        answer = _outcome(lambda: os.pwrite(direct, b"unaligned", 3))
        if passthrough:
            assert answer == backing_answer
        else:
            assert answer == 9
            assert os.pread(cached, 12, 0) == b"...unaligned"
        # a cached write is seen by a direct read at once
        with open(mnt.path / "f", "r+b") as w:
            w.seek(2 * PAGE)
            w.write(b"B" * PAGE)
        into = mmap.mmap(-1, PAGE)
        assert os.preadv(direct, [into], 2 * PAGE) == PAGE
        assert into[:] == b"B" * PAGE
    finally:
        os.close(direct)
        os.close(cached)
    data = (mnt.backing / "f").read_bytes()
    assert data[PAGE:2 * PAGE] == b"A" * PAGE and data[2 * PAGE:3 * PAGE] == b"B" * PAGE
    assert_daemon_healthy(mnt)


def _outcome(fn) -> int | str:
    try:
        return fn()
    except OSError as exc:
        return errno.errorcode[exc.errno]


def test_mmap_and_write_see_each_other(mnt):
    (mnt.path / "f").write_bytes(bytes(3 * PAGE))
    fd = os.open(mnt.path / "f", os.O_RDWR)
    other = os.open(mnt.path / "f", os.O_RDWR)
    try:
        with mmap.mmap(fd, 3 * PAGE, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ | mmap.PROT_WRITE) as m:
            assert m[:4] == bytes(4)
            # write() through another fd shows in the existing map
            os.pwrite(other, b"via write()", PAGE + 10)
            assert m[PAGE + 10:PAGE + 21] == b"via write()"
            # a store through the map shows in read() before and after msync
            m[2 * PAGE:2 * PAGE + 9] = b"via mmap!"
            assert os.pread(other, 9, 2 * PAGE) == b"via mmap!"
            m.flush()  # msync(MS_SYNC)
            with open(mnt.backing / "f", "rb") as f:
                f.seek(2 * PAGE)
                assert f.read(9) == b"via mmap!"
            # and a truncate through the mount is seen by stat (mapping untouched below it)
            os.ftruncate(other, 2 * PAGE + 9)
            assert os.fstat(fd).st_size == 2 * PAGE + 9
            assert m[PAGE + 10:PAGE + 21] == b"via write()"
    finally:
        os.close(other)
        os.close(fd)
    data = (mnt.backing / "f").read_bytes()
    assert len(data) == 2 * PAGE + 9 and data.endswith(b"via mmap!") and b"via write()" in data
    assert_daemon_healthy(mnt)


# -- locks between processes -------------------------------------------------

_LOCK_HOLDER = """
    import fcntl, os, sys
    path = sys.argv[1]
    f1 = open(path, "r+b")
    fcntl.flock(f1, fcntl.LOCK_EX)
    f2 = open(path, "r+b")
    fcntl.lockf(f2, fcntl.LOCK_EX, 100, 0)   # bytes 0-99
    print("locked", flush=True)
    line = sys.stdin.readline()
    if line.strip() == "unlock":
        fcntl.flock(f1, fcntl.LOCK_UN)
        fcntl.lockf(f2, fcntl.LOCK_UN, 100, 0)
        print("unlocked", flush=True)
        sys.stdin.readline()
"""


def _getlk(fd: int, start: int, length: int) -> tuple[int, int]:
    """F_GETLK for a write lock: (l_type, l_pid) of the conflicting lock, or (F_UNLCK, 0)."""
    flock = struct.pack("hhqqi", fcntl.F_WRLCK, os.SEEK_SET, start, length, 0)
    result = fcntl.fcntl(fd, fcntl.F_GETLK, flock)
    l_type, _, _, _, l_pid = struct.unpack("hhqqi", result)
    return l_type, l_pid


def test_flock_and_fcntl_locks_conflict_between_processes(mnt):
    """flock and POSIX byte-range locks taken through the mount conflict across processes.

    zcfs negotiates neither FUSE_POSIX_LOCKS nor FUSE_FLOCK_LOCKS, so the
    kernel keeps the locks itself, per FUSE inode: they are seen by every
    process using this mount (any name of the file), not by processes
    locking the backing file directly.
    """
    (mnt.path / "f").write_bytes(b"x" * 1000)
    os.link(mnt.path / "f", mnt.path / "other-name")
    holder = _child(_LOCK_HOLDER, str(mnt.path / "f"))
    try:
        assert holder.stdout.readline().strip() == "locked"
        with open(mnt.path / "other-name", "r+b") as f:
            for op in (fcntl.LOCK_EX, fcntl.LOCK_SH):
                expect_errno(errno.EWOULDBLOCK, fcntl.flock, f, op | fcntl.LOCK_NB)
            with pytest.raises(OSError) as info:
                fcntl.lockf(f, fcntl.LOCK_EX | fcntl.LOCK_NB, 10, 50)
            assert info.value.errno in (errno.EACCES, errno.EAGAIN)
            assert _getlk(f.fileno(), 50, 10) == (fcntl.F_WRLCK, holder.pid)
            assert _getlk(f.fileno(), 100, 10) == (fcntl.F_UNLCK, 0)
            fcntl.lockf(f, fcntl.LOCK_EX | fcntl.LOCK_NB, 100, 200)  # no overlap: granted
            fcntl.lockf(f, fcntl.LOCK_UN, 100, 200)
            holder.stdin.write("unlock\n")
            holder.stdin.flush()
            assert holder.stdout.readline().strip() == "unlocked"
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            fcntl.lockf(f, fcntl.LOCK_EX | fcntl.LOCK_NB, 100, 0)
            fcntl.lockf(f, fcntl.LOCK_UN, 100, 0)
            fcntl.flock(f, fcntl.LOCK_UN)
    finally:
        holder.kill()
        holder.wait()
    # a holder killed while holding its locks leaves none behind
    holder = _child(_LOCK_HOLDER, str(mnt.path / "f"))
    try:
        assert holder.stdout.readline().strip() == "locked"
        holder.kill()
        holder.wait()
        with open(mnt.path / "f", "r+b") as f:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            fcntl.lockf(f, fcntl.LOCK_EX | fcntl.LOCK_NB, 100, 0)
    finally:
        holder.kill()
        holder.wait()
    assert_daemon_healthy(mnt)


# -- fifos and unix sockets between processes --------------------------------

_FIFO_WRITER = """
    import hashlib, os, sys
    data = os.urandom(1 << 20)
    with open(sys.argv[1], "wb") as fifo:   # blocks until the reader opens
        fifo.write(data)
    print(hashlib.sha256(data).hexdigest(), flush=True)
"""

_SOCKET_CLIENT = """
    import socket, sys
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(sys.argv[1])
    s.sendall(b"stream:" + sys.argv[1].encode())
    s.close()
    d = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    d.sendto(b"datagram", sys.argv[2])
    print("sent", flush=True)
"""


def test_fifo_and_sockets_between_processes(mnt):
    fifo = mnt.path / "fifo"
    os.mkfifo(fifo, 0o600)
    assert stat.S_ISFIFO(os.lstat(mnt.backing / "fifo").st_mode)
    writer = subprocess.Popen([sys.executable, "-c", textwrap.dedent(_FIFO_WRITER), str(fifo)],
                              stdout=subprocess.PIPE, text=True)
    try:
        with open(fifo, "rb") as f:
            received = f.read()
        assert writer.wait(timeout=30) == 0
        assert hashlib.sha256(received).hexdigest() == writer.stdout.read().strip()
        assert len(received) == 1 << 20
    finally:
        writer.kill()
        writer.wait()
    stream_path, dgram_path = str(mnt.path / "stream.sock"), str(mnt.path / "dgram.sock")
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dgram = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        server.bind(stream_path)
        server.listen(1)
        dgram.bind(dgram_path)
        assert stat.S_ISSOCK(os.lstat(mnt.backing / "stream.sock").st_mode)
        client = subprocess.Popen([sys.executable, "-c", textwrap.dedent(_SOCKET_CLIENT), stream_path,
                                   dgram_path], stdout=subprocess.PIPE, text=True)
        try:
            server.settimeout(30)
            dgram.settimeout(30)
            conn, _ = server.accept()
            with conn:
                chunks = []
                while chunk := conn.recv(4096):
                    chunks.append(chunk)
            assert b"".join(chunks) == b"stream:" + stream_path.encode()
            assert dgram.recv(100) == b"datagram"
            assert client.wait(timeout=30) == 0
        finally:
            client.kill()
            client.wait()
        # binding an existing name fails as on any filesystem
        again = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        with again:
            expect_errno(errno.EADDRINUSE, again.bind, stream_path)
    finally:
        server.close()
        dgram.close()
    for name in ("fifo", "stream.sock", "dgram.sock"):
        os.unlink(mnt.path / name)
    assert os.listdir(mnt.backing) == []
    assert_daemon_healthy(mnt)


def test_a_time_equal_to_utime_now_is_kept(mnt):
    """1.073741823 s is 2**30 - 1 ns, the number UTIME_NOW stands for in a timespec's
    nanoseconds: a caller who sets exactly that time gets it, not the time of the call."""
    path = mnt.path / "f"
    path.write_bytes(b"")
    fd = os.open(path, os.O_RDWR)
    try:
        os.utime(fd, ns=((1 << 30) - 1, (1 << 30) - 1))
        assert (os.fstat(fd).st_atime_ns, os.fstat(fd).st_mtime_ns) == ((1 << 30) - 1, (1 << 30) - 1)
    finally:
        os.close(fd)
    os.utime(path, ns=(5, (1 << 30) - 1))
    assert os.stat(mnt.backing / "f").st_mtime_ns == (1 << 30) - 1
    os.utime(path)  # and "now" still means now
    assert os.stat(mnt.backing / "f").st_mtime_ns > 10**18
