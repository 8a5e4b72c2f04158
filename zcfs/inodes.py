"""The inode table: kernel node ids for backing objects, with exact lookup counts.

Each backing object the kernel knows (found by its `(st_dev, st_ino)`) is
reached through an O_PATH fd. The kernel may remember more inodes than a
process may hold fds (here the hard RLIMIT_NOFILE is 20,000 and cannot be
raised), so the fds of idle inodes are closed, least recently used first,
and reopened from their file handle (`name_to_handle_at`) when needed.
An inode without a usable handle (a filesystem that cannot export them,
a daemon without CAP_DAC_READ_SEARCH, another mount below the backing
dir) keeps its fd; so does one with open files, which may be unlinked.

While an fd is closed, the backing inode number may be reused by a new
object; `remember` tells the two apart by their handles.
"""

from __future__ import annotations

import collections
import errno
import itertools
import logging
import os
import resource
import stat

from . import syscalls

log = logging.getLogger(__name__)

ROOT_INODE = 1
# Node ids we make up when a backing st_ino is unusable (taken, 0 or 1);
# far above any real inode number so the two never meet in practice.
_SYNTHETIC_BASE = 1 << 62


class Inode:
    """One backing object the kernel knows by `number`."""

    __slots__ = ("number", "_fd", "dev", "ino", "mode", "lookups", "handle", "pins", "engine_state", "_table")

    def __init__(self, table: InodeTable, number: int, fd: int, st: os.stat_result, handle: bytes | None) -> None:
        self._table = table
        self.number = number
        self._fd = fd  # O_PATH fd of the backing object; -1 while evicted or released
        self.dev = st.st_dev
        self.ino = st.st_ino
        self.mode = stat.S_IFMT(st.st_mode)  # the file type, fixed for an object's life
        self.lookups = 1
        self.handle = handle  # for reopening; None: the fd must stay open
        self.pins = 0  # open files and directories: keep the fd
        self.engine_state: object = None  # per-inode data-path state owned by the engine

    @property
    def fd(self) -> int:
        """The O_PATH fd, reopened if it was evicted (OSError ESTALE if the object is gone)."""
        return self._table._use(self)

    @property
    def is_dir(self) -> bool:
        return stat.S_ISDIR(self.mode)

    @property
    def is_symlink(self) -> bool:
        return stat.S_ISLNK(self.mode)


