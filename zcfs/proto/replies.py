"""Pack replies to FUSE requests: a fuse_out_header followed by the opcode's reply struct.

Every ``pack_*`` function returns the complete message to write to /dev/fuse
in one ``write``. Attribute sources are duck-typed: anything with ``st_*``
fields (os.stat_result, pyfuse3.EntryAttributes) or ``f_*`` fields
(os.statvfs_result, pyfuse3.StatvfsData).
"""

from __future__ import annotations

import errno as _errno
import functools
import math
import struct

from . import abi

_U64 = (1 << 64) - 1
_NS = 1_000_000_000
# The kernel converts (u64 sec, u32 nsec) timeouts through a signed time64_t
# (fuse_time_to_jiffies); clamp so huge or infinite floats stay positive.
_MAX_TIMEOUT = float(1 << 32)
# FUSE_NAME_MAX in fs/fuse/fuse_i.h: longer dirent names fail the whole READDIR.
_NAME_MAX = 1024
_DOTS = (b".", b"..")
_PADDING = [bytes(n) for n in range(8)]


def _with_header(*layouts: struct.Struct) -> struct.Struct:
    """One Struct packing out_header followed by ``layouts``."""
    return struct.Struct(abi.OUT_HEADER.format + "".join(s.format[1:] for s in layouts))


_ENTRY = _with_header(abi.ENTRY_OUT)
_ATTR = _with_header(abi.ATTR_OUT)
_OPEN = _with_header(abi.OPEN_OUT)
_CREATE = _with_header(abi.ENTRY_OUT, abi.OPEN_OUT)
_WRITE = _with_header(abi.WRITE_OUT)
_STATFS = _with_header(abi.STATFS_OUT)
_GETXATTR = _with_header(abi.GETXATTR_OUT)
_LSEEK = _with_header(abi.LSEEK_OUT)
_LK = _with_header(abi.LK_OUT)
_BMAP = _with_header(abi.BMAP_OUT)
_COPY = _with_header(abi.COPY_FILE_RANGE_OUT)
_DIRENT_SIZE = abi.DIRENT_HEAD.size
# fuse_direntplus: fuse_entry_out then fuse_dirent's head, packed in one call.
_DIRENTPLUS = struct.Struct(abi.ENTRY_OUT.format + abi.DIRENT_HEAD.format[1:])
_DIRENTPLUS_SIZE = _DIRENTPLUS.size
_NO_ENTRY_OUT = bytes(abi.ENTRY_OUT.size)  # nodeid 0: the kernel only lists the name


def pack_out_header(unique: int, error: int, length: int) -> bytes:
    """fuse_out_header alone; ``error`` is 0 or -errno, ``length`` the whole reply's size."""
    return abi.OUT_HEADER.pack(length, error, unique)


def pack_error(unique: int, errno_positive: int) -> bytes:
    """Error reply (header only).

    The kernel refuses a reply whose error is not in -511..-1 with EINVAL and
    leaves the request pending, hanging its caller; so anything outside
    1..511 (None, 0, a bogus code) is sent as EIO instead.
    """
    if not isinstance(errno_positive, int) or not 0 < errno_positive < 512:
        errno_positive = _errno.EIO
    return abi.OUT_HEADER.pack(abi.OUT_HEADER.size, -errno_positive, unique)


def pack_notify_inval_inode(nodeid: int, offset: int = -1, length: int = 0) -> bytes:
    """FUSE_NOTIFY_INVAL_INODE: the kernel drops its cached attributes of
    ``nodeid`` (and its page cache from ``offset`` on, unless negative)."""
    return _notify(abi.FUSE_NOTIFY_INVAL_INODE, abi.NOTIFY_INVAL_INODE_OUT.pack(nodeid, offset, length))


def _notify(code: int, body: bytes) -> bytes:
    """A notification: unique 0, the code in the error field (fuse.h, enum fuse_notify_code)."""
    return abi.OUT_HEADER.pack(abi.OUT_HEADER.size + len(body), code, 0) + body


def pack_notify_inval_entry(parent: int, name: bytes, expire_only: bool = False) -> bytes:
    """FUSE_NOTIFY_INVAL_ENTRY: the kernel drops ``name`` in directory
    ``parent`` from its dentry cache (with FUSE_EXPIRE_ONLY: only expires it)."""
    flags = abi.FUSE_EXPIRE_ONLY if expire_only else 0
    return _notify(abi.FUSE_NOTIFY_INVAL_ENTRY,
                   abi.NOTIFY_INVAL_ENTRY_OUT.pack(parent, len(name), flags) + name + b"\0")


def pack_notify_delete(parent: int, child: int, name: bytes) -> bytes:
    """FUSE_NOTIFY_DELETE: ``name`` in ``parent``, which was node ``child``, is gone."""
    return _notify(abi.FUSE_NOTIFY_DELETE, abi.NOTIFY_DELETE_OUT.pack(parent, child, len(name), 0) + name + b"\0")


