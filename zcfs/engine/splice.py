"""READ replies that keep file data out of user space (splice) or copy it.

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

import errno
import fcntl
import os
import threading

from ..proto import pack_out_header

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
