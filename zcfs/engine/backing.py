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


def fallback_reason(exc: OSError) -> str:
    """The stats reason for a refused BACKING_OPEN (passthrough-eperm, ...)."""
    return "passthrough-" + errno.errorcode.get(exc.errno, str(exc.errno)).lower()


class TierChooser:
    """Decides the tier of each open file and keeps backing ids refcounted."""

    def __init__(self, dev_fd: int, best_tier: str, stats: Stats) -> None:
        self.dev_fd = dev_fd
        self.best_tier = best_tier  # "passthrough", "splice" or "copy"
        self.stats = stats
        self.splice_works = True  # cleared after the backing fs refuses splice
        # Why this mount cannot pass through at all (counted per file), or None.
        self.passthrough_refused: str | None = None

    def data_tier(self) -> str:
        """The tier for READ requests that reach us (not passthrough)."""
        if self.best_tier == "copy" or not self.splice_works:
            return "copy"
        return "splice"

    def open(self, inode: Inode, fd: int) -> InodeTier:
        """Choose the tier of a new open of `inode` whose backing fd is `fd`."""
        state = inode.engine_state
        if not isinstance(state, InodeTier) or state.opens == 0:
            state = inode.engine_state = InodeTier(self.best_tier)
            if state.tier == "passthrough":
                if self.passthrough_refused:
                    self.stats.record_fallback(self.passthrough_refused)
                    state.tier = self.data_tier()
                else:
                    self._register(state, fd)
        state.opens += 1
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
            if exc.errno in (errno.EPERM, errno.ENOTTY, errno.EOPNOTSUPP):
                # Not this file but this mount cannot pass through: stop asking.
                log.info("kernel passthrough refused (%s); using %s", reason, state.tier)
                self.passthrough_refused = reason
            return
        self.stats.backing_ids += 1

    def release(self, inode: Inode) -> None:
        """One open file of `inode` closed; the last one frees its backing id."""
        state = inode.engine_state
        if not isinstance(state, InodeTier) or state.opens == 0:
            return
        state.opens -= 1
        self.stats.record_release(state.tier)
        if state.opens == 0 and state.backing_id:
            try:
                devfuse.backing_close(self.dev_fd, state.backing_id)
            except OSError as exc:
                log.error("BACKING_CLOSE %d failed: %s", state.backing_id, exc)
            state.backing_id = 0
            self.stats.backing_ids -= 1
