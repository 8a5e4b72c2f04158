"""System calls that the os module lacks (renameat2, AT_EMPTY_PATH variants)."""

from __future__ import annotations

import ctypes
import os

_libc = ctypes.CDLL(None, use_errno=True)

AT_EMPTY_PATH = 0x1000
AT_SYMLINK_NOFOLLOW = 0x100
RENAME_NOREPLACE = 1 << 0
RENAME_EXCHANGE = 1 << 1
RENAME_WHITEOUT = 1 << 2
UTIME_NOW = (1 << 30) - 1
UTIME_OMIT = (1 << 30) - 2


class _Now:
    """The time of the call, for `utimens_empty` (no nanosecond count can mean it:
    UTIME_NOW itself, 2**30 - 1 ns, is a valid time of 1.073741823 s)."""

    def __repr__(self) -> str:
        return "NOW"


NOW = _Now()


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


def _check(result: int) -> int:
    if result < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return result


def renameat2(old_dir_fd: int, old_name: bytes, new_dir_fd: int, new_name: bytes, flags: int) -> None:
    """rename(2) between two directory fds, with RENAME_NOREPLACE/EXCHANGE flags."""
    _check(_libc.renameat2(old_dir_fd, old_name, new_dir_fd, new_name, ctypes.c_uint(flags)))


def fchown_empty(fd: int, uid: int, gid: int) -> None:
    """Change the owner of the object an O_PATH fd refers to (symlinks included)."""
    _check(_libc.fchownat(fd, b"", uid, gid, AT_EMPTY_PATH | AT_SYMLINK_NOFOLLOW))


def utimens_empty(fd: int, atime_ns: int | None, mtime_ns: int | None) -> None:
    """Set atime/mtime of the object an O_PATH fd refers to.

    None leaves a time unchanged (UTIME_OMIT); `NOW` sets the time of the call.
    """
    times = (_Timespec * 2)()
    for slot, value in zip(times, (atime_ns, mtime_ns)):
        if value is None:
            slot.tv_sec, slot.tv_nsec = 0, UTIME_OMIT
        elif value is NOW:
            slot.tv_sec, slot.tv_nsec = 0, UTIME_NOW
        else:
            slot.tv_sec, slot.tv_nsec = divmod(value, 1_000_000_000)
    _check(_libc.utimensat(fd, b"", times, AT_EMPTY_PATH))


def proc_path(fd: int) -> str:
    """The /proc magic link that reopens an O_PATH fd's object."""
    return f"/proc/self/fd/{fd}"


def fallocate(fd: int, mode: int, offset: int, length: int) -> None:
    """fallocate(2) with any mode (os.posix_fallocate only does mode 0)."""
    _check(_libc.fallocate(fd, mode, ctypes.c_long(offset), ctypes.c_long(length)))


MAX_HANDLE_SZ = 128
_HANDLE_HEADER = 8  # struct file_handle: handle_bytes (u32), handle_type (i32)
# name_to_handle runs for every LOOKUP and listed entry: one buffer, and
# arguments ctypes need not convert (no argtypes, ready c_void_p pointers),
# halve its cost; so `name` must be bytes (a str would go as wchar_t *). Not
# reentrant: only called under the native session's lock (or on pyfuse3's loop).
_handle_buffer = (ctypes.c_ubyte * (_HANDLE_HEADER + MAX_HANDLE_SZ))()
_handle_view = memoryview(_handle_buffer)
_mount_id = ctypes.c_int()
_name_to_handle_at = _libc.name_to_handle_at
_HANDLE_ARGS = (ctypes.c_void_p(ctypes.addressof(_handle_buffer)), ctypes.c_void_p(ctypes.addressof(_mount_id)))


def name_to_handle(fd: int, name: bytes = b"") -> tuple[bytes, int]:
    """The file handle of the object an fd refers to (or of `name` in directory `fd`,
    never following a symlink), and its mount id (OSError)."""
    _handle_buffer[0] = MAX_HANDLE_SZ  # handle_bytes, little-endian; 128 fits its first byte
    _check(_name_to_handle_at(fd, name, *_HANDLE_ARGS, 0 if name else AT_EMPTY_PATH))
    size = _handle_buffer[0] | _handle_buffer[1] << 8
    return _handle_view[:_HANDLE_HEADER + size].tobytes(), _mount_id.value


def open_by_handle(mount_fd: int, handle: bytes, flags: int) -> int:
    """Open an object by the handle `name_to_handle` gave (needs CAP_DAC_READ_SEARCH)."""
    buf = ctypes.create_string_buffer(handle, len(handle))
    return _check(_libc.open_by_handle_at(mount_fd, buf, flags))
