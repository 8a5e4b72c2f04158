"""Parse the requests the kernel writes to /dev/fuse into frozen dataclasses.

``parse_request`` turns one request (as read from the device) into a
``Request(header, body)``. How each opcode's body is laid out lives in one
table, ``opcodes.OPCODES``; this module holds the body types, one generic
parser driven by that table, and the three bodies it cannot describe (INIT,
BATCH_FORGET, and SETXATTR whose layout depends on negotiation).

Body fields are named as in fuse.h; padding members are dropped; names are
``bytes`` without their NUL terminator.
"""

from __future__ import annotations

import dataclasses
import errno as _errno
from dataclasses import dataclass
from typing import TYPE_CHECKING, Union

from . import abi

if TYPE_CHECKING:
    from .opcodes import OpSpec

_body = dataclass(frozen=True, slots=True)


class ProtocolError(Exception):
    """A request that cannot be parsed.

    ``errno`` is what to reply: EIO when the message as a whole is unusable
    (header length disagrees with what was read), EINVAL when the body of a
    well-framed message is malformed (too short, name without NUL, wrong name
    count, trailing bytes, data length disagreeing with its size field).
    ``unique`` is the request to reply to, or None when no reply may be sent:
    the header itself was unreadable, or the opcode is one the kernel expects
    no reply for (FORGET, BATCH_FORGET, INTERRUPT, NOTIFY_REPLY).
    """

    def __init__(self, message: str, errno: int = _errno.EIO, unique: int | None = None):
        super().__init__(message)
        self.errno = errno
        self.unique = unique


@_body
class InHeader:
    """struct fuse_in_header; ``length`` is fuse.h's ``len``."""

    length: int
    opcode: int
    unique: int
    nodeid: int
    uid: int
    gid: int
    pid: int
    total_extlen: int  # in units of 8 bytes, at the end of the payload


@_body
class LookupIn:
    name: bytes


@_body
class ForgetIn:
    nlookup: int


@_body
class BatchForgetIn:
    forgets: tuple[tuple[int, int], ...]  # (nodeid, nlookup) per fuse_forget_one


@_body
class GetattrIn:
    getattr_flags: int
    fh: int  # valid only with FUSE_GETATTR_FH


@_body
class SetattrIn:
    valid: int  # FATTR_* bits saying which of the rest are meaningful
    fh: int
    size: int
    lock_owner: int
    atime: int
    mtime: int
    ctime: int
    atimensec: int
    mtimensec: int
    ctimensec: int
    mode: int
    uid: int
    gid: int


@_body
class ReadlinkIn:
    pass


@_body
class SymlinkIn:
    name: bytes
    target: bytes


@_body
class MknodIn:
    mode: int
    rdev: int
    umask: int
    name: bytes


@_body
class MkdirIn:
    mode: int
    umask: int
    name: bytes


@_body
class UnlinkIn:
    name: bytes


@_body
class RmdirIn:
    name: bytes


@_body
class RenameIn:
    """RENAME (flags always 0) and RENAME2."""

    newdir: int
    flags: int
    oldname: bytes
    newname: bytes


@_body
class LinkIn:
    oldnodeid: int
    newname: bytes


@_body
class OpenIn:
    """OPEN and OPENDIR."""

    flags: int
    open_flags: int  # FUSE_OPEN_KILL_SUIDGID


@_body
class ReadIn:
    """READ, READDIR and READDIRPLUS."""

    fh: int
    offset: int
    size: int
    read_flags: int
    lock_owner: int
    flags: int


@_body
class WriteIn:
    """WRITE. ``data`` is a view into the buffer given to parse_request.

    It is valid only until that buffer is reused for the next read from
    /dev/fuse: consume (write out) or copy it before then.
    """

    fh: int
    offset: int
    size: int
    write_flags: int
    lock_owner: int
    flags: int
    data: memoryview


@_body
class StatfsIn:
    pass


@_body
class ReleaseIn:
    """RELEASE and RELEASEDIR."""

    fh: int
    flags: int
    release_flags: int
    lock_owner: int


@_body
class FsyncIn:
    """FSYNC and FSYNCDIR."""

    fh: int
    fsync_flags: int


@_body
class SetxattrIn:
    size: int
    flags: int
    setxattr_flags: int  # 0 unless FUSE_SETXATTR_EXT was negotiated
    name: bytes
    value: bytes


@_body
class GetxattrIn:
    size: int
    name: bytes


