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
import select
import socket
import stat
import subprocess

from ..mount import MountConfig, UsageError, mount_device, mount_options
from ..proto import abi

_libc = ctypes.CDLL(None, use_errno=True)

MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_SYNCHRONOUS, MS_REMOUNT = 1, 2, 4, 8, 16, 32
MS_DIRSYNC, MS_NOATIME, MS_NODIRATIME, MS_RELATIME, MS_STRICTATIME = 128, 1024, 2048, 1 << 21, 1 << 24
MNT_DETACH = 2

# option -> (flags to set, flags to clear)
MOUNT_FLAGS = {
    "ro": (MS_RDONLY, 0), "rw": (0, MS_RDONLY),
    "nosuid": (MS_NOSUID, 0), "suid": (0, MS_NOSUID),
    "nodev": (MS_NODEV, 0), "dev": (0, MS_NODEV),
    "noexec": (MS_NOEXEC, 0), "exec": (0, MS_NOEXEC),
    "noatime": (MS_NOATIME, MS_RELATIME | MS_STRICTATIME), "atime": (0, MS_NOATIME),
    "nodiratime": (MS_NODIRATIME, 0), "diratime": (0, MS_NODIRATIME),
    "relatime": (MS_RELATIME, MS_NOATIME | MS_STRICTATIME), "norelatime": (0, MS_RELATIME),
    "strictatime": (MS_STRICTATIME, MS_NOATIME | MS_RELATIME), "nostrictatime": (0, MS_STRICTATIME),
    "sync": (MS_SYNCHRONOUS, 0), "async": (0, MS_SYNCHRONOUS),
    "dirsync": (MS_DIRSYNC, 0),
}

# Why a mount cannot be made, and what to change; the first line that applies is said.
_NO_DEVICE = ("/dev/fuse is missing: load the fuse module (modprobe fuse) on the host, "
              "or give the container the device (docker/podman run --device /dev/fuse)")
_DEVICE_DENIED = ("the device cgroup forbids /dev/fuse: give the container the device "
                  "(docker/podman run --device /dev/fuse; Kubernetes: a device plugin or a privileged pod)")
_NOT_PERMITTED = ("mounting needs CAP_SYS_ADMIN: run the container with --cap-add SYS_ADMIN, or let zcfs "
                  "mount in a user namespace (unshare -Urm zcfs ...; Docker needs --security-opt "
                  "seccomp=unconfined or a profile that allows unshare and mount, and AppArmor may need "
                  "apparmor=unconfined)")
_NO_FUSERMOUNT = "not privileged to mount and fusermount3 is not installed (apt-get install fuse3)"


def mount_flags(options: list[str], flags: int = MS_NOSUID | MS_NODEV) -> int:
    """The mount(2) flags `options` make of `flags`, in order (later ones win)."""
    for option in options:
        add, clear = MOUNT_FLAGS[option]
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


# mountpoint -> "major:minor" of the mount we made there, so that `unmount`
# never detaches a mount someone else made at the same place since.
_mounted: dict[str, str | None] = {}


def mount(config: MountConfig) -> int:
    """Mount `config.mountpoint` and return the /dev/fuse fd (UsageError on failure)."""
    fd = _mount(config)
    _mounted[config.mountpoint] = mount_device(config.mountpoint)
    return fd


def release(dev_fd: int) -> None:
    """Let go of the device, which ends the connection; the fd number stays taken (by /dev/null).

    A worker still waiting on the disk may write its reply late: it must not
    land in whatever file would otherwise be opened under that number.
    """
    null = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
    os.dup2(null, dev_fd, inheritable=False)
    os.close(null)


def wait_unmounted(mountpoint: str) -> bool:
    """Block until no mount of the one we made at `mountpoint` is left in our mount namespace.

    The kernel ends a FUSE connection only when the last copy of its mount
    goes, and a copy lives on in every mount namespace made while it was
    mounted (`unshare -m`, a service's private namespace): after `umount`
    here the daemon would serve those for as long as they live. The
    mount's own namespace decides instead. Mount-table changes wake a
    poll(2) of /proc/self/mountinfo (POLLPRI); bind mounts of our mount
    share its device, so they count as it. True once gone; False at once
    if it cannot be watched (then only the kernel's ENODEV ends the session).
    """
    if _mounted.get(mountpoint) is None:
        return False
    device = _mounted[mountpoint].encode()
    try:
        with open("/proc/self/mountinfo", "rb") as table:
            poller = select.poll()
            poller.register(table, select.POLLPRI)
            while True:
                table.seek(0)
                if not any(line.split()[2] == device for line in table.read().splitlines()):
                    return True
                poller.poll()
    except OSError:
        return False


