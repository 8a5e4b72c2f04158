"""Parse the requests the kernel writes to /dev/fuse: a header and a frozen dataclass body.

``parse_request`` turns one request (as read from the device) into a
``Request(header, body)``. How each opcode's body is laid out lives in one
table, ``opcodes.OPCODES``, over the body types of ``bodies`` (re-exported
here); this module holds one generic parser driven by that table, and the
three bodies it cannot describe (INIT, BATCH_FORGET, and SETXATTR whose
layout depends on negotiation). Imports point one way: bodies <- opcodes
<- requests.
"""

from __future__ import annotations

import dataclasses
import errno as _errno
import functools
from typing import Callable, NamedTuple

from . import abi
from .bodies import (  # noqa: F401 (re-exported: the body types are part of this module's API)
    AccessIn, BatchForgetIn, BmapIn, CopyFileRangeIn, CreateIn, DestroyIn, FallocateIn,
    FlushIn, ForgetIn, FsyncIn, GetattrIn, GetxattrIn, InHeader, InitIn, InterruptIn, IoctlIn,
    LinkIn, LkIn, ListxattrIn, LookupIn, LseekIn, MkdirIn, MknodIn, NotifyReplyIn, OpenIn,
    PollIn, ReadIn, ReadlinkIn, ReleaseIn, RemovexattrIn, RenameIn, RequestBody, RmdirIn,
    SetattrIn, SetxattrIn, StatfsIn, StatxIn, SymlinkIn, SyncfsIn, TmpfileIn, UnknownIn,
    UnlinkIn, WriteIn,
)
from .opcodes import OPCODES, Opcode, OpSpec


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


class Request(NamedTuple):
    """One parsed request: its header and its opcode's body.

    A named tuple (built for every request): immutable like the bodies,
    and built in a fraction of a frozen dataclass's time.
    """

    header: InHeader
    body: RequestBody

    @property
    def opcode(self) -> int:
        return self.header[1]

    @property
    def unique(self) -> int:
        return self.header[2]

    @property
    def nodeid(self) -> int:
        return self.header[3]


_new_header = functools.partial(tuple.__new__, InHeader)
_new_request = functools.partial(tuple.__new__, Request)


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
    length = len(view)
    if length < _HEADER_SIZE:
        raise ProtocolError(f"request of {length} bytes is shorter than fuse_in_header")
    header = _new_header(_unpack_header(view))
    opcode = header[1]
    if header[0] == length and not header[7]:
        fast = _FAST.get(opcode)
        if fast is not None:
            body = fast(view[_HEADER_SIZE:])
            if body is not None:
                return _new_request((header, body))
    # Anything else, and whatever the fast parsers refused, the general way.
    spec = OPCODES.get(opcode)
    unique = header.unique if spec is None or spec.replies else None
    if header.length != length:
        raise ProtocolError(
            f"fuse_in_header.len is {header.length} but {length} bytes were read",
            _errno.EIO, unique)
    if spec is None:
        return Request(header, UnknownIn(bytes(view[_HEADER_SIZE:])))
    # Extensions (security context, supplementary groups) are appended after
    # the last argument; we negotiate none of them, so we only step over them.
    end = length - header.total_extlen * 8
    if end < _HEADER_SIZE:
        raise ProtocolError(
            f"total_extlen {header.total_extlen} exceeds the payload", _errno.EINVAL, unique)
    try:
        parse = _SPECIAL.get(spec.request_type, _parse_body)
        body = parse(view[_HEADER_SIZE:end], spec, setxattr_ext)
    except _Malformed as exc:
        name = Opcode(header.opcode).name
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


_HEADER_SIZE = abi.IN_HEADER.size
_unpack_header = abi.IN_HEADER.unpack_from


def _fast_parser(spec: OpSpec) -> Callable[[memoryview], RequestBody | None] | None:
    """A parser for a well-formed body of the commonest shapes (a struct, or a
    struct or nothing then one name), returning None for anything it does not
    accept, which _parse_body then parses or refuses with the reason; None
    for the other shapes. The same OpSpec drives both: one table."""
    request_type, layout = spec.request_type, spec.layout
    if spec.extra or spec.tail is not None or spec.name_count > 1 or request_type in _SPECIAL:
        return None
    size = 0 if layout is None else layout.size
    if not spec.name_count:
        if layout is None:
            return lambda body: None if len(body) else request_type()
        unpack = layout.unpack
        return lambda body: request_type(*unpack(body)) if len(body) == size else None

    def parse_named(body: memoryview) -> RequestBody | None:
        name = bytes(body[size:])
        # Exactly one NUL, at the end; a body shorter than the struct has no name.
        if not name or name.find(b"\0") != len(name) - 1:
            return None
        if layout is None:
            return request_type(name[:-1])
        return request_type(*layout.unpack_from(body), name[:-1])

    return parse_named


_FAST = {int(opcode): parse for opcode, spec in OPCODES.items()
         if (parse := _fast_parser(spec)) is not None}
