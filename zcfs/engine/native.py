"""The native engine: zcfs's own FUSE session on /dev/fuse.

After INIT, which trio's loop answers, a few worker threads serve the
session: the one that leads reads a request from /dev/fuse into its own
buffer, parses it with the sans-I/O core (`zcfs.proto`), runs the
filesystem's handler to completion and writes the reply. A request costs
one read and one write, with no event-loop scheduling in between (the
profile showed trio's per-request machinery costing more than the
filesystem work). The filesystem state is touched under one lock; a
handler lets go of it, and of the lead, only around syscalls that may wait
on the disk (`ZcfsOperations.run_blocking`): another worker then takes the
lead, so one slow fsync or cold READ never stalls the other requests.
Otherwise one thread serves every request: workers taking turns cost a
third more CPU per request in wake-ups and GIL hand-offs (measured on
`rm -rf`).

READ is answered by the engine itself from the backing fd the filesystem
names (`ZcfsOperations.file_fd`), on the tier the inode was given at open:
kernel passthrough (READ never comes), splice, or copy. On the splice tier,
while big WRITEs flow, workers receive requests through a pipe and splice
a WRITE's payload from it into the backing file (splice.py: RequestPipe).

Where the kernel offers FUSE over io_uring (uring.py), requests come from
rings instead: one queue per CPU, each served by two pinned threads taking
turns as the /dev/fuse workers do (`_ring_worker`); a request is parsed from
the ring entry, answered by the same handlers, and its reply left in the
entry. FORGET and INTERRUPT still come on /dev/fuse, whose workers keep
reading it, and notifications are still written there.

Every handler's errors are mapped in one place, `_answer`: FUSEError is an
error reply with its errno; anything else is logged and answered EIO, and
serving continues. INTERRUPT is counted and otherwise ignored: a request
runs to completion in its thread, which the kernel allows.
"""

from __future__ import annotations

import dataclasses
import errno
import logging
import os
import queue
import select
import signal
import stat
import threading
import time
import types
from typing import Any, Awaitable, Callable, NamedTuple

import pyfuse3
import trio

from .. import syscalls
from ..fs import DOT_NAMES, ZcfsOperations, errno_of
from ..inodes import Inode
from ..mount import MountConfig, UsageError, mount_device
from ..proto import abi
from ..proto.negotiate import Negotiated, Wishes, negotiate, request_buffer_size
from ..proto.replies import pack_notify_inval_inode
from ..proto.requests import InHeader, WriteIn
from ..proto import (
    DirentBuffer, Opcode, ProtocolError, Request, pack_attr_out, pack_create_out, pack_data,
    pack_empty, pack_entry_out, pack_error, pack_getxattr_size, pack_init_out, pack_lseek_out,
    pack_open_out, pack_statfs_out, pack_write_out, parse_request,
)
from ..stats import Stats
from ..proto.ring import parse_ring_request, payload_size
from . import devfuse, uring, watch
from .listing import Readers
from .backing import TierChooser
from .uring import RingEntry, RingQueue
from .splice import (
    WRITE_HEADERS, PipedPayload, ReceiveMode, RequestPipe, SpliceError, copy_read_reply, prepare_pipes,
    splice_read_reply, splice_write,
)

log = logging.getLogger(__name__)

BEST_TIER = {"auto": "passthrough", "passthrough": "passthrough", "splice": "splice", "off": "copy"}

# Threads serving /dev/fuse once the session runs: the leader serves the
# usual single-threaded client; the others take the lead while it waits on
# the disk, and let parallel clients overlap their blocking syscalls.
WORKERS = 4


# Ring transport (FUSE over io_uring): entries per CPU queue, and threads
# serving each queue. Two threads: one leads (waits for the queue's next
# request), the other takes the lead while it waits on the disk
# (run_blocking), as the /dev/fuse workers do; two entries, so a request
# can arrive on the queue while the other is on the disk.
RING_ENTRIES = 2
RING_THREADS = 2


class _WorkerState(threading.local):
    lead: threading.Lock | None = None  # the lead this thread holds (/dev/fuse's or a ring queue's)
    entry: RingEntry | None = None  # the ring entry whose request this thread is answering
    disk: _DiskHelper | None = None  # a ring thread's maker of calls that may wait on the disk


class _DiskHelper:
    """A thread that makes one ring thread's calls that may wait on the disk.

    The kernel hands a request for a ring entry to the thread that last
    armed the entry (COMMIT_AND_FETCH), as task work that runs when that
    thread next leaves or is woken in the kernel. A thread asleep in the
    disk (an inode lock, a slow device) is not woken for it, so the entries
    it armed would wait as long as the disk does, even with another thread
    leading the queue. So a ring thread waits for such calls here, asleep
    on a lock, which task work does wake.
    """

    def __init__(self, name: str) -> None:
        self._calls: queue.SimpleQueue[Callable[[], None]] = queue.SimpleQueue()
        threading.Thread(target=self._serve, name=name, daemon=True).start()

    def _serve(self) -> None:
        while True:
            self._calls.get()()

    def call(self, fn: Callable[..., Any], *args: Any) -> Any:
        """fn(*args) on the helper thread; its result, or its exception raised here."""
        done = threading.Event()
        outcome: list[Any] = []

        def run() -> None:
            try:
                outcome.append((fn(*args), None))
            except BaseException as exc:
                outcome.append((None, exc))
            done.set()

        self._calls.put(run)
        done.wait()
        result, error = outcome[0]
        if error is not None:
            raise error
        return result

