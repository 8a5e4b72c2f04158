"""parse_request against golden messages packed by hand from fuse.h's layouts."""

import errno
import os
from struct import pack

import pytest
from hypothesis import given
from hypothesis import strategies as st

from zcfs.proto import abi
from zcfs.proto.opcodes import OPCODES, Opcode
from zcfs.proto.requests import (
    AccessIn, BatchForgetIn, BmapIn, CopyFileRangeIn, CreateIn, DestroyIn, FallocateIn,
    FlushIn, ForgetIn, FsyncIn, GetattrIn, GetxattrIn, InHeader, InitIn, InterruptIn, IoctlIn,
    LinkIn, LkIn, ListxattrIn, LookupIn, LseekIn, MkdirIn, MknodIn, NotifyReplyIn, OpenIn,
    PollIn, ProtocolError, ReadIn, ReadlinkIn, ReleaseIn, RemovexattrIn, RenameIn, Request,
    RmdirIn, SetattrIn, SetxattrIn, StatfsIn, StatxIn, SymlinkIn, SyncfsIn, UnknownIn, UnlinkIn,
    WriteIn, parse_request,
)

UNIQUE, NODEID = 0x1122334455667788, 42


def msg(opcode, body=b"", *, unique=UNIQUE, extlen=0, length=None):
    """A request: fuse_in_header (len opcode unique nodeid uid gid pid total_extlen pad) + body."""
    total = 40 + len(body) if length is None else length
    return pack("<IIQQIIIHH", total, opcode, unique, NODEID, 1000, 100, 4242, extlen, 0) + body