@_body
class ListxattrIn:
    size: int


@_body
class RemovexattrIn:
    name: bytes


@_body
class FlushIn:
    fh: int
    lock_owner: int


@_body
class InitIn:
    major: int
    minor: int
    max_readahead: int
    flags: int  # flags | flags2 << 32 when FUSE_INIT_EXT is set


@_body
class AccessIn:
    mask: int


@_body
class CreateIn:
    """CREATE and TMPFILE."""

    flags: int
    mode: int
    umask: int
    open_flags: int
    name: bytes


TmpfileIn = CreateIn


@_body
class InterruptIn:
    unique: int


@_body
class BmapIn:
    block: int
    blocksize: int


@_body
class DestroyIn:
    pass


@_body
class LkIn:
    """GETLK, SETLK and SETLKW; start..type..pid flatten fuse_file_lock."""

    fh: int
    owner: int
    start: int
    end: int
    type: int
    pid: int
    lk_flags: int


@_body
class IoctlIn:
    fh: int
    flags: int
    cmd: int
    arg: int
    in_size: int
    out_size: int
    data: bytes  # in_size bytes of input


@_body
class PollIn:
    fh: int
    kh: int
    flags: int
    events: int


@_body
class NotifyReplyIn:
    """The kernel's answer to a FUSE_NOTIFY_RETRIEVE (fuse_notify_retrieve_in + data)."""

    offset: int
    size: int
    data: bytes


@_body
class FallocateIn:
    fh: int
    offset: int
    length: int
    mode: int


@_body
class LseekIn:
    fh: int
    offset: int
    whence: int


@_body
class CopyFileRangeIn:
    """COPY_FILE_RANGE (reply write_out) and COPY_FILE_RANGE_64 (reply copy_file_range_out)."""

    fh_in: int
    off_in: int
    nodeid_out: int
    fh_out: int
    off_out: int
    len: int
    flags: int


@_body
class SyncfsIn:
    pass


@_body
class StatxIn:
    getattr_flags: int
    fh: int
    sx_flags: int
    sx_mask: int


@_body
class UnknownIn:
    """Body of an opcode this module does not parse; the engine replies ENOSYS."""

    payload: bytes


RequestBody = Union[
    LookupIn, ForgetIn, BatchForgetIn, GetattrIn, SetattrIn, ReadlinkIn, SymlinkIn,
    MknodIn, MkdirIn, UnlinkIn, RmdirIn, RenameIn, LinkIn, OpenIn, ReadIn, WriteIn,
    StatfsIn, ReleaseIn, FsyncIn, SetxattrIn, GetxattrIn, ListxattrIn, RemovexattrIn,
    FlushIn, InitIn, AccessIn, CreateIn, InterruptIn, BmapIn, DestroyIn, LkIn, IoctlIn,
    PollIn, NotifyReplyIn, FallocateIn, LseekIn, CopyFileRangeIn, SyncfsIn, StatxIn,
    UnknownIn,
]


@_body
class Request:
    """One parsed request: its header and its opcode's body."""

    header: InHeader
    body: RequestBody

    @property
    def opcode(self) -> int:
        return self.header.opcode

    @property
    def unique(self) -> int:
        return self.header.unique

    @property
    def nodeid(self) -> int:
        return self.header.nodeid


class _Malformed(Exception):
    """A body that does not match its OpSpec; parse_request adds the header context."""


def parse_request(buf: bytes | bytearray | memoryview, *, setxattr_ext: bool = False) -> Request:
    """Parse one request read from /dev/fuse.

    ``buf`` must hold exactly one request. ``setxattr_ext`` tells whether
    FUSE_SETXATTR_EXT was negotiated, which changes SETXATTR's layout.
    Nothing but ``WriteIn.data`` keeps a reference into ``buf``.
    Raises ProtocolError (see there for errno and unique).
    """
    view = memoryview(buf).cast("B")
    if len(view) < abi.IN_HEADER.size:
        raise ProtocolError(f"request of {len(view)} bytes is shorter than fuse_in_header")
    header = InHeader(*abi.IN_HEADER.unpack_from(view))
    spec = _opcodes.OPCODES.get(header.opcode)
    unique = header.unique if spec is None or spec.replies else None
    if header.length != len(view):
        raise ProtocolError(
            f"fuse_in_header.len is {header.length} but {len(view)} bytes were read",
            _errno.EIO, unique)
    if spec is None:
        return Request(header, UnknownIn(bytes(view[abi.IN_HEADER.size:])))
    # Extensions (security context, supplementary groups) are appended after
    # the last argument; we negotiate none of them, so we only step over them.
    end = len(view) - header.total_extlen * 8
    if end < abi.IN_HEADER.size:
        raise ProtocolError(
            f"total_extlen {header.total_extlen} exceeds the payload", _errno.EINVAL, unique)
    try:
        parse = _SPECIAL.get(spec.request_type, _parse_body)
        body = parse(view[abi.IN_HEADER.size:end], spec, setxattr_ext)
    except _Malformed as exc:
        name = _opcodes.Opcode(header.opcode).name
        raise ProtocolError(f"{name}: {exc}", _errno.EINVAL, unique) from None
    return Request(header, body)