class InodeTable:
    """Maps node ids and backing identities to `Inode`s.

    Not thread-safe: it is only touched from the event loop.
    """

    def __init__(self, root_fd: int, max_fds: int | None = None) -> None:
        if max_fds is None:
            max_fds = max(64, resource.getrlimit(resource.RLIMIT_NOFILE)[0] // 2)
        self.max_fds = max_fds
        self._open: collections.OrderedDict[Inode, None] = collections.OrderedDict()  # LRU
        self._mount_fd = -1
        self._mount_id = None
        st = os.fstat(root_fd)
        root = Inode(self, ROOT_INODE, root_fd, st, None)
        self._by_number: dict[int, Inode] = {ROOT_INODE: root}
        self._by_identity: dict[tuple[int, int], Inode] = {(st.st_dev, st.st_ino): root}
        self._synthetic = itertools.count(_SYNTHETIC_BASE)
        self._enable_handles(root_fd)

    def _enable_handles(self, root_fd: int) -> None:
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

    @property
    def root(self) -> Inode:
        return self._by_number[ROOT_INODE]

    def __len__(self) -> int:
        return len(self._by_number)

    @property
    def open_fds(self) -> int:
        """How many inode fds are open now (evictable ones)."""
        return len(self._open)

    def get(self, number: int) -> Inode:
        """The inode with node id `number`; KeyError if the kernel never had it."""
        return self._by_number[number]

    def _handle_of(self, fd: int) -> bytes | None:
        if self._mount_fd < 0:
            return None
        try:
            handle, mount_id = syscalls.name_to_handle(fd)
        except OSError:
            return None
        return handle if mount_id == self._mount_id else None

    def remember(self, fd: int, st: os.stat_result) -> Inode:
        """Count one kernel lookup of the object behind `fd` (an O_PATH fd).

        Takes ownership of `fd`: it is kept for a new inode or closed when
        the object is already known.
        """
        identity = (st.st_dev, st.st_ino)
        known = self._by_identity.get(identity)
        if known is not None and known._fd < 0:
            # Evicted: the number may now belong to another object.
            handle = self._handle_of(fd)
            if handle is not None and handle == known.handle:
                known._fd = fd
                known.lookups += 1
                self._track(known)
                return known
            del self._by_identity[identity]  # stale: the kernel keeps the old node id
            known = None
        if known is not None:
            os.close(fd)
            known.lookups += 1
            self._use(known)
            return known
        number = st.st_ino
        if number <= ROOT_INODE or number in self._by_number:
            number = next(self._synthetic)
        inode = Inode(self, number, fd, st, self._handle_of(fd))
        self._by_number[number] = inode
        self._by_identity[identity] = inode
        self._track(inode)
        return inode

    def forget(self, number: int, count: int) -> None:
        """Drop `count` kernel lookups; the last one releases the inode."""
        inode = self._by_number.get(number)
        if inode is None or number == ROOT_INODE:
            return  # the kernel forgets the root only at unmount
        if count > inode.lookups:
            # A negative count would be our bug, not the kernel's: say so loudly.
            log.error("inode %d: forget %d > lookups %d", number, count, inode.lookups)
            count = inode.lookups
        inode.lookups -= count
        if inode.lookups == 0:
            del self._by_number[number]
            if self._by_identity.get((inode.dev, inode.ino)) is inode:
                del self._by_identity[(inode.dev, inode.ino)]
            self._close(inode)

    def known(self, st: os.stat_result) -> Inode | None:
        """The inode of the backing object with stat `st`, if the kernel knows one by that identity."""
        return self._by_identity.get((st.st_dev, st.st_ino))

    def pin(self, inode: Inode) -> None:
        """Keep `inode`'s fd open (it has an open file or directory, or lost its last name)."""
        inode.pins += 1

    def unpin(self, inode: Inode) -> None:
        inode.pins -= 1

    def release_fd(self, inode: Inode) -> None:
        """Close `inode`'s fd for good; its node id stays until the kernel forgets it.

        For a removed file nothing has open: closing gives its space back at
        once instead of at FORGET. Requests that need the object then fail
        with ESTALE.
        """
        self._close(inode)
        inode.handle = None

    def close_all(self) -> None:
        """Release every fd, the root's included (at unmount)."""
        for inode in self._by_number.values():
            self._close(inode)
        self._by_number.clear()
        self._by_identity.clear()
        if self._mount_fd >= 0:
            os.close(self._mount_fd)
            self._mount_fd = -1

    # -- the fd cache ----------------------------------------------------

    def _use(self, inode: Inode) -> int:
        if inode._fd < 0:
            if inode.lookups == 0:
                raise OSError(errno.EBADF, "inode released")  # a bug, never the kernel's
            if inode.handle is None:
                raise OSError(errno.ESTALE, "object let go")  # see release_fd
            inode._fd = syscalls.open_by_handle(self._mount_fd, inode.handle, os.O_PATH | os.O_CLOEXEC)
            self._track(inode)
        elif inode in self._open:
            self._open.move_to_end(inode)
        return inode._fd

    def _track(self, inode: Inode) -> None:
        if inode.handle is None:
            return  # cannot be reopened: never evicted
        self._open[inode] = None
        if len(self._open) > self.max_fds:
            self._evict()

    def _evict(self) -> None:
        """Close least recently used fds of unpinned inodes down to the limit."""
        for inode in list(self._open):
            if len(self._open) <= self.max_fds * 3 // 4:
                break
            if inode.pins == 0:
                del self._open[inode]
                os.close(inode._fd)
                inode._fd = -1

    def _close(self, inode: Inode) -> None:
        self._open.pop(inode, None)
        if inode._fd >= 0:
            os.close(inode._fd)
            inode._fd = -1
