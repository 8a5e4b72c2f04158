"""Constants and wire layouts of the FUSE kernel ABI, after include/uapi/linux/fuse.h (7.45).

Names follow fuse.h. Every layout is a little-endian ``struct.Struct`` in which
fuse.h's padding/unused/dummy members are written as ``x`` pad bytes, so
``unpack`` yields exactly the meaningful members, in fuse.h order, and ``pack``
zero-fills the padding. With '<' there is no implicit alignment, so formats
concatenate (``A.format + B.format[1:]``): the reply packers use that to pack
out_header and body in one call.
"""

from __future__ import annotations

import struct

# --- Versions and fixed numbers -------------------------------------------

FUSE_KERNEL_VERSION = 7
FUSE_KERNEL_MINOR_VERSION = 45
FUSE_ROOT_ID = 1
FUSE_MIN_READ_BUFFER = 8192

# Reply sizes the kernel still accepts from servers of older minors.
FUSE_COMPAT_ENTRY_OUT_SIZE = 120
FUSE_COMPAT_ATTR_OUT_SIZE = 96
FUSE_COMPAT_MKNOD_IN_SIZE = 8
FUSE_COMPAT_WRITE_IN_SIZE = 24
FUSE_COMPAT_STATFS_SIZE = 48
FUSE_COMPAT_SETXATTR_IN_SIZE = 8
FUSE_COMPAT_INIT_OUT_SIZE = 8
FUSE_COMPAT_22_INIT_OUT_SIZE = 24

# --- fuse_setattr_in.valid -------------------------------------------------

FATTR_MODE = 1 << 0
FATTR_UID = 1 << 1
FATTR_GID = 1 << 2
FATTR_SIZE = 1 << 3
FATTR_ATIME = 1 << 4
FATTR_MTIME = 1 << 5
FATTR_FH = 1 << 6
FATTR_ATIME_NOW = 1 << 7
FATTR_MTIME_NOW = 1 << 8
FATTR_LOCKOWNER = 1 << 9
FATTR_CTIME = 1 << 10
FATTR_KILL_SUIDGID = 1 << 11

# --- fuse_open_out.open_flags ----------------------------------------------

FOPEN_DIRECT_IO = 1 << 0
FOPEN_KEEP_CACHE = 1 << 1
FOPEN_NONSEEKABLE = 1 << 2
FOPEN_CACHE_DIR = 1 << 3
FOPEN_STREAM = 1 << 4
FOPEN_NOFLUSH = 1 << 5
FOPEN_PARALLEL_DIRECT_WRITES = 1 << 6
FOPEN_PASSTHROUGH = 1 << 7

# --- INIT flags (64-bit; bits 32..63 travel in flags2, see fuse.h) ----------

FUSE_ASYNC_READ = 1 << 0
FUSE_POSIX_LOCKS = 1 << 1
FUSE_FILE_OPS = 1 << 2
FUSE_ATOMIC_O_TRUNC = 1 << 3
FUSE_EXPORT_SUPPORT = 1 << 4
FUSE_BIG_WRITES = 1 << 5
FUSE_DONT_MASK = 1 << 6
FUSE_SPLICE_WRITE = 1 << 7
FUSE_SPLICE_MOVE = 1 << 8
FUSE_SPLICE_READ = 1 << 9
FUSE_FLOCK_LOCKS = 1 << 10
FUSE_HAS_IOCTL_DIR = 1 << 11
FUSE_AUTO_INVAL_DATA = 1 << 12
FUSE_DO_READDIRPLUS = 1 << 13
FUSE_READDIRPLUS_AUTO = 1 << 14
FUSE_ASYNC_DIO = 1 << 15
FUSE_WRITEBACK_CACHE = 1 << 16
FUSE_NO_OPEN_SUPPORT = 1 << 17
FUSE_PARALLEL_DIROPS = 1 << 18
FUSE_HANDLE_KILLPRIV = 1 << 19
FUSE_POSIX_ACL = 1 << 20
FUSE_ABORT_ERROR = 1 << 21
FUSE_MAX_PAGES = 1 << 22
FUSE_CACHE_SYMLINKS = 1 << 23
FUSE_NO_OPENDIR_SUPPORT = 1 << 24
FUSE_EXPLICIT_INVAL_DATA = 1 << 25
FUSE_MAP_ALIGNMENT = 1 << 26
FUSE_SUBMOUNTS = 1 << 27
FUSE_HANDLE_KILLPRIV_V2 = 1 << 28
FUSE_SETXATTR_EXT = 1 << 29
FUSE_INIT_EXT = 1 << 30
FUSE_INIT_RESERVED = 1 << 31
FUSE_SECURITY_CTX = 1 << 32
FUSE_HAS_INODE_DAX = 1 << 33
FUSE_CREATE_SUPP_GROUP = 1 << 34
FUSE_HAS_EXPIRE_ONLY = 1 << 35
FUSE_DIRECT_IO_ALLOW_MMAP = 1 << 36
FUSE_PASSTHROUGH = 1 << 37
FUSE_NO_EXPORT_SUPPORT = 1 << 38
FUSE_HAS_RESEND = 1 << 39
FUSE_ALLOW_IDMAP = 1 << 40
FUSE_OVER_IO_URING = 1 << 41
FUSE_REQUEST_TIMEOUT = 1 << 42
FUSE_DIRECT_IO_RELAX = FUSE_DIRECT_IO_ALLOW_MMAP  # obsolete alias in fuse.h

