"""The inode table: kernel node ids for backing objects, with exact lookup counts.

Node ids. On a backing filesystem whose file handles are made of an inode
number and a generation (ext4, xfs, btrfs, tmpfs: see `_HandleCodec`), an
object's node id is `generation << 32 | st_ino`, the FUSE generation is 0,
and the node id alone gives back the backing file handle. So the kernel's
own file handles of the mount (nodeid + generation, fs/fuse/inode.c
`fuse_encode_fh`) stay valid after the table forgot the inode: the kernel
then asks LOOKUP(nodeid, "."), and `relookup` reopens the object by the
handle rebuilt from the node id. Such node ids are never reused for
another object (a reused inode number comes with a new generation).

Every other object (no usable handle, a handle of another shape, another
mount below the backing dir, an inode number of 2**32 or more, a collision)
is "odd": its node id is its st_ino if free, else a synthetic number, with
a generation of its own, and its handle (if any) is stored. Its node id
cannot be resolved once forgotten: LOOKUP "." answers ESTALE.

Memory. The kernel may remember millions of inodes, so the table keeps one
dict entry per inode, node id -> `lookups << 4 | file type`: about 66
bytes per inode (tracemalloc, tests/unit/test_inodes.py), CPython's dict
slot and the key's int; the small-int cache holds the value while the
count is below 16 (past that, one more int of 28 bytes). The daemon's RSS
grows about 130 bytes per inode (`zcfs bench --workloads rewalk-warm`; was ~430). Fds, pins, engine state and
odd objects' records live in side tables sized by what is open, not by
what is remembered. `Inode` objects are views made on demand.

Fds. Each known object is reached through an O_PATH fd. The kernel may
remember more inodes than a process may hold fds (here the hard
RLIMIT_NOFILE is 20,000 and cannot be raised), so the fds of idle inodes
are closed, least recently used first, and reopened from their file
handle when needed. An inode without a usable handle keeps its fd; so does
a pinned one (open files, or a removed object: its handle no longer opens).
"""

from __future__ import annotations

import collections
import errno
import itertools
import logging
import os
import resource
import stat
from typing import NamedTuple

from . import mountinfo, syscalls

log = logging.getLogger(__name__)

ROOT_INODE = 1
# Node ids we make up when an odd object's st_ino is unusable (taken, 0 or 1);
# far above any real inode number so the two rarely meet (collisions are checked).
_SYNTHETIC_BASE = 1 << 62
_INO_BITS = 32
_INO_MASK = (1 << _INO_BITS) - 1
_TYPE_BITS = 4  # S_IFMT >> 12 fits in 4 bits
_TYPE_MASK = (1 << _TYPE_BITS) - 1
_ONE_LOOKUP = 1 << _TYPE_BITS
_MAX_PARENT_WALK = 4096


class Inode:
    """A view of node id `number` in its table; made on demand, compares by number."""

    __slots__ = ("_table", "number")

    def __init__(self, table: InodeTable, number: int) -> None:
        self._table = table
        self.number = number

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Inode) and other.number == self.number and other._table is self._table

    def __hash__(self) -> int:
        return hash(self.number)

    def __repr__(self) -> str:
        return f"Inode({self.number:#x})"

    @property
    def fd(self) -> int:
        """The O_PATH fd, reopened if it was evicted (OSError ESTALE if the object is gone)."""
        return self._table._use(self.number)

    @property
    def mode(self) -> int:
        """The file type bits (S_IFMT) of the object, fixed for its life."""
        return (self._table._counts[self.number] & _TYPE_MASK) << 12

    @property
    def lookups(self) -> int:
        """Kernel lookups not yet forgotten."""
        return self._table._counts[self.number] >> _TYPE_BITS

    @property
    def engine_state(self) -> object:
        """Per-inode data-path state owned by the engine (None until it sets one)."""
        return self._table._engine_state.get(self.number)

    @engine_state.setter
    def engine_state(self, value: object) -> None:
        self._table._engine_state[self.number] = value

    @property
    def generation(self) -> int:
        """The FUSE generation to report with this node id."""
        return self._table.generation(self.number)

    @property
    def is_dir(self) -> bool:
        return stat.S_ISDIR(self.mode)

    @property
    def is_symlink(self) -> bool:
        return stat.S_ISLNK(self.mode)


