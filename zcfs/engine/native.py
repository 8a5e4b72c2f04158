"""The native engine: zcfs's own FUSE session on /dev/fuse, driven by trio.

One task reads requests (`os.readv` into pooled buffers; `wait_readable`
when the device is empty) and parses them with the sans-I/O core
(`zcfs.proto`). Metadata requests are answered inline: their syscalls are
short and running them in order costs no task switch. Requests that may
block on the disk (READ, WRITE, FSYNC, ...) run as tasks of their own and
do their blocking syscalls in worker threads, so one cold read never stalls
the others. READ is answered by the engine itself from the backing fd the
filesystem names (`ZcfsOperations.file_fd`), on the tier the inode was
given at open: kernel passthrough (READ never comes), splice, or copy.

Every handler's errors are mapped in one place, `_answer`: FUSEError is an
error reply with its errno; anything else is logged and answered EIO, and
serving continues.
"""

from __future__ import annotations

import dataclasses
import errno
import functools
import logging
import os
import signal
import stat
import time
import types
from typing import Any, Awaitable, Callable

import pyfuse3
import trio

from .. import syscalls
from ..fs import DOT_NAMES, ZcfsOperations
from ..mount import MountConfig, UsageError, filesystem_type, mount_device
from ..proto import abi
from ..proto.negotiate import Negotiated, Wishes, negotiate, request_buffer_size
from ..proto.replies import pack_notify_inval_inode
from ..proto import (
    DirentBuffer, Opcode, ProtocolError, Request, pack_attr_out, pack_create_out, pack_data,
    pack_empty, pack_entry_out, pack_error, pack_getxattr_size, pack_init_out, pack_lseek_out,
    pack_open_out, pack_statfs_out, pack_write_out, parse_request,
)
from ..stats import Stats
from . import devfuse
from .backing import TierChooser
from .splice import SpliceError, copy_read_reply, splice_read_reply

log = logging.getLogger(__name__)

BEST_TIER = {"auto": "passthrough", "passthrough": "passthrough", "splice": "splice", "off": "copy"}

# Free request buffers kept for reuse; a burst of concurrent requests
# allocates more, which are then let go.
_IDLE_BUFFERS = 8

# Requests that may wait on the disk get a task of their own.
_CONCURRENT = {Opcode.READ, Opcode.WRITE, Opcode.FSYNC, Opcode.FSYNCDIR, Opcode.FALLOCATE,
               Opcode.COPY_FILE_RANGE, Opcode.SETATTR, Opcode.FLUSH}


@dataclasses.dataclass(frozen=True, slots=True)
class RequestContext:
    """What pyfuse3's RequestContext carries, for the filesystem's handlers."""

    uid: int
    gid: int
    pid: int
    umask: int = 0


@dataclasses.dataclass(frozen=True, slots=True)
class SetattrFields:
    """pyfuse3's SetattrFields, built from SETATTR's `valid` bits."""

    update_atime: bool
    update_mtime: bool
    update_ctime: bool
    update_mode: bool
    update_uid: bool
    update_gid: bool
    update_size: bool
    kill_setid: bool = False  # clear set-id bits (FATTR_KILL_SUIDGID, or an empty chown)