def pack_notify_inc_epoch() -> bytes:
    """FUSE_NOTIFY_INC_EPOCH: every dentry the kernel holds must be looked up again."""
    return _notify(abi.FUSE_NOTIFY_INC_EPOCH, b"")


def pack_empty(unique: int) -> bytes:
    """Success with no payload (UNLINK, RELEASE, FSYNC, SETXATTR, ...)."""
    return abi.OUT_HEADER.pack(abi.OUT_HEADER.size, 0, unique)


def pack_data(unique: int, data: bytes | bytearray | memoryview) -> bytes:
    """Success followed by raw bytes (READ, READLINK, xattr values and lists, dirent buffers)."""
    return abi.OUT_HEADER.pack(abi.OUT_HEADER.size + len(data), 0, unique) + data


def _attr_values(attr, ino: int | None = None) -> tuple[int, ...]:
    """fuse_attr members from a stat-like object (None: all zero, for nodeid 0
    entries), with inode number `ino` instead of its st_ino if given."""
    if attr is None:
        return (0,) * 16
    asec, ansec = divmod(attr.st_atime_ns, _NS)
    msec, mnsec = divmod(attr.st_mtime_ns, _NS)
    csec, cnsec = divmod(attr.st_ctime_ns, _NS)
    # Pre-1970 seconds are negative; the kernel reads the u64 back as s64.
    # st_rdev: fuse_attr.rdev is 32-bit, and glibc's dev_t agrees with the
    # kernel's new_encode_dev in those 32 bits for majors < 4096.
    return (attr.st_ino if ino is None else ino, attr.st_size, attr.st_blocks, asec & _U64, msec & _U64, csec & _U64,
            ansec, mnsec, cnsec, attr.st_mode, attr.st_nlink, attr.st_uid, attr.st_gid,
            attr.st_rdev & 0xFFFFFFFF, attr.st_blksize, 0)


# A mount uses a handful of timeouts, converted twice for every entry it sends.
@functools.lru_cache(maxsize=64)
def _timeout(seconds: float) -> tuple[int, int]:
    """Float seconds -> (valid, valid_nsec); negative and NaN mean 0 (do not cache)."""
    if not seconds > 0:
        return 0, 0
    frac, whole = math.modf(min(seconds, _MAX_TIMEOUT))
    return int(whole), min(int(frac * _NS), _NS - 1)


def _entry_values(nodeid: int, generation: int, entry_timeout: float, attr_timeout: float,
                  attr, ino: int | None = None) -> tuple[int, ...]:
    """fuse_entry_out members (`ino`: as in _attr_values)."""
    return (nodeid, generation, *_validity(entry_timeout, attr_timeout), *_attr_values(attr, ino))


@functools.lru_cache(maxsize=64)
def _validity(entry_timeout: float, attr_timeout: float) -> tuple[int, int, int, int]:
    """fuse_entry_out's entry_valid, attr_valid, entry_valid_nsec, attr_valid_nsec."""
    entry_valid, entry_nsec = _timeout(entry_timeout)
    attr_valid, attr_nsec = _timeout(attr_timeout)
    return entry_valid, attr_valid, entry_nsec, attr_nsec


def pack_attr(attr) -> bytes:
    """The 88-byte fuse_attr for ``attr`` (flags 0)."""
    return abi.ATTR.pack(*_attr_values(attr))


def pack_entry_out(unique: int, nodeid: int, generation: int, entry_timeout: float,
                   attr_timeout: float, attr, ino: int | None = None) -> bytes:
    """LOOKUP, MKNOD, MKDIR, SYMLINK, LINK reply (`ino`: shown instead of attr.st_ino).

    For LOOKUP, ``nodeid`` 0 with ``attr`` None is a cacheable negative entry
    (ENOENT remembered for ``entry_timeout``).
    """
    return _ENTRY.pack(_ENTRY.size, 0, unique,
                       *_entry_values(nodeid, generation, entry_timeout, attr_timeout, attr, ino))


def pack_attr_out(unique: int, attr_timeout: float, attr, ino: int | None = None) -> bytes:
    """GETATTR and SETATTR reply (`ino`: shown instead of attr.st_ino)."""
    return _ATTR.pack(_ATTR.size, 0, unique, *_timeout(attr_timeout), *_attr_values(attr, ino))


def pack_open_out(unique: int, fh: int, open_flags: int, backing_id: int = 0) -> bytes:
    """OPEN and OPENDIR reply.

    ``backing_id`` comes from FUSE_DEV_IOC_BACKING_OPEN and goes with FOPEN_PASSTHROUGH.
    """
    return _OPEN.pack(_OPEN.size, 0, unique, fh, open_flags, backing_id)


def pack_create_out(unique: int, nodeid: int, generation: int, entry_timeout: float,
                    attr_timeout: float, attr, fh: int, open_flags: int,
                    backing_id: int = 0) -> bytes:
    """CREATE and TMPFILE reply: fuse_entry_out then fuse_open_out."""
    return _CREATE.pack(_CREATE.size, 0, unique,
                        *_entry_values(nodeid, generation, entry_timeout, attr_timeout, attr),
                        fh, open_flags, backing_id)


