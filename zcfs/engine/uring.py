"""FUSE over io_uring: the rings, by raw syscalls (ctypes) and mmap.

One `RingQueue` per possible CPU (the kernel queues a request on the queue
of the CPU its client runs on, and uses the ring only once every queue has
an entry registered). A queue owns one io_uring with 128-byte SQEs and a few
`RingEntry`s: each a header buffer and a payload buffer registered with
IORING_OP_URING_CMD / FUSE_IO_URING_CMD_REGISTER. A CQE for an entry means
a request is in its buffers; the reply goes back into the same buffers and
COMMIT_AND_FETCH both commits it and re-arms the entry, in the same
io_uring_enter that waits for the next CQE.

The SQ is consumed only inside io_uring_enter (no SQPOLL), so plain stores
into the mapped ring before the syscall are seen by the kernel. The layouts
of fuse's ring headers are in zcfs.proto.ring; io_uring's own (the SQE, the
CQE, io_uring_params) are here, after include/uapi/linux/io_uring.h.
"""

from __future__ import annotations

import ctypes
import errno
import mmap
import os
import struct
import threading

from ..proto import abi, ring

_NR_IO_URING_SETUP = 425
_NR_IO_URING_ENTER = 426

IORING_SETUP_SQE128 = 1 << 10
IORING_FEAT_SINGLE_MMAP = 1 << 0
IORING_ENTER_GETEVENTS = 1 << 0
IORING_OP_NOP = 0
IORING_OP_URING_CMD = 46
_OFF_SQ_RING = 0
_OFF_SQES = 0x10000000

_SQE_SIZE = 128  # with IORING_SETUP_SQE128
# struct io_uring_sqe for a command: opcode, flags, ioprio, fd, cmd_op, pad,
# addr, len, uring_cmd_flags, user_data, buf_index, personality, file_index,
# then the 80-byte command area (the 16 bytes left in a plain SQE + 64 more).
_SQE = struct.Struct("<BBHiIIQIIQHHI80s")
_CQE = struct.Struct("<QiI")  # user_data, res, flags
# io_uring_params: 10 u32 (sq_entries ... resv[3]), then io_sqring_offsets and
# io_cqring_offsets, 10 u32 each (their trailing user_addr is a u64).
_PARAMS_U32 = 30
_SQ_OFF, _CQ_OFF = 10, 20

#: A CQE's user_data that is no entry: the wake-up NOP of `RingQueue.wake`.
WAKE = 1 << 63

_libc = ctypes.CDLL(None, use_errno=True)
_syscall = _libc.syscall
_syscall.restype = ctypes.c_long
# io_uring_enter(fd, to_submit, min_complete, flags, sig, sigsz), once per
# request: a prototype of its own spares building ctypes objects per call
# (every argument a long, as syscall(2) reads them).
_enter = ctypes.CFUNCTYPE(ctypes.c_long, *[ctypes.c_long] * 7, use_errno=True)(("syscall", _libc))


def _check(result: int) -> int:
    if result < 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code))
    return result


def pack_sqe(opcode: int, fd: int, cmd_op: int, addr: int, length: int, user_data: int, cmd: bytes) -> bytearray:
    """A 128-byte SQE (commands carry their `cmd` in the SQE's command area)."""
    return bytearray(_SQE.pack(opcode, 0, 0, fd, cmd_op, 0, addr, length, 0, user_data, 0, 0, 0, cmd))


_SQE_CMD_OFFSET = 48  # the command area
#: Where a command's fuse_uring_cmd_req.commit_id sits in the SQE.
_COMMIT_ID = struct.Struct("<Q")
_COMMIT_ID_OFFSET = _SQE_CMD_OFFSET + ring.CMD_REQ_COMMIT_ID_OFFSET