def _parse_body(body: memoryview, spec: OpSpec, setxattr_ext: bool = False) -> RequestBody:
    """Parse fixed struct, then NUL-terminated names, then the optional data tail."""
    values: tuple = ()
    rest = body
    if spec.layout is not None:
        if len(body) < spec.layout.size:
            raise _Malformed(f"{len(body)}-byte body, fuse.h struct needs {spec.layout.size}")
        values = spec.layout.unpack_from(body)
        rest = body[spec.layout.size:]
    values += spec.extra
    tail: bytes | memoryview = rest
    if spec.name_count:
        parts = bytes(rest).split(b"\0", spec.name_count)
        if len(parts) <= spec.name_count:
            raise _Malformed(f"expected {spec.name_count} NUL-terminated name(s)")
        tail = parts.pop()
        values += tuple(parts)
    if spec.tail is None:
        if tail:
            raise _Malformed(f"{len(tail)} unexpected bytes after the body")
        return spec.request_type(*values)
    expected = values[spec.request_type.__match_args__.index(spec.tail)]
    if len(tail) != expected:
        raise _Malformed(f"{spec.tail} is {expected} but {len(tail)} bytes follow")
    return spec.request_type(*values, tail if spec.view else bytes(tail))


def _parse_init(body: memoryview, spec: OpSpec, setxattr_ext: bool) -> InitIn:
    """fuse_init_in: 16 bytes before 7.36, 64 since; flags2 counts only with FUSE_INIT_EXT."""
    if len(body) < abi.INIT_IN_COMPAT.size:
        raise _Malformed(f"{len(body)}-byte body, fuse_init_in needs {abi.INIT_IN_COMPAT.size}")
    if len(body) < abi.INIT_IN.size:
        major, minor, max_readahead, flags = abi.INIT_IN_COMPAT.unpack_from(body)
    else:
        major, minor, max_readahead, flags, flags2 = abi.INIT_IN.unpack_from(body)
        if flags & abi.FUSE_INIT_EXT:
            flags |= flags2 << 32
    return InitIn(major, minor, max_readahead, flags)


def _parse_batch_forget(body: memoryview, spec: OpSpec, setxattr_ext: bool) -> BatchForgetIn:
    """fuse_batch_forget_in followed by exactly ``count`` fuse_forget_one."""
    if len(body) < abi.BATCH_FORGET_IN.size:
        raise _Malformed(f"{len(body)}-byte body, fuse_batch_forget_in needs 8")
    (count,) = abi.BATCH_FORGET_IN.unpack_from(body)
    items = body[abi.BATCH_FORGET_IN.size:]
    if len(items) != count * abi.FORGET_ONE.size:
        raise _Malformed(f"count is {count} but {len(items)} bytes of fuse_forget_one follow")
    return BatchForgetIn(tuple(abi.FORGET_ONE.iter_unpack(items)))


def _parse_setxattr(body: memoryview, spec: OpSpec, setxattr_ext: bool) -> SetxattrIn:
    """fuse_setxattr_in is 16 bytes with FUSE_SETXATTR_EXT, else the 8-byte compat form."""
    if setxattr_ext:
        spec = dataclasses.replace(spec, layout=abi.SETXATTR_IN, extra=())
    return _parse_body(body, spec)


_SPECIAL = {
    InitIn: _parse_init,
    BatchForgetIn: _parse_batch_forget,
    SetxattrIn: _parse_setxattr,
}

# Imported last, as a module: opcodes.py builds OPCODES from the classes above,
# so this import must not need any of its names until parse time.
from . import opcodes as _opcodes  # noqa: E402