CUSE_UNRESTRICTED_IOCTL = 1 << 0

# --- Per-request flag words ------------------------------------------------

FUSE_RELEASE_FLUSH = 1 << 0
FUSE_RELEASE_FLOCK_UNLOCK = 1 << 1
FUSE_GETATTR_FH = 1 << 0
FUSE_LK_FLOCK = 1 << 0
FUSE_WRITE_CACHE = 1 << 0
FUSE_WRITE_LOCKOWNER = 1 << 1
FUSE_WRITE_KILL_SUIDGID = 1 << 2
FUSE_WRITE_KILL_PRIV = FUSE_WRITE_KILL_SUIDGID  # obsolete alias in fuse.h
FUSE_READ_LOCKOWNER = 1 << 1
FUSE_IOCTL_COMPAT = 1 << 0
FUSE_IOCTL_UNRESTRICTED = 1 << 1
FUSE_IOCTL_RETRY = 1 << 2
FUSE_IOCTL_32BIT = 1 << 3
FUSE_IOCTL_DIR = 1 << 4
FUSE_IOCTL_COMPAT_X32 = 1 << 5
FUSE_IOCTL_MAX_IOV = 256
FUSE_POLL_SCHEDULE_NOTIFY = 1 << 0
FUSE_FSYNC_FDATASYNC = 1 << 0
FUSE_ATTR_SUBMOUNT = 1 << 0
FUSE_ATTR_DAX = 1 << 1
FUSE_OPEN_KILL_SUIDGID = 1 << 0
FUSE_SETXATTR_ACL_KILL_SGID = 1 << 0
FUSE_EXPIRE_ONLY = 1 << 0
FUSE_SETUPMAPPING_FLAG_WRITE = 1 << 0
FUSE_SETUPMAPPING_FLAG_READ = 1 << 1

# enum fuse_ext_type: types 0..31 are security-context counts.
FUSE_MAX_NR_SECCTX = 31
FUSE_EXT_GROUPS = 32

# Set in fuse_in_header.unique when the kernel resends a request (FUSE_HAS_RESEND).
FUSE_UNIQUE_RESEND = 1 << 63
# fuse_in_header.uid/gid when an idmapped mount cannot map the caller.
FUSE_INVALID_UIDGID = 0xFFFFFFFF

# enum fuse_notify_code (server -> kernel messages; unique = 0, error = code).
FUSE_NOTIFY_POLL = 1
FUSE_NOTIFY_INVAL_INODE = 2
FUSE_NOTIFY_INVAL_ENTRY = 3
FUSE_NOTIFY_STORE = 4
FUSE_NOTIFY_RETRIEVE = 5
FUSE_NOTIFY_DELETE = 6
FUSE_NOTIFY_RESEND = 7
FUSE_NOTIFY_INC_EPOCH = 8
# fuse_notify_inval_inode_out: ino, off (< 0: attributes only), len.
NOTIFY_INVAL_INODE_OUT = struct.Struct("<Qqq")
# fuse_notify_inval_entry_out: parent, namelen, flags; then the name and a NUL.
NOTIFY_INVAL_ENTRY_OUT = struct.Struct("<QII")
# fuse_notify_delete_out: parent, child, namelen, padding; then the name and a NUL.
NOTIFY_DELETE_OUT = struct.Struct("<QQII")
# FUSE_NOTIFY_INC_EPOCH (7.44) has no body.

