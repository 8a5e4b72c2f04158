"""FUSE over io_uring, the pure part: the ring entry's layout and its commands.

After INIT grants FUSE_OVER_IO_URING, the daemon registers ring entries
(IORING_OP_URING_CMD on /dev/fuse, 128-byte SQEs). Each entry is two
buffers, named by an iovec pair in the SQE's `addr`:

- the headers, `struct fuse_uring_req_header` (288 bytes): `in_out` holds
  the request's fuse_in_header, then the reply's fuse_out_header; `op_in`
  the op's first argument (its fixed struct, possibly empty); and
  `ring_ent_in_out` the entry's commit id and payload size;
- the payload, at least max(FUSE_MIN_READ_BUFFER, max_write, max_pages
  pages) bytes: the request's other arguments, then the reply's arguments.

The kernel's fs/fuse/dev_uring.c and include/uapi/linux/fuse.h are the
authority; layouts here are named as there.
"""

from __future__ import annotations

import errno as _errno
import struct

from . import abi
from .requests import InHeader, ProtocolError, Request, WriteIn, parse_request
from .opcodes import Opcode

# enum fuse_uring_cmd: the SQE's cmd_op.
FUSE_IO_URING_CMD_REGISTER = 1  # register an entry's buffers and fetch a request
FUSE_IO_URING_CMD_COMMIT_AND_FETCH = 2  # commit the reply in the entry, fetch the next

FUSE_URING_IN_OUT_HEADER_SZ = 128
FUSE_URING_OP_IN_OUT_SZ = 128
#: Offsets of struct fuse_uring_req_header's members.
IN_OUT_OFFSET = 0
OP_IN_OFFSET = FUSE_URING_IN_OUT_HEADER_SZ
ENT_IN_OUT_OFFSET = OP_IN_OFFSET + FUSE_URING_OP_IN_OUT_SZ
#: struct fuse_uring_ent_in_out: flags, commit_id, payload_sz, padding, reserved.
ENT_IN_OUT = struct.Struct("<QQI4x8x")
REQ_HEADER_SIZE = ENT_IN_OUT_OFFSET + ENT_IN_OUT.size  # 288
#: struct fuse_uring_cmd_req, in the SQE's command area: flags, commit_id, qid, padding.
CMD_REQ = struct.Struct("<QQH6x")
CMD_REQ_COMMIT_ID_OFFSET = 8


def payload_size(max_write: int, max_pages: int, page: int = 4096) -> int:
    """The least payload buffer the kernel accepts at REGISTER (fuse_uring_create)."""
    return max(abi.FUSE_MIN_READ_BUFFER, max_write, max_pages * page)


def pack_cmd_req(qid: int, commit_id: int = 0) -> bytes:
    """The command area of a REGISTER (commit_id 0) or COMMIT_AND_FETCH SQE."""
    return CMD_REQ.pack(0, commit_id, qid)


def commit_id(headers: memoryview) -> int:
    """The id to commit the entry's reply with (the request's unique)."""
    return ENT_IN_OUT.unpack_from(headers, ENT_IN_OUT_OFFSET)[1]


def parse_ring_request(headers: memoryview, payload: memoryview, scratch: bytearray) -> Request:
    """Parse the request the kernel put in a ring entry.

    `headers` is the entry's fuse_uring_req_header, `payload` its payload
    buffer. The request is the /dev/fuse message split in three: in_header,
    first argument (its size is what the header's `len` leaves over), the
    rest. A WRITE's data stays a view into `payload` (valid until the entry
    is committed); any other request is put back together in `scratch`
    (big enough for in_header + op_in + the payload) and parsed as if read
    from /dev/fuse. Raises ProtocolError as parse_request does.
    """
    header = InHeader(*abi.IN_HEADER.unpack_from(headers, IN_OUT_OFFSET))
    _, commit_id, rest = ENT_IN_OUT.unpack_from(headers, ENT_IN_OUT_OFFSET)
    first = header.length - abi.IN_HEADER.size - rest
    if not 0 <= first <= FUSE_URING_OP_IN_OUT_SZ or rest > len(payload):
        raise ProtocolError(
            f"ring request of length {header.length} with a {rest}-byte payload", _errno.EIO, header.unique)
    if header.opcode == Opcode.WRITE and first == abi.WRITE_IN.size:
        body = WriteIn(*abi.WRITE_IN.unpack_from(headers, OP_IN_OFFSET), payload[:rest])
        if body.size != rest:
            raise ProtocolError(f"WRITE of size {body.size} carries {rest} bytes", _errno.EINVAL, header.unique)
        return Request(header, body)
    end = abi.IN_HEADER.size + first
    scratch[:abi.IN_HEADER.size] = headers[IN_OUT_OFFSET:IN_OUT_OFFSET + abi.IN_HEADER.size]
    scratch[abi.IN_HEADER.size:end] = headers[OP_IN_OFFSET:OP_IN_OFFSET + first]
    scratch[end:end + rest] = payload[:rest]
    return parse_request(memoryview(scratch)[:end + rest])


def split_reply(reply: bytes | bytearray | memoryview) -> tuple[memoryview, memoryview]:
    """A /dev/fuse reply (out_header + arguments) as the ring wants it: the
    out_header (for `in_out`) and the arguments (for the payload, whose size
    goes in ring_ent_in_out.payload_sz)."""
    view = memoryview(reply)
    return view[:abi.OUT_HEADER.size], view[abi.OUT_HEADER.size:]
