"""Differential fsx: random operations on a zcfs mount and on a plain directory, side by side.

A hypothesis state machine applies every step twice, to a run directory in
the mount and to one in a plain reference directory on the same backing
filesystem (ext4 under the pytest tmp dir), and demands the same outcome:
the same result or the very same errno. It keeps several fds open across
steps (and keeps using them after their names are unlinked or renamed
over), writes at random offsets (holes beyond EOF), truncates, fallocates,
writes through shared mmaps, copies with copy_file_range, renames (plain,
RENAME_NOREPLACE, RENAME_EXCHANGE), links, makes and removes directories and
symlinks, changes modes, owners, times and xattrs, and seeks for data and
holes. After every step the two trees must have the same names, types,
modes, sizes, link counts and symlink targets; at the end of each example
the contents and xattrs must match too, both through the mount and in the
backing directory.

The mount uses its default caching (attr/entry timeout 1 s): it is the only
writer of its backing dir, so the kernel's caches must stay coherent by
themselves, and any stale attribute would show up as a mismatch.

Where the two sides legitimately differ, the test says exactly why:

* pyfuse3 engine: pyfuse3 binds neither FALLOCATE nor LSEEK, so through it
  fallocate(2) fails with EOPNOTSUPP after the VFS's own checks (the kernel
  turns the library's ENOSYS into EOPNOTSUPP), and SEEK_DATA/SEEK_HOLE get
  the kernel's generic answer (all data: SEEK_DATA returns the offset,
  SEEK_HOLE the size). The test checks exactly those answers there and
  leaves the reference file untouched so both sides stay in step.
* SEEK_DATA/SEEK_HOLE over unwritten (fallocated, never written) extents:
  ext4 reports such a range as data when its pages happen to be in the page
  cache, so the answer depends on what was read before and through which
  cache (the mount's page cache can hide reads from the backing file). The
  answers are compared only when the reference file has no unwritten extent
  (FIEMAP says); otherwise they are checked for sanity only.
* Directory offsets (lseek on a directory fd) are opaque cookies of each
  filesystem (ext4's htree hashes vs. FUSE's entry index), so no seeks on
  directory fds.
* O_DIRECT is not used: through FUSE (zcfs drops O_DIRECT from the backing
  fd) unaligned buffers work, on ext4 they fail with EINVAL. posix_checks
  covers O_DIRECT through the mount.
* Times are compared only right after an explicit utime (the two sides run
  at slightly different moments); st_blocks is not compared (delayed
  allocation makes it depend on writeback timing).

A second run does the same while the daemon's inode fd cache is tiny
(RLIMIT_NOFILE 256, 200 ballast files churned): inode fds are evicted and
reopened by file handle all along. Two deterministic regression tests pin
the bugs these runs found (mmap writeback through an O_APPEND handle;
removed objects reachable through O_PATH fds or a cwd after eviction).

`ZCFS_FSX_EXAMPLES` raises the number of examples (and, with it, the steps
per example) for long runs (scripts/stress_long.sh).
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import errno
import fcntl
import itertools
import mmap
import os
import random
import shutil
import stat
import struct
import sys
from pathlib import Path
from typing import Any, Callable, Iterator

import hypothesis.strategies as st
import pytest
from hypothesis import HealthCheck, settings
from hypothesis.stateful import (
    RuleBasedStateMachine, initialize, invariant, precondition, rule, run_state_machine_as_test,
)

from zcfs.testing import Mount

EXAMPLES = int(os.environ.get("ZCFS_FSX_EXAMPLES", "25"))
STEPS = 40 if EXAMPLES <= 25 else 100
SETTINGS = settings(
    max_examples=EXAMPLES,
    stateful_step_count=STEPS,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    print_blob=True,
)

# -- syscalls the os module lacks ---------------------------------------------

_libc = ctypes.CDLL(None, use_errno=True)
AT_FDCWD = -100
RENAME_NOREPLACE, RENAME_EXCHANGE = 1, 2
FALLOC_FL_KEEP_SIZE, FALLOC_FL_PUNCH_HOLE, FALLOC_FL_ZERO_RANGE = 0x01, 0x02, 0x10
FS_IOC_FIEMAP = 0xC020660B
FIEMAP_EXTENT_LAST, FIEMAP_EXTENT_UNWRITTEN = 0x1, 0x800


def _check(result: int) -> int:
    if result < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return result


def renameat2(old: bytes, new: bytes, flags: int) -> None:
    _check(_libc.renameat2(AT_FDCWD, old, AT_FDCWD, new, ctypes.c_uint(flags)))


def fallocate(fd: int, mode: int, offset: int, length: int) -> None:
    _check(_libc.fallocate(fd, mode, ctypes.c_long(offset), ctypes.c_long(length)))


def has_unwritten_extents(fd: int) -> bool:
    """Whether a file has unwritten (preallocated, never written) extents (FIEMAP)."""
    start, count = 0, 64
    while True:
        request = bytearray(struct.pack("=QQIIII", start, 2**64 - 1 - start, 0, 0, count, 0) + bytes(56 * count))
        fcntl.ioctl(fd, FS_IOC_FIEMAP, request)
        mapped = struct.unpack_from("=I", request, 20)[0]
        if mapped == 0:
            return False
        for i in range(mapped):
            logical, _, length = struct.unpack_from("=QQQ", request, 32 + 56 * i)
            flags = struct.unpack_from("=I", request, 32 + 56 * i + 40)[0]
            if flags & FIEMAP_EXTENT_UNWRITTEN:
                return True
            if flags & FIEMAP_EXTENT_LAST:
                return False
        start = logical + length


# -- what the random steps choose from ---------------------------------------

# Relative to the run directory. x, y, z are usually directories but may be
# anything; a name under a non-directory gives ENOTDIR, under a missing one ENOENT.
PATHS = ["a", "b", "c", "x", "y", "x/a", "x/b", "x/z", "x/z/a", "y/a", "y/b"]
# Symlink targets never climb out of the run directory (no "..", nothing
# absolute): "c" may point at itself (ELOOP), "a/b" goes through a file.
TARGETS = ["a", "b", "c", "x", "x/a", "z", "a/b", "nowhere", "x/z"]
MODES = [0o644, 0o600, 0o755, 0o700, 0o000, 0o4755, 0o2775, 0o1777, 0o444]
XATTR_NAMES = ["user.a", "user.b", "user.zcfs.long-name-" + "n" * 40, "trusted.t"]
XATTR_VALUES = [b"", b"v", b"value-2", bytes(range(256)) * 8]

paths = st.sampled_from(PATHS)
offsets = st.one_of(
    st.integers(0, 9000),
    st.sampled_from([0, 1, 4095, 4096, 4097, 65535, 65536, 131072, 262143, 1 << 20]),
    st.integers(0, 400_000),
)
lengths = st.one_of(
    st.integers(0, 5000),
    st.sampled_from([1, 4095, 4096, 4097, 65536, 131073, 262144]),
    st.integers(0, 300_000),
)
seeds = st.integers(0, 1 << 16)
slots = st.integers(0, 63)  # an index into the open slots, modulo their number
open_flags = st.builds(
    lambda acc, extra: acc | extra,
    # O_PATH: no OPEN reaches the daemon, yet fstat through it works after unlink
    st.sampled_from([os.O_RDONLY, os.O_WRONLY, os.O_RDWR, os.O_RDWR, os.O_PATH]),
    st.lists(st.sampled_from([os.O_CREAT, os.O_CREAT, os.O_EXCL, os.O_TRUNC, os.O_APPEND,
                              os.O_NOFOLLOW, os.O_DIRECTORY, os.O_SYNC]),
             max_size=3).map(lambda fs: sum(set(fs))),
)
MAX_OPEN = 6


def payload(seed: int, length: int) -> bytes:
    return random.Random(seed).randbytes(length)


# -- outcomes -----------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Ok:
    value: Any = None

    def __repr__(self) -> str:
        return f"ok {_short(self.value)}"


@dataclasses.dataclass(frozen=True)
class Err:
    errno: int

    def __repr__(self) -> str:
        return errno.errorcode.get(self.errno, str(self.errno))


def _short(value: Any) -> str:
    if isinstance(value, bytes) and len(value) > 40:
        return f"<{len(value)} bytes {value[:16].hex()}...>"
    return repr(value)


def attempt(fn: Callable[[], Any]) -> Ok | Err:
    try:
        return Ok(fn())
    except OSError as exc:
        return Err(exc.errno)


def stat_summary(st_: os.stat_result) -> tuple:
    """What must agree between the two sides (no times, no inode numbers, no blocks)."""
    kind = stat.S_IFMT(st_.st_mode)
    size = None if kind == stat.S_IFDIR else st_.st_size  # directory sizes are ext4 layout
    return (stat.filemode(st_.st_mode), size, st_.st_nlink, st_.st_uid, st_.st_gid)


def describe_difference(a: bytes, b: bytes) -> str:
    if len(a) != len(b):
        return f"lengths {len(a)} vs {len(b)}"
    first = next(i for i in range(len(a)) if a[i] != b[i])
    return f"first difference at byte {first}"


# -- the tree as seen from one side ------------------------------------------

def snapshot(root: Path, contents: bool) -> dict[str, tuple]:
    """Every object under `root`: metadata, symlink target, listing, and optionally data and xattrs."""
    tree: dict[str, tuple] = {}

    def visit(rel: str) -> None:
        path = root / rel if rel else root
        st_ = os.lstat(path)
        entry: list[Any] = [stat_summary(st_)]
        if stat.S_ISLNK(st_.st_mode):
            entry.append(os.readlink(path))
        elif stat.S_ISDIR(st_.st_mode):
            names = sorted(os.listdir(path))
            entry.append(names)
        elif contents and stat.S_ISREG(st_.st_mode):
            data = path.read_bytes()
            entry.append((len(data), data))
        if contents and not stat.S_ISLNK(st_.st_mode):
            entry.append(sorted((n, os.getxattr(path, n)) for n in os.listxattr(path)))
        tree[rel or "."] = tuple(entry)
        if stat.S_ISDIR(st_.st_mode):
            for name in entry[1]:
                visit(f"{rel}/{name}" if rel else name)

    visit("")
    return tree


def hard_link_groups(root: Path) -> list[list[str]]:
    """Names that share an inode, as sorted groups (inode numbers differ across sides)."""
    groups: dict[int, list[str]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in filenames + dirnames:
            path = Path(dirpath) / name
            st_ = os.lstat(path)
            if not stat.S_ISDIR(st_.st_mode):
                groups.setdefault(st_.st_ino, []).append(str(path.relative_to(root)))
    return sorted(sorted(g) for g in groups.values() if len(g) > 1)


def compare_trees(got: dict, want: dict, what: str) -> None:
    assert got.keys() == want.keys(), \
        f"{what}: names differ: only here {sorted(got.keys() - want.keys())}, " \
        f"only in reference {sorted(want.keys() - got.keys())}"
    for rel in sorted(want):
        g, w = got[rel], want[rel]
        if g == w:
            continue
        for i, (gi, wi) in enumerate(zip(g, w)):
            if gi != wi:
                if isinstance(gi, tuple) and len(gi) == 2 and isinstance(gi[1], bytes):
                    raise AssertionError(f"{what}: {rel}: contents differ ({describe_difference(gi[1], wi[1])})")
                raise AssertionError(f"{what}: {rel}: {_short(gi)} here, {_short(wi)} in reference")
        raise AssertionError(f"{what}: {rel}: {g!r:.300} here, {w!r:.300} in reference")


# -- the state machine --------------------------------------------------------

class Side:
    """One side: a run directory and the fds open in it, by slot."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.fds: dict[int, int] = {}

    def path(self, rel: str) -> bytes:
        return os.fsencode(self.root / rel)

    def close_all(self) -> None:
        for fd in self.fds.values():
            os.close(fd)
        self.fds.clear()


