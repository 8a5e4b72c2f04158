"""The backing-dir watcher (`-o cache=watch`): tells the kernel what others changed.

Under `cache=watch` the kernel keeps names, attributes, data and listings
for a day, as under `cache=always`; this module makes that safe when
processes other than the daemon change the backing directory:

1. One fanotify mark on the backing filesystem (FAN_MARK_FILESYSTEM), with
   events reported as file handles (FAN_REPORT_DFID_NAME | FAN_REPORT_FID |
   FAN_REPORT_TARGET_FID): the directory's handle and the name for a name
   change, the object's handle for a change of its contents or attributes.
   zcfs's node ids encode those handles (inodes.py), so an event maps to node
   ids without a syscall; an event about objects the kernel does not know
   (elsewhere on the filesystem, or never looked up through the mount) needs
   no notification and is dropped.
2. The daemon's own changes carry its pid (its tgid: fanotify reports the
   process) and are skipped: its replies already told the kernel, so a
   writer through the mount pays no extra round trip.
3. A thread reads the events, coalesces a batch into at most MAX_PENDING
   distinct notifications, and writes them to /dev/fuse holding no lock of
   the session: the kernel takes the parent directory's lock for
   INVAL_ENTRY, and a request in that directory may be waiting for a worker.
4. Overflow (the kernel's queue, FAN_Q_OVERFLOW; or more than MAX_PENDING
   changes in one batch): INC_EPOCH (every dentry is looked up again before
   use) and INVAL_INODE of every inode the kernel knows, so nothing is lost;
   memory stays bounded whatever the storm (`rm -rf` of the backing tree).
5. Where fanotify cannot watch (no CAP_SYS_ADMIN in the initial user
   namespace, e.g. rootless `unshare -Urm`; a filesystem without file
   handles), the mount falls back to `cache=auto`'s timeouts
   (FsOptions.unwatched); the reason is logged once and shown in stats.

What each change becomes (fuse.h, enum fuse_notify_code):
  name created, removed or renamed in D  INVAL_ENTRY(D, name) (DELETE when it
                                          is surely gone) + INVAL_INODE(D, 0):
                                          D's attributes and cached listing
  contents written or truncated          INVAL_INODE(object, 0): attributes, pages
  attributes, xattrs, link count         INVAL_INODE(object, -1): attributes
"""

from __future__ import annotations

import ctypes
import dataclasses
import errno
import logging
import os
import select
import struct
import threading
from typing import Any, Callable

from .. import syscalls
from ..stats import Stats
from ..proto.replies import (
    pack_notify_delete, pack_notify_inc_epoch, pack_notify_inval_entry, pack_notify_inval_inode,
)

log = logging.getLogger(__name__)

# linux/fanotify.h
_FAN_CLOEXEC, _FAN_NONBLOCK = 0x1, 0x2
_FAN_REPORT_FID, _FAN_REPORT_DIR_FID, _FAN_REPORT_NAME, _FAN_REPORT_TARGET_FID = 0x200, 0x400, 0x800, 0x1000
_FAN_MARK_ADD, _FAN_MARK_FILESYSTEM = 0x1, 0x100
FAN_MODIFY, FAN_ATTRIB = 0x2, 0x4
FAN_MOVED_FROM, FAN_MOVED_TO, FAN_CREATE, FAN_DELETE = 0x40, 0x80, 0x100, 0x200
FAN_Q_OVERFLOW = 0x4000
_FAN_ONDIR = 0x40000000
_NAME_CHANGES = FAN_MOVED_FROM | FAN_MOVED_TO | FAN_CREATE | FAN_DELETE
_MASK = FAN_MODIFY | FAN_ATTRIB | _NAME_CHANGES | _FAN_ONDIR
# fanotify_event_info_header.info_type
_INFO_FID, _INFO_DFID_NAME, _INFO_DFID = 1, 2, 3
_METADATA = struct.Struct("<IBBHQii")  # event_len, vers, reserved, metadata_len, mask, fd, pid
_INFO_HEADER = struct.Struct("<BBH")  # info_type, pad, len
_FSID_SIZE = 8
_HANDLE_HEADER = struct.Struct("<Ii")  # struct file_handle: handle_bytes, handle_type

