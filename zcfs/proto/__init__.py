"""Sans-I/O FUSE kernel protocol: parse requests, pack replies, negotiate INIT.

Pure functions on bytes (include/uapi/linux/fuse.h, protocol 7.45); no
syscalls, so the engine owns all I/O and this package is testable offline.

``zcfs.proto.negotiate`` stays the module (call ``negotiate.negotiate(...)``):
re-exporting the function under the same name would shadow the module.
"""

from . import abi, negotiate
from .abi import *  # noqa: F401,F403  (fuse.h constants and layouts)
from .negotiate import (
    DEFAULT_WANT, MIN_MINOR, Negotiated, Wishes, pack_init_out, request_buffer_size,
)
from .opcodes import OPCODES, Opcode, OpSpec
from .replies import (
    DirentBuffer, pack_attr, pack_attr_out, pack_bmap_out, pack_copy_file_range_out,
    pack_create_out, pack_data, pack_empty, pack_entry_out, pack_error, pack_getxattr_size,
    pack_lk_out, pack_lseek_out, pack_open_out, pack_out_header, pack_statfs_out,
    pack_write_out,
)
from .requests import (
    AccessIn, BatchForgetIn, BmapIn, CopyFileRangeIn, CreateIn, DestroyIn, FallocateIn,
    FlushIn, ForgetIn, FsyncIn, GetattrIn, GetxattrIn, InHeader, InitIn, InterruptIn, IoctlIn,
    LinkIn, LkIn, ListxattrIn, LookupIn, LseekIn, MkdirIn, MknodIn, NotifyReplyIn, OpenIn,
    PollIn, ProtocolError, ReadIn, ReadlinkIn, ReleaseIn, RemovexattrIn, RenameIn, Request,
    RequestBody, RmdirIn, SetattrIn, SetxattrIn, StatfsIn, StatxIn, SymlinkIn, SyncfsIn,
    TmpfileIn, UnknownIn, UnlinkIn, WriteIn, parse_request,
)

__all__ = [
    "abi", *abi.__all__,
    "DEFAULT_WANT", "MIN_MINOR", "Negotiated", "Wishes", "negotiate", "pack_init_out",
    "request_buffer_size",
    "OPCODES", "Opcode", "OpSpec",
    "DirentBuffer", "pack_attr", "pack_attr_out", "pack_bmap_out", "pack_copy_file_range_out",
    "pack_create_out", "pack_data", "pack_empty", "pack_entry_out", "pack_error",
    "pack_getxattr_size", "pack_lk_out", "pack_lseek_out", "pack_open_out", "pack_out_header",
    "pack_statfs_out", "pack_write_out",
    "AccessIn", "BatchForgetIn", "BmapIn", "CopyFileRangeIn", "CreateIn", "DestroyIn",
    "FallocateIn", "FlushIn", "ForgetIn", "FsyncIn", "GetattrIn", "GetxattrIn", "InHeader",
    "InitIn", "InterruptIn", "IoctlIn", "LinkIn", "LkIn", "ListxattrIn", "LookupIn", "LseekIn",
    "MkdirIn", "MknodIn", "NotifyReplyIn", "OpenIn", "PollIn", "ProtocolError", "ReadIn",
    "ReadlinkIn", "ReleaseIn", "RemovexattrIn", "RenameIn", "Request", "RequestBody",
    "RmdirIn", "SetattrIn", "SetxattrIn", "StatfsIn", "StatxIn", "SymlinkIn", "SyncfsIn",
    "TmpfileIn", "UnknownIn", "UnlinkIn", "WriteIn", "parse_request",
]