# Requests the kernel expects no reply to.
_SILENT = (Opcode.FORGET, Opcode.BATCH_FORGET, Opcode.INTERRUPT)


class RequestContext(NamedTuple):
    """What pyfuse3's RequestContext carries, for the filesystem's handlers
    (a named tuple: built for most requests, in a third of a dataclass's time)."""

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

    def __init__(self, ops: ZcfsOperations, config: MountConfig, dev_fd: int, stats: Stats,
                 workers: int = WORKERS) -> None:
        self.ops = ops
        self.config = config
        self.dev_fd = dev_fd
        self.stats = stats
        self.workers = workers
        best = BEST_TIER[config.zero_copy]
        if config.fs.writeback_cache and best == "passthrough":
            best = "splice"  # the kernel refuses passthrough with the writeback cache
        self.tiers = TierChooser(dev_fd, best, stats)
        self._readers = Readers()  # which listings carry their files' attributes
        # FUSE_ASYNC_DIO is never asked for (_CAPABILITIES): the kernel waits
        # for every direct write and drops the pages it covers itself.
        ops.async_direct_writes = False
        self.negotiated: Negotiated | None = None
        self._buffer_size = abi.FUSE_MIN_READ_BUFFER
        # Held while a request touches the filesystem's state; see run_blocking.
        self._lock = threading.Lock()
        # Held by the one worker that reads requests (see the module's docstring).
        self._leader = threading.Lock()
        self._worker_state = _WorkerState()
        self.transport = "devfuse"
        self._queues: list[RingQueue] = []
        self.ring_requests = 0  # answered through the ring (a stats gauge)
        # One big WRITE at a time per backing fd: the writeback cache sends
        # several for one file at once, and threads spinning on its inode lock
        # cost a fifth of the daemon's CPU (perf); waiting here costs none.
        self._write_locks: dict[int, threading.Lock] = {}
        ops.run_blocking = self._run_unlocked
        self._stopping = False
        # Workers inside a call that may wait on the disk: the session does not
        # wait for them to end (a hung backing filesystem must not keep it alive).
        self._on_disk: set[threading.Thread] = set()
        self._wake_r, self._wake_w = -1, -1
        self._receive_mode = ReceiveMode()
        self._failure: BaseException | None = None
        # A handler returns its reply, or a coroutine to run for it (_answer).
        self._handlers: dict[int, Callable[[Request], bytes | None | Awaitable[bytes | None]]] = {
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
        stats.gauge("ring_requests", lambda: self.ring_requests)
        stats.info["transport"] = self.transport

    # -- the loop --------------------------------------------------------

    async def serve(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Serve requests until the filesystem is unmounted (or this task is cancelled).

        Reports `task_status.started()` once INIT is answered, i.e. when the
        mount is usable; the worker threads take over from there.
        """
        os.set_blocking(self.dev_fd, False)
        self._task_status = task_status
        if not await self._serve_until_init():
            return
        self._wake_r, self._wake_w = os.pipe2(os.O_CLOEXEC)
        # /dev/fuse keeps its workers on the ring too: FORGET and INTERRUPT
        # still come there, and everything does if the ring's registration fails.
        threads = [threading.Thread(target=self._worker, name=f"zcfs-worker-{n}", daemon=True)
                   for n in range(self.workers)]
        threads += [threading.Thread(target=self._ring_worker, args=(queue, n == 0), daemon=True,
                                     name=f"zcfs-ring-{queue.qid}-{n}")
                    for queue in self._queues for n in range(RING_THREADS)]
        for thread in threads:
            thread.start()
        try:
            await trio.to_thread.run_sync(_join, threads, abandon_on_cancel=True)
        finally:
            self._stop()
            _join([thread for thread in threads if thread not in self._on_disk])
            for queue in self._queues:
                queue.close()
            os.close(self._wake_r)
            os.close(self._wake_w)
        if self._failure is not None:
            raise self._failure

    async def _serve_until_init(self) -> bool:
        """Answer requests on the loop until INIT is; False if unmounted first."""
        buf = bytearray(self._buffer_size)
        while self.negotiated is None:
            try:
                length = os.readv(self.dev_fd, [buf])
            except BlockingIOError:
                await trio.lowlevel.wait_readable(self.dev_fd)
                continue
            except OSError as exc:
                if exc.errno in (errno.ENOENT, errno.EINTR):
                    continue  # the request was interrupted before we read it
                if exc.errno == errno.ENODEV:
                    return False  # unmounted
                raise
            self._handle(buf, length)
        return True

    def _worker(self) -> None:
        """One worker thread: read a request, answer it, until unmounted or stopped."""
        buf = bytearray(self._buffer_size)
        pipe = None
        if self.tiers.data_tier() == "splice" and not self._queues:  # WRITEs come on the ring
            prepare_pipes()
            pipe = self._request_pipe()
        poller = select.epoll()
        # EXCLUSIVE: a request wakes one idle worker, not all of them.
        poller.register(self.dev_fd, select.EPOLLIN | select.EPOLLEXCLUSIVE)
        poller.register(self._wake_r, select.EPOLLIN)
        state = self._worker_state
        # Polling: a client waiting on each reply (ls -l, tar, git) sends its next
        # request within tens of µs; catching it without sleeping saves a
        # sleep and a wake-up per request, a third of the time of a metadata
        # walk here. Only while the last two requests came that fast: an idle
        # or slow client costs no CPU, nor does a writer whose 1 MiB write(2)
        # arrives as a WRITE, at once another, then a pause.
        spin = self.config.spin_seconds
        answered_at, quick, spinning = 0.0, False, False
        try:
            while not self._stopping:
                if state.lead is None:
                    self._leader.acquire()  # the leader went to wait on the disk
                    state.lead = self._leader
                    continue
                try:
                    if pipe is not None and self._receive_mode.splicing:
                        length, payload = pipe.receive(self.dev_fd, buf)
                    else:
                        length, payload = os.readv(self.dev_fd, [buf]), 0
                except BlockingIOError:
                    if spinning and time.perf_counter() - answered_at < spin:
                        continue
                    poller.poll()
                    continue
                except OSError as exc:
                    if exc.errno in (errno.ENOENT, errno.EINTR):
                        continue
                    if exc.errno != errno.ENODEV:
                        self._failure = exc
                    break  # unmounted
                was_quick, quick = quick, time.perf_counter() - answered_at < spin
                spinning = quick and was_quick
                if pipe is not None:
                    self._receive_mode.note(buf, length + payload)
                if payload:
                    self._handle_spliced_write(buf, pipe, payload)
                else:
                    self._handle(buf, length)
                answered_at = time.perf_counter()
                if pipe is not None and pipe.r < 0:
                    pipe = self._request_pipe()  # thrown away after a failure
        except BaseException as exc:  # a bug in the loop itself: end the session, loudly
            self._failure = exc
        finally:
            poller.close()
            self._stop()
            if state.lead is not None:
                state.lead = None
                self._leader.release()  # to a worker that will see _stopping

    def _stop(self) -> None:
        """Make every worker leave its loop (the wake pipe stays readable, a NOP wakes each ring)."""
        if not self._stopping:
            self._stopping = True
            os.write(self._wake_w, b"x")
            for queue in self._queues:
                for _ in range(RING_THREADS):
                    queue.wake()

    def _handle(self, buf: bytearray, length: int) -> None:
        """Parse and answer one request read into `buf`."""
        with self._lock:
            try:
                request = parse_request(memoryview(buf)[:length], setxattr_ext=False)
            except ProtocolError as exc:
                log.warning("malformed request: %s", exc)
                reply = None if exc.unique is None else pack_error(exc.unique, exc.errno)
            else:
                reply = self._answer(request)
        if reply is not None:
            self._send(reply)

    def _request_pipe(self) -> RequestPipe | None:
        """A pipe to receive requests through (splice tier), or None to read them."""
        try:
            return RequestPipe(self.negotiated.max_write)
        except SpliceError as exc:
            with self._lock:
                self.stats.record_fallback(exc.reason)
            return None

    def _handle_spliced_write(self, buf: bytearray, pipe: RequestPipe, payload: int) -> None:
        """Answer a WRITE whose headers are in `buf` and whose payload is in `pipe`."""
        header = InHeader(*abi.IN_HEADER.unpack_from(buf))
        body = WriteIn(*abi.WRITE_IN.unpack_from(buf, abi.IN_HEADER.size), PipedPayload(pipe, payload))
        with self._lock:
            if body.size == payload and header.length == WRITE_HEADERS + payload:
                reply = self._answer(Request(header, body))
            else:
                log.warning("malformed request: WRITE of size %d carries %d bytes", body.size, payload)
                reply = pack_error(header.unique, errno.EINVAL)
        pipe.settle()  # whatever happened, the next request must find the pipe empty
        if reply is not None:
            self._send(reply)

    # -- the ring transport (FUSE over io_uring) ----------------------------

    def _offer_ring(self, neg: Negotiated) -> Negotiated:
        """`neg` with FUSE_OVER_IO_URING kept only if the rings are ready to register.

        Decided before the INIT reply: once the kernel takes a reply granting
        the ring, requests wait until every queue has registered, so granting
        it without rings to register would hang the mount. A refusal is a
        counted fallback to /dev/fuse, logged once.
        """
        if self.config.transport == "devfuse" or (self.config.transport == "auto" and (
                self._splices() or "auto_unmount" in self.config.extra_fuse_options)):
            # auto_unmount: fusermount3 unmounts after the daemon died only if
            # opening the mount then fails with ENOTCONN; a killed ring daemon's
            # connection answers ECONNABORTED for the few ms the kernel takes
            # to tear its rings down, just when fusermount3 looks.
            return dataclasses.replace(neg, flags=neg.flags & ~abi.FUSE_OVER_IO_URING)
        if not neg.has(abi.FUSE_OVER_IO_URING):
            self._ring_refused("uring-not-offered", "the kernel does not offer it "
                               "(/sys/module/fuse/parameters/enable_uring is N)")
            return neg
        size = payload_size(neg.max_write, neg.max_pages)
        try:
            for qid in range(uring.possible_cpus()):
                self._queues.append(RingQueue(self.dev_fd, qid, RING_ENTRIES, size))
        except OSError as exc:
            for queue in self._queues:
                queue.close()
            self._queues = []
            name = errno.errorcode.get(exc.errno or 0, "error").lower()
            self._ring_refused(f"uring-setup-{name}", f"io_uring_setup failed: {exc.strerror}")
            return dataclasses.replace(neg, flags=neg.flags & ~abi.FUSE_OVER_IO_URING)
        self.transport = self.stats.info["transport"] = "uring"
        return neg

    def _splices(self) -> bool:
        """Whether this mount's READs will be spliced: its best tier is splice,
        or passthrough is asked for but cannot be had (the daemon lacks
        CAP_SYS_ADMIN in the initial user namespace, which BACKING_OPEN needs).

        Such a mount stays on /dev/fuse: splicing READ replies and WRITE
        payloads needs it. The ring reads by preadv into its buffer instead,
        which measured no faster (quick scale, 5 rounds, a shared 2-vCPU VM
        at load ~9: seqread-warm 1,324 MB/s spliced on /dev/fuse, 1,362 by
        the ring, 0.29 s of daemon CPU per GiB both; cat-small 0.26 vs
        0.29 s), so the mount keeps the tier it asked for.
        """
        best = self.tiers.best_tier
        return best == "splice" or (best == "passthrough" and not _admin_in_initial_namespace())

    def _ring_refused(self, reason: str, why: str) -> None:
        """Say in stats, and once in the log unless not offered, why the session serves on /dev/fuse.

        Apart from the tiers' fallbacks: not being offered the ring is the
        usual state of a kernel (enable_uring is N by default), not a failure.
        """
        self.transport = self.stats.info["transport"] = "devfuse"
        self.stats.info["transport_fallback"] = reason
        if self.config.transport == "uring":
            level = logging.WARNING
        else:  # auto: not offered is the usual state, said in stats only
            level = logging.DEBUG if reason == "uring-not-offered" else logging.INFO
        log.log(level, "FUSE over io_uring is not used: %s; serving on /dev/fuse", why)

    def _ring_worker(self, queue: RingQueue, register: bool) -> None:
        """One thread of a ring queue: wait for a request in an entry, answer it,
        commit it and wait for the next in one syscall; until unmounted or stopped."""
        try:
            os.sched_setaffinity(0, {queue.qid})  # the kernel queued the request for this CPU
        except OSError:
            pass  # a CPU not ours (cpuset): serve from where we run
        state = self._worker_state
        state.disk = _DiskHelper(threading.current_thread().name + "-disk")
        scratch = bytearray(self._buffer_size)
        try:
            if register:
                queue.register()
            while not self._stopping and queue.live:
                if state.lead is None:
                    queue.leader.acquire()  # the leader went to wait on the disk
                    state.lead = queue.leader
                    continue
                completion = queue.ring.reap()
                if completion is None:
                    queue.wait()
                    continue
                index, result = completion
                if index == uring.WAKE:
                    continue
                entry = queue.entries[index]
                if result < 0:
                    queue.live -= 1
                    self._ring_entry_ended(entry, -result)
                    continue
                self._handle_ring(entry, scratch)
                queue.commit(entry, wait=state.lead is not None)
        except BaseException as exc:  # a bug in the loop itself: end the session, loudly
            self._failure = exc
            self._stop()
        finally:
            if state.lead is not None:
                state.lead = None
                queue.leader.release()  # to a thread that will see _stopping or no live entry

    def _ring_entry_ended(self, entry: RingEntry, error: int) -> None:
        """An entry came back with an error: unmounted, or its registration refused."""
        if entry.unique == 0 and error not in (errno.ENOTCONN, errno.ECONNABORTED, errno.ECANCELED):
            # The kernel gave up the ring for this connection and serves on /dev/fuse.
            with self._lock:
                if self.transport == "uring":
                    name = errno.errorcode.get(error, "error").lower()
                    self._ring_refused(f"uring-register-{name}",
                                       f"registration failed: {os.strerror(error)}")

    def _handle_ring(self, entry: RingEntry, scratch: bytearray) -> None:
        """Parse and answer the request in a ring entry; the reply is left in it."""
        entry.arrived()
        state = self._worker_state
        with self._lock:
            self.ring_requests += 1
            try:
                request = parse_ring_request(entry.headers, entry.payload, scratch)
            except ProtocolError as exc:
                log.warning("malformed request: %s", exc)
                reply = pack_error(entry.unique, exc.errno)
            else:
                state.entry = entry
                try:
                    reply = self._answer(request)
                finally:
                    state.entry = None
        if reply is not None:
            entry.reply(reply)
        elif not entry.replied:  # every entry must be committed with an answer
            entry.reply(pack_error(entry.unique, errno.EIO))

    async def _run_unlocked(self, fn: Callable[..., Any], *args: Any) -> Any:
        """ZcfsOperations.run_blocking here: the call may wait on the disk, so
        other requests get the filesystem meanwhile (we already are in a worker),
        and another worker takes the lead to read them."""
        state = self._worker_state
        lead = state.lead
        if lead is not None:
            state.lead = None
            lead.release()
        self._lock.release()
        me = threading.current_thread()
        self._on_disk.add(me)
        try:
            if state.disk is not None:
                return state.disk.call(fn, *args)  # a ring thread (see _DiskHelper)
            return fn(*args)
        finally:
            self._on_disk.discard(me)
            self._lock.acquire()

    def _answer(self, request: Request) -> bytes | None:
        """Run one request's handler; its reply (errors map to errnos here), if one is due."""
        opcode = request.header[1]
        handler = self._handlers.get(opcode)
        stats = self.stats
        started = _clock()
        error = 0
        reply: bytes | None = None
        stats.in_flight += 1
        try:
            if handler is None:
                error = errno.ENOSYS
            else:
                reply = handler(request)
                if type(reply) is types.CoroutineType:
                    reply = _run_to_completion(reply)
        except pyfuse3.FUSEError as exc:
            error = exc.errno
        except OSError as exc:  # from the filesystem's plain methods (ZcfsOperations.find, ...)
            error = errno_of(exc)
        except Exception:
            log.exception("error handling %s", _opname(opcode))
            error = errno.EIO
        finally:
            stats.in_flight -= 1
        if error and opcode not in _SILENT:
            reply = pack_error(request.unique, error)
        # Counted before the reply goes out: once the client has its answer,
        # a stats reader must see the request.
        stats.record_op(_opname(opcode), _clock() - started, error)
        if error and opcode == Opcode.INIT:
            if reply is not None:
                self._send(reply)
            raise UsageError(f"the kernel's INIT could not be answered ({errno.errorcode.get(error, error)})")
        return reply

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
            want=want | abi.FUSE_OVER_IO_URING | (abi.FUSE_WRITEBACK_CACHE if self.config.fs.writeback_cache else 0),
            max_pages=_MAX_PAGES, max_write=_MAX_PAGES * 4096,
            passthrough=self.tiers.best_tier == "passthrough",
            max_stack_depth=_stack_depth(self.ops.backing_type))
        neg = self._offer_ring(negotiate(request.body, wishes))
        self.negotiated = neg
        self._buffer_size = request_buffer_size(neg)
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

    def _destroy(self, request: Request) -> bytes:
        return pack_empty(request.unique)

    def _interrupt(self, request: Request) -> None:
        return None  # the request runs to completion (see the module's docstring)

    # -- inodes ----------------------------------------------------------

    # The commonest requests call the filesystem's plain methods and pack
    # its os.stat_result as it is: no coroutine, no EntryAttributes.

    def _lookup(self, request: Request) -> bytes:
        self._readers.looked_up(request.header.pid, request.nodeid)
        found = self.ops.find(request.nodeid, request.body.name)
        if found is None:
            return pack_entry_out(request.unique, *self._entry_args(self.ops.negative_entry()))
        inode, st = found
        nodeid = inode.number
        options = self.ops.options
        return pack_entry_out(request.unique, nodeid, inode.generation, options.entry_timeout,
                              self._attr_timeout(nodeid, options.attr_timeout), st,
                              self.ops.inodes.attr_ino(nodeid))

    def _attr_timeout(self, nodeid: int, seconds: float) -> float:
        """How long the kernel may cache the attributes of `nodeid` (`seconds`, the
        policy's): not at all while the inode is open read-write in passthrough
        (writes through a shared mmap bypass us and the kernel)."""
        return 0 if nodeid in self.tiers.uncached else seconds

    def _shown_attr(self, nodeid: int, attr: Any) -> Any:
        """`attr` (whose st_ino is the node id) with the inode number the mount shows.

        A node id may carry the backing generation above the inode number
        (inodes.py); stat shows the backing st_ino, as a plain READDIR does.
        """
        attr.st_ino = self.ops.inodes.attr_ino(nodeid)
        return attr

    def _entry_args(self, entry: Any) -> tuple:
        """pack_entry_out's arguments for a known inode, attr timeout as `_attr_timeout`."""
        nodeid = entry.st_ino
        timeout = self._attr_timeout(nodeid, entry.attr_timeout)
        return (nodeid, entry.generation, entry.entry_timeout, timeout, self._shown_attr(nodeid, entry))

    def _forget(self, request: Request) -> None:
        self.ops.forget_lookups([(request.nodeid, request.body.nlookup)])

    def _batch_forget(self, request: Request) -> None:
        self.ops.forget_lookups(request.body.forgets)

    def _getattr(self, request: Request) -> bytes:
        nodeid = request.nodeid
        _, st = self.ops.stat_inode(nodeid)
        timeout = self._attr_timeout(nodeid, self.ops.options.attr_timeout)
        return pack_attr_out(request.unique, timeout, st, self.ops.inodes.attr_ino(nodeid))

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
            st_atime_ns=syscalls.NOW if valid & abi.FATTR_ATIME_NOW
            else body.atime * 1_000_000_000 + body.atimensec,
            st_mtime_ns=syscalls.NOW if valid & abi.FATTR_MTIME_NOW
            else body.mtime * 1_000_000_000 + body.mtimensec,
        )
        fh = body.fh if valid & abi.FATTR_FH else None
        result = await self.ops.setattr(request.nodeid, attr, fields, fh, self._context(request))
        timeout = self._attr_timeout(request.nodeid, result.attr_timeout)
        return pack_attr_out(request.unique, timeout, self._shown_attr(request.nodeid, result))

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

    def _unlink(self, request: Request) -> bytes:
        self.ops.remove(request.nodeid, request.body.name, directory=False)
        return pack_empty(request.unique)

    def _rmdir(self, request: Request) -> bytes:
        self.ops.remove(request.nodeid, request.body.name, directory=True)
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
        # close() of a read-only handle skips FLUSH: our flush only reports
        # deferred write errors, and the kernel keeps locks itself (we ask
        # for neither FUSE_POSIX_LOCKS nor FUSE_FLOCK_LOCKS).
        noflush = abi.FOPEN_NOFLUSH if opened.flags & os.O_ACCMODE == os.O_RDONLY else 0
        if not stat.S_ISREG(opened.inode.mode):
            return (abi.FOPEN_KEEP_CACHE if fi.keep_cache else 0) | noflush, 0
        map_writable = _map_writable(opened.flags)
        state = self.tiers.open(opened.inode, opened.fd, map_writable, self._may_pass_through(opened.fd))
        if state.tier == "passthrough":
            if map_writable:
                # Attributes cached before this open (a LOOKUP's) would hide
                # the times of mmap writes, which bypass us and the kernel;
                # from now on they are not cached (TierChooser.uncached).
                self._send(pack_notify_inval_inode(opened.inode.number))
            # Passthrough conflicts with DIRECT_IO; KEEP_CACHE means nothing to it.
            return abi.FOPEN_PASSTHROUGH | noflush, state.backing_id
        flags = (abi.FOPEN_KEEP_CACHE if fi.keep_cache else 0) | noflush
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

    def _open(self, request: Request) -> bytes:
        b = request.body
        fi = self.ops.open_handle(request.nodeid, b.flags, self._context(request), self._open_kill(b))
        open_flags, backing_id = self._open_flags(fi)
        return pack_open_out(request.unique, fi.fh, open_flags, backing_id)

    async def _create(self, request: Request) -> bytes:
        b = request.body
        fi, entry = await self.ops.create(request.nodeid, b.name, b.mode, b.flags, self._context(request, b.umask),
                                          self._open_kill(b))
        open_flags, backing_id = self._open_flags(fi)
        return pack_create_out(request.unique, *self._entry_args(entry), fi.fh, open_flags, backing_id)

    async def _read(self, request: Request) -> None:
        """Answer READ on the inode's tier (it sends its reply itself)."""
        b = request.body
        fd = self.ops.file_fd(b.fh)
        unique = request.unique
        entry = self._worker_state.entry
        if entry is not None:
            # A ring request cannot be answered on /dev/fuse (so no splice):
            # the data goes straight into the entry's payload.
            try:
                sent = await self._run_unlocked(entry.read_reply, unique, fd, b.offset, b.size)
            except OSError as exc:
                raise pyfuse3.FUSEError(exc.errno or errno.EIO) from None
            self.stats.record_data("read", "copy", sent)
            return None
        if self.tiers.data_tier() == "splice":
            try:
                sent = await self._run_unlocked(splice_read_reply, self.dev_fd, unique, fd, b.offset, b.size)
            except SpliceError as exc:
                self.stats.record_fallback(exc.reason)
            else:
                self.stats.record_data("read", "splice", sent)
                return None
        try:
            sent = await self._run_unlocked(copy_read_reply, self.dev_fd, unique, fd, b.offset, b.size)
        except OSError as exc:
            raise pyfuse3.FUSEError(exc.errno or errno.EIO) from None
        self.stats.record_data("read", "copy", sent)
        return None

    async def _write(self, request: Request) -> bytes:
        b = request.body
        ctx = self._context(request)
        kill_setid = bool(b.write_flags & abi.FUSE_WRITE_KILL_SUIDGID)
        if isinstance(b.data, PipedPayload):
            try:
                fd = self.ops.write_fd(b.fh, ctx, kill_setid)
            except OSError as exc:
                raise pyfuse3.FUSEError(exc.errno or errno.EIO) from None
            try:
                written = await self._run_unlocked(self._serial_write, b.data.pipe, fd, b.offset, b.size)
            except SpliceError as exc:
                # Not a byte moved: the payload is whole in the pipe; copy it.
                self.stats.record_fallback(exc.reason)
                data = b.data.pipe.read_payload(b.size)
            else:
                self.stats.record_data("write", "splice", written)
                return pack_write_out(request.unique, written)
        else:
            data = b.data
        written = await self.ops.write(b.fh, b.offset, data, ctx, kill_setid=kill_setid)
        self.stats.record_data("write", "copy", written)
        return pack_write_out(request.unique, written)

    def _serial_write(self, pipe: RequestPipe, fd: int, offset: int, size: int) -> int:
        """splice_write, after the WRITEs already splicing into `fd` (fd numbers
        are reused, so the locks stay as many as the fd table allows)."""
        lock = self._write_locks.get(fd)
        if lock is None:
            lock = self._write_locks.setdefault(fd, threading.Lock())
        with lock:
            return splice_write(pipe, fd, offset, size)

    def _flush(self, request: Request) -> bytes:
        self.ops.flush_handle(request.body.fh)
        return pack_empty(request.unique)

    async def _fsync(self, request: Request) -> bytes:
        await self.ops.fsync(request.body.fh, bool(request.body.fsync_flags & 1))
        return pack_empty(request.unique)

    def _release(self, request: Request) -> bytes:
        fh = request.body.fh
        opened = self.ops.find_file(fh)
        if opened is not None and stat.S_ISREG(opened.inode.mode):
            self.tiers.release(opened.inode, _map_writable(opened.flags))
        self.ops.close_handle(fh)
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
        # len is a size_t; like the kernel's own copy loops, copy at most
        # MAX_RW_COUNT at a time (the caller gets a short count and goes on).
        length = min(b.len, _MAX_RW_COUNT)
        copied = await self.ops.copy_file_range(b.fh_in, b.off_in, b.fh_out, b.off_out, length, b.flags,
                                                self._context(request))
        return pack_write_out(request.unique, copied)

    # -- directories -----------------------------------------------------

    def _opendir(self, request: Request) -> bytes:
        fh = self.ops.open_dir(request.nodeid)
        flags = 0
        if self.ops.options.cache_dir:
            # KEEP_CACHE on every open: without it an open drops the listing
            # the keeping open is filling (fuse_open_common).
            flags = abi.FOPEN_KEEP_CACHE | (abi.FOPEN_CACHE_DIR if self.ops.keeps_listing(fh) else 0)
        return pack_open_out(request.unique, fh, flags)

    async def _readdir(self, request: Request) -> bytes:
        b = request.body
        out = DirentBuffer(b.size, plus=False)
        for next_offset, name, d_ino, d_type in self.ops.list_entries(b.fh, b.offset):
            if name in DOT_NAMES:
                d_ino = self.ops.inodes.attr_ino(d_ino)  # node ids, shown as stat shows them
            if not out.add(name, d_ino, d_type, next_offset):
                break
        return out.pack(request.unique)

    async def _readdirplus(self, request: Request) -> bytes:
        b = request.body
        out = DirentBuffer(b.size, plus=True)
        options, attr_ino = self.ops.options, self.ops.inodes.attr_ino
        files = self._readers.file_attributes(request.header.pid, request.nodeid)
        for next_offset, name, d_ino, d_type, inode, st in self.ops.list_looked_up(b.fh, b.offset, files):
            if inode is None:
                # nodeid 0: the kernel lists the name alone, and takes no lookup
                # reference (never one on "." and "..", whose d_ino are node ids).
                if not out.add(name, attr_ino(d_ino) if name in DOT_NAMES else d_ino, d_type, next_offset):
                    break
                continue
            # Packed straight from the lstat: this runs for every entry of a listing.
            nodeid = inode.number
            entry = (nodeid, inode.generation, options.entry_timeout,
                     self._attr_timeout(nodeid, options.attr_timeout), st)
            if not out.add(name, attr_ino(nodeid), stat.S_IFMT(st.st_mode) >> 12, next_offset, entry):
                # Not sent, so the kernel will not count this lookup.
                self.ops.inodes.forget(nodeid, 1)
                break
        return out.pack(request.unique)

    def _releasedir(self, request: Request) -> bytes:
        self.ops.close_dir(request.body.fh)
        return pack_empty(request.unique)

    async def _fsyncdir(self, request: Request) -> bytes:
        await self.ops.fsyncdir(request.body.fh, bool(request.body.fsync_flags & 1))
        return pack_empty(request.unique)

    # -- extended attributes ---------------------------------------------

    async def _setxattr(self, request: Request) -> bytes:
        b = request.body
        await self.ops.setxattr(request.nodeid, b.name, bytes(b.value), self._context(request), b.flags)
        return pack_empty(request.unique)

    def _getxattr(self, request: Request) -> bytes:
        b = request.body
        return _sized_reply(request.unique, b.size, self.ops.xattr(request.nodeid, b.name))

    async def _listxattr(self, request: Request) -> bytes:
        names = await self.ops.listxattr(request.nodeid, self._context(request))
        return _sized_reply(request.unique, request.body.size, b"".join(n + b"\0" for n in names))

    async def _removexattr(self, request: Request) -> bytes:
        await self.ops.removexattr(request.nodeid, request.body.name, self._context(request))
        return pack_empty(request.unique)