# Distinct notifications one batch may gather before it gives up on detail
# and invalidates everything the kernel knows (an event storm).
MAX_PENDING = 8192
_READ_SIZE = 256 * 1024

# Answers to a notification that mean "nothing of it was cached": normal.
_NOT_CACHED = (errno.ENOENT, errno.ENOTDIR, errno.ENOTEMPTY)


class WatchUnavailable(Exception):
    """The backing dir cannot be watched; `reason` is the stats key (e.g. "fanotify-eperm")."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason


_libc = ctypes.CDLL(None, use_errno=True)
_libc.fanotify_init.argtypes = [ctypes.c_uint, ctypes.c_uint]
_libc.fanotify_mark.argtypes = [ctypes.c_int, ctypes.c_uint, ctypes.c_uint64, ctypes.c_int, ctypes.c_char_p]


def _fanotify(root_fd: int) -> int:
    """A fanotify fd reporting handles, with one mark on the filesystem of `root_fd`."""
    flags = (_FAN_CLOEXEC | _FAN_NONBLOCK | _FAN_REPORT_FID | _FAN_REPORT_DIR_FID | _FAN_REPORT_NAME
             | _FAN_REPORT_TARGET_FID)
    fd = _libc.fanotify_init(flags, os.O_RDONLY | os.O_CLOEXEC)
    if fd < 0:
        code = ctypes.get_errno()
        raise WatchUnavailable(f"fanotify-{errno.errorcode.get(code, code).lower()}",
                               f"fanotify_init: {os.strerror(code)}")
    # By path: fanotify_mark refuses an O_PATH dirfd (EBADF); the magic link
    # reaches the backing dir even through a detached (atime) mount.
    path = os.fsencode(syscalls.proc_path(root_fd))
    if _libc.fanotify_mark(fd, _FAN_MARK_ADD | _FAN_MARK_FILESYSTEM, _MASK, -100, path) < 0:
        code = ctypes.get_errno()
        os.close(fd)
        raise WatchUnavailable(f"fanotify-mark-{errno.errorcode.get(code, code).lower()}",
                               f"fanotify_mark: {os.strerror(code)}")
    return fd


class Batch:
    """The notifications gathered from a batch of events, deduplicated, in order, bounded."""

    def __init__(self) -> None:
        # message -> (kind (stats key), what to send instead if the kernel refuses it)
        self.messages: dict[bytes, tuple[str, bytes | None]] = {}
        self.overflow = False

    def add(self, message: bytes, kind: str, instead: bytes | None = None) -> None:
        if self.overflow:
            return
        self.messages.setdefault(message, (kind, instead))
        if len(self.messages) > MAX_PENDING:
            self.overflow = True
            self.messages.clear()


def parse_events(buf: bytes | memoryview, own_pid: int, known: Callable[[bytes], int | None],
                 passthrough: Callable[[int], bool], batch: Batch) -> tuple[int, int]:
    """Add the notifications fanotify events in `buf` call for to `batch`.

    `known(handle)`: the node id of a handle, if the kernel knows it;
    `passthrough(nodeid)`: whether it is open on the passthrough tier. Returns
    (events, own events skipped). Pure: no I/O.
    """
    events = own = 0
    offset, end = 0, len(buf)
    while offset + _METADATA.size <= end:
        event_len, _, _, metadata_len, mask, _, pid = _METADATA.unpack_from(buf, offset)
        if event_len < _METADATA.size or offset + event_len > end:
            break
        events += 1
        if mask & FAN_Q_OVERFLOW:
            batch.overflow = True
        elif pid == own_pid:
            own += 1
        else:
            _parse_records(buf, offset + metadata_len, offset + event_len, mask, known, passthrough, batch)
        offset += event_len
    return events, own


def _parse_records(buf: Any, start: int, end: int, mask: int, known: Callable[[bytes], int | None],
                   passthrough: Callable[[int], bool], batch: Batch) -> None:
    directory = name = target = None
    while start + _INFO_HEADER.size <= end:
        info_type, _, length = _INFO_HEADER.unpack_from(buf, start)
        if length < _INFO_HEADER.size:
            return
        at = start + _INFO_HEADER.size + _FSID_SIZE
        handle_bytes, _ = _HANDLE_HEADER.unpack_from(buf, at)
        handle_end = at + _HANDLE_HEADER.size + handle_bytes
        handle = bytes(buf[at:handle_end])
        if info_type == _INFO_FID:
            target = handle
        elif info_type in (_INFO_DFID_NAME, _INFO_DFID):
            directory = handle
            if info_type == _INFO_DFID_NAME:
                name = bytes(buf[handle_end:start + length]).split(b"\0", 1)[0]
        start += length
    if name == b".":  # an event on the directory itself
        target, directory, name = directory, None, None
    target_number = known(target) if target is not None else None
    if mask & _NAME_CHANGES and directory is not None and name:
        parent = known(directory)
        if parent is not None:
            gone = mask & FAN_DELETE and not mask & (FAN_CREATE | FAN_MOVED_TO)
            if gone and target_number is not None:
                # Refused if the kernel holds another object under that name, or
                # a directory it still sees entries in: then the name is dropped.
                batch.add(pack_notify_delete(parent, target_number, name), "delete",
                          instead=pack_notify_inval_entry(parent, name))
            else:
                batch.add(pack_notify_inval_entry(parent, name), "entry")
            batch.add(pack_notify_inval_inode(parent, 0), "listing")
    if target_number is not None:
        if mask & FAN_MODIFY and passthrough(target_number):
            # No pages to drop: the kernel reads a passthrough file itself. And
            # it writes one for the mount's writers in their name (their pid,
            # not ours), then drops its size and mtime itself: for them this
            # notification costs no request. Counted apart.
            batch.add(pack_notify_inval_inode(target_number, -1), "passthrough")
        elif mask & FAN_MODIFY:
            batch.add(pack_notify_inval_inode(target_number, 0), "data")
        elif mask & (FAN_ATTRIB | _NAME_CHANGES):  # link count, ctime
            batch.add(pack_notify_inval_inode(target_number, -1), "inode")


class Watcher:
    """Watches the backing filesystem and notifies the kernel (see the module's docstring)."""

    def __init__(self, root_fd: int, table: Any, stats: Any) -> None:
        """Start watching; raises WatchUnavailable. Events wait in the kernel until `start`."""
        self._fd = _fanotify(root_fd)
        self._table = table
        self._passthrough: Callable[[int], bool] = lambda nodeid: False
        self._stats = stats
        self._stop_r, self._stop_w = os.pipe2(os.O_CLOEXEC)
        self._thread: threading.Thread | None = None
        self._send: Callable[[bytes], int] | None = None
        self.mechanism = "fanotify"
        stats.set_watch(mechanism=self.mechanism, marks=1, overflows=0, events=0, own_events=0, fallback=None)

    def start(self, send: Callable[[bytes], int], passthrough: Callable[[int], bool] | None = None) -> None:
        """Serve events from a thread; `send(message)` writes one notification
        to /dev/fuse and returns 0 or the errno (it must not take the session's
        lock); `passthrough(nodeid)`: whether the inode is open on that tier
        (read without the session's lock, as `known_number`)."""
        self._send = send
        if passthrough is not None:
            self._passthrough = passthrough
        self._thread = threading.Thread(target=self._run, name="zcfs-watch", daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Stop the thread (before /dev/fuse is closed) and the watch."""
        if self._fd < 0:
            return
        os.write(self._stop_w, b"x")
        if self._thread is not None:
            self._thread.join()
        for fd in (self._fd, self._stop_r, self._stop_w):
            os.close(fd)
        self._fd = -1

    def _run(self) -> None:
        poller = select.poll()
        poller.register(self._fd, select.POLLIN)
        poller.register(self._stop_r, select.POLLIN)
        buf = bytearray(_READ_SIZE)
        own_pid = os.getpid()
        known = self._table.known_number
        try:
            while True:
                ready = {fd for fd, _ in poller.poll()}
                if self._stop_r in ready:
                    return
                batch = Batch()
                events = own = 0
                # Drain what is queued now: one batch coalesces a burst.
                while not batch.overflow:
                    try:
                        length = os.readv(self._fd, [buf])
                    except BlockingIOError:
                        break
                    counted = parse_events(memoryview(buf)[:length], own_pid, known, self._passthrough, batch)
                    events += counted[0]
                    own += counted[1]
                self._stats.update_watch(events=events, own_events=own)
                if batch.overflow:
                    self._invalidate_everything()
                else:
                    self._deliver(batch.messages)
        except Exception:  # a bug here must not go unnoticed, nor leave stale caches silently
            log.exception("the backing-dir watcher failed; changes made there may stay unseen")
            self._stats.update_watch(fallback="watcher-failed")

    def _deliver(self, messages: dict[bytes, tuple[str, bytes | None]]) -> None:
        send = self._send
        for message, (kind, instead) in messages.items():
            error = send(message)
            if error == 0:
                self._stats.record_invalidation(kind)
            elif instead is not None:
                if send(instead) == 0:
                    self._stats.record_invalidation("entry")
            elif error not in _NOT_CACHED:
                log.debug("notification refused: %s", os.strerror(error))

    def _invalidate_everything(self) -> None:
        """After an overflow: every name looked up again, every known inode's attributes and pages dropped."""
        log.info("backing-dir events overflowed: invalidating everything the kernel knows")
        self._stats.update_watch(overflows=1)
        if self._send(pack_notify_inc_epoch()) == 0:
            self._stats.record_invalidation("epoch")
        for number in self._table.known_numbers():
            if self._send(pack_notify_inval_inode(number, 0)) == 0:
                self._stats.record_invalidation("data")


def open_then_mount(ops: Any, mount: Callable[[], int]) -> tuple[Watcher | None, int]:
    """The watch opened (before the first reply: it may change the timeouts), then
    `mount()`'s /dev/fuse fd; the watch is closed again if mounting fails."""
    watcher = open_watch(ops)
    try:
        return watcher, mount()
    except BaseException:
        if watcher is not None:
            watcher.close()
        raise


def open_watch(ops: Any) -> Watcher | None:
    """The watcher `ops.options` asks for, or None.

    Where watching is impossible, `ops.options` fall back to timeouts
    (FsOptions.unwatched); the reason is logged once and counted in stats.
    Call before mounting: the first reply already carries the timeouts.
    """
    # ZCFS_NO_WATCH=1 keeps the policy's timeouts but watches nothing: only to
    # show what the watcher is for (a test must fail without it).
    if not ops.options.watch or os.environ.get("ZCFS_NO_WATCH", "") not in ("", "0"):
        return None
    if ops.stats is None:
        ops.stats = Stats("unknown")
    stats = ops.stats
    try:
        if not ops.inodes.encodes_handles:
            raise WatchUnavailable("no-file-handles", "node ids do not encode the backing file handles")
        return Watcher(ops.inodes.root.fd, ops.inodes, stats)
    except WatchUnavailable as exc:
        log.info("cannot watch the backing dir (%s): changes made there show after %g s (cache=auto)",
                 exc, ops.options.unwatched().attr_timeout)
        ops.options = ops.options.unwatched()
        stats.info["options"].update(dataclasses.asdict(ops.options))
        stats.set_watch(mechanism=None, marks=0, overflows=0, events=0, own_events=0, fallback=exc.reason)
        stats.record_fallback(f"watch-{exc.reason}")
        return None


def device_sender(dev_fd: int) -> Callable[[bytes], int]:
    """send() for Watcher.start: one notification written to /dev/fuse; 0 or its errno.

    Both engines use it: a notification is one write of its own, so it may
    go beside the replies of any thread (pyfuse3's libfuse included).
    """

    def send(message: bytes) -> int:
        try:
            os.write(dev_fd, message)
        except OSError as exc:
            return exc.errno or errno.EIO
        return 0

    return send