INIT_FLAGS = abi.FUSE_ASYNC_READ | abi.FUSE_INIT_EXT
O = Opcode
# (opcode, body as fuse.h lays it out, expected parsed body)
SIMPLE_CASES = [
    (O.LOOKUP, b"name\0", LookupIn(b"name")),
    (O.FORGET, pack("<Q", 3), ForgetIn(3)),
    (O.BATCH_FORGET, pack("<II", 2, 0) + pack("<QQ", 10, 1) + pack("<QQ", 11, 2),
     BatchForgetIn(((10, 1), (11, 2)))),
    (O.BATCH_FORGET, pack("<II", 0, 0), BatchForgetIn(())),
    (O.GETATTR, pack("<IIQ", abi.FUSE_GETATTR_FH, 0, 9), GetattrIn(abi.FUSE_GETATTR_FH, 9)),
    (O.SETATTR,
     pack("<IIQQQQQQIIIIIIII", abi.FATTR_MODE | abi.FATTR_SIZE, 0, 5, 1000, 77, 1, 2, 3,
          4, 5, 6, 0o100600, 0, 1001, 1002, 0),
     SetattrIn(abi.FATTR_MODE | abi.FATTR_SIZE, 5, 1000, 77, 1, 2, 3, 4, 5, 6, 0o100600,
               1001, 1002)),
    (O.READLINK, b"", ReadlinkIn()),
    (O.SYMLINK, b"link\0../tar get\0", SymlinkIn(b"link", b"../tar get")),
    (O.MKNOD, pack("<IIII", 0o010644, 0x0801, 0o022, 0) + b"fifo\0",
     MknodIn(0o010644, 0x0801, 0o022, b"fifo")),
    (O.MKDIR, pack("<II", 0o755, 0o022) + b"dir\0", MkdirIn(0o755, 0o022, b"dir")),
    (O.UNLINK, b"f\0", UnlinkIn(b"f")),
    (O.RMDIR, b"d\0", RmdirIn(b"d")),
    (O.RENAME, pack("<Q", 7) + b"old\0new\0", RenameIn(7, 0, b"old", b"new")),
    (O.RENAME2, pack("<QII", 7, 1, 0) + b"old\0new\0", RenameIn(7, 1, b"old", b"new")),
    (O.LINK, pack("<Q", 8) + b"hard\0", LinkIn(8, b"hard")),
    (O.OPEN, pack("<II", os.O_RDWR, abi.FUSE_OPEN_KILL_SUIDGID),
     OpenIn(os.O_RDWR, abi.FUSE_OPEN_KILL_SUIDGID)),
    (O.OPENDIR, pack("<II", os.O_RDONLY, 0), OpenIn(os.O_RDONLY, 0)),
    (O.READ, pack("<QQIIQII", 5, 4096, 131072, abi.FUSE_READ_LOCKOWNER, 99, os.O_RDONLY, 0),
     ReadIn(5, 4096, 131072, abi.FUSE_READ_LOCKOWNER, 99, os.O_RDONLY)),
    (O.READDIR, pack("<QQIIQII", 6, 3, 4096, 0, 0, 0, 0), ReadIn(6, 3, 4096, 0, 0, 0)),
    (O.READDIRPLUS, pack("<QQIIQII", 6, 3, 4096, 0, 0, 0, 0), ReadIn(6, 3, 4096, 0, 0, 0)),
    (O.WRITE, pack("<QQIIQII", 5, 10, 5, abi.FUSE_WRITE_CACHE, 0, os.O_WRONLY, 0) + b"hello",
     WriteIn(5, 10, 5, abi.FUSE_WRITE_CACHE, 0, os.O_WRONLY, b"hello")),
    (O.STATFS, b"", StatfsIn()),
    (O.RELEASE, pack("<QIIQ", 5, os.O_RDWR, abi.FUSE_RELEASE_FLUSH, 99),
     ReleaseIn(5, os.O_RDWR, abi.FUSE_RELEASE_FLUSH, 99)),
    (O.RELEASEDIR, pack("<QIIQ", 6, 0, 0, 0), ReleaseIn(6, 0, 0, 0)),
    (O.FSYNC, pack("<QII", 5, abi.FUSE_FSYNC_FDATASYNC, 0),
     FsyncIn(5, abi.FUSE_FSYNC_FDATASYNC)),
    (O.FSYNCDIR, pack("<QII", 6, 0, 0), FsyncIn(6, 0)),
    # 8-byte fuse_setxattr_in: FUSE_SETXATTR_EXT not negotiated.
    (O.SETXATTR, pack("<II", 4, 1) + b"user.k\0v\0al", SetxattrIn(4, 1, 0, b"user.k", b"v\0al")),
    (O.GETXATTR, pack("<II", 64, 0) + b"user.k\0", GetxattrIn(64, b"user.k")),
    (O.LISTXATTR, pack("<II", 0, 0), ListxattrIn(0)),
    (O.REMOVEXATTR, b"user.k\0", RemovexattrIn(b"user.k")),
    (O.FLUSH, pack("<QIIQ", 5, 0, 0, 99), FlushIn(5, 99)),
    (O.INIT, pack("<IIIII44x", 7, 45, 1 << 17, INIT_FLAGS, 1 << 5),
     InitIn(7, 45, 1 << 17, INIT_FLAGS | abi.FUSE_PASSTHROUGH)),
    (O.GETLK, pack("<QQQQIIII", 5, 77, 0, 99, 1, 4242, 0, 0), LkIn(5, 77, 0, 99, 1, 4242, 0)),
    (O.SETLK, pack("<QQQQIIII", 5, 77, 0, 99, 1, 0, 1, 0), LkIn(5, 77, 0, 99, 1, 0, 1)),
    (O.SETLKW, pack("<QQQQIIII", 5, 77, 0, 99, 2, 0, 0, 0), LkIn(5, 77, 0, 99, 2, 0, 0)),
    (O.ACCESS, pack("<II", os.R_OK | os.X_OK, 0), AccessIn(os.R_OK | os.X_OK)),
    (O.CREATE, pack("<IIII", os.O_CREAT | os.O_WRONLY, 0o100644, 0o022, 0) + b"new\0",
     CreateIn(os.O_CREAT | os.O_WRONLY, 0o100644, 0o022, 0, b"new")),
    (O.TMPFILE, pack("<IIII", os.O_RDWR, 0o100600, 0o022, 0) + b"/\0",
     CreateIn(os.O_RDWR, 0o100600, 0o022, 0, b"/")),
    (O.INTERRUPT, pack("<Q", 1234), InterruptIn(1234)),
    (O.BMAP, pack("<QII", 12, 4096, 0), BmapIn(12, 4096)),
    (O.DESTROY, b"", DestroyIn()),
    (O.IOCTL, pack("<QIIQII", 5, abi.FUSE_IOCTL_UNRESTRICTED, 0x5401, 0xDEAD, 3, 8) + b"abc",
     IoctlIn(5, abi.FUSE_IOCTL_UNRESTRICTED, 0x5401, 0xDEAD, 3, 8, b"abc")),
    (O.POLL, pack("<QQII", 5, 66, abi.FUSE_POLL_SCHEDULE_NOTIFY, 1),
     PollIn(5, 66, abi.FUSE_POLL_SCHEDULE_NOTIFY, 1)),
    (O.NOTIFY_REPLY, pack("<QQIIQQ", 0, 8192, 3, 0, 0, 0) + b"xyz", NotifyReplyIn(8192, 3, b"xyz")),
    (O.FALLOCATE, pack("<QQQII", 5, 0, 1 << 30, 1, 0), FallocateIn(5, 0, 1 << 30, 1)),
    (O.LSEEK, pack("<QQII", 5, 100, os.SEEK_DATA, 0), LseekIn(5, 100, os.SEEK_DATA)),
    (O.COPY_FILE_RANGE, pack("<7Q", 5, 0, 9, 6, 4096, 1 << 20, 0),
     CopyFileRangeIn(5, 0, 9, 6, 4096, 1 << 20, 0)),
    (O.COPY_FILE_RANGE_64, pack("<7Q", 5, 0, 9, 6, 4096, 1 << 33, 0),
     CopyFileRangeIn(5, 0, 9, 6, 4096, 1 << 33, 0)),
    (O.SYNCFS, pack("<Q", 0), SyncfsIn()),
    (O.STATX, pack("<IIQII", abi.FUSE_GETATTR_FH, 0, 5, 0, 0x7FF), StatxIn(1, 5, 0, 0x7FF)),
]
IDS = [f"{op.name}-{i}" for i, (op, _, _) in enumerate(SIMPLE_CASES)]