class Ring:
    """One io_uring instance with 128-byte SQEs, mapped; thread-safe submission."""

    def __init__(self, entries: int) -> None:
        params = (ctypes.c_uint32 * _PARAMS_U32)()
        params[2] = IORING_SETUP_SQE128
        # ctypes releases the GIL around the call, as around io_uring_enter.
        self.fd = _check(_syscall(_NR_IO_URING_SETUP, ctypes.c_uint(entries), ctypes.byref(params)))
        try:
            sq_entries, cq_entries, features = params[0], params[1], params[5]
            sq = params[_SQ_OFF:_SQ_OFF + 7]  # head, tail, ring_mask, ring_entries, flags, dropped, array
            cq = params[_CQ_OFF:_CQ_OFF + 6]  # head, tail, ring_mask, ring_entries, overflow, cqes
            if not features & IORING_FEAT_SINGLE_MMAP:
                raise OSError(errno.ENOSYS, "io_uring without IORING_FEAT_SINGLE_MMAP")
            size = max(sq[6] + sq_entries * 4, cq[5] + cq_entries * _CQE.size)
            prot = mmap.PROT_READ | mmap.PROT_WRITE
            self._rings = mmap.mmap(self.fd, size, mmap.MAP_SHARED | mmap.MAP_POPULATE, prot, offset=_OFF_SQ_RING)
            self._sqes = mmap.mmap(self.fd, sq_entries * _SQE_SIZE, mmap.MAP_SHARED | mmap.MAP_POPULATE, prot,
                                   offset=_OFF_SQES)
        except BaseException:
            os.close(self.fd)
            raise
        self._u32 = memoryview(self._rings).cast("I")
        self._sq_tail, self._sq_mask, self._sq_array = sq[1] // 4, self._u32[sq[2] // 4], sq[6] // 4
        self._cq_head, self._cq_tail, self._cq_mask, self._cqes = cq[0] // 4, cq[1] // 4, self._u32[cq[2] // 4], cq[5]
        self._submit_lock = threading.Lock()

    def push(self, sqe: bytes | bytearray) -> None:
        """Queue one SQE (made by `pack_sqe`); the next io_uring_enter with to_submit=1 submits it."""
        with self._submit_lock:
            u32 = self._u32
            tail = u32[self._sq_tail]
            index = tail & self._sq_mask
            self._sqes[index * _SQE_SIZE:(index + 1) * _SQE_SIZE] = sqe
            u32[self._sq_array + index] = index
            u32[self._sq_tail] = (tail + 1) & 0xFFFFFFFF

    def enter(self, to_submit: int, wait: int) -> None:
        """Submit `to_submit` queued SQEs and wait until `wait` CQEs are ready (releases the GIL)."""
        flags = IORING_ENTER_GETEVENTS if wait else 0
        while True:
            result = _enter(_NR_IO_URING_ENTER, self.fd, to_submit, wait, flags, 0, 0)
            if result >= 0:
                return
            code = ctypes.get_errno()
            if code != errno.EINTR:
                raise OSError(code, os.strerror(code))
            to_submit = 0  # EINTR comes before submission or after it: submitted SQEs are not resent

    def reap(self) -> tuple[int, int] | None:
        """The oldest CQE as (user_data, res), or None if none is ready. One reaper at a time."""
        u32 = self._u32
        head = u32[self._cq_head]
        if head == u32[self._cq_tail]:
            return None
        user_data, res, _ = _CQE.unpack_from(self._rings, self._cqes + (head & self._cq_mask) * _CQE.size)
        u32[self._cq_head] = (head + 1) & 0xFFFFFFFF
        return user_data, res

    def close(self) -> None:
        """Close the ring: the kernel cancels the commands still in it."""
        if self.fd >= 0:
            self._u32.release()
            os.close(self.fd)
            self.fd = -1


class RingEntry:
    """One registered entry: its header and payload buffers, and the reply put in them."""

    def __init__(self, index: int, payload_size: int) -> None:
        self.index = index
        # Anonymous mappings: page-aligned, and never moved while the kernel holds their addresses.
        self._headers = mmap.mmap(-1, ring.REQ_HEADER_SIZE)
        self._payload = mmap.mmap(-1, payload_size)
        self.headers = memoryview(self._headers)
        self.payload = memoryview(self._payload)
        self._iovecs = (ctypes.c_uint64 * 4)(
            _address(self._headers), ring.REQ_HEADER_SIZE, _address(self._payload), payload_size)
        self.iovecs_address = ctypes.addressof(self._iovecs)
        self.unique = 0  # the request in the buffers, to commit; 0 until the first one came
        self.replied = False
        self.commit_sqe = bytearray()  # COMMIT_AND_FETCH for this entry, its commit id patched per request

    def arrived(self) -> None:
        """Note the request the kernel just put in the buffers."""
        self.unique = ring.commit_id(self.headers)
        self.replied = False

    def reply(self, message: bytes | bytearray | memoryview) -> None:
        """Put a /dev/fuse-shaped reply (out_header + arguments) into the buffers."""
        header, args = ring.split_reply(message)
        self.headers[ring.IN_OUT_OFFSET:ring.IN_OUT_OFFSET + len(header)] = header
        self.payload[:len(args)] = args
        ring.ENT_IN_OUT.pack_into(self.headers, ring.ENT_IN_OUT_OFFSET, 0, 0, len(args))
        self.replied = True

    def read_reply(self, unique: int, fd: int, offset: int, size: int) -> int:
        """Answer a READ by preadv straight into the payload; the data bytes read.

        Blocks on the disk (run it unlocked). Raises OSError with nothing replied.
        """
        got = os.preadv(fd, [self.payload[:size]], offset)
        abi.OUT_HEADER.pack_into(self.headers, ring.IN_OUT_OFFSET, abi.OUT_HEADER.size + got, 0, unique)
        ring.ENT_IN_OUT.pack_into(self.headers, ring.ENT_IN_OUT_OFFSET, 0, 0, got)
        self.replied = True
        return got


