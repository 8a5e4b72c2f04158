"""READ replies and WRITE payloads that keep file data out of user space (splice), or copy it.

A spliced reply, for READ of `size` bytes at `offset` (see FUSE-NOTES):
  1. splice backing file -> data pipe, looping until `size` bytes or EOF;
     a short total is a short read, and 0 bytes is EOF;
  2. now that the length is known, write the 16-byte out_header into the
     reply pipe and splice the data pipe behind it (page references move,
     no bytes are copied);
  3. splice the whole reply pipe into /dev/fuse in one call: the kernel
     takes one reply per write/splice.
If a step fails before the reply reached /dev/fuse, the pipes may hold
stray bytes, so they are thrown away (closed, -1) and the caller falls back
to copying. Each worker thread owns its pipes, so no locks are needed.
"""

from __future__ import annotations

import dataclasses
import errno
import fcntl
import os
import termios
import threading

from ..proto import Opcode, pack_out_header

F_SETPIPE_SZ = 1031
F_GETPIPE_SZ = 1032
PAGE = 4096  # the reply header takes a pipe slot of its own
PIPE_SIZE = 1 << 20  # pipe-max-size here; a reply of max_pages 255 + header fits


class SpliceError(Exception):
    """Splicing failed before anything reached the kernel; `reason` names why."""

    def __init__(self, reason: str, cause: OSError) -> None:
        super().__init__(reason)
        self.reason = reason
        self.cause = cause


class _PipePair:
    """The data pipe and the reply pipe of one worker thread."""

    def __init__(self) -> None:
        self.data_r = self.data_w = self.reply_r = self.reply_w = -1  # close() works if a pipe fails
        self.data_r, self.data_w = _sized_pipe()
        self.reply_r, self.reply_w = _sized_pipe()
        self.capacity = min(fcntl.fcntl(self.data_w, F_GETPIPE_SZ), fcntl.fcntl(self.reply_w, F_GETPIPE_SZ))

    def close(self) -> None:
        for fd in (self.data_r, self.data_w, self.reply_r, self.reply_w):
            if fd >= 0:
                os.close(fd)
        self.data_r = self.data_w = self.reply_r = self.reply_w = -1

    def __del__(self) -> None:
        # A thread's pair goes with the thread, and its four fds must too
        # (else every thread that ever spliced would leak them).
        self.close()


def _sized_pipe() -> tuple[int, int]:
    r, w = os.pipe2(os.O_CLOEXEC)
    try:
        fcntl.fcntl(w, F_SETPIPE_SZ, PIPE_SIZE)
    except OSError:
        pass  # a smaller pipe only means shorter splices per loop round
    return r, w


_local = threading.local()


def _pipes() -> _PipePair:
    pair = getattr(_local, "pipes", None)
    if pair is None:
        pair = _local.pipes = _PipePair()
    return pair


def prepare_pipes() -> None:
    """Give the calling thread its pipes now, so a session's fds stay constant
    from the start (best effort: a failure here recurs, and is counted, at READ)."""
    try:
        _pipes()
    except OSError:
        pass


def _reason(exc: OSError) -> str:
    if exc.errno == errno.EINVAL:
        return "splice-unsupported-fs"  # the backing fs has no splice_read
    return "splice-" + (errno.errorcode.get(exc.errno, str(exc.errno)).lower())


def splice_read_reply(dev_fd: int, unique: int, file_fd: int, offset: int, size: int) -> int:
    """Send a READ reply spliced from `file_fd`; returns the data bytes sent.

    Blocks (run it in a worker thread). Raises SpliceError if nothing was
    sent, so the caller can fall back to `copy_read_reply`.
    """
    pipes = _pipes()
    if size + PAGE > pipes.capacity:
        # A blocking splice into a full pipe that nobody drains would hang.
        raise SpliceError("splice-pipe-too-small", OSError(errno.ENOSPC, "pipe too small"))
    total = 0
    try:
        while total < size:  # step 1
            moved = os.splice(file_fd, pipes.data_w, size - total, offset_src=offset + total)
            if moved == 0:
                break
            total += moved
        os.write(pipes.reply_w, pack_out_header(unique, 0, 16 + total))  # step 2
        moved = 0
        while moved < total:
            moved += os.splice(pipes.data_r, pipes.reply_w, total - moved)
        os.splice(pipes.reply_r, dev_fd, 16 + total)  # step 3
    except OSError as exc:
        pipes.close()
        _local.pipes = None
        raise SpliceError(_reason(exc), exc) from exc
    return total