# Filesystems that are themselves stacked on another one (s_stack_depth 1).
_STACKED = {"overlay", "ecryptfs"}


def _stack_depth(backing_type: str | None) -> int:
    """max_stack_depth for passthrough: one more than the backing filesystem's.

    A backing dir on overlayfs (a container's root) needs 2, the kernel's
    limit, which in turn keeps anyone from stacking overlayfs on zcfs; on
    anything else 1 leaves that possible. The type was looked up before
    mounting: INIT is answered before the mount works, so a path looked up
    now could lead into the mount and wait on this very reply.
    """
    return 2 if backing_type in _STACKED else 1


def _map_writable(flags: int) -> bool:
    """Whether a file opened with `flags` can be mapped shared and writable (read-write)."""
    return flags & os.O_ACCMODE == os.O_RDWR


def _run_to_completion(coroutine: Any) -> Any:
    """Run a handler coroutine that never waits on an event loop; its result.

    The filesystem's handlers are `async` for pyfuse3; here everything they
    wait for (run_blocking) is a plain call, so one send() finishes them.
    """
    try:
        coroutine.send(None)
    except StopIteration as done:
        return done.value
    coroutine.close()
    raise RuntimeError("a handler waited on an event loop, which the native engine's workers do not run")


def _admin_in_initial_namespace() -> bool:
    """Whether this process holds CAP_SYS_ADMIN in the initial user namespace."""
    try:
        with open("/proc/self/uid_map") as f:
            initial = f.read().split() == ["0", "0", "4294967295"]
        with open("/proc/self/status") as f:
            caps = next(line for line in f if line.startswith("CapEff:"))
    except (OSError, StopIteration):
        return False
    return initial and bool(int(caps.split()[1], 16) & (1 << 21))  # CAP_SYS_ADMIN