def cases(keep):
    """SIMPLE_CASES filtered by ``keep(op, body)``, as pytest params with readable ids."""
    return [pytest.param(*c, id=i) for c, i in zip(SIMPLE_CASES, IDS) if keep(c[0], c[1])]


def test_cases_cover_the_table():
    assert {op for op, _, _ in SIMPLE_CASES} == set(OPCODES)


@pytest.mark.parametrize("op, body, expected", SIMPLE_CASES, ids=IDS)
def test_parse(op, body, expected):
    req = parse_request(msg(op, body))
    assert req.body == expected
    assert type(req.body) is type(expected)
    assert req.header == InHeader(40 + len(body), op, UNIQUE, NODEID, 1000, 100, 4242, 0)
    assert (req.opcode, req.unique, req.nodeid) == (op, UNIQUE, NODEID)


@pytest.mark.parametrize("op, body, expected", SIMPLE_CASES, ids=IDS)
def test_parse_skips_extensions(op, body, expected):
    # e.g. fuse_ext_header + fuse_supp_groups, appended after the last argument
    ext = pack("<IIII", 16, abi.FUSE_EXT_GROUPS, 1, 100)
    assert parse_request(msg(op, body + ext, extlen=2)).body == expected


# INIT is exempt: fuse_init_in has grown before, so any length >= 16 is accepted.
@pytest.mark.parametrize("op, body, expected", cases(lambda op, body: body and op != O.INIT))
def test_truncated_body(op, body, expected):
    with pytest.raises(ProtocolError) as info:
        parse_request(msg(op, body[:-1]))
    assert info.value.errno == errno.EINVAL
    assert info.value.unique == (UNIQUE if OPCODES[op].replies else None)


@pytest.mark.parametrize("op, body, expected", cases(lambda op, body: op != O.INIT))
def test_trailing_byte(op, body, expected):
    with pytest.raises(ProtocolError) as info:
        parse_request(msg(op, body + b"\0"))
    assert info.value.errno == errno.EINVAL


def test_setxattr_ext_layout():
    body = pack("<IIII", 2, 0, abi.FUSE_SETXATTR_ACL_KILL_SGID, 0) + b"system.posix_acl_access\0ab"
    req = parse_request(msg(O.SETXATTR, body), setxattr_ext=True)
    assert req.body == SetxattrIn(2, 0, abi.FUSE_SETXATTR_ACL_KILL_SGID,
                                  b"system.posix_acl_access", b"ab")


def test_init_flags2_needs_init_ext():
    req = parse_request(msg(O.INIT, pack("<IIIII44x", 7, 45, 0, abi.FUSE_ASYNC_READ, 1 << 5)))
    assert req.body.flags == abi.FUSE_ASYNC_READ


def test_init_old_16_byte_form():
    req = parse_request(msg(O.INIT, pack("<IIII", 7, 31, 65536, abi.FUSE_ASYNC_READ)))
    assert req.body == InitIn(7, 31, 65536, abi.FUSE_ASYNC_READ)


def test_write_data_is_a_view_into_the_read_buffer():
    wire = msg(O.WRITE, pack("<QQIIQII", 5, 0, 4, 0, 0, 0, 0) + b"data")
    buf = bytearray(65536)  # the engine's preallocated buffer; only n bytes are valid
    buf[:len(wire)] = wire
    req = parse_request(memoryview(buf)[:len(wire)])
    data = req.body.data
    assert isinstance(data, memoryview) and data.obj is buf
    assert bytes(data) == b"data"
    buf[len(wire) - 4] = ord("D")  # the next read reuses the buffer: the view sees it
    assert bytes(data) == b"Data"


def test_names_are_copied():
    buf = bytearray(msg(O.LOOKUP, b"name\0"))
    req = parse_request(memoryview(buf))
    buf[40] = ord("N")
    assert req.body.name == b"name" and type(req.body.name) is bytes


@pytest.mark.parametrize("n", range(40))
def test_shorter_than_header(n):
    with pytest.raises(ProtocolError) as info:
        parse_request(msg(O.LOOKUP, b"x\0")[:n])
    assert (info.value.errno, info.value.unique) == (errno.EIO, None)