class _Odd(NamedTuple):
    """What the table keeps of an object whose node id is not its handle."""

    dev: int
    ino: int
    handle: bytes | None  # None: no way to reopen it, its fd stays open
    generation: int


class _HandleCodec:
    """Rebuilds a backing file handle from (ino, generation), where handles are just that.

    The layout is found from the root's handle among those below (offsets in
    the handle's payload); every object's handle is then checked to be
    exactly the root's with its own ino and generation put in, so a guessed
    layout can never make a wrong handle, only fail to match (odd object).
    """

    # (handle_type, payload size, ino offset, ino size, generation offset)
    LAYOUTS = (
        (1, 8, 0, 4, 4),  # FILEID_INO32_GEN: ext2/3/4, xfs with 32-bit inodes, ...
        (1, 12, 4, 8, 0),  # tmpfs: generation, 64-bit ino
        (0x81, 12, 0, 8, 8),  # xfs with 64-bit inodes
        (0x4D, 20, 0, 8, 16),  # btrfs (objectid, root, generation) within one subvolume
    )
    _HEADER = 8  # struct file_handle: handle_bytes, handle_type

    def __init__(self, template: bytes, ino_at: int, ino_size: int, gen_at: int) -> None:
        self.template = template
        self.ino_at = self._HEADER + ino_at
        self.ino_size = ino_size
        self.gen_at = self._HEADER + gen_at
        # The bytes every handle shares with the template: all but the two fields.
        fields = sorted([(self.ino_at, self.ino_at + ino_size), (self.gen_at, self.gen_at + 4)])
        edges = [0, *[edge for field in fields for edge in field], len(template)]
        self._fixed = [(start, end, template[start:end])
                       for start, end in zip(edges[::2], edges[1::2]) if start < end]

    @classmethod
    def for_root(cls, handle: bytes, ino: int) -> _HandleCodec | None:
        size = int.from_bytes(handle[0:4], "little")
        kind = int.from_bytes(handle[4:8], "little", signed=True)
        for layout_kind, layout_size, ino_at, ino_size, gen_at in cls.LAYOUTS:
            if (kind, size) != (layout_kind, layout_size):
                continue
            codec = cls(handle, ino_at, ino_size, gen_at)
            if codec.decode(handle, ino) is not None:
                return codec
        return None

    def encode(self, ino: int, generation: int) -> bytes:
        handle = bytearray(self.template)
        handle[self.ino_at:self.ino_at + self.ino_size] = ino.to_bytes(self.ino_size, "little")
        handle[self.gen_at:self.gen_at + 4] = generation.to_bytes(4, "little")
        return bytes(handle)

    def ino_of(self, handle: bytes) -> int | None:
        """The inode number a handle of this layout carries, or None if it has another size."""
        if len(handle) != len(self.template):
            return None
        return int.from_bytes(handle[self.ino_at:self.ino_at + self.ino_size], "little")

    def decode(self, handle: bytes, ino: int) -> int | None:
        """The generation in `handle` of the object with inode number `ino`, or None if it does not fit."""
        if len(handle) != len(self.template) or ino >= 1 << (8 * self.ino_size):
            return None
        if handle[self.ino_at:self.ino_at + self.ino_size] != ino.to_bytes(self.ino_size, "little"):
            return None
        for start, end, expected in self._fixed:
            if handle[start:end] != expected:
                return None
        return int.from_bytes(handle[self.gen_at:self.gen_at + 4], "little")