def _join(threads: list[threading.Thread]) -> None:
    for thread in threads:
        thread.join()


_MAX_RW_COUNT = 0x7FFFF000  # INT_MAX & PAGE_MASK: the most one read/write/copy moves (linux/fs.h)


def _sized_reply(unique: int, size: int, value: bytes) -> bytes:
    """xattr replies: size 0 asks for the length; too small a buffer is ERANGE."""
    if size == 0:
        return pack_getxattr_size(unique, len(value))
    if len(value) > size:
        raise pyfuse3.FUSEError(errno.ERANGE)
    return pack_data(unique, value)


_OPNAMES = {int(op): op.name for op in Opcode}  # Opcode(n).name costs more than the stats it names
_clock = time.perf_counter


def _opname(opcode: int) -> str:
    return _OPNAMES.get(opcode) or f"OPCODE_{opcode}"


# The INIT capabilities we ask for; the granted ones are shown in stats.
# DO_READDIRPLUS without READDIRPLUS_AUTO: every listing is a READDIRPLUS,
# and engine/listing.py decides, per reader, which entries carry attributes.
# With AUTO the kernel lists all but a directory's first chunk plainly when
# the reader does not stat in between (fts, as in du and git, reads a whole
# directory first), and then pays a LOOKUP round trip per entry; yet it gives
# attributes to every first chunk, so a name walker (find) of directories of
# a few hundred entries would gain nothing.
_CAPABILITIES = (
    "ASYNC_READ", "BIG_WRITES", "PARALLEL_DIROPS", "DO_READDIRPLUS",
    "ATOMIC_O_TRUNC", "EXPORT_SUPPORT", "MAX_PAGES", "AUTO_INVAL_DATA", "SPLICE_WRITE", "SPLICE_MOVE", "SPLICE_READ",
    # The kernel caches and enforces ACLs; the backing filesystem applies
    # default ACLs and the caller's umask (fs._caller_umask).
    "POSIX_ACL", "DONT_MASK",
    # We clear set-id bits (fs._kill_setid), so write(2) stops asking for
    # security.capability before every write.
    "HANDLE_KILLPRIV_V2",
    # Shared mappings of direct_io files (cache=never, -o direct_io, strictatime),
    # which the kernel otherwise refuses with ENODEV.
    "DIRECT_IO_ALLOW_MMAP",
    "INIT_EXT", "PASSTHROUGH", "WRITEBACK_CACHE",
)
_WANT = 0
for _name in _CAPABILITIES[:-2]:  # passthrough and the writeback cache only when chosen
    _WANT |= getattr(abi, "FUSE_" + _name)