def _mount(config: MountConfig) -> int:
    """Mount, one way or the other.

    mount(2) when we may (root, or root of a user namespace that owns the
    mount namespace); else the setuid fusermount3, which mounts for us: as
    a user, or without CAP_SYS_ADMIN. (It opens /dev/fuse with the user's
    rights, so where the device is 0600 only root mounts; its complaint
    then says what to change.) `auto_unmount` always goes through
    fusermount3, which stays to unmount when the daemon dies.
    """
    if "auto_unmount" in config.extra_fuse_options:
        return _mount_with_fusermount(config)
    try:
        fd = os.open("/dev/fuse", os.O_RDWR | os.O_CLOEXEC)
    except OSError as exc:
        if exc.errno in (errno.ENOENT, errno.ENODEV, errno.ENXIO):
            raise UsageError(f"cannot mount {config.mountpoint}: {_NO_DEVICE}") from None
        if exc.errno == errno.EPERM and os.geteuid() == 0:
            raise UsageError(f"cannot mount {config.mountpoint}: {_DEVICE_DENIED}") from None
        if exc.errno not in (errno.EACCES, errno.EPERM):
            raise UsageError(f"cannot open /dev/fuse: {exc.strerror}") from None
        return _mount_with_fusermount(config)  # e.g. a user where /dev/fuse is 0600
    result = _libc.mount(
        config.fsname.encode(), config.mountpoint.encode(), f"fuse.{config.subtype}".encode(),
        ctypes.c_ulong(mount_flags(config.flag_options)), _fuse_data(config, fd).encode())
    if result == 0:
        return fd
    err = ctypes.get_errno()
    os.close(fd)
    if err not in (errno.EPERM, errno.EACCES):
        raise UsageError(f"cannot mount {config.mountpoint}: {os.strerror(err)}")
    return _mount_with_fusermount(config)


# fusermount3 helpers kept running (auto_unmount) with our end of their socket:
# when this process ends, the socket closes and the helper unmounts.
_auto_unmounters: list[tuple[subprocess.Popen, socket.socket]] = []


def _mount_with_fusermount(config: MountConfig) -> int:
    options = [f"fsname={_escape(config.fsname)}", f"subtype={_escape(config.subtype)}",
               *config.flag_options, *config.extra_fuse_options]
    if config.allow_other:
        options.append("allow_other")
    if config.default_permissions:
        options.append("default_permissions")
    stays = "auto_unmount" in config.extra_fuse_options
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    with theirs:
        try:
            helper = subprocess.Popen(
                ["fusermount3", "-o", ",".join(options), "--", config.mountpoint],
                env={**os.environ, "_FUSE_COMMFD": str(theirs.fileno())},
                pass_fds=(theirs.fileno(),), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE)
        except FileNotFoundError:
            ours.close()
            raise UsageError(f"cannot mount {config.mountpoint}: {_NO_FUSERMOUNT}") from None
    _, fds, _, _ = socket.recv_fds(ours, 1, 1)
    if fds and stays:
        _auto_unmounters.append((helper, ours))
    else:
        with ours:
            _, stderr = helper.communicate()
        if not fds:
            raise UsageError(f"cannot mount {config.mountpoint}: {_fusermount_failure(stderr)}")
    os.set_inheritable(fds[0], False)
    return fds[0]


def _escape(value: str) -> str:
    """An option value as fusermount3's -o parser reads it back (`,` and `\\` escaped)."""
    return value.replace("\\", "\\\\").replace(",", "\\,")


def _fusermount_failure(stderr: bytes) -> str:
    """fusermount3's last complaint, with what to change when it is a missing privilege."""
    lines = stderr.decode(errors="replace").strip().splitlines()
    said = lines[-1] if lines else "fusermount3 failed"
    if "Operation not permitted" in said and "mount failed" in said:
        return f"{said}; {_NOT_PERMITTED}"
    if "user_allow_other" in said:
        return f"{said} (add the line user_allow_other to /etc/fuse.conf as root, or drop allow_other)"
    if "/dev/fuse" in said and ("No such file" in said or "device not found" in said):
        return f"{said}; {_NO_DEVICE}"
    if "/dev/fuse" in said and "Operation not permitted" in said:
        return f"{said}; {_DEVICE_DENIED}"
    if "/dev/fuse" in said and "Permission denied" in said:
        # fusermount3 opens the device with the caller's rights: its mode is the admin's policy.
        mode = stat.S_IMODE(os.stat("/dev/fuse").st_mode)
        return (f"{said}; /dev/fuse is mode {mode:04o} here, so only root may mount FUSE filesystems: "
                f"as root, chmod 0666 /dev/fuse (the usual default; a udev rule keeps it), or run zcfs as root")
    return said