class InodeTable:
    """Maps node ids and backing identities to inodes.

    Not thread-safe: it is only touched under the native session's lock, or on pyfuse3's loop.
    """

    def __init__(self, root_fd: int, max_fds: int | None = None) -> None:
        if max_fds is None:
            max_fds = max(64, resource.getrlimit(resource.RLIMIT_NOFILE)[0] // 2)
        self.max_fds = max_fds
        self._counts: dict[int, int] = {}  # node id -> lookups << 4 | file type
        self._fds: collections.OrderedDict[int, int] = collections.OrderedDict()  # reopenable, LRU first
        self._fixed: dict[int, int] = {}  # fds that cannot be reopened
        self._pins: dict[int, int] = {}
        # Removed objects whose fd we closed at once (their space comes back
        # then, not at FORGET): requests that need them get ESTALE.
        self._let_go: set[int] = set()
        self._engine_state: dict[int, object] = {}
        self._odd: dict[int, _Odd] = {}
        # (st_dev, st_ino) -> node id of the inodes whose fd is open, which
        # pins the backing inode: an exact identity, bounded by the open fds.
        self._open_by_identity: dict[tuple[int, int], int] = {}
        self._odd_by_identity: dict[tuple[int, int], int] = {}
        self._synthetic = itertools.count(_SYNTHETIC_BASE)
        # Generations of odd objects: a node id reused for another object gets
        # a new one, so the kernel drops the old inode and old handles go stale.
        self._odd_generation = itertools.count(int.from_bytes(os.urandom(4), "little") | 1)
        self._mount_fd = -1
        self._mount_id = None
        self._codec: _HandleCodec | None = None
        self._root_alias = ROOT_INODE  # the root's own encoded node id
        self._whole_fs = False  # the backing dir is the root of its filesystem
        st = os.fstat(root_fd)
        self._root_identity = (st.st_dev, st.st_ino)
        self._counts[ROOT_INODE] = _ONE_LOOKUP | _type_of(st)
        self._odd[ROOT_INODE] = _Odd(st.st_dev, st.st_ino, None, 0)
        self._keep(ROOT_INODE, root_fd)
        self._odd_by_identity[self._root_identity] = ROOT_INODE
        self._enable_handles(root_fd, st)

    def _enable_handles(self, root_fd: int, st: os.stat_result) -> None:
        """Use file handles only if a round trip works here."""
        try:
            handle, self._mount_id = syscalls.name_to_handle(root_fd)
            self._mount_fd = os.open(syscalls.proc_path(root_fd), os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            os.close(syscalls.open_by_handle(self._mount_fd, handle, os.O_PATH | os.O_CLOEXEC))
        except OSError as exc:
            log.info("file handles unusable (%s): every known inode keeps an fd", exc.strerror)
            if self._mount_fd >= 0:
                os.close(self._mount_fd)
            self._mount_fd = -1
            return
        self._codec = _HandleCodec.for_root(handle, st.st_ino)
        if self._codec is None:
            log.info("file handles of an unknown shape: node ids are forgotten with their inodes")
            return
        self._root_alias = self._encoded_number(handle, st.st_ino)
        self._whole_fs = _is_filesystem_root(self._mount_id, root_fd, st)

    @property
    def root(self) -> Inode:
        return Inode(self, ROOT_INODE)

    def __len__(self) -> int:
        return len(self._counts)

    @property
    def open_fds(self) -> int:
        """How many inode fds are open now (evictable ones)."""
        return len(self._fds)

    def get(self, number: int) -> Inode:
        """The inode with node id `number`; KeyError if the kernel does not have it."""
        if number not in self._counts:
            raise KeyError(number)
        return Inode(self, number)

    def generation(self, number: int) -> int:
        """The FUSE generation of node id `number` (0 for the root and encoded node ids)."""
        odd = self._odd.get(number)
        return 0 if odd is None else odd.generation

    def attr_ino(self, number: int) -> int:
        """The inode number to show for node id `number` where it may differ from it (fuse_attr.ino).

        The backing st_ino for an encoded node id, so stat and a plain
        READDIR (which gives the backing d_ino) agree; the node id itself for
        the root and odd objects (unique on the mount, as before).
        """
        return number if number in self._odd else number & _INO_MASK

    # -- lookups -----------------------------------------------------------

    def _handle_of(self, fd: int, name: bytes = b"") -> bytes | None:
        """The usable file handle of `fd`'s object (or of `name` in directory `fd`), if any."""
        if self._mount_fd < 0:
            return None
        try:
            handle, mount_id = syscalls.name_to_handle(fd, name)
        except OSError:
            return None
        return handle if mount_id == self._mount_id else None

    def _encoded_number(self, handle: bytes | None, ino: int) -> int | None:
        """The node id that encodes `handle` (the root's is ROOT_INODE), or None if it cannot."""
        if handle is None or self._codec is None or ino > _INO_MASK:
            return None
        generation = self._codec.decode(handle, ino)
        if generation is None:
            return None
        number = generation << _INO_BITS | ino
        return ROOT_INODE if number == self._root_alias else number

    def remember(self, fd: int, st: os.stat_result) -> Inode:
        """Count one kernel lookup of the object behind `fd` (an O_PATH fd).

        Takes ownership of `fd`: it is kept for a new inode or closed when
        the object is already known.
        """
        number = self._open_by_identity.get((st.st_dev, st.st_ino))
        if number is not None:
            # Its fd is open, so the inode number cannot belong to another
            # object: no handle needed (the common case of a repeated LOOKUP).
            self._counts[number] += _ONE_LOOKUP
            os.close(fd)
            self._touch(number)
            return Inode(self, number)
        handle = self._handle_of(fd)
        number = self._encoded_number(handle, st.st_ino)
        if number is not None and number != ROOT_INODE and number in self._odd:
            number = None  # taken by an odd object: this one is odd too
        if number is None:
            return self._remember_odd(fd, st, handle)
        value = self._counts.get(number)
        if value is None:
            self._counts[number] = _ONE_LOOKUP | _type_of(st)
            self._keep(number, fd)
            return Inode(self, number)
        self._counts[number] = value + _ONE_LOOKUP
        self._adopt(number, fd)
        return Inode(self, number)

    @property
    def encodes_handles(self) -> bool:
        """Whether node ids encode file handles here (`remember_name` can work)."""
        return self._codec is not None

    def remember_name(self, dir_fd: int, name: bytes, st: os.stat_result) -> Inode | None:
        """Count one kernel lookup of `name` in directory `dir_fd` (`st`: its lstat)
        without opening it, when its node id can encode its file handle; None
        when it needs the fd path (`remember`): odd objects, no usable handles.

        The inode starts as an evicted one does: its fd is opened by handle
        when a request needs it. A listing (`find`, READDIRPLUS) or a stat
        then costs no open and no close.
        """
        number = self._open_by_identity.get((st.st_dev, st.st_ino))
        if number is None:
            if self._codec is None:
                return None
            # The handle must carry st's inode number, so a name swapped since
            # the lstat gives None here, not another object's attributes.
            number = self._encoded_number(self._handle_of(dir_fd, name), st.st_ino)
            if number is None or number == ROOT_INODE or number in self._odd:
                return None
        value = self._counts.get(number)
        self._counts[number] = (_type_of(st) if value is None else value) + _ONE_LOOKUP
        self._touch(number)
        return Inode(self, number)

    def _remember_odd(self, fd: int, st: os.stat_result, handle: bytes | None) -> Inode:
        identity = (st.st_dev, st.st_ino)
        number = self._odd_by_identity.get(identity)
        if number is not None and number not in self._fixed and number not in self._fds:
            # Evicted: the backing inode number may now belong to another object.
            if handle is None or handle != self._odd[number].handle:
                del self._odd_by_identity[identity]  # stale: the kernel keeps the old node id
                number = None
        if number is not None:
            self._counts[number] += _ONE_LOOKUP
            self._adopt(number, fd)
            return Inode(self, number)
        number = st.st_ino
        if number <= ROOT_INODE or number in self._counts:
            number = next(n for n in self._synthetic if n not in self._counts)
        self._odd[number] = _Odd(st.st_dev, st.st_ino, handle, next(self._odd_generation) & 0xFFFFFFFF)
        self._odd_by_identity[identity] = number
        self._counts[number] = _ONE_LOOKUP | _type_of(st)
        self._keep(number, fd)
        return Inode(self, number)

    def relookup(self, number: int) -> Inode:
        """Count one more kernel lookup of node id `number` (LOOKUP of ".").

        A node id the table has forgotten (the kernel dropped its inode but
        not a file handle of it) is reopened from the handle it encodes.
        Raises OSError ESTALE when that is impossible: an odd node id, an
        object that is gone, or one that may lie outside the backing dir.
        """
        value = self._counts.get(number)
        if value is not None:
            self._counts[number] = value + _ONE_LOOKUP
            return Inode(self, number)
        if self._codec is None or number in self._odd:
            raise OSError(errno.ESTALE, "node id unknown")
        handle = self._codec.encode(number & _INO_MASK, number >> _INO_BITS)
        fd = syscalls.open_by_handle(self._mount_fd, handle, os.O_PATH | os.O_CLOEXEC)
        try:
            st = os.fstat(fd)
            if not self._inside(fd, st):
                raise OSError(errno.ESTALE, "not under the backing directory")
        except BaseException:
            os.close(fd)
            raise
        inode = self.remember(fd, st)
        if inode.number != number:  # taken meanwhile by an odd object: the handle stays stale
            self.forget(inode.number, 1)
            raise OSError(errno.ESTALE, "node id taken")
        return inode

    def _inside(self, fd: int, st: os.stat_result) -> bool:
        """Whether an object opened by handle lies under the backing dir.

        A handle opens anything on its filesystem. When the backing dir is
        the filesystem's root, that is all inside; otherwise only a directory
        can be checked (its ".." chain reaches the backing root), so other
        objects of a forgotten node id are refused.
        """
        if self._whole_fs:
            return True
        if not stat.S_ISDIR(st.st_mode):
            return False
        current = os.open("..", os.O_PATH | os.O_CLOEXEC, dir_fd=fd)
        try:
            for _ in range(_MAX_PARENT_WALK):
                parent_st = os.fstat(current)
                if (parent_st.st_dev, parent_st.st_ino) == self._root_identity:
                    return True
                parent = os.open("..", os.O_PATH | os.O_CLOEXEC, dir_fd=current)
                above = os.fstat(parent)
                os.close(current)
                current = parent
                if (above.st_dev, above.st_ino) == (parent_st.st_dev, parent_st.st_ino):
                    return False  # the top of the filesystem tree
            return False
        finally:
            os.close(current)

    def forget(self, number: int, count: int) -> None:
        """Drop `count` kernel lookups; the last one releases the inode."""
        value = self._counts.get(number)
        if value is None or number == ROOT_INODE:
            return  # the kernel forgets the root only at unmount
        lookups = value >> _TYPE_BITS
        if count > lookups:
            # A negative count would be our bug, not the kernel's: say so loudly.
            log.error("inode %d: forget %d > lookups %d", number, count, lookups)
            count = lookups
        if count < lookups:
            self._counts[number] = value - count * _ONE_LOOKUP
            return
        if number in self._pins:
            # The kernel may send FORGET before the RELEASE of a file it
            # had open: keep the inode (no lookups left) until the last unpin.
            self._counts[number] = value & _TYPE_MASK
            return
        self._release(number)

    def _release(self, number: int) -> None:
        """Drop everything the table holds for `number`."""
        del self._counts[number]
        self._close(number)
        self._let_go.discard(number)
        self._pins.pop(number, None)
        self._engine_state.pop(number, None)
        odd = self._odd.pop(number, None)
        if odd is not None and self._odd_by_identity.get((odd.dev, odd.ino)) == number:
            del self._odd_by_identity[(odd.dev, odd.ino)]

    def known_number(self, handle: bytes) -> int | None:
        """The node id of the object with backing file handle `handle` (struct
        file_handle, header included), if the kernel knows it; None otherwise,
        and for odd objects (their node id is not their handle).

        Safe from another thread without the table's lock: it only reads
        (under the GIL), and a node id the kernel learns a moment later was
        looked up after the change the caller is about.
        """
        if self._codec is None:
            return None
        ino = self._codec.ino_of(handle)
        if ino is None:
            return None
        number = self._encoded_number(handle, ino)
        if number is None or number not in self._counts or (number != ROOT_INODE and number in self._odd):
            return None
        return number

    def known_numbers(self) -> list[int]:
        """Every node id the kernel knows now (a copy; safe from another thread)."""
        return list(self._counts.copy())

    def known(self, st: os.stat_result, dir_fd: int, name: bytes) -> Inode | None:
        """The inode of `name` in `dir_fd` (whose stat is `st`), if the kernel knows it."""
        if self._codec is not None:
            number = self._encoded_number(self._handle_of(dir_fd, name), st.st_ino)
            if number is not None and number in self._counts and (number == ROOT_INODE or number not in self._odd):
                return Inode(self, number)
        number = self._odd_by_identity.get((st.st_dev, st.st_ino))
        return None if number is None else Inode(self, number)

    def in_use(self, dev: int, ino: int) -> bool:
        """Whether the object (st_dev, st_ino) is known with its fd open: open now, or used lately."""
        return (dev, ino) in self._open_by_identity

    def keep_fd(self, inode: Inode) -> None:
        """Never evict `inode`'s fd: it lost its last name, so its handle no longer opens it.

        The fd is closed when the kernel forgets the inode.
        """
        number = inode.number
        fd = self._use(number)
        if self._fds.pop(number, None) is not None:
            self._fixed[number] = fd

    def release_fd(self, inode: Inode) -> None:
        """Close a removed object's fd for good; its node id stays until the kernel forgets it.

        For a removed file nothing has open: closing gives its space back at
        once instead of at FORGET. Requests that need the object then fail
        with ESTALE (`_use`).
        """
        number = inode.number
        if number in self._counts:
            self._close(number)
            self._let_go.add(number)

    def pinned(self, inode: Inode) -> bool:
        """Whether `inode` has an open file or directory."""
        return inode.number in self._pins

    def pin(self, inode: Inode) -> None:
        """Keep `inode`'s fd open and the inode known while it has an open file or directory."""
        self._use(inode.number)
        self._pins[inode.number] = self._pins.get(inode.number, 0) + 1

    def unpin(self, inode: Inode) -> None:
        number = inode.number
        pins = self._pins.get(number, 0) - 1
        if pins > 0:
            self._pins[number] = pins
            return
        self._pins.pop(number, None)
        if self._counts.get(number, _ONE_LOOKUP) < _ONE_LOOKUP:
            self._release(number)  # forgotten while it was open

    def close_all(self) -> None:
        """Release every fd, the root's included (at unmount)."""
        for fd in itertools.chain(self._fds.values(), self._fixed.values()):
            os.close(fd)
        for table in (self._counts, self._fds, self._fixed, self._pins, self._let_go, self._engine_state, self._odd,
                      self._odd_by_identity, self._open_by_identity):
            table.clear()
        if self._mount_fd >= 0:
            os.close(self._mount_fd)
            self._mount_fd = -1

    # -- the fd cache ----------------------------------------------------

    def _reopenable(self, number: int) -> bool:
        odd = self._odd.get(number)
        return self._mount_fd >= 0 and (odd is None or odd.handle is not None)

    def _use(self, number: int) -> int:
        fd = self._fds.get(number)
        if fd is not None:
            self._fds.move_to_end(number)
            return fd
        fd = self._fixed.get(number)
        if fd is not None:
            return fd
        if number in self._let_go:
            raise OSError(errno.ESTALE, "removed, and let go (release_fd)")
        if number not in self._counts or not self._reopenable(number):
            raise OSError(errno.EBADF, "inode released")  # a bug, never the kernel's
        odd = self._odd.get(number)
        handle = odd.handle if odd is not None else self._codec.encode(number & _INO_MASK, number >> _INO_BITS)
        fd = syscalls.open_by_handle(self._mount_fd, handle, os.O_PATH | os.O_CLOEXEC)
        self._keep(number, fd)
        return fd

    def _adopt(self, number: int, fd: int) -> None:
        """A fresh fd of a known inode: keep it if the inode's was evicted, else close it."""
        if number in self._fixed or number in self._fds:
            os.close(fd)
            self._touch(number)
        else:
            self._keep(number, fd)

    def _touch(self, number: int) -> None:
        if number in self._fds:
            self._fds.move_to_end(number)

    def _identity(self, number: int) -> tuple[int, int]:
        odd = self._odd.get(number)
        return (odd.dev, odd.ino) if odd is not None else (self._root_identity[0], number & _INO_MASK)

    def _keep(self, number: int, fd: int) -> None:
        self._open_by_identity[self._identity(number)] = number
        if not self._reopenable(number):
            self._fixed[number] = fd
            return
        self._fds[number] = fd
        if len(self._fds) > self.max_fds:
            self._evict()

    def _evict(self) -> None:
        """Close least recently used fds of unpinned inodes down to 3/4 of the limit."""
        for number in list(self._fds):
            if len(self._fds) <= self.max_fds * 3 // 4:
                break
            if number not in self._pins:
                os.close(self._fds.pop(number))
                self._forget_identity(number)

    def _close(self, number: int) -> None:
        fd = self._fds.pop(number, None)
        if fd is None:
            fd = self._fixed.pop(number, None)
        if fd is not None:
            os.close(fd)
            self._forget_identity(number)

    def _forget_identity(self, number: int) -> None:
        identity = self._identity(number)
        if self._open_by_identity.get(identity) == number:
            del self._open_by_identity[identity]


def _type_of(st: os.stat_result) -> int:
    return stat.S_IFMT(st.st_mode) >> 12


def _is_filesystem_root(mount_id: int, root_fd: int, st: os.stat_result) -> bool:
    """Whether the backing dir (`root_fd`, stat `st`, on mount `mount_id`) is its filesystem's root.

    It must be the top of its mount (".." crosses to another device, or is
    itself), and the mount must show the filesystem from its root: in
    /proc/self/mountinfo field 0 is the mount id and field 3 the mount's
    root within its filesystem ("/" unless a subdirectory was bind-mounted).
    A detached mount (the atime view of the backing dir, see
    engine/devfuse.atime_view) is in no mount table: then the backing dir
    is the root if it is the very directory (st_dev, st_ino) at which some
    mount of the same device shows that device's root. Anything unsure
    answers False.
    """
    try:
        above = os.stat("..", dir_fd=root_fd, follow_symlinks=False)
        if above.st_dev == st.st_dev and above.st_ino != st.st_ino:
            return False
        device = f"{os.major(st.st_dev)}:{os.minor(st.st_dev)}".encode()
        roots_of_device = []
        with open("/proc/self/mountinfo", "rb") as info:
            for line in info:
                fields = line.split()
                if int(fields[0]) == mount_id:
                    return fields[3] == b"/"
                if fields[2] == device and fields[3] == b"/":
                    roots_of_device.append(fields[4])
        for point in roots_of_device:
            shown = os.stat(mountinfo.unescape(point), follow_symlinks=False)
            if (shown.st_dev, shown.st_ino) == (st.st_dev, st.st_ino):
                return True
    except (OSError, ValueError, IndexError):
        pass
    return False

