"""Every offset, length and size is parsed with the signedness the kernel gives it.

fuse.h declares all request fields unsigned, but the kernel fills file
positions and lengths from loff_t and times from time64_t: the bytes of
lseek(fd, -1, SEEK_DATA) are 0xff..ff and must reach the handler as -1
(the backing fs then says ENXIO), not as 2**64 - 1 (an OverflowError in
os.lseek, answered EIO). Sizes the kernel keeps in size_t or u32 stay
unsigned. Each case feeds the extreme bit patterns through parse_request.
"""

import re
import struct

import pytest

from zcfs.proto import abi
from zcfs.proto.opcodes import OPCODES, Opcode
from zcfs.proto.requests import parse_request

O = Opcode
SIGNED, UNSIGNED = "signed", "unsigned"

# (opcode, field, signedness); the field is set to each extreme below, the rest to 0.
FIELDS = [
    (O.READ, "offset", SIGNED),
    (O.READ, "size", UNSIGNED),
    (O.WRITE, "offset", SIGNED),
    (O.LSEEK, "offset", SIGNED),
    (O.FALLOCATE, "offset", SIGNED),
    (O.FALLOCATE, "length", SIGNED),
    (O.COPY_FILE_RANGE, "off_in", SIGNED),
    (O.COPY_FILE_RANGE, "off_out", SIGNED),
    (O.COPY_FILE_RANGE, "len", UNSIGNED),  # size_t
    (O.COPY_FILE_RANGE_64, "off_in", SIGNED),
    (O.COPY_FILE_RANGE_64, "off_out", SIGNED),
    (O.COPY_FILE_RANGE_64, "len", UNSIGNED),
    (O.SETATTR, "size", SIGNED),
    (O.SETATTR, "atime", SIGNED),  # before 1970
    (O.SETATTR, "mtime", SIGNED),
    (O.SETATTR, "ctime", SIGNED),
    *[(op, field, SIGNED) for op in (O.GETLK, O.SETLK, O.SETLKW) for field in ("start", "end")],
    # A directory offset is a cookie we handed out: opaque, never negative.
    (O.READDIR, "offset", UNSIGNED),
    (O.READDIRPLUS, "offset", UNSIGNED),
    (O.GETXATTR, "size", UNSIGNED),
    (O.LISTXATTR, "size", UNSIGNED),
    (O.BMAP, "block", UNSIGNED),  # sector_t
    (O.FORGET, "nlookup", UNSIGNED),
]

_HEADER = struct.Struct("<IIQQIIIH2x")


def _message(op, body):
    return _HEADER.pack(_HEADER.size + len(body), op, 7, 42, 0, 0, 0, 0) + body


def _members(layout):
    """(offset, struct code) of each non-pad member of a '<' layout, in order."""
    members, offset = [], 0
    for count, code in re.findall(r"(\d*)([a-zA-Z])", layout.format[1:]):
        size = struct.calcsize("<" + count + code)
        if code != "x":
            members.append((offset, code))
        offset += size
    return members


def _field_bytes(op, field, pattern):
    """The body of `op` with `field` holding the raw bit `pattern`, all else zero; and the field's width."""
    spec = OPCODES[op]
    offset, code = _members(spec.layout)[spec.request_type.__match_args__.index(field)]
    width = struct.calcsize("<" + code)
    body = bytearray(spec.layout.size)
    body[offset:offset + width] = (pattern & ((1 << (8 * width)) - 1)).to_bytes(width, "little")
    names = b"user.x\0" if spec.name_count else b""
    return bytes(body) + names, width


@pytest.mark.parametrize("op, field, signedness", FIELDS, ids=[f"{op.name}-{f}" for op, f, _ in FIELDS])
@pytest.mark.parametrize("pattern", [0, 1, 2**31, 2**63 - 1, 2**63, 2**64 - 1])
def test_extreme_values_keep_the_kernels_signedness(op, field, signedness, pattern):
    body, width = _field_bytes(op, field, pattern)
    value = getattr(parse_request(_message(op, body)).body, field)
    raw = pattern & ((1 << (8 * width)) - 1)
    if signedness == SIGNED and raw >= 1 << (8 * width - 1):
        assert value == raw - (1 << (8 * width))
    else:
        assert value == raw


def test_negative_seek_offset_arrives_negative():
    """The case from the issue: lseek(fd, -1, SEEK_DATA) as the kernel writes it."""
    body = struct.pack("<QQI4x", 5, 2**64 - 1, 3)  # fuse_lseek_in as raw u64 bytes
    assert parse_request(_message(O.LSEEK, body)).body.offset == -1


def test_every_signed_layout_field_is_listed():
    """A layout that unpacks a member signed is in FIELDS, so the choice was made on purpose."""
    listed = {(op, field) for op, field, s in FIELDS if s == SIGNED}
    for op, spec in OPCODES.items():
        if spec.layout is None:
            continue
        for member, (_, code) in zip(spec.request_type.__match_args__, _members(spec.layout)):
            if code == "q":
                assert (op, member) in listed, (op.name, member)


def test_the_in_header_stays_unsigned():
    header = _HEADER.pack(56, O.GETATTR, 2**64 - 1, 2**64 - 1, 2**32 - 1, 2**32 - 1, 2**32 - 1, 0)
    request = parse_request(header + abi.GETATTR_IN.pack(0, 0))
    assert (request.unique, request.nodeid, request.header.uid) == (2**64 - 1, 2**64 - 1, 2**32 - 1)