def copy_read_reply(dev_fd: int, unique: int, file_fd: int, offset: int, size: int) -> int:
    """Send a READ reply by pread + write (two copies); returns the data bytes sent."""
    data = os.pread(file_fd, size, offset)
    os.writev(dev_fd, [pack_out_header(unique, 0, 16 + len(data)), data])
    return len(data)


# -- WRITE requests: received through a pipe, payload spliced into the file --
#
# A worker that receives by splice (see FUSE-NOTES, "Splice in (WRITE)"):
#   1. splice one request /dev/fuse -> its request pipe; the kernel refuses
#      (and loses the request) unless the pipe is empty and holds it whole,
#      so the pipe is kept empty between requests: every path below either
#      consumes the whole request or throws the pipe away;
#   2. a request too small to carry a payload worth splicing is read out
#      whole, in one read, and parsed as if read from /dev/fuse;
#   3. otherwise the headers (fuse_in_header + fuse_write_in) are read
#      first; a WRITE leaves its payload in the pipe for `splice_write`,
#      any other request has its rest read behind the headers.

#: The headers in front of a WRITE's payload: fuse_in_header + fuse_write_in.
WRITE_HEADERS = 80
#: Smallest WRITE payload spliced into the backing file; smaller ones are
#: read and pwritten. Measured with every size spliced (write blocks of each
#: size, now `zcfs bench --suite write`; daemon CPU per GiB, splice vs copy): 16 KiB 8.2 vs 5.3, 32 KiB
#: 5.3 vs 3.3, 64 KiB 2.9 vs 2.3, 128 KiB 1.4 vs 1.7, 1 MiB 0.8 vs 1.0:
#: below 128 KiB the pipe's per-request cost outweighs the copy it saves.
SPLICE_WRITE_MIN = 128 * 1024
_FUSE_WRITE = int(Opcode.WRITE)  # a plain int: compared with a byte per request


class ReceiveMode:
    """Whether workers receive by splice now: only while big WRITEs flow.

    Receiving through the pipe costs a request one splice and one read
    instead of one read: about 4 us more per request here (2.7 -> 6-7 us of
    CPU, measured on metadata round trips), a tenth of a small request's
    work. So workers read /dev/fuse as usual, switch to the pipe when a big
    WRITE arrives (the first one is copied), and switch back after
    `QUIET` requests in a row without one. Shared by the session's workers;
    a race between them only delays a switch by a request.
    """

    QUIET = 16

    def __init__(self) -> None:
        self.splicing = False
        self._others = 0

    def note(self, buf: bytearray, length: int) -> None:
        """Account for one received request (its start in `buf`, `length` bytes in all)."""
        if length >= WRITE_HEADERS + SPLICE_WRITE_MIN and buf[4] == _FUSE_WRITE and buf[5:8] == b"\0\0\0":
            self.splicing = True
            self._others = 0
        elif self.splicing:
            self._others += 1
            if self._others >= self.QUIET:
                self.splicing = False