def pack_write_out(unique: int, size: int) -> bytes:
    """WRITE (and COPY_FILE_RANGE) reply: bytes written."""
    return _WRITE.pack(_WRITE.size, 0, unique, size)


def pack_statfs_out(unique: int, st) -> bytes:
    """STATFS reply from a statvfs-like object."""
    return _STATFS.pack(_STATFS.size, 0, unique, st.f_blocks, st.f_bfree, st.f_bavail,
                        st.f_files, st.f_ffree, st.f_bsize, st.f_namemax, st.f_frsize)


def pack_getxattr_size(unique: int, size: int) -> bytes:
    """GETXATTR/LISTXATTR reply to a size-0 probe: the size the value would need."""
    return _GETXATTR.pack(_GETXATTR.size, 0, unique, size)


def pack_lseek_out(unique: int, offset: int) -> bytes:
    """LSEEK reply: the resulting offset."""
    return _LSEEK.pack(_LSEEK.size, 0, unique, offset)


def pack_lk_out(unique: int, start: int, end: int, type_: int, pid: int) -> bytes:
    """GETLK reply: the conflicting lock, or type F_UNLCK if none."""
    return _LK.pack(_LK.size, 0, unique, start, end, type_, pid)


def pack_bmap_out(unique: int, block: int) -> bytes:
    """BMAP reply."""
    return _BMAP.pack(_BMAP.size, 0, unique, block)


def pack_copy_file_range_out(unique: int, bytes_copied: int) -> bytes:
    """COPY_FILE_RANGE_64 reply (COPY_FILE_RANGE uses pack_write_out)."""
    return _COPY.pack(_COPY.size, 0, unique, bytes_copied)


class DirentBuffer:
    """Accumulates a READDIR (fuse_dirent) or READDIRPLUS (fuse_direntplus) payload.

    ``size`` is the request's ``ReadIn.size``: the payload, not counting the
    out_header, must not exceed it. ``len()`` is the payload size so far;
    ``count`` the number of entries added.
    """

    __slots__ = ("size", "plus", "count", "_buf")

    def __init__(self, size: int, plus: bool = False):
        self.size = size
        self.plus = plus
        self.count = 0
        self._buf = bytearray()

    def __len__(self) -> int:
        return len(self._buf)

    def add(self, name: bytes, ino: int, type_: int, next_offset: int,
            entry: tuple | None = None) -> bool:
        """Append one entry; return False, adding nothing, if it would not fit.

        ``type_`` is the DT_* value, (st_mode >> 12) & 15; ``next_offset`` the
        cookie the kernel sends back to continue after this entry. In plus
        mode ``entry`` is (nodeid, generation, entry_timeout, attr_timeout,
        attr), or None for nodeid 0: the kernel then only lists the name;
        ``attr`` may be a plain os.stat_result, since ``ino`` is the inode
        number its fuse_attr shows too (as stat and a plain READDIR agree).
        The kernel takes one lookup reference for every plus entry with a
        nonzero nodeid, except "." and "..", which it ignores; those must
        therefore carry nodeid 0 (enforced) so the engine's counts stay right.
        """
        namelen = len(name)
        # Each of these makes the kernel fail the whole reply with EIO.
        if not 0 < namelen <= _NAME_MAX or b"/" in name:
            raise ValueError(f"invalid directory entry name {name!r}")
        buf = self._buf
        reclen = (_DIRENTPLUS_SIZE if self.plus else _DIRENT_SIZE) + namelen
        padded = (reclen + 7) & ~7  # FUSE_DIRENT_ALIGN: records start 8-byte aligned
        if len(buf) + padded > self.size:
            return False
        # Appended piece by piece, an entry with attributes in one pack: this
        # runs for every entry of every listing.
        if entry is not None:
            if not self.plus:
                raise ValueError("entry is only meaningful for READDIRPLUS")
            nodeid, generation, entry_timeout, attr_timeout, attr = entry
            if nodeid and name in _DOTS:
                raise ValueError(f"{name!r} must have nodeid 0 (the kernel ignores it)")
            if nodeid == abi.FUSE_ROOT_ID:
                raise ValueError("READDIRPLUS entries may not point at FUSE_ROOT_ID")
            buf += _DIRENTPLUS.pack(nodeid, generation, *_validity(entry_timeout, attr_timeout),
                                    *_attr_values(attr, ino), ino, next_offset, namelen, type_)
        else:
            if self.plus:
                buf += _NO_ENTRY_OUT
            buf += abi.DIRENT_HEAD.pack(ino, next_offset, namelen, type_)
        buf += name
        buf += _PADDING[padded - reclen]
        self.count += 1
        return True

    def pack(self, unique: int) -> bytes:
        """The complete reply: out_header and the entries added so far."""
        return pack_data(unique, self._buf)