# 255 pages: a 1 MiB pipe then holds a whole READ reply or WRITE request
# and its header's page.
_MAX_PAGES = 255


def _flag_names(flags: int) -> list[str]:
    return [name.lower() for name in _CAPABILITIES if flags & getattr(abi, "FUSE_" + name)]


def run(ops: ZcfsOperations, config: MountConfig, on_ready: Callable[[], None]) -> None:
    """Mount, serve until unmounted or signalled, unmount. Blocks."""
    ops.stats = ops.stats or Stats("native")
    if config.transport == "uring":
        _check_ring_possible()
    watcher, dev_fd = watch.open_then_mount(ops, lambda: devfuse.mount(config))
    session = Session(ops, config, dev_fd, ops.stats)

    def ready() -> None:
        if watcher is not None:
            watcher.start(watch.device_sender(dev_fd),
                          lambda nodeid: session.tiers.passes_through(Inode(ops.inodes, nodeid)))
        on_ready()

    try:
        trio.run(_main, session, ready)
    except BaseExceptionGroup as group:
        usage_errors, _ = group.split(UsageError)
        if usage_errors is None:
            raise
        raise usage_errors.exceptions[0] from None
    finally:
        if watcher is not None:
            watcher.close()  # before the device closes: its fd number could be reused
        devfuse.unmount(config.mountpoint)
        devfuse.release(dev_fd)
        log.info("%s", session.stats.summary())


