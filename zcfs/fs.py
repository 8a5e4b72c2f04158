"""ZcfsOperations: the passthrough filesystem, written once for both engines.

Every operation works relative to the O_PATH fd of an inode (`openat`-style,
one name at a time, never following symlinks), so no name can climb out of
the backing directory and renames underneath do not confuse us. Handlers
just make their syscalls: `OSError` becomes `FUSEError` in one place
(`_errors`). Data-path syscalls that can block for long (pread, pwrite,
fsync) go through `run_blocking`, so one slow disk request does not stall
the others.

The native engine calls the same methods with duck-typed request contexts
and setattr fields (objects with the attribute names pyfuse3 uses), and
serves READ itself from `file_fd()`: this class says where the bytes are,
the engine picks the tier.
"""

from __future__ import annotations

import dataclasses
import errno
import functools
import logging
import os
import stat
from typing import Any, Callable, Iterator

import pyfuse3
import trio

from . import syscalls
from .inodes import ROOT_INODE, Inode, InodeTable

log = logging.getLogger(__name__)

STATS_XATTR = b"user.zcfs.stats"  # read on the mount root: the stats channel
STATS_XATTR_SIZE = 65536  # its value's constant size: XATTR_SIZE_MAX, the JSON then spaces

# Backing filesystems that report every write error at write(2) time, so a
# close() has nothing to add: FLUSH is then refused with ENOSYS, and the
# kernel stops sending it (one round trip less per close). Network
# filesystems (NFS, SMB, ...) may defer errors to close, and keep FLUSH.
_LOCAL_FILESYSTEMS = {"ext2", "ext3", "ext4", "xfs", "btrfs", "tmpfs", "ramfs", "overlay", "f2fs",
                      "zfs", "bcachefs", "jfs", "reiserfs", "nilfs2", "vfat", "exfat"}


@dataclasses.dataclass(frozen=True)
class FsOptions:
    """Settings of the filesystem proper (cache timeouts in seconds)."""

    cache: str = "auto"  # the policy the settings below came from (see CACHE_POLICIES)
    entry_timeout: float = 1.0
    attr_timeout: float = 1.0
    negative_timeout: float = 0.0
    keep_cache: bool = True
    direct_io: bool = False  # bypass the mount's page cache (splice/copy tiers)
    writeback_cache: bool = False  # the kernel gathers writes (native engine, splice/copy tiers)
    cache_dir: bool = False  # let the kernel keep directory listings (FOPEN_CACHE_DIR)
    read_only: bool = False


_DAY = 86400.0

# -o cache=POLICY: how much the kernel may remember without asking us, as
# virtiofsd and sshfs users know it. What each promises about changes made
# directly in the backing directory is in the README.
CACHE_POLICIES: dict[str, dict[str, object]] = {
    # Every lookup, stat and read asks the daemon.
    "never": dict(entry_timeout=0.0, attr_timeout=0.0, negative_timeout=0.0, keep_cache=False,
                  direct_io=True, cache_dir=False),
    # Names and attributes for a second; file data kept while its mtime holds.
    "auto": dict(entry_timeout=1.0, attr_timeout=1.0, negative_timeout=0.0, keep_cache=True,
                 direct_io=False, cache_dir=False),
    # Only the mount changes the backing dir: remember everything, listings too.
    "always": dict(entry_timeout=_DAY, attr_timeout=_DAY, negative_timeout=_DAY, keep_cache=True,
                   direct_io=False, cache_dir=True),
}


@dataclasses.dataclass(eq=False)
class OpenFile:
    """An open backing file: the fd behind a file handle."""

    fd: int
    inode: Inode
    flags: int


@dataclasses.dataclass(eq=False)
class OpenDir:
    """An open directory: a listing snapshot so offsets stay stable."""

    inode: Inode
    # (name, d_ino, d_type) taken when a listing starts at offset 0;
    # offset k means "after entry k-1", so entries vanishing or appearing
    # mid-listing never shift or repeat what the caller already has.
    entries: list[tuple[bytes, int, int]] | None = None