class FsxMachine(RuleBasedStateMachine):
    """Each step runs on the mount (`self.m`) and the reference (`self.r`) and must agree."""

    MOUNT: Mount
    REFERENCE: Path
    runs = itertools.count()

    def __init__(self) -> None:
        super().__init__()
        run = f"fsx-{next(self.runs)}"
        self.m = Side(self.MOUNT.path / run)
        self.r = Side(self.REFERENCE / run)
        self.backing_root = self.MOUNT.backing / run
        self.m.root.mkdir()
        self.r.root.mkdir()
        self.pyfuse3 = self.MOUNT.engine == "pyfuse3"
        self.failed = False
        self.next_slot = 0

    # -- running a step on both sides --------------------------------------

    def both(self, what: str, op: Callable[[Side], Any]) -> tuple[Ok | Err, Ok | Err]:
        got = attempt(lambda: op(self.m))
        want = attempt(lambda: op(self.r))
        self.expect(what, got, want)
        return got, want

    def expect(self, what: str, got: Ok | Err, want: Ok | Err) -> None:
        if got != want:
            self.failed = True
            raise AssertionError(f"[{self.MOUNT.mode}] {what}: mount -> {got!r}, reference -> {want!r}")

    def slot(self, index: int) -> int:
        open_slots = sorted(self.m.fds)
        return open_slots[index % len(open_slots)]

    def has_fds(self) -> bool:
        return bool(self.m.fds)

    @initialize(sizes=st.lists(lengths, min_size=3, max_size=3), seed=seeds,
                open_flags=st.lists(st.sampled_from([os.O_RDWR, os.O_RDWR | os.O_APPEND, os.O_RDONLY,
                                                     os.O_WRONLY]), min_size=2, max_size=2))
    def starting_tree(self, sizes: list[int], seed: int, open_flags: list[int]) -> None:
        """Directories x and y, files a, x/a, y/b, and fds open on two of them."""
        for side in (self.m, self.r):
            os.mkdir(side.path("x"))
            os.mkdir(side.path("y"))
            for i, (name, size) in enumerate(zip(("a", "x/a", "y/b"), sizes)):
                with open(side.path(name), "wb") as f:
                    f.write(payload(seed + i, size))
        self.open_file("a", open_flags[0], 0)
        self.open_file("x/a", open_flags[1], 0)

    # -- open and close ------------------------------------------------------

    @rule(path=paths, flags=open_flags, mode=st.sampled_from(MODES))
    def create(self, path: str, flags: int, mode: int) -> None:
        self.open_file(path, flags | os.O_CREAT, mode)

    @rule(path=paths, flags=open_flags, mode=st.sampled_from(MODES))
    def open_file(self, path: str, flags: int, mode: int) -> None:
        if len(self.m.fds) >= MAX_OPEN:
            self._close(min(self.m.fds))
        got = attempt(lambda: os.open(self.m.path(path), flags, mode))
        want = attempt(lambda: os.open(self.r.path(path), flags, mode))
        if isinstance(got, Ok) and isinstance(want, Ok):
            self.m.fds[self.next_slot] = got.value
            self.r.fds[self.next_slot] = want.value
            self.next_slot += 1
            return
        for outcome in (got, want):
            if isinstance(outcome, Ok):
                os.close(outcome.value)
        self.expect(f"open({path!r}, {flags:#o}, {mode:#o})",
                    Ok() if isinstance(got, Ok) else got, Ok() if isinstance(want, Ok) else want)

    def _close(self, slot: int) -> None:
        got = attempt(lambda: os.close(self.m.fds.pop(slot)))
        want = attempt(lambda: os.close(self.r.fds.pop(slot)))
        self.expect(f"close(slot {slot})", got, want)

    @precondition(has_fds)
    @rule(index=slots)
    def close(self, index: int) -> None:
        self._close(self.slot(index))

    # -- data through fds ----------------------------------------------------

    @precondition(has_fds)
    @rule(index=slots, offset=offsets, seed=seeds, length=lengths)
    def pwrite(self, index: int, offset: int, seed: int, length: int) -> None:
        slot, data = self.slot(index), payload(seed, length)
        self.both(f"pwrite(slot {slot}, {length} bytes, at {offset})",
                  lambda s: os.pwrite(s.fds[slot], data, offset))

    @precondition(has_fds)
    @rule(index=slots, seed=seeds, length=lengths)
    def write(self, index: int, seed: int, length: int) -> None:
        slot, data = self.slot(index), payload(seed, length)
        self.both(f"write(slot {slot}, {length} bytes)", lambda s: os.write(s.fds[slot], data))

    @precondition(has_fds)
    @rule(index=slots, offset=offsets, length=lengths)
    def pread(self, index: int, offset: int, length: int) -> None:
        slot = self.slot(index)
        self.both(f"pread(slot {slot}, {length}, at {offset})", lambda s: os.pread(s.fds[slot], length, offset))

    @precondition(has_fds)
    @rule(index=slots, length=lengths)
    def read(self, index: int, length: int) -> None:
        slot = self.slot(index)
        self.both(f"read(slot {slot}, {length})", lambda s: os.read(s.fds[slot], length))

    @precondition(has_fds)
    @rule(index=slots, offset=offsets, whence=st.sampled_from([os.SEEK_SET, os.SEEK_CUR, os.SEEK_END]))
    def lseek(self, index: int, offset: int, whence: int) -> None:
        slot = self.slot(index)
        if stat.S_ISDIR(os.fstat(self.r.fds[slot]).st_mode):
            return  # directory offsets are each filesystem's own cookies
        if whence != os.SEEK_SET:
            offset = offset // 2 - 4096  # negative ones too
        self.both(f"lseek(slot {slot}, {offset}, {whence})", lambda s: os.lseek(s.fds[slot], offset, whence))

    @precondition(has_fds)
    @rule(index=slots, offset=offsets, whence=st.sampled_from([os.SEEK_DATA, os.SEEK_HOLE]))
    def seek_data_hole(self, index: int, offset: int, whence: int) -> None:
        slot = self.slot(index)
        mfd, rfd = self.m.fds[slot], self.r.fds[slot]
        rst = os.fstat(rfd)
        if stat.S_ISDIR(rst.st_mode):
            return  # see lseek
        what = f"lseek(slot {slot}, {offset}, {'SEEK_DATA' if whence == os.SEEK_DATA else 'SEEK_HOLE'})"
        if fcntl.fcntl(rfd, fcntl.F_GETFL) & os.O_PATH:
            self.both(what, lambda s: os.lseek(s.fds[slot], offset, whence))  # EBADF
            return
        deterministic = stat.S_ISREG(rst.st_mode) and not has_unwritten_extents(rfd)
        want = attempt(lambda: os.lseek(rfd, offset, whence))
        got = attempt(lambda: os.lseek(mfd, offset, whence))
        if self.pyfuse3:
            # pyfuse3 has no LSEEK: the kernel's generic answer (all data).
            model = Err(errno.ENXIO) if offset >= rst.st_size else \
                Ok(offset if whence == os.SEEK_DATA else rst.st_size)
            self.expect(what + " [generic llseek: pyfuse3 has no LSEEK]", got, model)
        elif deterministic:
            self.expect(what, got, want)
        else:
            # Unwritten extents: data or hole depends on page-cache state.
            self.expect(what + " [unwritten extents: only errors compared]",
                        Ok() if isinstance(got, Ok) else got, Ok() if isinstance(want, Ok) else want)
            if isinstance(got, Ok):
                assert offset <= got.value <= rst.st_size, f"{what}: {got.value} outside [{offset}, {rst.st_size}]"
        # Keep the file positions in step (pyfuse3's generic answer may move the
        # mount's where the reference's failed and stayed).
        os.lseek(mfd, os.lseek(rfd, 0, os.SEEK_CUR), os.SEEK_SET)

    @precondition(has_fds)
    @rule(index=slots, size=offsets)
    def ftruncate(self, index: int, size: int) -> None:
        slot = self.slot(index)
        self.both(f"ftruncate(slot {slot}, {size})", lambda s: os.ftruncate(s.fds[slot], size))

    @precondition(has_fds)
    @rule(index=slots, mode=st.sampled_from([0, FALLOC_FL_KEEP_SIZE, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
                                            FALLOC_FL_PUNCH_HOLE, FALLOC_FL_ZERO_RANGE,
                                            FALLOC_FL_ZERO_RANGE | FALLOC_FL_KEEP_SIZE]),
          offset=offsets, length=lengths)
    def fallocate_fd(self, index: int, mode: int, offset: int, length: int) -> None:
        slot = self.slot(index)
        what = f"fallocate(slot {slot}, mode {mode:#x}, {offset}, {length})"
        if self.pyfuse3:
            # pyfuse3 binds no FALLOCATE: the VFS checks, then EOPNOTSUPP.
            # The reference is left alone so both sides stay the same.
            got = attempt(lambda: fallocate(self.m.fds[slot], mode, offset, length))
            self.expect(what + " [pyfuse3 has no FALLOCATE]", got, Err(_vfs_fallocate_errno(
                self.r.fds[slot], mode, offset, length)))
            return
        self.both(what, lambda s: fallocate(s.fds[slot], mode, offset, length))

    @precondition(has_fds)
    @rule(index=slots, offset=offsets, seed=seeds, length=lengths)
    def mmap_write(self, index: int, offset: int, seed: int, length: int) -> None:
        """Write through a shared mapping, msync it, and read back what was there before."""
        slot, data = self.slot(index), payload(seed, length)

        def op(side: Side) -> Any:
            fd = side.fds[slot]
            size = os.fstat(fd).st_size
            if size == 0:
                return "empty"
            with mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE) as mapping:
                start = offset % size
                end = min(size, start + length)
                before = mapping[start:end]
                mapping[start:end] = data[:end - start]
                mapping.flush()  # msync(MS_SYNC)
                return before

        self.both(f"mmap write(slot {slot}, {length} bytes, at {offset} mod size)", op)

    @precondition(has_fds)
    @rule(index=slots)
    def fsync(self, index: int) -> None:
        slot = self.slot(index)
        self.both(f"fsync(slot {slot})", lambda s: os.fsync(s.fds[slot]))

    @precondition(has_fds)
    @rule(index=slots)
    def fstat(self, index: int) -> None:
        slot = self.slot(index)
        self.both(f"fstat(slot {slot})", lambda s: stat_summary(os.fstat(s.fds[slot])))

    @precondition(has_fds)
    @rule(index=slots, mode=st.sampled_from(MODES), uid=st.sampled_from([-1, 0, 1234]),
          mtime=st.integers(0, 2**33 * 10**9))
    def fd_setattr(self, index: int, mode: int, uid: int, mtime: int) -> None:
        """fchmod, fchown, futimens: SETATTR of the open file itself, also when its names are gone."""
        slot = self.slot(index)

        def op(side: Side) -> tuple:
            fd = side.fds[slot]
            os.fchmod(fd, mode)
            os.fchown(fd, uid, -1)
            os.utime(fd, ns=(mtime // 3, mtime))
            st_ = os.fstat(fd)
            return stat_summary(st_), st_.st_atime_ns, st_.st_mtime_ns

        self.both(f"fchmod+fchown+futimens(slot {slot}, {mode:#o}, {uid}, {mtime})", op)

    @precondition(has_fds)
    @rule(index=slots)
    def listdir_fd(self, index: int) -> None:
        slot = self.slot(index)
        self.both(f"listdir(slot {slot})", lambda s: sorted(os.listdir(s.fds[slot])))

    @precondition(has_fds)
    @rule(index_in=slots, index_out=slots, off_in=offsets, off_out=offsets, length=lengths)
    def copy_file_range(self, index_in: int, index_out: int, off_in: int, off_out: int, length: int) -> None:
        src, dst = self.slot(index_in), self.slot(index_out)
        self.both(f"copy_file_range(slot {src} at {off_in} -> slot {dst} at {off_out}, {length})",
                  lambda s: os.copy_file_range(s.fds[src], s.fds[dst], length, off_in, off_out))

    # -- names -----------------------------------------------------------------

    @rule(src=paths, dst=paths, flags=st.sampled_from([0, 0, RENAME_NOREPLACE, RENAME_EXCHANGE]))
    def rename(self, src: str, dst: str, flags: int) -> None:
        self.both(f"renameat2({src!r}, {dst!r}, {flags})", lambda s: renameat2(s.path(src), s.path(dst), flags))

    @rule(src=paths, dst=paths, follow=st.booleans())
    def link(self, src: str, dst: str, follow: bool) -> None:
        self.both(f"link({src!r}, {dst!r}, follow={follow})",
                  lambda s: os.link(s.path(src), s.path(dst), follow_symlinks=follow))

    @rule(path=paths)
    def unlink(self, path: str) -> None:
        self.both(f"unlink({path!r})", lambda s: os.unlink(s.path(path)))

    @rule(path=paths, mode=st.sampled_from([0o755, 0o700, 0o2775, 0o1777, 0o555]))
    def mkdir(self, path: str, mode: int) -> None:
        self.both(f"mkdir({path!r}, {mode:#o})", lambda s: os.mkdir(s.path(path), mode))

    @rule(path=paths)
    def rmdir(self, path: str) -> None:
        self.both(f"rmdir({path!r})", lambda s: os.rmdir(s.path(path)))

    @rule(link_target=st.sampled_from(TARGETS), path=paths)
    def symlink(self, link_target: str, path: str) -> None:
        self.both(f"symlink({link_target!r}, {path!r})", lambda s: os.symlink(link_target, s.path(path)))

    @rule(path=paths)
    def readlink(self, path: str) -> None:
        self.both(f"readlink({path!r})", lambda s: os.readlink(s.path(path)))

    @rule(path=paths, follow=st.booleans())
    def stat_path(self, path: str, follow: bool) -> None:
        self.both(f"stat({path!r}, follow={follow})",
                  lambda s: stat_summary(os.stat(s.path(path), follow_symlinks=follow)))

    @rule(path=paths)
    def listdir(self, path: str) -> None:
        self.both(f"listdir({path!r})", lambda s: sorted(os.listdir(s.path(path))))

    @rule(path=paths, size=offsets)
    def truncate(self, path: str, size: int) -> None:
        self.both(f"truncate({path!r}, {size})", lambda s: os.truncate(s.path(path), size))

    @rule(path=paths, mode=st.sampled_from(MODES))
    def chmod(self, path: str, mode: int) -> None:
        self.both(f"chmod({path!r}, {mode:#o})", lambda s: os.chmod(s.path(path), mode))

    @rule(path=paths, uid=st.sampled_from([0, 1234]), gid=st.sampled_from([-1, 0, 4321]), follow=st.booleans())
    def chown(self, path: str, uid: int, gid: int, follow: bool) -> None:
        self.both(f"chown({path!r}, {uid}, {gid}, follow={follow})",
                  lambda s: os.chown(s.path(path), uid, gid, follow_symlinks=follow))

    @rule(path=paths, atime=st.integers(0, 2**33), mtime=st.integers(0, 2**33),
          nsec=st.integers(0, 999_999_999), follow=st.booleans())
    def utime(self, path: str, atime: int, mtime: int, nsec: int, follow: bool) -> None:
        ns = (atime * 10**9 + nsec, mtime * 10**9 + (nsec * 7) % 10**9)

        def op(side: Side) -> tuple[int, int]:
            os.utime(side.path(path), ns=ns, follow_symlinks=follow)
            st_ = os.stat(side.path(path), follow_symlinks=follow)
            return st_.st_atime_ns, st_.st_mtime_ns

        self.both(f"utime({path!r}, ns={ns}, follow={follow})", op)

    # -- xattrs ----------------------------------------------------------------

    @rule(path=paths, name=st.sampled_from(XATTR_NAMES), value=st.sampled_from(XATTR_VALUES),
          flags=st.sampled_from([0, os.XATTR_CREATE, os.XATTR_REPLACE]), follow=st.booleans())
    def setxattr(self, path: str, name: str, value: bytes, flags: int, follow: bool) -> None:
        self.both(f"setxattr({path!r}, {name!r}, {len(value)} bytes, flags {flags}, follow={follow})",
                  lambda s: os.setxattr(s.path(path), name, value, flags, follow_symlinks=follow))

    @precondition(has_fds)
    @rule(index=slots, name=st.sampled_from(XATTR_NAMES), value=st.sampled_from(XATTR_VALUES))
    def fsetxattr(self, index: int, name: str, value: bytes) -> None:
        """xattrs through an fd, also of a file whose names are all gone."""
        slot = self.slot(index)
        self.both(f"fsetxattr(slot {slot}, {name!r}, {len(value)} bytes)",
                  lambda s: os.setxattr(s.fds[slot], name, value))
        self.both(f"flistxattr(slot {slot})", lambda s: sorted(os.listxattr(s.fds[slot])))

    @rule(path=paths, name=st.sampled_from(XATTR_NAMES), follow=st.booleans())
    def getxattr(self, path: str, name: str, follow: bool) -> None:
        self.both(f"getxattr({path!r}, {name!r}, follow={follow})",
                  lambda s: os.getxattr(s.path(path), name, follow_symlinks=follow))

    @rule(path=paths, follow=st.booleans())
    def listxattr(self, path: str, follow: bool) -> None:
        self.both(f"listxattr({path!r}, follow={follow})",
                  lambda s: sorted(os.listxattr(s.path(path), follow_symlinks=follow)))

    @rule(path=paths, name=st.sampled_from(XATTR_NAMES))
    def removexattr(self, path: str, name: str) -> None:
        self.both(f"removexattr({path!r}, {name!r})", lambda s: os.removexattr(s.path(path), name))

    # -- whole-tree checks -------------------------------------------------------

    @invariant()
    def same_tree(self) -> None:
        """Names, types, modes, sizes, link counts and symlink targets agree after every step."""
        compare_trees(snapshot(self.m.root, contents=False), snapshot(self.r.root, contents=False),
                      f"[{self.MOUNT.mode}] tree through the mount")

    @rule()
    def same_contents(self) -> None:
        want = snapshot(self.r.root, contents=True)
        try:
            compare_trees(snapshot(self.m.root, contents=True), want, f"[{self.MOUNT.mode}] contents through the mount")
        except AssertionError as exc:
            # Say which is wrong: the backing dir, or only the mount's view of it.
            try:
                compare_trees(snapshot(self.backing_root, contents=True), want, "backing dir")
                where = "the backing dir matches the reference (the mount's view is stale)"
            except AssertionError as backing_exc:
                where = f"the backing dir differs too: {backing_exc}"
            raise AssertionError(f"{exc}; {where}") from None

    def teardown(self) -> None:
        try:
            self.m.close_all()  # FLUSH and RELEASE of everything still open
            self.r.close_all()
            if not self.failed:
                want = snapshot(self.r.root, contents=True)
                compare_trees(snapshot(self.m.root, contents=True), want,
                              f"[{self.MOUNT.mode}] final tree through the mount")
                compare_trees(snapshot(self.backing_root, contents=True), want,
                              f"[{self.MOUNT.mode}] final tree in the backing dir")
                assert hard_link_groups(self.m.root) == hard_link_groups(self.r.root), \
                    f"[{self.MOUNT.mode}] hard-link groups differ"
        finally:
            shutil.rmtree(self.m.root, ignore_errors=True)
            shutil.rmtree(self.r.root)
            assert not self.m.root.exists() and not self.backing_root.exists(), \
                f"[{self.MOUNT.mode}] run directory {self.m.root.name} could not be removed through the mount"


def _vfs_fallocate_errno(ref_fd: int, mode: int, offset: int, length: int) -> int:
    """What fallocate(2) fails with on a filesystem without fallocate (vfs_fallocate's checks, in order)."""
    if fcntl.fcntl(ref_fd, fcntl.F_GETFL) & os.O_PATH:
        return errno.EBADF  # not an fd for I/O at all
    if offset < 0 or length <= 0:
        return errno.EINVAL
    if mode & FALLOC_FL_PUNCH_HOLE and not mode & FALLOC_FL_KEEP_SIZE:
        return errno.EOPNOTSUPP
    if fcntl.fcntl(ref_fd, fcntl.F_GETFL) & os.O_ACCMODE == os.O_RDONLY:
        return errno.EBADF
    if stat.S_ISDIR(os.fstat(ref_fd).st_mode):
        return errno.EISDIR
    return errno.EOPNOTSUPP


class EvictingFsxMachine(FsxMachine):
    """The same, while the daemon keeps closing idle inode fds (its fd cache is small).

    A step lists the xattrs of every ballast file, which makes the daemon
    use (reopen) each ballast inode's fd; with more ballast inodes than its
    fd cache holds, it closes the least recently used ones: those of the
    run directory, which later steps reopen by file handle.
    """

    BALLAST: list[Path]

    @rule()
    def churn_inode_fds(self) -> None:
        for path in self.BALLAST:
            assert os.listxattr(path) == []


# The daemon's fd cache holds RLIMIT_NOFILE // 2 inode fds; with this hard
# limit that is 128, below the ballast.
EVICTING_NOFILE = 256
BALLAST_FILES = 200


@contextlib.contextmanager
def nofile_limit(limit: int, tmp_path: Path) -> Iterator[None]:
    """Start the daemons of this block with RLIMIT_NOFILE `limit` (soft and hard).

    The mount helper starts `sys.executable -m zcfs`; for this block that is
    a wrapper that lowers the limit (prlimit) and execs the real one.
    """
    wrapper = tmp_path / "python-nofile"
    wrapper.write_text(f"#!/bin/sh\nexec prlimit --nofile={limit}:{limit} -- {sys.executable} \"$@\"\n")
    wrapper.chmod(0o755)
    real = sys.executable
    sys.executable = str(wrapper)
    try:
        yield
    finally:
        sys.executable = real


def test_differential_fsx_evicting_inode_fds(mode, mount_factory, tmp_path):
    """The differential run, with the daemon's inode fds evicted and reopened by handle all along."""
    if shutil.which("prlimit") is None:
        pytest.skip("prlimit (util-linux) not installed")
    with nofile_limit(EVICTING_NOFILE, tmp_path):
        mount = mount_factory(mode)
    assert int(open(f"/proc/{mount.process.pid}/limits").read().split("Max open files")[1].split()[1]) \
        == EVICTING_NOFILE
    ballast_dir = mount.path / "ballast"
    ballast_dir.mkdir()
    ballast = [ballast_dir / f"f{i}" for i in range(BALLAST_FILES)]
    for path in ballast:
        path.write_bytes(b"")
    reference = tmp_path / "reference"
    reference.mkdir()
    machine = type("EvictingFsxMachine_" + mode.replace("-", "_"), (EvictingFsxMachine,),
                   {"MOUNT": mount, "REFERENCE": reference, "BALLAST": ballast})
    run_state_machine_as_test(machine, settings=settings(SETTINGS, max_examples=max(10, EXAMPLES // 2)))
    # the daemon really did evict: it holds fewer inode fds than the kernel knows inodes
    held = [fd for fd in os.listdir(f"/proc/{mount.process.pid}/fd")
            if os.readlink(f"/proc/{mount.process.pid}/fd/{fd}").startswith(str(ballast_dir))]
    assert len(held) < BALLAST_FILES // 2, f"{len(held)} ballast fds held: no eviction happened"
    assert mount.process.poll() is None, "the daemon died"


def test_differential_fsx(mnt, tmp_path):
    """Random operation sequences agree step by step with a plain directory (every mode)."""
    reference = tmp_path / "reference"
    reference.mkdir()
    machine = type("FsxMachine_" + mnt.mode.replace("-", "_"), (FsxMachine,),
                   {"MOUNT": mnt, "REFERENCE": reference})
    run_state_machine_as_test(machine, settings=SETTINGS)
    assert os.listdir(mnt.path) == [] and os.listdir(mnt.backing) == []
    assert mnt.process.poll() is None, "the daemon died"


def test_mmap_writeback_through_append_handle(mnt):
    """Dirty mmap pages written back through an O_APPEND handle land in place, not at the end.

    The kernel writes back a shared mapping through any writable handle of
    the inode; found by the differential test: zcfs's backing fd kept
    O_APPEND, and pwrite on such an fd ignores its offset and appends.
    """
    path = mnt.path / "f"
    path.write_bytes(b"abcd" * 1024)
    fd = os.open(path, os.O_RDWR | os.O_APPEND)
    try:
        with mmap.mmap(fd, 4096) as mapping:
            mapping[0:5] = b"HELLO"
            mapping.flush()
        os.write(fd, b"tail")  # and an append still appends
    finally:
        os.close(fd)
    want = b"HELLO" + (b"abcd" * 1024)[5:] + b"tail"
    assert (mnt.backing / "f").read_bytes() == want
    assert path.read_bytes() == want


def test_removed_objects_stay_reachable_after_inode_fd_eviction(mode, mount_factory, tmp_path):
    """A removed file or directory the kernel still reaches (O_PATH fd, cwd) survives fd eviction.

    Found with the evicting differential run: once the daemon had closed
    such an inode's fd, its file handle no longer opened the removed
    object and fstat said ESTALE, where a local filesystem answers.
    """
    if shutil.which("prlimit") is None:
        pytest.skip("prlimit (util-linux) not installed")
    with nofile_limit(EVICTING_NOFILE, tmp_path):
        mount = mount_factory(mode)
    ballast = [mount.path / f"ballast{i}" for i in range(BALLAST_FILES)]
    for path in ballast:
        path.write_bytes(b"")
    (mount.path / "file").write_bytes(b"hello")
    (mount.path / "target").write_bytes(b"replaced")
    for name in ("dir", "cwd"):
        (mount.path / name).mkdir()
    fds = {name: os.open(mount.path / name, os.O_PATH) for name in ("file", "target", "dir")}
    old_cwd = os.getcwd()
    os.chdir(mount.path / "cwd")
    try:
        os.unlink(mount.path / "file")
        os.rename(mount.path / "ballast0", mount.path / "target")  # over its last name
        os.rmdir(mount.path / "dir")
        os.rmdir(mount.path / "cwd")
        for path in ballast[1:]:
            os.listxattr(path)  # the daemon reopens these, evicting the others' fds
        for name, fd in fds.items():
            st_ = os.fstat(fd)
            assert st_.st_nlink == 0, f"{name}: nlink {st_.st_nlink}"
        assert os.stat(".").st_nlink == 0 and os.listdir(".") == []
    finally:
        os.chdir(old_cwd)
        for fd in fds.values():
            os.close(fd)