def _address(buffer: mmap.mmap) -> int:
    """The address of a mapping (the ctypes view is dropped at once so the mapping may close later)."""
    view = ctypes.c_char.from_buffer(buffer)
    address = ctypes.addressof(view)
    del view
    return address


class RingQueue:
    """One CPU's queue: a ring, its entries, and the lock its serving threads take turns on."""

    def __init__(self, dev_fd: int, qid: int, entries: int, payload_size: int) -> None:
        self.dev_fd = dev_fd
        self.qid = qid
        self.ring = Ring(2 * entries)  # room for every entry's command and the wake-ups
        self.entries = [RingEntry(n, payload_size) for n in range(entries)]
        for entry in self.entries:
            entry.commit_sqe = pack_sqe(IORING_OP_URING_CMD, dev_fd, ring.FUSE_IO_URING_CMD_COMMIT_AND_FETCH, 0, 0,
                                        entry.index, ring.pack_cmd_req(qid))
        self.live = entries  # entries the kernel still holds or may hand back
        self.leader = threading.Lock()

    def register(self) -> None:
        """Hand every entry to the kernel (FUSE_IO_URING_CMD_REGISTER); CQEs report failures."""
        cmd = ring.pack_cmd_req(self.qid)
        for entry in self.entries:
            self.ring.push(pack_sqe(IORING_OP_URING_CMD, self.dev_fd, ring.FUSE_IO_URING_CMD_REGISTER,
                                    entry.iovecs_address, 2, entry.index, cmd))
        self.ring.enter(len(self.entries), 0)

    def commit(self, entry: RingEntry, wait: bool) -> None:
        """Commit the reply in `entry` and fetch its next request; with `wait`, also
        wait in the same syscall until some entry holds a request."""
        entry.replied = False
        _COMMIT_ID.pack_into(entry.commit_sqe, _COMMIT_ID_OFFSET, entry.unique)
        self.ring.push(entry.commit_sqe)
        self.ring.enter(1, 1 if wait else 0)

    def wait(self) -> None:
        """Block until a CQE is ready."""
        self.ring.enter(0, 1)

    def wake(self) -> None:
        """Make the thread waiting on this queue return (a NOP completes)."""
        self.ring.push(pack_sqe(IORING_OP_NOP, -1, 0, 0, 0, WAKE, b""))
        self.ring.enter(1, 0)

    def close(self) -> None:
        self.ring.close()


def possible_cpus() -> int:
    """How many queues the kernel wants: one per possible CPU (num_possible_cpus)."""
    try:
        with open("/sys/devices/system/cpu/possible") as f:
            spec = f.read().strip()
    except OSError:
        return os.cpu_count() or 1
    count = 0
    for part in spec.split(","):
        low, _, high = part.partition("-")
        count += int(high or low) - int(low) + 1
    return count


#: fuse's module parameter: the kernel offers FUSE_OVER_IO_URING at INIT while it is Y (root may set it).
ENABLE_URING = "/sys/module/fuse/parameters/enable_uring"


def offered_by_kernel() -> bool:
    """Whether the kernel's INIT will offer FUSE_OVER_IO_URING (fuse's enable_uring)."""
    try:
        with open(ENABLE_URING) as f:
            return f.read().strip() == "Y"
    except OSError:
        return False