class Session:
    """One mount's FUSE session: reads requests, answers them."""

    def __init__(self, ops: ZcfsOperations, config: MountConfig, dev_fd: int, stats: Stats) -> None:
        self.ops = ops
        self.config = config
        self.dev_fd = dev_fd
        self.stats = stats
        self.tiers = TierChooser(dev_fd, BEST_TIER[config.zero_copy], stats)
        self.negotiated: Negotiated | None = None
        self._buffer_size = abi.FUSE_MIN_READ_BUFFER
        self._buffers: list[bytearray] = []
        self._scopes: dict[int, trio.CancelScope] = {}
        self._handlers: dict[int, Callable[[Request], Awaitable[bytes | None]]] = {
            Opcode.INIT: self._init, Opcode.DESTROY: self._destroy,
            Opcode.LOOKUP: self._lookup, Opcode.FORGET: self._forget, Opcode.BATCH_FORGET: self._batch_forget,
            Opcode.GETATTR: self._getattr, Opcode.SETATTR: self._setattr, Opcode.READLINK: self._readlink,
            Opcode.SYMLINK: self._symlink, Opcode.MKNOD: self._mknod, Opcode.MKDIR: self._mkdir,
            Opcode.UNLINK: self._unlink, Opcode.RMDIR: self._rmdir, Opcode.RENAME: self._rename,
            Opcode.RENAME2: self._rename, Opcode.LINK: self._link, Opcode.OPEN: self._open,
            Opcode.CREATE: self._create, Opcode.READ: self._read, Opcode.WRITE: self._write,
            Opcode.STATFS: self._statfs, Opcode.RELEASE: self._release, Opcode.FSYNC: self._fsync,
            Opcode.FLUSH: self._flush, Opcode.SETXATTR: self._setxattr, Opcode.GETXATTR: self._getxattr,
            Opcode.LISTXATTR: self._listxattr, Opcode.REMOVEXATTR: self._removexattr,
            Opcode.OPENDIR: self._opendir, Opcode.READDIR: self._readdir,
            Opcode.READDIRPLUS: self._readdirplus, Opcode.RELEASEDIR: self._releasedir,
            Opcode.FSYNCDIR: self._fsyncdir, Opcode.ACCESS: self._access, Opcode.INTERRUPT: self._interrupt,
            Opcode.FALLOCATE: self._fallocate, Opcode.LSEEK: self._lseek,
            Opcode.COPY_FILE_RANGE: self._copy_file_range,
        }
        stats.gauge("inodes", lambda: len(ops.inodes))

    # -- the loop --------------------------------------------------------

    async def serve(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Serve requests until the filesystem is unmounted.

        Reports `task_status.started()` once INIT is answered, i.e. when the
        mount is usable.
        """
        os.set_blocking(self.dev_fd, False)
        self._task_status = task_status
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            while True:
                buf = self._buffers.pop() if self._buffers else bytearray(self._buffer_size)
                try:
                    length = os.readv(self.dev_fd, [buf])
                except BlockingIOError:
                    self._buffers.append(buf)
                    await trio.lowlevel.wait_readable(self.dev_fd)
                    continue
                except OSError as exc:
                    self._buffers.append(buf)
                    if exc.errno in (errno.ENOENT, errno.EINTR):
                        continue  # the request was interrupted before we read it
                    if exc.errno == errno.ENODEV:
                        break  # unmounted
                    raise
                await self._dispatch(buf, length)
            nursery.cancel_scope.cancel()

    async def _dispatch(self, buf: bytearray, length: int) -> None:
        try:
            request = parse_request(memoryview(buf)[:length], setxattr_ext=False)
        except ProtocolError as exc:
            log.warning("malformed request: %s", exc)
            self._recycle(buf)
            if exc.unique is not None:
                self._send(pack_error(exc.unique, exc.errno))
            return
        if request.opcode == Opcode.READ and self._read_is_cached(request):
            # Served inline: handing it to a thread would cost more than the splice.
            await self._answer(request, buf, functools.partial(self._read, run=_call_inline))
        elif request.opcode in _CONCURRENT:
            self._nursery.start_soon(self._answer, request, buf)
        else:
            await self._answer(request, buf)

    def _read_is_cached(self, request: Request) -> bool:
        opened = self.ops.find_file(request.body.fh)
        return opened is not None and _in_page_cache(opened.fd, request.body.offset, request.body.size)

    def _recycle(self, buf: bytearray) -> None:
        """Keep a free request buffer for reuse, up to a few (each is ~1 MiB)."""
        if len(buf) == self._buffer_size and len(self._buffers) < _IDLE_BUFFERS:
            self._buffers.append(buf)

    async def _answer(self, request: Request, buf: bytearray,
                      handler: Callable[[Request], Awaitable[bytes | None]] | None = None) -> None:
        """Run one request's handler and send its reply; errors map to errnos here."""
        handler = handler or self._handlers.get(request.opcode)
        unique = request.unique
        started = time.perf_counter()
        error = 0
        reply: bytes | None = None
        self.stats.in_flight += 1
        with trio.CancelScope() as scope:
            self._scopes[unique] = scope
            try:
                if handler is None:
                    error = errno.ENOSYS
                else:
                    reply = await handler(request)
            except pyfuse3.FUSEError as exc:
                error = exc.errno
            except Exception:
                log.exception("error handling %s", _opname(request.opcode))
                error = errno.EIO
            finally:
                # Only our own: a garbage request may reuse the unique of one in flight.
                if self._scopes.get(unique) is scope:
                    del self._scopes[unique]
                self.stats.in_flight -= 1
                # The request's buffer (WRITE data lives in it) is free again.
                self._recycle(buf)
        if scope.cancelled_caught:
            error = errno.EINTR
        if error and request.opcode not in (Opcode.FORGET, Opcode.BATCH_FORGET, Opcode.INTERRUPT):
            reply = pack_error(unique, error)
        # Counted before the reply goes out: once the client has its answer,
        # a stats reader must see the request.
        self.stats.record_op(_opname(request.opcode), time.perf_counter() - started, error)
        if reply is not None:
            self._send(reply)
        if error and request.opcode == Opcode.INIT:
            raise UsageError(f"the kernel's INIT could not be answered ({errno.errorcode.get(error, error)})")

    def _send(self, reply: bytes) -> None:
        try:
            os.write(self.dev_fd, reply)
        except OSError as exc:
            # ENOENT: the kernel no longer waits for this request (interrupted);
            # ENODEV: unmounted meanwhile. Both are normal.
            if exc.errno not in (errno.ENOENT, errno.ENODEV):
                log.error("cannot send a reply: %s", exc)

    @staticmethod
    def _context(request: Request, umask: int = 0) -> RequestContext:
        h = request.header
        return RequestContext(h.uid, h.gid, h.pid, umask)

    # -- session ---------------------------------------------------------

    async def _init(self, request: Request) -> bytes:
        if self.negotiated is not None:
            # The kernel sends INIT once; another is garbage, answered EIO as libfuse does
            # (an INIT error would otherwise end the session).
            return pack_error(request.unique, errno.EIO)
        want = _WANT
        if not self.config.default_permissions:
            # FUSE_POSIX_ACL would turn the kernel's permission checks back on.
            want &= ~abi.FUSE_POSIX_ACL
        wishes = Wishes(
            want=want, max_pages=_MAX_PAGES, max_write=_MAX_PAGES * 4096,
            passthrough=self.tiers.best_tier == "passthrough",
            max_stack_depth=_stack_depth(self.config.backing))
        neg = negotiate(request.body, wishes)
        self.negotiated = neg
        self._buffer_size = request_buffer_size(neg)
        self._buffers.clear()
        if self.tiers.best_tier == "passthrough" and not neg.passthrough:
            self.tiers.passthrough_refused = "passthrough-not-negotiated"
        self.stats.info.update(
            protocol=f"{neg.major}.{neg.minor}",
            capabilities=_flag_names(neg.flags),
            zero_copy=self.config.zero_copy,
        )
        self._send(pack_init_out(request.unique, neg))
        self.tiers.probe()  # the kernel has taken the INIT reply: ask whether we may pass through
        self._task_status.started()
        return None

    async def _destroy(self, request: Request) -> bytes:
        return pack_empty(request.unique)

    async def _interrupt(self, request: Request) -> None:
        scope = self._scopes.get(request.body.unique)
        if scope is not None:
            scope.cancel()
        return None

    # -- inodes ----------------------------------------------------------

    async def _lookup(self, request: Request) -> bytes:
        try:
            entry = await self.ops.lookup(request.nodeid, request.body.name, self._context(request))
        except pyfuse3.FUSEError as exc:
            timeout = self.ops.options.negative_timeout
            if exc.errno != errno.ENOENT or not timeout:
                raise
            # A negative entry: the kernel remembers the name is absent.
            return pack_entry_out(request.unique, 0, 0, timeout, 0, _NO_ATTR)
        return pack_entry_out(request.unique, *self._entry_args(entry))

    def _attr_timeout(self, attr: Any) -> float:
        """How long the kernel may cache `attr`: not at all while the inode is
        open for writing in passthrough (mmap writes bypass us and the kernel)."""
        return 0 if attr.st_ino in self.tiers.uncached else attr.attr_timeout

    def _entry_args(self, entry: Any) -> tuple:
        """pack_entry_out's arguments for a known inode, attr timeout as `_attr_timeout`."""
        return (entry.st_ino, entry.generation, entry.entry_timeout, self._attr_timeout(entry), entry)

    async def _forget(self, request: Request) -> None:
        await self.ops.forget([(request.nodeid, request.body.nlookup)])

    async def _batch_forget(self, request: Request) -> None:
        await self.ops.forget(request.body.forgets)

    async def _getattr(self, request: Request) -> bytes:
        attr = await self.ops.getattr(request.nodeid, self._context(request))
        return pack_attr_out(request.unique, self._attr_timeout(attr), attr)

    async def _setattr(self, request: Request) -> bytes:
        body = request.body
        valid = body.valid
        fields = SetattrFields(
            update_atime=bool(valid & (abi.FATTR_ATIME | abi.FATTR_ATIME_NOW)),
            update_mtime=bool(valid & (abi.FATTR_MTIME | abi.FATTR_MTIME_NOW)),
            update_ctime=bool(valid & abi.FATTR_CTIME),
            update_mode=bool(valid & abi.FATTR_MODE),
            update_uid=bool(valid & abi.FATTR_UID),
            update_gid=bool(valid & abi.FATTR_GID),
            update_size=bool(valid & abi.FATTR_SIZE),
            kill_setid=bool(valid & abi.FATTR_KILL_SUIDGID) or (
                # Nothing to set: what is left of a chown that keeps the owner,
                # whose kill the kernel drops and leaves to us.
                self._killpriv() and not valid & ~(abi.FATTR_FH | abi.FATTR_LOCKOWNER)),
        )
        attr = types.SimpleNamespace(
            st_mode=body.mode, st_uid=body.uid, st_gid=body.gid, st_size=body.size,
            st_atime_ns=syscalls.UTIME_NOW if valid & abi.FATTR_ATIME_NOW
            else body.atime * 1_000_000_000 + body.atimensec,
            st_mtime_ns=syscalls.UTIME_NOW if valid & abi.FATTR_MTIME_NOW
            else body.mtime * 1_000_000_000 + body.mtimensec,
        )
        fh = body.fh if valid & abi.FATTR_FH else None
        result = await self.ops.setattr(request.nodeid, attr, fields, fh, self._context(request))
        return pack_attr_out(request.unique, self._attr_timeout(result), result)

    async def _readlink(self, request: Request) -> bytes:
        return pack_data(request.unique, await self.ops.readlink(request.nodeid, self._context(request)))

    async def _symlink(self, request: Request) -> bytes:
        b = request.body
        entry = await self.ops.symlink(request.nodeid, b.name, b.target, self._context(request))
        return pack_entry_out(request.unique, *self._entry_args(entry))

    async def _mknod(self, request: Request) -> bytes:
        b = request.body
        entry = await self.ops.mknod(request.nodeid, b.name, b.mode, b.rdev, self._context(request, b.umask))
        return pack_entry_out(request.unique, *self._entry_args(entry))

    async def _mkdir(self, request: Request) -> bytes:
        b = request.body
        # fuse_mkdir_in's mode lacks the type bits (the kernel knows it is a dir).
        entry = await self.ops.mkdir(request.nodeid, b.name, b.mode, self._context(request, b.umask))
        return pack_entry_out(request.unique, *self._entry_args(entry))

    async def _unlink(self, request: Request) -> bytes:
        await self.ops.unlink(request.nodeid, request.body.name, self._context(request))
        return pack_empty(request.unique)

    async def _rmdir(self, request: Request) -> bytes:
        await self.ops.rmdir(request.nodeid, request.body.name, self._context(request))
        return pack_empty(request.unique)

    async def _rename(self, request: Request) -> bytes:
        b = request.body
        await self.ops.rename(request.nodeid, b.oldname, b.newdir, b.newname, b.flags, self._context(request))
        return pack_empty(request.unique)

    async def _link(self, request: Request) -> bytes:
        b = request.body
        entry = await self.ops.link(b.oldnodeid, request.nodeid, b.newname, self._context(request))
        return pack_entry_out(request.unique, *self._entry_args(entry))

    async def _access(self, request: Request) -> bytes:
        if not await self.ops.access(request.nodeid, request.body.mask, self._context(request)):
            raise pyfuse3.FUSEError(errno.EACCES)
        return pack_empty(request.unique)

    async def _statfs(self, request: Request) -> bytes:
        return pack_statfs_out(request.unique, await self.ops.statfs(self._context(request)))

    # -- files -----------------------------------------------------------

    def _open_flags(self, fi: Any) -> tuple[int, int]:
        """FOPEN_* flags and backing id of a new open file, its tier chosen."""
        opened = self.ops.file(fi.fh)
        if not stat.S_ISREG(opened.inode.mode):
            return (abi.FOPEN_KEEP_CACHE if fi.keep_cache else 0), 0
        writable = _writable(opened.flags)
        state = self.tiers.open(opened.inode, opened.fd, writable, self._may_pass_through(opened.fd))
        if state.tier == "passthrough":
            if writable:
                # Attributes cached before this open (a LOOKUP's) would hide
                # the times of mmap writes, which bypass us and the kernel;
                # from now on they are not cached (TierChooser.uncached).
                self._send(pack_notify_inval_inode(opened.inode.number))
            # Passthrough conflicts with DIRECT_IO; KEEP_CACHE means nothing to it.
            return abi.FOPEN_PASSTHROUGH, state.backing_id
        flags = abi.FOPEN_KEEP_CACHE if fi.keep_cache else 0
        if fi.direct_io:
            flags |= abi.FOPEN_DIRECT_IO
        return flags, 0

    def _killpriv(self) -> bool:
        """Whether the kernel leaves clearing set-id bits to us (FUSE_HANDLE_KILLPRIV_V2)."""
        return self.negotiated is not None and self.negotiated.has(abi.FUSE_HANDLE_KILLPRIV_V2)

    def _open_kill(self, body: Any) -> bool | None:
        """OPEN/CREATE's FUSE_OPEN_KILL_SUIDGID, or None if the kernel does not send it."""
        return bool(body.open_flags & abi.FUSE_OPEN_KILL_SUIDGID) if self._killpriv() else None

    def _may_pass_through(self, fd: int) -> bool:
        """Whether a file may take the passthrough tier.

        With FUSE_HANDLE_KILLPRIV_V2 the kernel leaves clearing set-id bits
        on write to us, but passthrough writes never reach us (it drops the
        kill, fuse_setattr): so a set-id file is served where WRITE comes.
        """
        return not (self._killpriv() and os.fstat(fd).st_mode & (stat.S_ISUID | stat.S_ISGID))

    async def _open(self, request: Request) -> bytes:
        b = request.body
        fi = await self.ops.open(request.nodeid, b.flags, self._context(request), self._open_kill(b))
        open_flags, backing_id = self._open_flags(fi)
        return pack_open_out(request.unique, fi.fh, open_flags, backing_id)

    async def _create(self, request: Request) -> bytes:
        b = request.body
        fi, entry = await self.ops.create(request.nodeid, b.name, b.mode, b.flags, self._context(request, b.umask),
                                          self._open_kill(b))
        open_flags, backing_id = self._open_flags(fi)
        return pack_create_out(request.unique, *self._entry_args(entry), fi.fh, open_flags, backing_id)

    async def _read(self, request: Request, run: Callable[..., Awaitable[int]] = trio.to_thread.run_sync) -> None:
        """Answer READ on the inode's tier; `run` runs the blocking part."""
        b = request.body
        fd = self.ops.file_fd(b.fh)
        unique = request.unique
        if self.tiers.data_tier() == "splice":
            try:
                sent = await run(splice_read_reply, self.dev_fd, unique, fd, b.offset, b.size)
            except SpliceError as exc:
                self.stats.record_fallback(exc.reason)
            else:
                self.stats.record_data("read", "splice", sent)
                return None
        try:
            sent = await run(copy_read_reply, self.dev_fd, unique, fd, b.offset, b.size)
        except OSError as exc:
            raise pyfuse3.FUSEError(exc.errno or errno.EIO) from None
        self.stats.record_data("read", "copy", sent)
        return None

    async def _write(self, request: Request) -> bytes:
        b = request.body
        written = await self.ops.write(b.fh, b.offset, b.data, self._context(request),
                                       kill_setid=bool(b.write_flags & abi.FUSE_WRITE_KILL_SUIDGID))
        self.stats.record_data("write", "copy", written)
        return pack_write_out(request.unique, written)

    async def _flush(self, request: Request) -> bytes:
        await self.ops.flush(request.body.fh)
        return pack_empty(request.unique)

    async def _fsync(self, request: Request) -> bytes:
        await self.ops.fsync(request.body.fh, bool(request.body.fsync_flags & 1))
        return pack_empty(request.unique)

    async def _release(self, request: Request) -> bytes:
        fh = request.body.fh
        opened = self.ops.find_file(fh)
        if opened is not None and stat.S_ISREG(opened.inode.mode):
            self.tiers.release(opened.inode, _writable(opened.flags))
        await self.ops.release(fh)
        return pack_empty(request.unique)

    async def _fallocate(self, request: Request) -> bytes:
        b = request.body
        await self.ops.fallocate(b.fh, b.mode, b.offset, b.length, self._context(request))
        return pack_empty(request.unique)

    async def _lseek(self, request: Request) -> bytes:
        b = request.body
        return pack_lseek_out(request.unique, await self.ops.lseek(b.fh, b.offset, b.whence))

    async def _copy_file_range(self, request: Request) -> bytes:
        b = request.body
        copied = await self.ops.copy_file_range(b.fh_in, b.off_in, b.fh_out, b.off_out, b.len, b.flags,
                                                self._context(request))
        return pack_write_out(request.unique, copied)

    # -- directories -----------------------------------------------------

    async def _opendir(self, request: Request) -> bytes:
        fh = await self.ops.opendir(request.nodeid, self._context(request))
        return pack_open_out(request.unique, fh, 0)

    async def _readdir(self, request: Request) -> bytes:
        b = request.body
        out = DirentBuffer(b.size, plus=False)
        for next_offset, name, d_ino, d_type in self.ops.list_entries(b.fh, b.offset):
            if not out.add(name, d_ino, d_type, next_offset):
                break
        return out.pack(request.unique)

    async def _readdirplus(self, request: Request) -> bytes:
        b = request.body
        out = DirentBuffer(b.size, plus=True)
        for next_offset, name, d_ino, d_type in self.ops.list_entries(b.fh, b.offset):
            if name in DOT_NAMES:
                # nodeid 0: the kernel takes no lookup reference on "." and "..".
                if not out.add(name, d_ino, d_type, next_offset):
                    break
                continue
            entry = self.ops.lookup_entry(b.fh, name)
            if entry is None:
                continue  # vanished since the listing was taken
            if not out.add(name, entry.st_ino, stat.S_IFMT(entry.st_mode) >> 12, next_offset,
                           self._entry_args(entry)):
                # Not sent, so the kernel will not count this lookup.
                self.ops.inodes.forget(entry.st_ino, 1)
                break
        return out.pack(request.unique)

    async def _releasedir(self, request: Request) -> bytes:
        await self.ops.releasedir(request.body.fh)
        return pack_empty(request.unique)

    async def _fsyncdir(self, request: Request) -> bytes:
        await self.ops.fsyncdir(request.body.fh, bool(request.body.fsync_flags & 1))
        return pack_empty(request.unique)

    # -- extended attributes ---------------------------------------------

    async def _setxattr(self, request: Request) -> bytes:
        b = request.body
        await self.ops.setxattr(request.nodeid, b.name, bytes(b.value), self._context(request), b.flags)
        return pack_empty(request.unique)

    async def _getxattr(self, request: Request) -> bytes:
        value = await self.ops.getxattr(request.nodeid, request.body.name, self._context(request))
        return _sized_reply(request.unique, request.body.size, value)

    async def _listxattr(self, request: Request) -> bytes:
        names = await self.ops.listxattr(request.nodeid, self._context(request))
        return _sized_reply(request.unique, request.body.size, b"".join(n + b"\0" for n in names))

    async def _removexattr(self, request: Request) -> bytes:
        await self.ops.removexattr(request.nodeid, request.body.name, self._context(request))
        return pack_empty(request.unique)


# Filesystems that are themselves stacked on another one (s_stack_depth 1).
_STACKED = {"overlay", "ecryptfs"}


def _stack_depth(backing: str) -> int:
    """max_stack_depth for passthrough: one more than the backing filesystem's.

    A backing dir on overlayfs (a container's root) needs 2, the kernel's
    limit, which in turn keeps anyone from stacking overlayfs on zcfs; on
    anything else 1 leaves that possible.
    """
    return 2 if filesystem_type(backing) in _STACKED else 1


def _writable(flags: int) -> bool:
    return flags & os.O_ACCMODE != os.O_RDONLY


async def _call_inline(fn: Callable[..., int], *args: Any) -> int:
    return fn(*args)


_PROBE = bytearray(1)


def _in_page_cache(fd: int, offset: int, size: int) -> bool:
    """Whether the first and last byte of a range are cached (so reading won't wait).

    RWF_NOWAIT makes the probe fail with EAGAIN instead of going to disk.
    """
    try:
        os.preadv(fd, [_PROBE], offset, os.RWF_NOWAIT)
        if size > 1:
            os.preadv(fd, [_PROBE], offset + size - 1, os.RWF_NOWAIT)
    except (OSError, OverflowError):
        # EAGAIN: not cached; EOPNOTSUPP etc.: cannot tell; OverflowError: an
        # offset past 2**63 (only garbage has one), which READ itself refuses.
        return False
    return True


def _sized_reply(unique: int, size: int, value: bytes) -> bytes:
    """xattr replies: size 0 asks for the length; too small a buffer is ERANGE."""
    if size == 0:
        return pack_getxattr_size(unique, len(value))
    if len(value) > size:
        raise pyfuse3.FUSEError(errno.ERANGE)
    return pack_data(unique, value)


_NO_ATTR = types.SimpleNamespace(
    st_ino=0, st_size=0, st_blocks=0, st_atime_ns=0, st_mtime_ns=0, st_ctime_ns=0, st_mode=0,
    st_nlink=0, st_uid=0, st_gid=0, st_rdev=0, st_blksize=0)


_OPNAMES = {int(op): op.name for op in Opcode}  # Opcode(n).name costs more than the stats it names


def _opname(opcode: int) -> str:
    return _OPNAMES.get(opcode) or f"OPCODE_{opcode}"


# The INIT capabilities we ask for; the granted ones are shown in stats.
_CAPABILITIES = (
    "ASYNC_READ", "BIG_WRITES", "PARALLEL_DIROPS", "DO_READDIRPLUS", "READDIRPLUS_AUTO",
    "ATOMIC_O_TRUNC", "MAX_PAGES", "AUTO_INVAL_DATA", "SPLICE_WRITE", "SPLICE_MOVE", "SPLICE_READ",
    # The kernel caches and enforces ACLs; the backing filesystem applies
    # default ACLs and the caller's umask (fs._caller_umask).
    "POSIX_ACL", "DONT_MASK",
    # We clear set-id bits (fs._kill_setid), so write(2) stops asking for
    # security.capability before every write.
    "HANDLE_KILLPRIV_V2",
    "INIT_EXT", "PASSTHROUGH",
)
_WANT = 0
for _name in _CAPABILITIES[:-1]:
    _WANT |= getattr(abi, "FUSE_" + _name)
# 255 pages: a 1 MiB pipe then holds a whole READ reply and its header's page.
_MAX_PAGES = 255


def _flag_names(flags: int) -> list[str]:
    return [name.lower() for name in _CAPABILITIES if flags & getattr(abi, "FUSE_" + name)]


def run(ops: ZcfsOperations, config: MountConfig, on_ready: Callable[[], None]) -> None:
    """Mount, serve until unmounted or signalled, unmount. Blocks."""
    dev_fd = devfuse.mount(config)
    session = Session(ops, config, dev_fd, ops.stats or Stats("native"))
    try:
        trio.run(_main, session, on_ready)
    except BaseExceptionGroup as group:
        usage_errors, _ = group.split(UsageError)
        if usage_errors is None:
            raise
        raise usage_errors.exceptions[0] from None
    finally:
        devfuse.unmount(config.mountpoint)
        os.close(dev_fd)
        log.info("%s", session.stats.summary())


async def _main(session: Session, on_ready: Callable[[], None]) -> None:
    async with trio.open_nursery() as nursery:

        async def serve_then_stop(task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
            await session.serve(task_status=task_status)
            nursery.cancel_scope.cancel()  # unmounted: stop the signal watcher too

        nursery.start_soon(_unmount_on_signal, session.config.mountpoint, nursery.cancel_scope)
        await nursery.start(serve_then_stop)
        refused = session.tiers.passthrough_refused
        if refused:
            # Asked for explicitly: a warning, which the launcher shows the user.
            level = logging.WARNING if session.config.zero_copy == "passthrough" else logging.INFO
            log.log(level, "kernel passthrough is not possible here (%s%s); using %s",
                    refused, _REFUSAL_HINTS.get(refused, ""), session.tiers.data_tier())
        _raise_readahead(session)
        on_ready()


_REFUSAL_HINTS = {
    "passthrough-eperm": ": the daemon lacks CAP_SYS_ADMIN in the initial user namespace",
    "passthrough-not-negotiated": ": the kernel does not offer it",
}


def _raise_readahead(session: Session) -> None:
    """Let readahead ask for two full READs at a time (see FUSE-NOTES).

    The kernel's default window (128 KiB) cuts READs far below max_pages;
    a window of two whole requests keeps one in flight while we answer
    the other. Best effort: needs root, and only this mount is affected.
    """
    neg = session.negotiated
    device = mount_device(session.config.mountpoint)
    if neg is None or device is None:
        return
    try:
        with open(f"/sys/class/bdi/{device}/read_ahead_kb", "w") as knob:
            knob.write(str(2 * neg.max_pages * 4))
    except OSError as exc:
        log.debug("cannot raise readahead: %s", exc)


async def _unmount_on_signal(mountpoint: str, session_scope: trio.CancelScope) -> None:
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM, signal.SIGHUP) as signals:
        async for _ in signals:
            await trio.to_thread.run_sync(devfuse.unmount, mountpoint)
            # Files still open keep a detached mount alive; closing /dev/fuse
            # (run() does, after this) aborts it and they see ENOTCONN.
            session_scope.cancel()
            return
