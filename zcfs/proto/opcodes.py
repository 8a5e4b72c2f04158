"""FUSE opcodes (enum fuse_opcode) and the one table describing each request's body.

The table refers to the body types of ``bodies`` and ``requests.parse_request``
reads it: bodies <- opcodes <- requests, never back.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from enum import IntEnum

from . import abi
from .bodies import (
    AccessIn, BatchForgetIn, BmapIn, CopyFileRangeIn, CreateIn, DestroyIn, FallocateIn,
    FlushIn, ForgetIn, FsyncIn, GetattrIn, GetxattrIn, InitIn, InterruptIn, IoctlIn, LinkIn,
    LkIn, ListxattrIn, LookupIn, LseekIn, MkdirIn, MknodIn, NotifyReplyIn, OpenIn, PollIn,
    ReadIn, ReadlinkIn, ReleaseIn, RemovexattrIn, RenameIn, RmdirIn, SetattrIn, SetxattrIn,
    StatfsIn, StatxIn, SymlinkIn, SyncfsIn, UnlinkIn, WriteIn,
)


class Opcode(IntEnum):
    """enum fuse_opcode, without the FUSE_ prefix."""

    LOOKUP = 1  #: Look up a name in directory ``nodeid``; reply entry_out.
    FORGET = 2  #: Drop ``nlookup`` lookup references to ``nodeid``; no reply.
    GETATTR = 3  #: Get attributes; reply attr_out.
    SETATTR = 4  #: Change the attributes selected by ``valid``; reply attr_out.
    READLINK = 5  #: Read a symlink's target; reply its bytes.
    SYMLINK = 6  #: Create symlink ``name`` -> ``target``; reply entry_out.
    MKNOD = 8  #: Create a node; reply entry_out.
    MKDIR = 9  #: Create a directory; reply entry_out.
    UNLINK = 10  #: Remove a non-directory; empty reply.
    RMDIR = 11  #: Remove a directory; empty reply.
    RENAME = 12  #: Rename (no flags); empty reply.
    LINK = 13  #: Hard-link ``oldnodeid`` as ``newname`` in ``nodeid``; reply entry_out.
    OPEN = 14  #: Open a file; reply open_out.
    READ = 15  #: Read file data; reply the bytes.
    WRITE = 16  #: Write file data; reply write_out.
    STATFS = 17  #: Filesystem statistics; reply statfs_out.
    RELEASE = 18  #: Last close of an open file; empty reply.
    FSYNC = 20  #: Sync a file; empty reply.
    SETXATTR = 21  #: Set an extended attribute; empty reply.
    GETXATTR = 22  #: Get an xattr: its size (size 0) or its value.
    LISTXATTR = 23  #: List xattr names: their total size (size 0) or the list.
    REMOVEXATTR = 24  #: Remove an extended attribute; empty reply.
    FLUSH = 25  #: A close() of an open file; empty reply.
    INIT = 26  #: First request: negotiate version and features; reply init_out.
    OPENDIR = 27  #: Open a directory; reply open_out.
    READDIR = 28  #: Read directory entries; reply packed fuse_dirent.
    RELEASEDIR = 29  #: Last close of an open directory; empty reply.
    FSYNCDIR = 30  #: Sync a directory; empty reply.
    GETLK = 31  #: Test for a POSIX lock; reply lk_out.
    SETLK = 32  #: Acquire or release a POSIX lock; empty reply.
    SETLKW = 33  #: Like SETLK but wait for the lock; empty reply.
    ACCESS = 34  #: Check access permissions; empty reply.
    CREATE = 35  #: Create and open a file; reply entry_out + open_out.
    INTERRUPT = 36  #: Interrupt request ``unique``; no reply.
    BMAP = 37  #: Map a file block to a device block (fuseblk); reply bmap_out.
    DESTROY = 38  #: Filesystem is being unmounted; empty reply.
    IOCTL = 39  #: ioctl on an open file; reply ioctl_out.
    POLL = 40  #: Poll an open file; reply poll_out.
    NOTIFY_REPLY = 41  #: Data answering our FUSE_NOTIFY_RETRIEVE; no reply.
    BATCH_FORGET = 42  #: Several FORGETs in one message; no reply.
    FALLOCATE = 43  #: Allocate or punch file space; empty reply.
    READDIRPLUS = 44  #: Read directory entries with attributes; reply fuse_direntplus.
    RENAME2 = 45  #: Rename with RENAME_* flags; empty reply.
    LSEEK = 46  #: SEEK_DATA / SEEK_HOLE; reply lseek_out.
    COPY_FILE_RANGE = 47  #: Server-side copy; reply write_out (32-bit count).
    SETUPMAPPING = 48  #: DAX window mapping (virtiofs only).
    REMOVEMAPPING = 49  #: DAX window unmapping (virtiofs only).
    SYNCFS = 50  #: Sync the whole filesystem; empty reply.
    TMPFILE = 51  #: Create an unnamed file (O_TMPFILE); reply entry_out + open_out.
    STATX = 52  #: statx(); reply statx_out (ENOSYS makes the kernel use GETATTR).
    COPY_FILE_RANGE_64 = 53  #: Server-side copy; reply copy_file_range_out (64-bit count).
    CUSE_INIT = 4096  #: CUSE's INIT; never sent to a FUSE filesystem.


@dataclass(frozen=True, slots=True)
class OpSpec:
    """How to read one opcode's body: fixed struct, then names, then a data tail.

    ``layout`` unpacks to the leading fields of ``request_type`` (fuse.h
    padding is written as pad bytes); ``extra`` supplies constant fields the
    wire lacks (RENAME has no flags); ``name_count`` NUL-terminated names
    follow; ``tail`` names the field holding the length of trailing data, kept
    as a memoryview into the request buffer when ``view`` (zero-copy WRITE).
    ``replies`` is False where fuse.h says the kernel expects no reply.
    """

    request_type: type
    name_count: int = 0
    replies: bool = True
    layout: struct.Struct | None = None
    extra: tuple[int, ...] = ()
    tail: str | None = None
    view: bool = False


_S = OpSpec
_OPEN = _S(OpenIn, layout=abi.OPEN_IN)
_READ = _S(ReadIn, layout=abi.READ_IN)
_READDIR = _S(ReadIn, layout=abi.READDIR_IN)
_RELEASE = _S(ReleaseIn, layout=abi.RELEASE_IN)
_FSYNC = _S(FsyncIn, layout=abi.FSYNC_IN)
_LK = _S(LkIn, layout=abi.LK_IN)
_CREATE = _S(CreateIn, 1, layout=abi.CREATE_IN)
_COPY = _S(CopyFileRangeIn, layout=abi.COPY_FILE_RANGE_IN)

#: Opcodes absent here (SETUPMAPPING, REMOVEMAPPING, CUSE_INIT) parse as UnknownIn.
OPCODES: dict[Opcode, OpSpec] = {
    Opcode.LOOKUP: _S(LookupIn, 1),
    Opcode.FORGET: _S(ForgetIn, replies=False, layout=abi.FORGET_IN),
    Opcode.GETATTR: _S(GetattrIn, layout=abi.GETATTR_IN),
    Opcode.SETATTR: _S(SetattrIn, layout=abi.SETATTR_IN),
    Opcode.READLINK: _S(ReadlinkIn),
    Opcode.SYMLINK: _S(SymlinkIn, 2),
    Opcode.MKNOD: _S(MknodIn, 1, layout=abi.MKNOD_IN),
    Opcode.MKDIR: _S(MkdirIn, 1, layout=abi.MKDIR_IN),
    Opcode.UNLINK: _S(UnlinkIn, 1),
    Opcode.RMDIR: _S(RmdirIn, 1),
    Opcode.RENAME: _S(RenameIn, 2, layout=abi.RENAME_IN, extra=(0,)),
    Opcode.LINK: _S(LinkIn, 1, layout=abi.LINK_IN),
    Opcode.OPEN: _OPEN,
    Opcode.READ: _READ,
    Opcode.WRITE: _S(WriteIn, layout=abi.WRITE_IN, tail="size", view=True),
    Opcode.STATFS: _S(StatfsIn),
    Opcode.RELEASE: _RELEASE,
    Opcode.FSYNC: _FSYNC,
    # Compat layout; parse_request switches to SETXATTR_IN under FUSE_SETXATTR_EXT.
    Opcode.SETXATTR: _S(SetxattrIn, 1, layout=abi.SETXATTR_IN_COMPAT, extra=(0,), tail="size"),
    Opcode.GETXATTR: _S(GetxattrIn, 1, layout=abi.GETXATTR_IN),
    Opcode.LISTXATTR: _S(ListxattrIn, layout=abi.GETXATTR_IN),
    Opcode.REMOVEXATTR: _S(RemovexattrIn, 1),
    Opcode.FLUSH: _S(FlushIn, layout=abi.FLUSH_IN),
    Opcode.INIT: _S(InitIn, layout=abi.INIT_IN),  # parsed by requests._parse_init
    Opcode.OPENDIR: _OPEN,
    Opcode.READDIR: _READDIR,
    Opcode.RELEASEDIR: _RELEASE,
    Opcode.FSYNCDIR: _FSYNC,
    Opcode.GETLK: _LK,
    Opcode.SETLK: _LK,
    Opcode.SETLKW: _LK,
    Opcode.ACCESS: _S(AccessIn, layout=abi.ACCESS_IN),
    Opcode.CREATE: _CREATE,
    Opcode.INTERRUPT: _S(InterruptIn, replies=False, layout=abi.INTERRUPT_IN),
    Opcode.BMAP: _S(BmapIn, layout=abi.BMAP_IN),
    Opcode.DESTROY: _S(DestroyIn),
    Opcode.IOCTL: _S(IoctlIn, layout=abi.IOCTL_IN, tail="in_size"),
    Opcode.POLL: _S(PollIn, layout=abi.POLL_IN),
    Opcode.NOTIFY_REPLY: _S(NotifyReplyIn, replies=False, layout=abi.NOTIFY_RETRIEVE_IN,
                            tail="size"),
    # parsed by requests._parse_batch_forget
    Opcode.BATCH_FORGET: _S(BatchForgetIn, replies=False, layout=abi.BATCH_FORGET_IN),
    Opcode.FALLOCATE: _S(FallocateIn, layout=abi.FALLOCATE_IN),
    Opcode.READDIRPLUS: _READDIR,
    Opcode.RENAME2: _S(RenameIn, 2, layout=abi.RENAME2_IN),
    Opcode.LSEEK: _S(LseekIn, layout=abi.LSEEK_IN),
    Opcode.COPY_FILE_RANGE: _COPY,
    Opcode.SYNCFS: _S(SyncfsIn, layout=abi.SYNCFS_IN),
    Opcode.TMPFILE: _CREATE,
    Opcode.STATX: _S(StatxIn, layout=abi.STATX_IN),
    Opcode.COPY_FILE_RANGE_64: _COPY,
}