@pytest.mark.parametrize("delta", [-1, 1, 1000])
def test_header_length_mismatch(delta):
    wire = msg(O.LOOKUP, b"name\0", length=45 + delta)
    with pytest.raises(ProtocolError) as info:
        parse_request(wire)
    assert (info.value.errno, info.value.unique) == (errno.EIO, UNIQUE)


def test_header_length_mismatch_on_forget_cannot_be_answered():
    with pytest.raises(ProtocolError) as info:
        parse_request(msg(O.FORGET, pack("<Q", 1), length=47))
    assert info.value.unique is None


@pytest.mark.parametrize("op, body", [
    (O.LOOKUP, b"name"),  # missing NUL
    (O.LOOKUP, b""),
    (O.LOOKUP, b"a\0b\0"),  # two names where one is expected
    (O.RENAME, pack("<Q", 7) + b"old\0"),  # one name where two are expected
    (O.SYMLINK, b"only\0"),
    (O.MKDIR, pack("<II", 0o755, 0) + b"dir"),
    (O.WRITE, pack("<QQIIQII", 5, 0, 3, 0, 0, 0, 0) + b"hello"),  # oversize data
    (O.WRITE, pack("<QQIIQII", 5, 0, 9, 0, 0, 0, 0) + b"hello"),  # short data
    (O.SETXATTR, pack("<II", 9, 0) + b"user.k\0v"),
    (O.BATCH_FORGET, pack("<II", 3, 0) + pack("<QQ", 1, 1)),
    (O.INIT, pack("<III", 7, 45, 0)),
    (O.GETATTR, pack("<II", 0, 0)),
])
def test_malformed_body(op, body):
    with pytest.raises(ProtocolError) as info:
        parse_request(msg(op, body))
    assert info.value.errno == errno.EINVAL
    assert op.name in str(info.value)


def test_extensions_longer_than_payload():
    with pytest.raises(ProtocolError) as info:
        parse_request(msg(O.LOOKUP, b"n\0", extlen=1))
    assert (info.value.errno, info.value.unique) == (errno.EINVAL, UNIQUE)


@pytest.mark.parametrize("opcode", [7, 19, O.SETUPMAPPING, O.REMOVEMAPPING, O.CUSE_INIT, 54,
                                    999999])
def test_unknown_opcode_is_not_an_error(opcode):
    req = parse_request(msg(opcode, b"\1\2\3"))
    assert req.body == UnknownIn(b"\1\2\3")
    assert req.unique == UNIQUE


def test_request_is_frozen():
    req = parse_request(msg(O.LOOKUP, b"x\0"))
    assert isinstance(req, Request)
    with pytest.raises(AttributeError):
        req.body.name = b"y"


def _survives(buf, **kw):
    try:
        parse_request(buf, **kw)
    except ProtocolError as exc:
        assert exc.errno in (errno.EIO, errno.EINVAL)


@given(st.binary(max_size=400))
def test_random_bytes_only_raise_protocol_error(buf):
    _survives(buf)


@given(st.sampled_from(sorted(Opcode)), st.binary(max_size=300), st.integers(0, 40),
       st.booleans())
def test_random_bodies_only_raise_protocol_error(op, body, extlen, setxattr_ext):
    # Framing right, contents random: exercises every body parser.
    _survives(msg(op, body, extlen=extlen), setxattr_ext=setxattr_ext)



# The fast parsers (the common shapes, no extensions) against the table-driven one.
from zcfs.proto.requests import _FAST, _Malformed, _parse_body  # noqa: E402


def _general(op, body):
    """What the table-driven parser makes of `body` (_Malformed if it refuses it)."""
    try:
        return _parse_body(memoryview(body), OPCODES[op])
    except _Malformed:
        return _Malformed


def _variants(body):
    """`body` and the ways a kernel (or an attacker) could get it wrong."""
    return [body, body[:-1], body + b"\0", body + b"x", body[:-1] + b"\0\0", b"\0" + body, b""]


@pytest.mark.parametrize("op, body, expected", cases(lambda op, body: op in _FAST))
def test_fast_parsers_agree_with_the_table(op, body, expected):
    """They accept what the table accepts, to the same body, and leave the rest to it."""
    for variant in _variants(body):
        fast, general = _FAST[op](memoryview(variant)), _general(op, variant)
        if fast is None:
            assert general is _Malformed, variant
        else:
            assert fast == general and type(fast) is type(general), variant
    assert _FAST[op](memoryview(body)) == expected


def test_fast_parsers_cover_the_hot_opcodes():
    assert {O.LOOKUP, O.GETATTR, O.OPEN, O.RELEASE, O.FLUSH, O.GETXATTR, O.FORGET, O.ACCESS,
            O.UNLINK, O.MKDIR, O.CREATE, O.READ, O.STATFS} <= set(_FAST)