# --- /dev/fuse ioctls --------------------------------------------------------

# asm-generic ioctl encoding (x86, arm, arm64, riscv; not alpha/mips/powerpc/sparc).
_IOC_WRITE, _IOC_READ = 1, 2


def _ioc(direction: int, type_: int, nr: int, size: int) -> int:
    """_IOC(dir, type, nr, size) from include/uapi/asm-generic/ioctl.h."""
    return (direction << 30) | (size << 16) | (type_ << 8) | nr


FUSE_DEV_IOC_MAGIC = 229
# fuse_backing_map: fd, flags, padding. Unlike the layouts below, padding is a
# real member here (pack(fd, 0, 0)): it is an ioctl argument, not a message.
FUSE_BACKING_MAP = struct.Struct("<iIQ")
FUSE_DEV_IOC_CLONE = _ioc(_IOC_READ, FUSE_DEV_IOC_MAGIC, 0, 4)
FUSE_DEV_IOC_BACKING_OPEN = _ioc(_IOC_WRITE, FUSE_DEV_IOC_MAGIC, 1, FUSE_BACKING_MAP.size)
FUSE_DEV_IOC_BACKING_CLOSE = _ioc(_IOC_WRITE, FUSE_DEV_IOC_MAGIC, 2, 4)

# --- Layouts -----------------------------------------------------------------

# Signedness: fuse.h declares every request field unsigned, but the kernel
# fills file offsets and lengths from loff_t (signed 64-bit) and times from
# time64_t. Those are unpacked signed (``q``), so a negative value reaches the
# handler as the negative number the caller passed (lseek(fd, -1, SEEK_DATA)
# gives ENXIO from the backing fs), never as 2**64 - 1. Sizes the kernel
# keeps in size_t/u32 (read size, copy_file_range len) stay unsigned.

# fuse_in_header: len, opcode, unique, nodeid, uid, gid, pid, total_extlen.
IN_HEADER = struct.Struct("<IIQQIIIH2x")
# fuse_out_header: len, error (negative errno), unique.
OUT_HEADER = struct.Struct("<IiQ")

# fuse_attr: ino, size, blocks, atime, mtime, ctime, atimensec, mtimensec,
# ctimensec, mode, nlink, uid, gid, rdev, blksize, flags.
_ATTR = "QQQQQQIIIIIIIIII"
ATTR = struct.Struct("<" + _ATTR)
# fuse_entry_out: nodeid, generation, entry_valid, attr_valid,
# entry_valid_nsec, attr_valid_nsec, attr.
ENTRY_OUT = struct.Struct("<QQQQII" + _ATTR)
# fuse_attr_out: attr_valid, attr_valid_nsec, attr.
ATTR_OUT = struct.Struct("<QI4x" + _ATTR)
# fuse_open_out: fh, open_flags, backing_id (signed).
OPEN_OUT = struct.Struct("<QIi")
WRITE_OUT = struct.Struct("<I4x")  # fuse_write_out: size
# fuse_kstatfs: blocks, bfree, bavail, files, ffree, bsize, namelen, frsize.
STATFS_OUT = struct.Struct("<QQQQQIII4x24x")
GETXATTR_OUT = struct.Struct("<I4x")  # fuse_getxattr_out: size
LSEEK_OUT = struct.Struct("<Q")  # fuse_lseek_out: offset
LK_OUT = struct.Struct("<QQII")  # fuse_lk_out: fuse_file_lock start, end, type, pid
BMAP_OUT = struct.Struct("<Q")  # fuse_bmap_out: block
POLL_OUT = struct.Struct("<I4x")  # fuse_poll_out: revents
COPY_FILE_RANGE_OUT = struct.Struct("<Q")  # fuse_copy_file_range_out: bytes_copied
# fuse_init_out: major, minor, max_readahead, flags, max_background,
# congestion_threshold, max_write, time_gran, max_pages, map_alignment,
# flags2, max_stack_depth, request_timeout.
INIT_OUT = struct.Struct("<IIIIHHIIHHIIH22x")
# fuse_dirent without its name: ino, off (cookie of the next entry), namelen, type.
DIRENT_HEAD = struct.Struct("<QQII")