def _errors(handler: Callable[..., Any]) -> Callable[..., Any]:
    """Turn OSError from a handler's syscalls into FUSEError (one place for all)."""

    @functools.wraps(handler)
    async def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return await handler(*args, **kwargs)
        except OSError as exc:
            raise pyfuse3.FUSEError(exc.errno or errno.EIO) from None

    return wrapper


def _check_name(name: bytes) -> bytes:
    """Refuse names that could leave their directory (EINVAL)."""
    if not name or b"/" in name or b"\0" in name or name in (b".", b".."):
        raise pyfuse3.FUSEError(errno.EINVAL)
    if len(name) > 255:
        raise pyfuse3.FUSEError(errno.ENAMETOOLONG)
    return name


class ZcfsOperations(pyfuse3.Operations):
    """A read-write mirror of a backing directory."""

    supports_dot_lookup = True  # FUSE_EXPORT_SUPPORT: file handles of the mount (see inodes.py)
    enable_writeback_cache = False
    enable_acl = False

    def __init__(self, backing_dir: str, options: FsOptions = FsOptions(), stats: Any = None,
                 backing_type: str | None = None) -> None:
        super().__init__()
        root_fd = os.open(backing_dir, os.O_PATH | os.O_DIRECTORY)
        self.options = options
        self.inodes = InodeTable(root_fd)
        self.stats = stats  # anything with a `json()` method, or None
        self._files: dict[int, OpenFile] = {}
        self._dirs: dict[int, OpenDir] = {}
        self._next_fh = 1
        self._as_root = os.geteuid() == 0
        # backing_type: the backing dir's filesystem type, if known (see _LOCAL_FILESYSTEMS).
        self._flush_on_close = backing_type not in _LOCAL_FILESYSTEMS

    async def run_blocking(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run a syscall that may wait on the disk without holding up other requests.

        Here (pyfuse3's loop) in a trio worker thread; the native engine,
        whose requests already run in threads, replaces it with a plain call.
        """
        return await trio.to_thread.run_sync(fn, *args)

    # -- helpers ---------------------------------------------------------

    def _inode(self, number: int) -> Inode:
        try:
            return self.inodes.get(number)
        except KeyError:
            raise pyfuse3.FUSEError(errno.ESTALE) from None

    def _new_fh(self) -> int:
        fh = self._next_fh
        self._next_fh += 1
        return fh

    def file(self, fh: int) -> OpenFile:
        """The open file behind handle `fh` (EBADF if unknown)."""
        try:
            return self._files[fh]
        except KeyError:
            raise pyfuse3.FUSEError(errno.EBADF) from None

    def find_file(self, fh: int) -> OpenFile | None:
        """The open file behind handle `fh`, or None."""
        return self._files.get(fh)

    def file_fd(self, fh: int) -> int:
        """The backing fd to read a handle's bytes from (the read seam)."""
        return self.file(fh).fd

    def _attributes(self, inode: Inode, st: os.stat_result | None = None) -> pyfuse3.EntryAttributes:
        if st is None:
            st = os.fstat(inode.fd)
        entry = pyfuse3.EntryAttributes()
        for name in ("st_mode", "st_nlink", "st_uid", "st_gid", "st_rdev", "st_size",
                     "st_blksize", "st_blocks", "st_atime_ns", "st_mtime_ns", "st_ctime_ns"):
            setattr(entry, name, getattr(st, name))
        entry.st_ino = inode.number
        entry.generation = inode.generation
        entry.entry_timeout = self.options.entry_timeout
        entry.attr_timeout = self.options.attr_timeout
        return entry

    def _lookup_name(self, parent: Inode, name: bytes) -> tuple[Inode, os.stat_result]:
        """Find `name` in `parent` and count one kernel lookup of it."""
        fd = os.open(name, os.O_PATH | os.O_NOFOLLOW, dir_fd=parent.fd)
        try:
            st = os.fstat(fd)
        except BaseException:
            os.close(fd)
            raise
        return self.inodes.remember(fd, st), st

    def _entry_for(self, parent: Inode, name: bytes) -> pyfuse3.EntryAttributes:
        inode, st = self._lookup_name(parent, name)
        return self._attributes(inode, st)

    def _check_writable(self) -> None:
        if self.options.read_only:
            raise pyfuse3.FUSEError(errno.EROFS)

    def _give_to_caller(self, parent: Inode, name: bytes, ctx: Any) -> None:
        """Make a new object owned by the calling process, as a local fs would.

        Only possible as root. The group comes from a setgid parent, as
        POSIX says, else from the caller.
        """
        if not self._as_root or (ctx.uid == 0 and ctx.gid == 0):
            return
        parent_mode = os.fstat(parent.fd).st_mode
        gid = -1 if parent_mode & stat.S_ISGID else ctx.gid
        before = os.stat(name, dir_fd=parent.fd, follow_symlinks=False)
        os.chown(name, ctx.uid, gid, dir_fd=parent.fd, follow_symlinks=False)
        # chown clears setuid/setgid on files; the caller asked for them.
        setid = before.st_mode & (stat.S_ISUID | stat.S_ISGID)
        if setid and not stat.S_ISLNK(before.st_mode):
            os.chmod(name, stat.S_IMODE(before.st_mode), dir_fd=parent.fd)

    # -- lookup and attributes ------------------------------------------

    @_errors
    async def lookup(self, parent_inode: int, name: bytes, ctx: Any = None) -> pyfuse3.EntryAttributes:
        if name == b".":
            # The kernel decoding a file handle of an inode it dropped: the
            # table reopens a node id it forgot from the handle it encodes.
            return self._attributes(self.inodes.relookup(parent_inode))
        parent = self._inode(parent_inode)
        if name == b"..":
            if parent.number == ROOT_INODE:
                return self._attributes(self.inodes.relookup(ROOT_INODE))
            return self._entry_for(parent, b"..")
        try:
            return self._entry_for(parent, _check_name(name))
        except FileNotFoundError:
            if not self.options.negative_timeout:
                raise
        # A negative entry (node id 0): the kernel remembers the name is absent.
        absent = pyfuse3.EntryAttributes()
        absent.entry_timeout = self.options.negative_timeout
        return absent

    async def forget(self, inode_list: Any) -> None:
        for number, count in inode_list:
            self.inodes.forget(number, count)

    @_errors
    async def getattr(self, inode: int, ctx: Any = None) -> pyfuse3.EntryAttributes:
        return self._attributes(self._inode(inode))

    @_errors
    async def setattr(self, inode: int, attr: Any, fields: Any, fh: int | None, ctx: Any) -> pyfuse3.EntryAttributes:
        node = self._inode(inode)
        self._check_writable()
        path = syscalls.proc_path(node.fd)
        if fields.update_size:
            if fh is not None and fh in self._files:
                os.ftruncate(self._files[fh].fd, attr.st_size)
            else:
                os.truncate(path, attr.st_size)
        if fields.update_mode:
            if node.is_symlink:
                raise pyfuse3.FUSEError(errno.EOPNOTSUPP)
            os.chmod(path, stat.S_IMODE(attr.st_mode))
        if fields.update_uid or fields.update_gid:
            uid = attr.st_uid if fields.update_uid else -1
            gid = attr.st_gid if fields.update_gid else -1
            syscalls.fchown_empty(node.fd, uid, gid)
        if fields.update_atime or fields.update_mtime:
            syscalls.utimens_empty(
                node.fd,
                attr.st_atime_ns if fields.update_atime else None,
                attr.st_mtime_ns if fields.update_mtime else None,
            )
        return self._attributes(node)

    @_errors
    async def readlink(self, inode: int, ctx: Any = None) -> bytes:
        return os.fsencode(os.readlink("", dir_fd=self._inode(inode).fd))

    @_errors
    async def access(self, inode: int, mode: int, ctx: Any) -> bool:
        """Check `mode` (R_OK|W_OK|X_OK) for the caller from the backing permissions."""
        return _permitted(os.fstat(self._inode(inode).fd), mode, ctx)

    # -- namespace -------------------------------------------------------

    @_errors
    async def mknod(self, parent_inode: int, name: bytes, mode: int, rdev: int, ctx: Any) -> pyfuse3.EntryAttributes:
        parent = self._inode(parent_inode)
        self._check_writable()
        os.mknod(_check_name(name), mode, rdev, dir_fd=parent.fd)
        self._give_to_caller(parent, name, ctx)
        return self._entry_for(parent, name)

    @_errors
    async def mkdir(self, parent_inode: int, name: bytes, mode: int, ctx: Any) -> pyfuse3.EntryAttributes:
        parent = self._inode(parent_inode)
        self._check_writable()
        os.mkdir(_check_name(name), mode, dir_fd=parent.fd)
        self._give_to_caller(parent, name, ctx)
        return self._entry_for(parent, name)

    @_errors
    async def symlink(self, parent_inode: int, name: bytes, target: bytes, ctx: Any) -> pyfuse3.EntryAttributes:
        parent = self._inode(parent_inode)
        self._check_writable()
        os.symlink(target, _check_name(name), dir_fd=parent.fd)
        self._give_to_caller(parent, name, ctx)
        return self._entry_for(parent, name)

    @_errors
    async def link(self, inode: int, new_parent_inode: int, new_name: bytes, ctx: Any) -> pyfuse3.EntryAttributes:
        node = self._inode(inode)
        parent = self._inode(new_parent_inode)
        self._check_writable()
        # linkat through the magic link follows it to the object itself,
        # never to a symlink's target.
        os.link(syscalls.proc_path(node.fd), _check_name(new_name), dst_dir_fd=parent.fd, follow_symlinks=True)
        return self._entry_for(parent, new_name)

    @_errors
    async def unlink(self, parent_inode: int, name: bytes, ctx: Any) -> None:
        self._remove(parent_inode, name, os.unlink)

    @_errors
    async def rmdir(self, parent_inode: int, name: bytes, ctx: Any) -> None:
        self._remove(parent_inode, name, os.rmdir)

    def _remove(self, parent_inode: int, name: bytes, remove: Callable[..., None]) -> None:
        """unlink or rmdir `name`, keeping the fd of an object that loses its last name."""
        self._check_writable()
        parent = self._inode(parent_inode)
        victim = self._last_link_victim(parent, _check_name(name))
        remove(name, dir_fd=parent.fd)
        if victim is not None:
            self.inodes.keep_fd(victim)

    @_errors
    async def rename(self, parent_inode_old: int, name_old: bytes, parent_inode_new: int,
                     name_new: bytes, flags: int, ctx: Any) -> None:
        self._check_writable()
        old_parent = self._inode(parent_inode_old)
        new_parent = self._inode(parent_inode_new)
        victim = None
        if not flags & (syscalls.RENAME_EXCHANGE | syscalls.RENAME_NOREPLACE):
            victim = self._last_link_victim(new_parent, _check_name(name_new))
        syscalls.renameat2(old_parent.fd, _check_name(name_old), new_parent.fd, _check_name(name_new), flags)
        if victim is not None:
            self.inodes.keep_fd(victim)

    def _last_link_victim(self, parent: Inode, name: bytes) -> Inode | None:
        """The known inode whose last name removing `name` takes, its fd opened now.

        The kernel can still reach an object after its last name is gone
        (an O_PATH fd, a cwd in a removed directory), but its file handle no
        longer opens it: so once removed, its fd is pinned, never evicted
        (forget closes it). None if `name` is not such a last link.
        """
        try:
            st = os.stat(name, dir_fd=parent.fd, follow_symlinks=False)
        except OSError:
            return None  # the removal itself reports why
        if not stat.S_ISDIR(st.st_mode) and st.st_nlink > 1:
            return None
        victim = self.inodes.known(st, parent.fd, name)
        if victim is None:
            return None
        try:
            victim.fd  # reopened by handle if evicted, while the object still has its name
        except OSError:
            return None  # an older object that had this inode number
        return victim

    # -- files -----------------------------------------------------------

    def _open_file(self, inode: Inode, fd: int, flags: int) -> pyfuse3.FileInfo:
        fh = self._new_fh()
        self._files[fh] = OpenFile(fd, inode, flags)
        self.inodes.pin(inode)  # an open file may be unlinked: keep its inode's fd
        return pyfuse3.FileInfo(fh=fh, keep_cache=self.options.keep_cache, direct_io=self.options.direct_io)

    @_errors
    async def open(self, inode: int, flags: int, ctx: Any) -> pyfuse3.FileInfo:
        node = self._inode(inode)
        if self.options.read_only and flags & os.O_ACCMODE != os.O_RDONLY:
            raise pyfuse3.FUSEError(errno.EROFS)
        # Reopen the object itself; O_CREAT/O_EXCL/O_NOCTTY mean nothing here,
        # and O_NOFOLLOW (the kernel already refused symlinks) would make the
        # /proc magic link itself fail with ELOOP (cp -a and rsync use it).
        flags &= ~(os.O_CREAT | os.O_EXCL | os.O_NOCTTY | os.O_NOFOLLOW)
        fd = os.open(syscalls.proc_path(node.fd), _backing_flags(flags, self.options.writeback_cache))
        return self._open_file(node, fd, flags)

    @_errors
    async def create(self, parent_inode: int, name: bytes, mode: int, flags: int,
                     ctx: Any) -> tuple[pyfuse3.FileInfo, pyfuse3.EntryAttributes]:
        parent = self._inode(parent_inode)
        self._check_writable()
        backing_flags = _backing_flags(flags, self.options.writeback_cache) | os.O_NOFOLLOW
        try:
            fd = os.open(_check_name(name), backing_flags | os.O_CREAT | os.O_EXCL, mode, dir_fd=parent.fd)
            created = True
        except FileExistsError:
            # Someone made the name in the backing dir since the kernel's
            # lookup: open it as an existing file, never give it away.
            if flags & os.O_EXCL:
                raise
            fd = os.open(name, backing_flags & ~os.O_CREAT, dir_fd=parent.fd)
            created = False
        try:
            if created:
                self._give_to_caller(parent, name, ctx)
            elif not _permitted(os.fstat(fd), _access_mode(flags), ctx):
                raise pyfuse3.FUSEError(errno.EACCES)
            node, st = self._lookup_name(parent, name)
        except BaseException:
            os.close(fd)
            raise
        return self._open_file(node, fd, flags), self._attributes(node, st)

    @_errors
    async def read(self, fh: int, off: int, size: int) -> bytes:
        return await self.run_blocking(os.pread, self.file(fh).fd, size, off)

    @_errors
    async def write(self, fh: int, off: int, buf: bytes) -> int:
        return await self.run_blocking(os.pwrite, self.file(fh).fd, buf, off)

    @_errors
    async def flush(self, fh: int) -> None:
        opened = self.file(fh)
        if not self._flush_on_close:
            raise pyfuse3.FUSEError(errno.ENOSYS)  # see _LOCAL_FILESYSTEMS
        # close() of a dup reports deferred write errors (NFS) without
        # closing the handle, which stays open until RELEASE.
        os.close(os.dup(opened.fd))

    @_errors
    async def fsync(self, fh: int, datasync: bool) -> None:
        await self.run_blocking(os.fdatasync if datasync else os.fsync, self.file(fh).fd)

    @_errors
    async def release(self, fh: int) -> None:
        opened = self._files.pop(fh, None)
        if opened is not None:
            os.close(opened.fd)
            self.inodes.unpin(opened.inode)

    # -- beyond pyfuse3: the native engine dispatches these --------------

    @_errors
    async def fallocate(self, fh: int, mode: int, offset: int, length: int) -> None:
        await self.run_blocking(syscalls.fallocate, self.file(fh).fd, mode, offset, length)

    @_errors
    async def lseek(self, fh: int, offset: int, whence: int) -> int:
        return os.lseek(self.file(fh).fd, offset, whence)

    @_errors
    async def copy_file_range(self, fh_in: int, off_in: int, fh_out: int, off_out: int,
                              length: int, flags: int) -> int:
        fd_in, fd_out = self.file(fh_in).fd, self.file(fh_out).fd
        return await self.run_blocking(os.copy_file_range, fd_in, fd_out, length, off_in, off_out)

    # -- directories -----------------------------------------------------

    @_errors
    async def opendir(self, inode: int, ctx: Any) -> int:
        node = self._inode(inode)
        fh = self._new_fh()
        self._dirs[fh] = OpenDir(node)
        self.inodes.pin(node)
        return fh

    def _opendir(self, fh: int) -> OpenDir:
        try:
            return self._dirs[fh]
        except KeyError:
            raise pyfuse3.FUSEError(errno.EBADF) from None

    def list_entries(self, fh: int, start: int) -> Iterator[tuple[int, bytes, int, int]]:
        """Yield (next_offset, name, d_ino, d_type) from offset `start` on.

        Offset 0 (re)reads the directory, like rewinddir().
        """
        opened = self._opendir(fh)
        if start == 0 or opened.entries is None:
            opened.entries = _read_directory(opened.inode.fd)
        for index in range(start, len(opened.entries)):
            name, d_ino, d_type = opened.entries[index]
            yield index + 1, name, d_ino, d_type

    def lookup_entry(self, fh: int, name: bytes) -> pyfuse3.EntryAttributes | None:
        """Look up a listed name for READDIRPLUS; None if it vanished since."""
        try:
            return self._entry_for(self._opendir(fh).inode, name)
        except FileNotFoundError:
            return None

    @_errors
    async def readdir(self, fh: int, start_id: int, token: Any) -> None:
        for next_offset, name, _, _ in self.list_entries(fh, start_id):
            entry = self.lookup_entry(fh, name)
            if entry is None:
                continue
            if not pyfuse3.readdir_reply(token, name, entry, next_offset):
                # Not sent: the kernel will not count this lookup.
                self.inodes.forget(entry.st_ino, 1)
                break

    async def releasedir(self, fh: int) -> None:
        opened = self._dirs.pop(fh, None)
        if opened is not None:
            self.inodes.unpin(opened.inode)

    @_errors
    async def fsyncdir(self, fh: int, datasync: bool) -> None:
        fd = os.open(syscalls.proc_path(self._opendir(fh).inode.fd), os.O_RDONLY | os.O_DIRECTORY)
        try:
            await self.run_blocking(os.fdatasync if datasync else os.fsync, fd)
        finally:
            os.close(fd)

    @_errors
    async def statfs(self, ctx: Any = None) -> pyfuse3.StatvfsData:
        st = os.statvfs(self.inodes.root.fd)
        data = pyfuse3.StatvfsData()
        for name in ("f_bsize", "f_frsize", "f_blocks", "f_bfree", "f_bavail",
                     "f_files", "f_ffree", "f_favail", "f_namemax"):
            setattr(data, name, getattr(st, name))
        return data

    # -- extended attributes ---------------------------------------------

    def _xattr_path(self, inode: int) -> str:
        return syscalls.proc_path(self._inode(inode).fd)

    @_errors
    async def setxattr(self, inode: int, name: bytes, value: bytes, ctx: Any, flags: int = 0) -> None:
        self._check_writable()
        os.setxattr(self._xattr_path(inode), name, value, flags)

    @_errors
    async def getxattr(self, inode: int, name: bytes, ctx: Any = None) -> bytes:
        if inode == ROOT_INODE and name == STATS_XATTR and self.stats is not None:
            # Always the largest size, so the size a caller asks for first
            # still fits the value a moment later, however the counters grew.
            return self.stats.json().encode().ljust(STATS_XATTR_SIZE)
        return os.getxattr(self._xattr_path(inode), name)

    @_errors
    async def listxattr(self, inode: int, ctx: Any = None) -> list[bytes]:
        names = [os.fsencode(n) for n in os.listxattr(self._xattr_path(inode))]
        if ctx is not None and ctx.uid != 0:
            # We list as root; local filesystems show trusted.* names only to
            # CAP_SYS_ADMIN (the kernel already refuses other callers their values).
            names = [n for n in names if not n.startswith(b"trusted.")]
        return names

    @_errors
    async def removexattr(self, inode: int, name: bytes, ctx: Any) -> None:
        self._check_writable()
        os.removexattr(self._xattr_path(inode), name)

    def close(self) -> None:
        """Release every fd we hold (after unmount)."""
        for opened in self._files.values():
            os.close(opened.fd)
        self._files.clear()
        self._dirs.clear()
        self.inodes.close_all()


def _permitted(st: os.stat_result, mode: int, ctx: Any) -> bool:
    """Whether the caller in `ctx` may access an object with `st` for `mode`."""
    if mode == os.F_OK:
        return True
    if ctx.uid == 0:
        # root may do anything but execute a file no one may execute
        return not (mode & os.X_OK) or stat.S_ISDIR(st.st_mode) or bool(st.st_mode & 0o111)
    if ctx.uid == st.st_uid:
        granted = (st.st_mode >> 6) & 7
    elif ctx.gid == st.st_gid or st.st_gid in _groups_of(ctx.pid):
        granted = (st.st_mode >> 3) & 7
    else:
        granted = st.st_mode & 7
    return mode & granted == mode


def _access_mode(flags: int) -> int:
    """The access() mode an open with `flags` needs."""
    return {os.O_RDONLY: os.R_OK, os.O_WRONLY: os.W_OK}.get(flags & os.O_ACCMODE, os.R_OK | os.W_OK)


def _backing_flags(flags: int, writeback_cache: bool = False) -> int:
    """Open flags for the backing fd behind a handle.

    No O_DIRECT: the kernel already bypasses the mount's page cache for such
    a handle, and our reads and writes use buffers of any alignment, which
    an O_DIRECT backing fd refuses with EINVAL.

    No O_APPEND: the kernel puts every WRITE at its offset itself (an
    append write at its idea of the end of file), and writes back dirty
    pages of a shared mmap through any writable handle of the inode, an
    O_APPEND one included; pwrite on an O_APPEND fd ignores the offset and
    would append those pages instead of writing them in place.

    With the writeback cache, write-only is read-write: the kernel reads
    through any handle to fill the rest of a page it writes in part.
    """
    if writeback_cache and flags & os.O_ACCMODE == os.O_WRONLY:
        flags = flags & ~os.O_ACCMODE | os.O_RDWR
    return (flags & ~(os.O_DIRECT | os.O_APPEND)) | os.O_CLOEXEC


def _read_directory(dir_o_path_fd: int) -> list[tuple[bytes, int, int]]:
    """List a directory (without . and ..) as (name, d_ino, d_type)."""
    fd = os.open(syscalls.proc_path(dir_o_path_fd), os.O_RDONLY | os.O_DIRECTORY)
    try:
        with os.scandir(fd) as listing:
            return [(os.fsencode(e.name), e.inode(), _dtype(e)) for e in listing]
    finally:
        os.close(fd)


def _dtype(entry: os.DirEntry) -> int:
    """The DT_* type of a directory entry, without a stat where possible."""
    try:
        if entry.is_symlink():
            return stat.S_IFLNK >> 12
        if entry.is_dir(follow_symlinks=False):
            return stat.S_IFDIR >> 12
        if entry.is_file(follow_symlinks=False):
            return stat.S_IFREG >> 12
        return stat.S_IFMT(entry.stat(follow_symlinks=False).st_mode) >> 12
    except OSError:
        return 0  # DT_UNKNOWN: it vanished; the caller's stat will say so


def _groups_of(pid: int) -> set[int]:
    """Supplementary groups of a process (for access())."""
    try:
        with open(f"/proc/{pid}/status", "rb") as status:
            for line in status:
                if line.startswith(b"Groups:"):
                    return {int(g) for g in line.split()[1:]}
    except OSError:
        pass
    return set()