class RequestPipe:
    """One worker's pipe for receiving requests; see the steps above."""

    def __init__(self, max_write: int) -> None:
        """Raises SpliceError if no pipe can hold a WRITE of `max_write` bytes."""
        self.r, self.w = -1, -1
        try:
            self.r, self.w = _sized_pipe()
            # The headers take a page of their own, like a READ reply's.
            if fcntl.fcntl(self.w, F_GETPIPE_SZ) < PAGE + max_write:
                raise SpliceError("splice-pipe-too-small", OSError(errno.ENOSPC, "pipe too small"))
        except OSError as exc:
            self.close()
            raise SpliceError(_reason(exc), exc) from exc
        except SpliceError:
            self.close()
            raise

    def receive(self, dev_fd: int, buf: bytearray) -> tuple[int, int]:
        """Receive one request: (bytes read into `buf`, payload bytes left in the pipe).

        Raises what reading /dev/fuse raises (BlockingIOError, ENOENT, ENODEV).
        """
        length = os.splice(dev_fd, self.w, len(buf))
        view = memoryview(buf)
        try:
            if length < WRITE_HEADERS + SPLICE_WRITE_MIN:
                _read_exactly(self.r, view[:length])
                return length, 0
            _read_exactly(self.r, view[:WRITE_HEADERS])
            opcode = int.from_bytes(view[4:8], "little")
            extlen = int.from_bytes(view[36:38], "little")
            if opcode == _FUSE_WRITE and extlen == 0:
                return WRITE_HEADERS, length - WRITE_HEADERS
            _read_exactly(self.r, view[WRITE_HEADERS:length])
            return length, 0
        except OSError:
            self.close()  # it may hold part of a request: never reuse it
            raise

    def settle(self) -> None:
        """Empty the pipe of whatever a failed WRITE left in it (or throw it away)."""
        if self.r < 0:
            return
        try:
            left = int.from_bytes(fcntl.ioctl(self.r, termios.FIONREAD, bytes(4)), "little")
        except OSError:
            self.close()
            return
        if left:
            _discard(self, left)

    def read_payload(self, size: int) -> bytearray:
        """The payload left in the pipe, read into memory (the copy fallback)."""
        data = bytearray(size)
        try:
            _read_exactly(self.r, memoryview(data))
        except OSError:
            self.close()
            raise
        return data

    def close(self) -> None:
        for fd in (self.r, self.w):
            if fd >= 0:
                os.close(fd)
        self.r = self.w = -1

    def __del__(self) -> None:
        self.close()


@dataclasses.dataclass(frozen=True, slots=True)
class PipedPayload:
    """A WRITE payload still in a worker's request pipe: `WriteIn.data` on
    the splice path, in place of the bytes (compare READ's FdRange)."""

    pipe: RequestPipe
    size: int


def _read_exactly(fd: int, view: memoryview) -> None:
    """Fill `view` from a pipe that already holds at least that many bytes."""
    done = 0
    while done < len(view):
        got = os.readv(fd, [view[done:]])
        if got == 0:
            raise OSError(errno.EIO, "request pipe ended early")
        done += got


def splice_write(pipe: RequestPipe, file_fd: int, offset: int, size: int) -> int:
    """Move a WRITE's `size`-byte payload from `pipe` into `file_fd` at `offset`.

    Returns the bytes written: all of them, or fewer if the file refused
    the rest (ENOSPC, EFBIG, EIO after some bytes landed: a short write,
    which the kernel reports to the writer); the pipe is left empty either
    way. Raises SpliceError if not a byte moved: the payload is then still
    whole in the pipe, for `RequestPipe.read_payload` and a copy. Blocks.
    """
    written = 0
    try:
        while written < size:
            moved = os.splice(pipe.r, file_fd, size - written, offset_dst=offset + written)
            if moved == 0:
                raise OSError(errno.EIO, "request pipe ended early")
            written += moved
    except OSError as exc:
        if written == 0:
            raise SpliceError(_reason(exc), exc) from exc
        _discard(pipe, size - written)
    return written


def _discard(pipe: RequestPipe, size: int) -> None:
    """Drop what is left of a payload, so the next request finds the pipe empty."""
    try:
        _read_exactly(pipe.r, memoryview(bytearray(size)))
    except OSError:
        pipe.close()
