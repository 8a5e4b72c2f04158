"""The inode table: kernel node ids for backing objects, with exact lookup counts.

Each known backing object (found by its `(st_dev, st_ino)`) holds one O_PATH
fd for as long as the kernel remembers it. Holding that fd pins the backing
inode, so its number cannot be reused by another file while the kernel still
has our node id; renames in the backing directory do not disturb it.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import os
import stat

log = logging.getLogger(__name__)

ROOT_INODE = 1
# Node ids we make up when a backing st_ino is unusable (taken, 0 or 1);
# far above any real inode number so the two never meet in practice.
_SYNTHETIC_BASE = 1 << 62


@dataclasses.dataclass(eq=False)
class Inode:
    """One backing object the kernel knows by `number`."""

    number: int
    fd: int  # O_PATH fd of the backing object; -1 once released
    dev: int
    ino: int
    mode: int  # file type bits, fixed for an object's life
    lookups: int = 0
    # Per-inode data-path state owned by the engine (e.g. a backing id).
    engine_state: object = None

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

    def __init__(self, root_fd: int) -> None:
        st = os.fstat(root_fd)
        root = Inode(ROOT_INODE, root_fd, st.st_dev, st.st_ino, st.st_mode, lookups=1)
        self._by_number: dict[int, Inode] = {ROOT_INODE: root}
        self._by_identity: dict[tuple[int, int], Inode] = {(st.st_dev, st.st_ino): root}
        self._synthetic = itertools.count(_SYNTHETIC_BASE)

    @property
    def root(self) -> Inode:
        return self._by_number[ROOT_INODE]

    def __len__(self) -> int:
        return len(self._by_number)

    def get(self, number: int) -> Inode:
        """The inode with node id `number`; KeyError if the kernel never had it."""
        return self._by_number[number]

    def remember(self, fd: int, st: os.stat_result) -> Inode:
        """Count one kernel lookup of the object behind `fd` (an O_PATH fd).

        Takes ownership of `fd`: it is kept for a new inode or closed when
        the object is already known.
        """
        known = self._by_identity.get((st.st_dev, st.st_ino))
        if known is not None:
            os.close(fd)
            known.lookups += 1
            return known
        number = st.st_ino
        if number <= ROOT_INODE or number in self._by_number:
            number = next(self._synthetic)
        inode = Inode(number, fd, st.st_dev, st.st_ino, stat.S_IFMT(st.st_mode), lookups=1)
        self._by_number[number] = inode
        self._by_identity[(st.st_dev, st.st_ino)] = inode
        return inode

    def forget(self, number: int, count: int) -> None:
        """Drop `count` kernel lookups; the last one releases the O_PATH fd."""
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
            del self._by_identity[(inode.dev, inode.ino)]
            os.close(inode.fd)
            inode.fd = -1

    def close_all(self) -> None:
        """Release every fd, the root's included (at unmount)."""
        for inode in self._by_number.values():
            if inode.fd >= 0:
                os.close(inode.fd)
                inode.fd = -1
        self._by_number.clear()
        self._by_identity.clear()