FORGET_IN = struct.Struct("<Q")  # nlookup
BATCH_FORGET_IN = struct.Struct("<I4x")  # count
FORGET_ONE = struct.Struct("<QQ")  # nodeid, nlookup
GETATTR_IN = struct.Struct("<I4xQ")  # getattr_flags, fh
# fuse_setattr_in: valid, fh, size, lock_owner, atime, mtime, ctime,
# atimensec, mtimensec, ctimensec, mode, uid, gid.
SETATTR_IN = struct.Struct("<I4xQqQqqqIIII4xII4x")
MKNOD_IN = struct.Struct("<III4x")  # mode, rdev, umask
MKDIR_IN = struct.Struct("<II")  # mode, umask
RENAME_IN = struct.Struct("<Q")  # newdir
RENAME2_IN = struct.Struct("<QI4x")  # newdir, flags
LINK_IN = struct.Struct("<Q")  # oldnodeid
OPEN_IN = struct.Struct("<II")  # flags, open_flags
CREATE_IN = struct.Struct("<IIII")  # flags, mode, umask, open_flags
RELEASE_IN = struct.Struct("<QIIQ")  # fh, flags, release_flags, lock_owner
FLUSH_IN = struct.Struct("<Q8xQ")  # fh, lock_owner
READ_IN = struct.Struct("<QqIIQI4x")  # fh, offset, size, read_flags, lock_owner, flags
# fuse_read_in of READDIR/READDIRPLUS: offset is a cookie we handed out, opaque.
READDIR_IN = struct.Struct("<QQIIQI4x")
WRITE_IN = struct.Struct("<QqIIQI4x")  # fh, offset, size, write_flags, lock_owner, flags
FSYNC_IN = struct.Struct("<QI4x")  # fh, fsync_flags
SETXATTR_IN = struct.Struct("<III4x")  # size, flags, setxattr_flags (FUSE_SETXATTR_EXT)
SETXATTR_IN_COMPAT = struct.Struct("<II")  # size, flags (FUSE_COMPAT_SETXATTR_IN_SIZE)
GETXATTR_IN = struct.Struct("<I4x")  # size
LK_IN = struct.Struct("<QQqqIII4x")  # fh, owner, start, end, type, pid, lk_flags
ACCESS_IN = struct.Struct("<I4x")  # mask
INIT_IN = struct.Struct("<IIIII44x")  # major, minor, max_readahead, flags, flags2
INIT_IN_COMPAT = struct.Struct("<IIII")  # fuse_init_in before 7.36
INTERRUPT_IN = struct.Struct("<Q")  # unique
BMAP_IN = struct.Struct("<QI4x")  # block, blocksize
IOCTL_IN = struct.Struct("<QIIQII")  # fh, flags, cmd, arg, in_size, out_size
POLL_IN = struct.Struct("<QQII")  # fh, kh, flags, events
FALLOCATE_IN = struct.Struct("<QqqI4x")  # fh, offset, length, mode
LSEEK_IN = struct.Struct("<QqI4x")  # fh, offset, whence
# fuse_copy_file_range_in: fh_in, off_in, nodeid_out, fh_out, off_out, len, flags.
COPY_FILE_RANGE_IN = struct.Struct("<QqQQqQQ")
SYNCFS_IN = struct.Struct("<8x")
STATX_IN = struct.Struct("<I4xQII")  # getattr_flags, fh, sx_flags, sx_mask
# fuse_notify_retrieve_in (body of FUSE_NOTIFY_REPLY): offset, size.
NOTIFY_RETRIEVE_IN = struct.Struct("<8xQI4x16x")

__all__ = [name for name in dir() if name.isupper() and not name.startswith("_")]
