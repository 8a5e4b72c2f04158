"""The request bodies: one frozen dataclass per opcode's fuse.h struct (and the header).

Fields are named as in fuse.h; padding members are dropped; names are
``bytes`` without their NUL terminator. ``opcodes.OPCODES`` says which body
each opcode has and how to read it; ``requests.parse_request`` fills them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple, Union

_body = dataclass(frozen=True, slots=True)


class InHeader(NamedTuple):
    """struct fuse_in_header; ``length`` is fuse.h's ``len``.

    A named tuple, not a dataclass: one is built for every request, and a
    tuple is built from ``IN_HEADER.unpack_from`` in a third of the time.
    """

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
    offset: int  # READ: a file position (signed loff_t); READDIR: our cookie (unsigned)
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