def _check_ring_possible() -> None:
    """For -o transport=uring: fail before mounting, saying why, where the ring cannot run."""
    if not uring.offered_by_kernel():
        raise UsageError("transport=uring: the kernel does not offer FUSE over io_uring; as root: "
                         "echo Y > /sys/module/fuse/parameters/enable_uring (or use transport=auto)")
    try:
        uring.Ring(1).close()
    except OSError as exc:
        raise UsageError(f"transport=uring: io_uring_setup failed ({exc.strerror}); io_uring may be "
                         "disabled (kernel.io_uring_disabled, a seccomp profile)") from None


async def _main(session: Session, on_ready: Callable[[], None]) -> None:
    async with trio.open_nursery() as nursery:

        async def serve_then_stop(task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
            await session.serve(task_status=task_status)
            nursery.cancel_scope.cancel()  # unmounted: stop the signal watcher too

        nursery.start_soon(_unmount_on_signal, session.config.mountpoint, nursery.cancel_scope)
        nursery.start_soon(_stop_when_unmounted, session.config.mountpoint, nursery.cancel_scope)
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


async def _stop_when_unmounted(mountpoint: str, session_scope: trio.CancelScope) -> None:
    """End the session once our mount is gone from our namespace (copies elsewhere then see ENOTCONN)."""
    if await trio.to_thread.run_sync(devfuse.wait_unmounted, mountpoint, abandon_on_cancel=True):
        log.info("%s was unmounted", mountpoint)
        session_scope.cancel()


async def _unmount_on_signal(mountpoint: str, session_scope: trio.CancelScope) -> None:
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM, signal.SIGHUP) as signals:
        async for _ in signals:
            await trio.to_thread.run_sync(devfuse.unmount, mountpoint)
            # Files still open keep a detached mount alive; closing /dev/fuse
            # (run() does, after this) aborts it and they see ENOTCONN.
            session_scope.cancel()
            return