def remount(mountpoint: str, options: list[str]) -> None:
    """Change the flags of the FUSE mount at `mountpoint` (mount -o remount,...); UsageError if impossible.

    The flags start from the mount's current ones, so an option not given
    stays as it is. The daemon needs to know nothing: the kernel refuses
    writes to a read-only mount itself.
    """
    current = mount_flags([o for o in mount_options(mountpoint) if o in MOUNT_FLAGS], flags=0)
    if _libc.mount(None, mountpoint.encode(), None,
                   ctypes.c_ulong(MS_REMOUNT | mount_flags(options, current)), None) == 0:
        return
    err = ctypes.get_errno()
    if err == errno.EPERM:
        raise UsageError(
            f"cannot remount {mountpoint}: changing a mount's flags needs CAP_SYS_ADMIN (fusermount3 "
            f"cannot remount); unmount it (fusermount3 -u {mountpoint}) and mount it again with the new options")
    raise UsageError(f"cannot remount {mountpoint}: {os.strerror(err)}")


# The new mount API (Linux 5.12+; the numbers are the same on every architecture).
_SYS_OPEN_TREE, _SYS_MOUNT_SETATTR = 428, 442
_OPEN_TREE_CLONE, _AT_RECURSIVE, _AT_EMPTY_PATH = 1, 0x8000, 0x1000
_MOUNT_ATTR_ATIME_MASK, _MOUNT_ATTR_NOATIME, _MOUNT_ATTR_STRICTATIME = 0x70, 0x10, 0x20
_MOUNT_ATTR_RELATIME, _MOUNT_ATTR_NODIRATIME = 0x0, 0x80


class _MountAttr(ctypes.Structure):
    _fields_ = [("attr_set", ctypes.c_uint64), ("attr_clr", ctypes.c_uint64),
                ("propagation", ctypes.c_uint64), ("userns_fd", ctypes.c_uint64)]


def atime_view(backing: str, options: list[str]) -> int:
    """An O_PATH fd on a private copy of the backing dir's mount with the atime options of `options`.

    Every backing file zcfs opens below it, and every file the kernel opens
    for passthrough from those, follows these options, as a bind mount
    would: `-o noatime` leaves the backing atime alone on every tier, for
    reads, mmap and exec alike. -1 when `options` name no atime option.
    The copy is detached (in no mount table) and goes away with its last
    fd. OSError if the kernel refuses (it needs CAP_SYS_ADMIN over the
    mount namespace: root, or root of a user namespace).
    """
    atime_options = [o for o in options if o in MOUNT_FLAGS and "atime" in o]
    if not atime_options:
        return -1
    flags = mount_flags(atime_options, flags=0)
    attr = _MountAttr()
    attr.attr_clr = _MOUNT_ATTR_ATIME_MASK | _MOUNT_ATTR_NODIRATIME
    attr.attr_set = (_MOUNT_ATTR_NOATIME if flags & MS_NOATIME else
                     _MOUNT_ATTR_STRICTATIME if flags & MS_STRICTATIME else _MOUNT_ATTR_RELATIME)
    if flags & MS_NODIRATIME:
        attr.attr_set |= _MOUNT_ATTR_NODIRATIME
    syscall = _libc.syscall
    fd = syscall(_SYS_OPEN_TREE, -100, os.fsencode(backing),
                 ctypes.c_uint(_OPEN_TREE_CLONE | _AT_RECURSIVE | os.O_CLOEXEC))
    if fd < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    if syscall(_SYS_MOUNT_SETATTR, fd, b"", ctypes.c_uint(_AT_EMPTY_PATH | _AT_RECURSIVE),
               ctypes.byref(attr), ctypes.c_size_t(ctypes.sizeof(attr))) < 0:
        err = ctypes.get_errno()
        os.close(fd)
        raise OSError(err, os.strerror(err))
    return fd


def unmount(mountpoint: str) -> None:
    """Detach our mount if it is still there (after the kernel said ENODEV it is gone)."""
    if mountpoint in _mounted and mount_device(mountpoint) != _mounted[mountpoint]:
        return  # gone already, or another mount now sits there
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
