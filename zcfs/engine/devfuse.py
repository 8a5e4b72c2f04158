"""The /dev/fuse device: mounting, unmounting, backing-file ioctls.

Two ways to mount (see FUSE-NOTES): mount(2) when we may (root, or root in
a user namespace that owns the mount namespace), else fusermount3, which
mounts for us and hands the /dev/fuse fd back over a unix socket named in
`_FUSE_COMMFD` (SCM_RIGHTS).
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import os
import socket
import subprocess

from ..mount import MountConfig, UsageError
from ..proto import abi

_libc = ctypes.CDLL(None, use_errno=True)

MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 1, 2, 4, 8
MS_SYNCHRONOUS, MS_DIRSYNC, MS_NOATIME, MS_RELATIME, MS_STRICTATIME = 16, 128, 1024, 1 << 21, 1 << 24
MNT_DETACH = 2

# option -> (flags to set, flags to clear)
_MOUNT_FLAGS = {
    "ro": (MS_RDONLY, 0), "rw": (0, MS_RDONLY),
    "nosuid": (MS_NOSUID, 0), "suid": (0, MS_NOSUID),
    "nodev": (MS_NODEV, 0), "dev": (0, MS_NODEV),
    "noexec": (MS_NOEXEC, 0), "exec": (0, MS_NOEXEC),
    "noatime": (MS_NOATIME, 0), "atime": (0, MS_NOATIME),
    "relatime": (MS_RELATIME, 0), "norelatime": (0, MS_RELATIME),
    "strictatime": (MS_STRICTATIME, 0),
    "sync": (MS_SYNCHRONOUS, 0), "async": (0, MS_SYNCHRONOUS),
    "dirsync": (MS_DIRSYNC, 0),
}


def _mount_flags(config: MountConfig) -> int:
    flags = MS_NOSUID | MS_NODEV
    for option in config.flag_options:
        add, clear = _MOUNT_FLAGS[option]
        flags = (flags | add) & ~clear
    return flags


def _fuse_data(config: MountConfig, fd: int) -> str:
    parts = [f"fd={fd}", "rootmode=40000", f"user_id={os.getuid()}", f"group_id={os.getgid()}"]
    if config.allow_other:
        parts.append("allow_other")
    if config.default_permissions:
        parts.append("default_permissions")
    parts += [o for o in config.extra_fuse_options if o.startswith("max_read=")]
    return ",".join(parts)


def mount(config: MountConfig) -> int:
    """Mount `config.mountpoint` and return the /dev/fuse fd (UsageError on failure)."""
    try:
        fd = os.open("/dev/fuse", os.O_RDWR | os.O_CLOEXEC)
    except OSError as exc:
        raise UsageError(f"cannot open /dev/fuse: {exc.strerror}") from None
    result = _libc.mount(
        config.fsname.encode(), config.mountpoint.encode(), f"fuse.{config.subtype}".encode(),
        ctypes.c_ulong(_mount_flags(config)), _fuse_data(config, fd).encode())
    if result == 0:
        return fd
    err = ctypes.get_errno()
    os.close(fd)
    if err not in (errno.EPERM, errno.EACCES):
        raise UsageError(f"cannot mount {config.mountpoint}: {os.strerror(err)}")
    return _mount_with_fusermount(config)


def _mount_with_fusermount(config: MountConfig) -> int:
    options = [f"fsname={config.fsname}", f"subtype={config.subtype}", *config.flag_options]
    if config.allow_other:
        options.append("allow_other")
    if config.default_permissions:
        options.append("default_permissions")
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    with ours, theirs:
        try:
            helper = subprocess.Popen(
                ["fusermount3", "-o", ",".join(options), "--", config.mountpoint],
                env={**os.environ, "_FUSE_COMMFD": str(theirs.fileno())},
                pass_fds=(theirs.fileno(),), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        except FileNotFoundError:
            raise UsageError("cannot mount: not privileged and fusermount3 is not installed") from None
        theirs.close()
        _, fds, _, _ = socket.recv_fds(ours, 1, 1)
        _, stderr = helper.communicate()
    if not fds:
        message = stderr.decode(errors="replace").strip().splitlines()
        raise UsageError(f"cannot mount {config.mountpoint}: {message[-1] if message else 'fusermount3 failed'}")
    os.set_inheritable(fds[0], False)
    return fds[0]


def unmount(mountpoint: str) -> None:
    """Detach the mount if it is still there (after the kernel said ENODEV it is gone)."""
    if _libc.umount2(mountpoint.encode(), MNT_DETACH) == 0:
        return
    if ctypes.get_errno() in (errno.EPERM, errno.EACCES):
        subprocess.run(["fusermount3", "-u", "-z", "-q", mountpoint],
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def backing_open(dev_fd: int, file_fd: int) -> int:
    """Register `file_fd` with the kernel for passthrough; returns the backing id (OSError)."""
    request = bytearray(abi.FUSE_BACKING_MAP.pack(file_fd, 0, 0))
    # A mutable buffer makes fcntl.ioctl return the ioctl's own result,
    # which is the id (with bytes it would return the buffer instead).
    return fcntl.ioctl(dev_fd, abi.FUSE_DEV_IOC_BACKING_OPEN, request)


def backing_close(dev_fd: int, backing_id: int) -> None:
    """Forget a backing id (OSError ENOENT if the kernel does not know it)."""
    fcntl.ioctl(dev_fd, abi.FUSE_DEV_IOC_BACKING_CLOSE, bytearray(backing_id.to_bytes(4, "little")))
