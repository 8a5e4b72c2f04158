"""zcfs.proto.ring: ring entries packed by hand as fs/fuse/dev_uring.c fills them."""

import errno
from struct import pack

import pytest

from zcfs.proto import abi, ring
from zcfs.proto.opcodes import Opcode
from zcfs.proto.requests import GetattrIn, LookupIn, ProtocolError, WriteIn

UNIQUE, NODEID = 0x1122334455667788, 42


def entry(opcode: int, op_in: bytes, payload: bytes, *, length: int | None = None) -> tuple[memoryview, memoryview]:
    """A ring entry's buffers holding a request: in_header in in_out, the first
    argument in op_in, the rest in the payload (as fuse_uring_copy_to_ring puts them)."""
    headers = bytearray(ring.REQ_HEADER_SIZE)
    total = 40 + len(op_in) + len(payload) if length is None else length
    abi.IN_HEADER.pack_into(headers, 0, total, opcode, UNIQUE, NODEID, 1000, 100, 4242, 0)
    headers[128:128 + len(op_in)] = op_in
    headers[256:288] = pack("<QQI4x8x", 0, UNIQUE, len(payload))
    buffer = bytearray(ring.payload_size(abi.FUSE_MIN_READ_BUFFER, 1))
    buffer[:len(payload)] = payload
    return memoryview(headers), memoryview(buffer)


def scratch() -> bytearray:
    return bytearray(64 * 1024)


def test_layouts_match_fuse_h():
    # struct fuse_uring_req_header: in_out[128], op_in[128], fuse_uring_ent_in_out (32)
    assert ring.REQ_HEADER_SIZE == 288
    assert ring.CMD_REQ.size == 24  # struct fuse_uring_cmd_req: flags, commit_id, qid, padding[6]
    assert ring.pack_cmd_req(3, 77) == pack("<QQH6x", 0, 77, 3)
    assert ring.pack_cmd_req(3, 77)[ring.CMD_REQ_COMMIT_ID_OFFSET:][:8] == pack("<Q", 77)


def test_payload_size_is_the_kernels_minimum():
    assert ring.payload_size(255 * 4096, 255) == 255 * 4096
    assert ring.payload_size(4096, 1) == abi.FUSE_MIN_READ_BUFFER
    assert ring.payload_size(128 * 1024, 256) == 256 * 4096


def test_request_with_its_struct_in_op_in():
    headers, payload = entry(Opcode.GETATTR, abi.GETATTR_IN.pack(abi.FUSE_GETATTR_FH, 9), b"")
    request = ring.parse_ring_request(headers, payload, scratch())
    assert (request.opcode, request.unique, request.header.nodeid) == (Opcode.GETATTR, UNIQUE, NODEID)
    assert request.body == GetattrIn(abi.FUSE_GETATTR_FH, 9)
    assert ring.commit_id(headers) == UNIQUE


def test_request_with_an_empty_first_argument():
    # LOOKUP's first argument is empty since 6.14: the name is in the payload.
    headers, payload = entry(Opcode.LOOKUP, b"", b"name\0")
    assert ring.parse_ring_request(headers, payload, scratch()).body == LookupIn(b"name")


def test_write_data_stays_in_the_payload():
    data = bytes(range(256)) * 32
    headers, payload = entry(Opcode.WRITE, abi.WRITE_IN.pack(5, 4096, len(data), 0, 0, 0), data)
    body = ring.parse_ring_request(headers, payload, scratch()).body
    assert isinstance(body, WriteIn) and (body.fh, body.offset, body.size) == (5, 4096, len(data))
    assert bytes(body.data) == data
    payload[0] = 0xFF
    assert body.data[0] == 0xFF  # a view, not a copy


@pytest.mark.parametrize("length", [39, 40 + 16 + 129, 40 + 300])
def test_lengths_that_do_not_add_up_are_refused(length):
    headers, payload = entry(Opcode.GETATTR, abi.GETATTR_IN.pack(0, 0), b"", length=length)
    with pytest.raises(ProtocolError) as raised:
        ring.parse_ring_request(headers, payload, scratch())
    assert raised.value.unique == UNIQUE  # still answered, so the entry is committed


def test_write_whose_size_disagrees_is_einval():
    headers, payload = entry(Opcode.WRITE, abi.WRITE_IN.pack(5, 0, 10, 0, 0, 0), b"x" * 4)
    with pytest.raises(ProtocolError) as raised:
        ring.parse_ring_request(headers, payload, scratch())
    assert (raised.value.errno, raised.value.unique) == (errno.EINVAL, UNIQUE)


def test_split_reply():
    reply = abi.OUT_HEADER.pack(16 + 3, 0, UNIQUE) + b"abc"
    header, args = ring.split_reply(reply)
    assert abi.OUT_HEADER.unpack(header) == (19, 0, UNIQUE) and bytes(args) == b"abc"
