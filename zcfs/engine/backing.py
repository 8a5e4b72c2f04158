"""Tier choice per inode, and the kernel passthrough backing ids behind it.

The kernel takes one backing id per FUSE inode and refuses to mix
passthrough and cached opens of one inode (the client's open() fails with
EIO, see FUSE-NOTES). So the tier is a property of the inode while it has
open files: the first open picks it (best first: passthrough, splice,
copy), later opens join it, and the last release frees the backing id.
The kernel opens its own backing file from the registered one's path with
each open's flags, so registering the first opener's fd serves every
later open (read-only or not) too.
"""

from __future__ import annotations

import dataclasses
import errno
import logging

from ..inodes import Inode
from ..stats import Stats
from . import devfuse

log = logging.getLogger(__name__)


@dataclasses.dataclass(eq=False)
class InodeTier:
    """The tier an inode's open files use, and its backing id (passthrough only)."""

    tier: str
    opens: int = 0
    backing_id: int = 0
    map_writers: int = 0  # read-write opens: a shared writable mmap needs one


def fallback_reason(exc: OSError) -> str:
    """The stats reason for a refused BACKING_OPEN (passthrough-eperm, ...)."""
    return "passthrough-" + errno.errorcode.get(exc.errno, str(exc.errno)).lower()


# BACKING_OPEN errors that hold for every file of the mount, not just one:
# EPERM (not negotiated, or no CAP_SYS_ADMIN in the initial user namespace),
# ENOTTY/EOPNOTSUPP (a kernel without passthrough). Others (ELOOP: a backing
# file on a stacked fs; EMFILE, ENOMEM) are about one file or one moment.
_MOUNT_WIDE = (errno.EPERM, errno.ENOTTY, errno.EOPNOTSUPP)


class TierChooser:
    """Decides the tier of each open file and keeps backing ids refcounted."""

    def __init__(self, dev_fd: int, best_tier: str, stats: Stats) -> None:
        self.dev_fd = dev_fd
        self.best_tier = best_tier  # "passthrough", "splice" or "copy"
        self.stats = stats
        # Why this mount cannot pass through at all (counted per file), or None.
        self.passthrough_refused: str | None = None
        # Node ids with a file open read-write in passthrough: their attributes
        # must not be cached (see `open`).
        self.uncached: set[int] = set()

    def probe(self) -> None:
        """Learn at mount time (after INIT) whether this mount may pass through at all.

        BACKING_OPEN checks negotiation and CAP_SYS_ADMIN before it looks at
        the fd, so an invalid fd answers EBADF where passthrough works and
        EPERM where it never will (a rootless container): the refusal is then
        known before the first open, in time to tell the user.
        """
        if self.best_tier != "passthrough" or self.passthrough_refused:
            return
        try:
            devfuse.backing_open(self.dev_fd, -1)
        except OSError as exc:
            if exc.errno in _MOUNT_WIDE:
                self.passthrough_refused = fallback_reason(exc)

    @staticmethod
    def passes_through(inode: Inode) -> bool:
        """Whether `inode` was last opened on the passthrough tier: its data is
        then not in the mount's page cache (only reads: safe without the
        session's lock, under the GIL)."""
        state = inode.engine_state
        return isinstance(state, InodeTier) and state.tier == "passthrough"

    def data_tier(self) -> str:
        """The tier for READ requests that reach us (not passthrough)."""
        return "copy" if self.best_tier == "copy" else "splice"

    def open(self, inode: Inode, fd: int, map_writable: bool = False, may_pass_through: bool = True) -> InodeTier:
        """Choose the tier of a new open of `inode` whose backing fd is `fd`
        (never passthrough for the first open of an inode if not `may_pass_through`).

        While a passthrough file of the inode is open read-write
        (`map_writable`), its node id is in `uncached`: the kernel updates
        size and mtime itself after a passthrough write(), but a write
        through a shared mmap changes the backing file's mtime without
        telling the kernel, so cached attributes would stay stale for the
        whole attr_timeout. A write-only open cannot be mapped at all (mmap
        needs read access), so `tar x` and `dd of=` keep their cache.
        """
        state = inode.engine_state
        if not isinstance(state, InodeTier) or state.opens == 0:
            state = inode.engine_state = InodeTier(self.best_tier if may_pass_through else self.data_tier())
            if state.tier == "passthrough":
                if self.passthrough_refused:
                    self.stats.record_fallback(self.passthrough_refused)
                    state.tier = self.data_tier()
                else:
                    self._register(state, fd)
        state.opens += 1
        if map_writable:
            state.map_writers += 1
            if state.tier == "passthrough":
                self.uncached.add(inode.number)
        self.stats.record_open(state.tier)
        return state

    def _register(self, state: InodeTier, fd: int) -> None:
        """Get a backing id for a passthrough inode; on refusal fall to splice."""
        try:
            state.backing_id = devfuse.backing_open(self.dev_fd, fd)
        except OSError as exc:
            reason = fallback_reason(exc)
            self.stats.record_fallback(reason)
            state.tier = self.data_tier()
            if exc.errno in _MOUNT_WIDE:
                # Not this file but this mount cannot pass through: stop asking.
                log.info("kernel passthrough refused (%s); using %s", reason, state.tier)
                self.passthrough_refused = reason
            return
        self.stats.backing_ids += 1

    def release(self, inode: Inode, map_writable: bool = False) -> None:
        """One open file of `inode` closed (`map_writable` as it was opened);
        the last one frees its backing id."""
        state = inode.engine_state
        if not isinstance(state, InodeTier) or state.opens == 0:
            return
        state.opens -= 1
        if map_writable and state.map_writers:
            state.map_writers -= 1
        if not state.map_writers:
            self.uncached.discard(inode.number)
        self.stats.record_release(state.tier)
        if state.opens == 0 and state.backing_id:
            try:
                devfuse.backing_close(self.dev_fd, state.backing_id)
            except OSError as exc:
                log.error("BACKING_CLOSE %d failed: %s", state.backing_id, exc)
            state.backing_id = 0
            self.stats.backing_ids -= 1
