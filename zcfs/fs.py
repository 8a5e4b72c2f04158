"""ZcfsOperations: the passthrough filesystem, written once for both engines.

Every operation works relative to the O_PATH fd of an inode (`openat`-style,
one name at a time, never following symlinks), so no name can climb out of
the backing directory and renames underneath do not confuse us. Handlers
just make their syscalls: `OSError` becomes `FUSEError` in one place
(`_errors`), or, for the plain methods the native engine calls for its
commonest requests (`find`, `stat_inode`, ...), is answered with `errno_of`
by the engine. Data-path syscalls that can block for long (pread, pwrite,
fsync) go through `run_blocking`, so one slow disk request does not stall
the others.

The native engine calls the same methods with duck-typed request contexts
and setattr fields (objects with the attribute names pyfuse3 uses), and
serves READ itself from `file_fd()`: this class says where the bytes are,
the engine picks the tier.
"""

from __future__ import annotations

import bisect
import contextlib
import dataclasses
import errno
import functools
import logging
import os
import stat
import threading
from typing import Any, Callable, Iterator

import pyfuse3
import trio

from . import syscalls
from .inodes import ROOT_INODE, Inode, InodeTable

log = logging.getLogger(__name__)

STATS_XATTR = b"user.zcfs.stats"  # read on the mount root: the stats channel
STATS_XATTR_SIZE = 65536  # its value's constant size: XATTR_SIZE_MAX, the JSON then spaces
ACL_ACCESS_XATTR = b"system.posix_acl_access"
# Asked for every file `ls -l` lists (libselinux's lgetfilecon). A host with
# SELinux answers it in its own LSM and never sends it here.
SELINUX_XATTR = b"security.selinux"
DOT_NAMES = (b".", b"..")  # listed first in every directory
_DT_DIR = stat.S_IFDIR >> 12

# Backing filesystems that report every write error at write(2) time, so a
# close() has nothing to add: FLUSH is then refused with ENOSYS, and the
# kernel stops sending it (one round trip less per close). Network
# filesystems (NFS, SMB, ...) may defer errors to close, and keep FLUSH.
_LOCAL_FILESYSTEMS = {"ext2", "ext3", "ext4", "xfs", "btrfs", "tmpfs", "ramfs", "overlay", "f2fs",
                      "zfs", "bcachefs", "jfs", "reiserfs", "nilfs2", "vfat", "exfat"}


_DAY = 86400.0


@dataclasses.dataclass(frozen=True)
class FsOptions:
    """Settings of the filesystem proper (cache timeouts in seconds); the defaults are `cache=watch`."""

    cache: str = "watch"  # the policy the settings below came from (see CACHE_POLICIES)
    entry_timeout: float = _DAY
    attr_timeout: float = _DAY
    negative_timeout: float = _DAY
    keep_cache: bool = True
    direct_io: bool = False  # bypass the mount's page cache (splice/copy tiers)
    writeback_cache: bool = False  # the kernel gathers writes (native engine, splice/copy tiers)
    cache_dir: bool = False  # let the kernel keep directory listings (FOPEN_CACHE_DIR)
    # Watch the backing dir and tell the kernel what others change there
    # (engine/watch.py), so the long timeouts above stay correct.
    watch: bool = True
    read_only: bool = False
    noatime: bool = False  # open backing files with O_NOATIME where permitted (see _open_backing)
    # -o strictatime: every read must reach the backing file (its atime), so
    # opens off the passthrough tier bypass the mount's page cache, as direct_io.
    strictatime: bool = False

    def unwatched(self) -> FsOptions:
        """These settings where the backing dir cannot be watched: `cache=auto`'s
        timeouts and listings instead of the watch policy's (explicit settings stay)."""
        if not self.watch:
            return self
        watched, fallback = CACHE_POLICIES["watch"], CACHE_POLICIES["auto"]
        changes = {name: fallback[name] for name, value in watched.items()
                   if name in fallback and getattr(self, name) == value}
        return dataclasses.replace(self, **{**changes, "watch": False})


# -o cache=POLICY: how much the kernel may remember without asking us, as
# virtiofsd and sshfs users know it. What each promises about changes made
# directly in the backing directory is in the README.
CACHE_POLICIES: dict[str, dict[str, object]] = {
    # Every lookup, stat and read asks the daemon.
    "never": dict(entry_timeout=0.0, attr_timeout=0.0, negative_timeout=0.0, keep_cache=False,
                  direct_io=True, cache_dir=False, watch=False),
    # Names and attributes for a second; file data kept while its mtime holds.
    "auto": dict(entry_timeout=1.0, attr_timeout=1.0, negative_timeout=0.0, keep_cache=True,
                 direct_io=False, cache_dir=False, watch=False),
    # Remember names, attributes and data, and have the kernel forget what
    # others change in the backing dir (engine/watch.py); `auto` where that
    # cannot be watched. Listings are read afresh: with them kept, the suite's
    # readdir_while_changing (names created and removed through the mount
    # while others list) still saw a wrong listing (native-auto and -splice,
    # CI run), after keeps_listing fixed one race of kept listings.
    "watch": dict(entry_timeout=_DAY, attr_timeout=_DAY, negative_timeout=_DAY, keep_cache=True,
                  direct_io=False, cache_dir=False, watch=True),
    # Only the mount changes the backing dir: remember everything, listings too.
    "always": dict(entry_timeout=_DAY, attr_timeout=_DAY, negative_timeout=_DAY, keep_cache=True,
                   direct_io=False, cache_dir=True, watch=False),
}


@dataclasses.dataclass(eq=False)
class OpenFile:
    """An open backing file: the fd behind a file handle."""

    fd: int
    inode: Inode
    flags: int


# (next_offset, name, d_ino, d_type, inode, lstat): a listed entry looked up
# for READDIRPLUS (see ZcfsOperations.list_looked_up).
ListedEntry = tuple[int, bytes, int, int, Inode | None, os.stat_result | None]


@dataclasses.dataclass(eq=False)
class OpenDir:
    """An open directory: a listing snapshot, in the order of its entries' cookies."""

    inode: Inode
    # (cookie, name, d_ino, d_type) taken when a listing starts at offset 0
    # (or goes on from a cookie in a fresh open); see _cookie.
    entries: list[tuple[int, bytes, int, int]] | None = None


def errno_of(exc: OSError) -> int:
    """The errno a handler's failed syscall is answered with."""
    return exc.errno or errno.EIO


def _errors(handler: Callable[..., Any]) -> Callable[..., Any]:
    """Turn OSError from a handler's syscalls into FUSEError (one place for all
    pyfuse3 handlers; the native engine maps errno_of itself, one raise less)."""

    @functools.wraps(handler)
    async def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return await handler(*args, **kwargs)
        except OSError as exc:
            raise pyfuse3.FUSEError(errno_of(exc)) from None

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
    # POSIX ACLs enforced and cached by the kernel (FUSE_POSIX_ACL); the
    # pyfuse3 engine sets it per mount (it needs default_permissions).
    enable_acl = True
    # Whether the kernel may complete an O_DIRECT write before its WRITEs are
    # answered (FUSE_ASYNC_DIO: libfuse always asks for it). It then does not
    # drop the pages buffered readers brought back meanwhile, so the daemon
    # must (see write). The native engine never asks for it.
    async_direct_writes = True

    def __init__(self, backing_dir: str, options: FsOptions = FsOptions(), stats: Any = None,
                 backing_type: str | None = None) -> None:
        super().__init__()
        root_fd = os.open(backing_dir, os.O_PATH | os.O_DIRECTORY)
        self.options = options
        self.inodes = InodeTable(root_fd)
        self.stats = stats  # anything with a `json()` method, or None
        self._files: dict[int, OpenFile] = {}
        self._dirs: dict[int, OpenDir] = {}
        # node id -> the one open of that directory whose listing the kernel
        # may keep (FOPEN_CACHE_DIR); see keeps_listing.
        self._listing_keepers: dict[int, int] = {}
        # Removed files we let go of (their fd closed so their space comes
        # back) while the kernel still knows them: node id -> last attributes.
        self._gone: dict[int, os.stat_result] = {}
        self._next_fh = 1
        self._as_root = os.geteuid() == 0
        # backing_type: the backing dir's filesystem type, if known (see _LOCAL_FILESYSTEMS),
        # looked up before mounting: once mounted, a path may lead into our own mount.
        self.backing_type = backing_type
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
        parent_fd = parent.fd
        if self.inodes.encodes_handles:  # else the lstat would only be repeated below
            st = os.stat(name, dir_fd=parent_fd, follow_symlinks=False)
            inode = self.inodes.remember_name(parent_fd, name, st)
            if inode is not None:
                return inode, st
        fd = os.open(name, os.O_PATH | os.O_NOFOLLOW, dir_fd=parent_fd)
        try:
            st = os.fstat(fd)
        except BaseException:
            os.close(fd)
            raise
        return self.inodes.remember(fd, st), st

    def _entry_for(self, parent: Inode, name: bytes) -> pyfuse3.EntryAttributes:
        return self._attributes(*self._lookup_name(parent, name))

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

    def _kill_setid(self, fd: int, ctx: Any) -> None:
        """Clear set-id bits as the backing filesystem would for an unprivileged
        caller modifying the file behind `fd` (we modify it as root, so the
        backing filesystem keeps them; it removes security.capability itself).
        """
        st = os.fstat(fd)
        kill = _setid_to_kill(st, ctx)
        if kill:
            os.chmod(syscalls.proc_path(fd), stat.S_IMODE(st.st_mode) & ~kill)

    # -- lookup and attributes ------------------------------------------

    @_errors
    async def lookup(self, parent_inode: int, name: bytes, ctx: Any = None) -> pyfuse3.EntryAttributes:
        found = self.find(parent_inode, name)
        return self.negative_entry() if found is None else self._attributes(*found)

    # The methods without `async` below are what the native engine calls for
    # its commonest requests: plain calls (no coroutine to drive), attributes
    # as os.stat_result (packed as they are), OSError left to the engine.

    def find(self, parent_inode: int, name: bytes) -> tuple[Inode, os.stat_result] | None:
        """LOOKUP: `name` in `parent_inode` and its attributes, counted as one
        kernel lookup; None for a negative entry (see negative_entry).
        Raises OSError or FUSEError."""
        if name == b".":
            # The kernel decoding a file handle of an inode it dropped: the
            # table reopens a node id it forgot from the handle it encodes.
            inode = self.inodes.relookup(parent_inode)
            return inode, os.fstat(inode.fd)
        parent = self._inode(parent_inode)
        if name == b"..":
            if parent.number == ROOT_INODE:
                inode = self.inodes.relookup(ROOT_INODE)
                return inode, os.fstat(inode.fd)
            return self._lookup_name(parent, b"..")
        try:
            return self._lookup_name(parent, _check_name(name))
        except FileNotFoundError:
            if not self.options.negative_timeout:
                raise
        return None

    def negative_entry(self) -> pyfuse3.EntryAttributes:
        """A negative entry (node id 0): the kernel remembers the name is absent."""
        absent = pyfuse3.EntryAttributes()
        absent.entry_timeout = self.options.negative_timeout
        return absent

    async def forget(self, inode_list: Any) -> None:
        self.forget_lookups(inode_list)

    def forget_lookups(self, inode_list: Any) -> None:
        """FORGET, BATCH_FORGET: (node id, count) pairs."""
        for number, count in inode_list:
            self.inodes.forget(number, count)
            if number in self._gone:
                try:
                    self.inodes.get(number)
                except KeyError:  # forgotten for good
                    del self._gone[number]

    @_errors
    async def getattr(self, inode: int, ctx: Any = None) -> pyfuse3.EntryAttributes:
        return self._attributes(*self.stat_inode(inode))

    def stat_inode(self, inode: int) -> tuple[Inode, os.stat_result]:
        """GETATTR: the inode and its attributes (a removed file's last ones)."""
        node = self._inode(inode)
        st = self._gone.get(inode)
        return node, os.fstat(node.fd) if st is None else st

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
        if getattr(fields, "kill_setid", False):  # only the native engine's fields have it
            self._kill_setid(node.fd, ctx)
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
        with _caller_umask(ctx):
            os.mknod(_check_name(name), mode, rdev, dir_fd=parent.fd)
        self._give_to_caller(parent, name, ctx)
        return self._entry_for(parent, name)

    @_errors
    async def mkdir(self, parent_inode: int, name: bytes, mode: int, ctx: Any) -> pyfuse3.EntryAttributes:
        parent = self._inode(parent_inode)
        self._check_writable()
        with _caller_umask(ctx):
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
        self.remove(parent_inode, name, directory=False)

    @_errors
    async def rmdir(self, parent_inode: int, name: bytes, ctx: Any) -> None:
        self.remove(parent_inode, name, directory=True)

    def remove(self, parent_inode: int, name: bytes, directory: bool) -> None:
        """UNLINK or RMDIR `name`, keeping the fd of an object that loses its
        last name. Raises OSError or FUSEError."""
        self._check_writable()
        parent = self._inode(parent_inode)
        victim = self._last_link_victim(parent, _check_name(name))
        (os.rmdir if directory else os.unlink)(name, dir_fd=parent.fd)
        if victim is not None:
            self._lost_last_name(victim)

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
            self._lost_last_name(victim)

    def _lost_last_name(self, victim: Inode) -> None:
        """Keep a removed object's fd only while something may need it.

        A directory may still be a cwd (listed, looked up in): its fd stays
        until the kernel forgets it. A file's data is reached only through
        its open files: with none, we let it go now (`_let_go`); else its
        last release does.
        """
        if victim.is_dir:
            self.inodes.keep_fd(victim)
        elif not self.inodes.pinned(victim):
            self._let_go(victim, os.fstat(victim.fd))

    def _let_go(self, inode: Inode, st: os.stat_result) -> None:
        """Close a removed file's fd, so its space comes back now and not at
        FORGET (which may come much later). An O_PATH descriptor kept on it
        still gets its attributes (`st`, link count 0), as locally."""
        self._gone[inode.number] = st
        self.inodes.release_fd(inode)

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
        direct_io = self.options.direct_io or self.options.strictatime
        return pyfuse3.FileInfo(fh=fh, keep_cache=self.options.keep_cache, direct_io=direct_io)

    @_errors
    async def open(self, inode: int, flags: int, ctx: Any, kill_setid: bool | None = None) -> pyfuse3.FileInfo:
        return self.open_handle(inode, flags, ctx, kill_setid)

    def open_handle(self, inode: int, flags: int, ctx: Any, kill_setid: bool | None = None) -> pyfuse3.FileInfo:
        """OPEN `inode`; `kill_setid`: whether the kernel asks us to clear
        set-id bits after an O_TRUNC (FUSE_OPEN_KILL_SUIDGID), None if it
        cannot say (see _truncating_kill). Raises OSError or FUSEError."""
        node = self._inode(inode)
        if self.options.read_only and flags & os.O_ACCMODE != os.O_RDONLY:
            raise pyfuse3.FUSEError(errno.EROFS)
        # Reopen the object itself; O_CREAT/O_EXCL/O_NOCTTY mean nothing here,
        # and O_NOFOLLOW (the kernel already refused symlinks) would make the
        # /proc magic link itself fail with ELOOP (cp -a and rsync use it).
        flags &= ~(os.O_CREAT | os.O_EXCL | os.O_NOCTTY | os.O_NOFOLLOW)
        fd = _open_backing(syscalls.proc_path(node.fd), _backing_flags(flags, self.options.writeback_cache),
                           self.options.noatime)
        if _truncating_kill(flags, kill_setid, ctx):
            try:
                self._kill_setid(fd, ctx)
            except BaseException:
                os.close(fd)
                raise
        return self._open_file(node, fd, flags)

    @_errors
    async def create(self, parent_inode: int, name: bytes, mode: int, flags: int, ctx: Any,
                     kill_setid: bool | None = None) -> tuple[pyfuse3.FileInfo, pyfuse3.EntryAttributes]:
        parent = self._inode(parent_inode)
        self._check_writable()
        backing_flags = _backing_flags(flags, self.options.writeback_cache) | os.O_NOFOLLOW
        try:
            with _caller_umask(ctx):
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
            elif _truncating_kill(flags, kill_setid, ctx):
                self._kill_setid(fd, ctx)
            node, st = self._lookup_name(parent, name)
        except BaseException:
            os.close(fd)
            raise
        return self._open_file(node, fd, flags), self._attributes(node, st)

    @_errors
    async def read(self, fh: int, off: int, size: int) -> bytes:
        return await self.run_blocking(os.pread, self.file(fh).fd, size, off)

    @_errors
    async def write(self, fh: int, off: int, buf: bytes, ctx: Any = None, kill_setid: bool = False) -> int:
        """Write at `off`; `kill_setid`: the writer in `ctx` lacks CAP_FSETID
        (FUSE_WRITE_KILL_SUIDGID), so set-id bits go first, as locally."""
        opened = self.file(fh)
        written = await self.run_blocking(os.pwrite, self.write_fd(fh, ctx, kill_setid), buf, off)
        if opened.flags & os.O_DIRECT and self.async_direct_writes:
            # Pages read while this WRITE waited hold the old bytes: dropped
            # before the reply, which may complete an asynchronous direct write.
            await self.drop_cached_data(opened.inode.number)
        return written

    async def drop_cached_data(self, nodeid: int) -> None:
        """Have the kernel forget the cached pages (and attributes) of `nodeid`.

        Here (pyfuse3's loop) from a thread: the kernel waits for pages being
        read, whose READ replies this loop sends. Waited for a second at most:
        a WRITE from the kernel's writeback of a shared writable mapping of the
        same handle holds a page the drop would wait for until we reply.
        """
        dropped = threading.Event()

        def drop() -> None:
            try:
                pyfuse3.invalidate_inode(nodeid, False)
            except OSError as exc:  # the kernel no longer knows the inode: nothing cached
                log.debug("invalidate_inode(%d): %s", nodeid, exc)
            finally:
                dropped.set()

        threading.Thread(target=drop, name="zcfs-drop-cache", daemon=True).start()
        await self.run_blocking(dropped.wait, 1.0)

    def write_fd(self, fh: int, ctx: Any = None, kill_setid: bool = False) -> int:
        """The backing fd a WRITE of handle `fh` goes to, set-id bits cleared first
        when `kill_setid` (the engine splices large WRITEs into it itself)."""
        fd = self.file(fh).fd
        if kill_setid:
            self._kill_setid(fd, ctx)
        return fd

    @_errors
    async def flush(self, fh: int) -> None:
        self.flush_handle(fh)

    def flush_handle(self, fh: int) -> None:
        """FLUSH (a close of `fh`). Raises OSError or FUSEError."""
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
        self.close_handle(fh)

    def close_handle(self, fh: int) -> None:
        """RELEASE (the last close of `fh`). Raises OSError."""
        opened = self._files.pop(fh, None)
        if opened is not None:
            try:
                st = os.fstat(opened.fd)
            finally:
                os.close(opened.fd)
            self.inodes.unpin(opened.inode)
            if st.st_nlink == 0 and not stat.S_ISDIR(st.st_mode) and not self.inodes.pinned(opened.inode):
                self._let_go(opened.inode, st)  # its last name went while it was open

    # -- beyond pyfuse3: the native engine dispatches these --------------

    @_errors
    async def fallocate(self, fh: int, mode: int, offset: int, length: int, ctx: Any = None) -> None:
        """fallocate(2) in any mode (punch, zero range, ...) for the caller in `ctx`.

        FALLOCATE carries no kill flag: with FUSE_HANDLE_KILLPRIV_V2 the
        kernel leaves the set-id kill of every modification to us, so an
        unprivileged caller loses them here as on a local filesystem.
        """
        fd = self.file(fh).fd
        if _unprivileged(ctx):
            self._kill_setid(fd, ctx)
        await self.run_blocking(syscalls.fallocate, fd, mode, offset, length)

    @_errors
    async def lseek(self, fh: int, offset: int, whence: int) -> int:
        return os.lseek(self.file(fh).fd, offset, whence)

    @_errors
    async def copy_file_range(self, fh_in: int, off_in: int, fh_out: int, off_out: int,
                              length: int, flags: int, ctx: Any = None) -> int:
        fd_in, fd_out = self.file(fh_in).fd, self.file(fh_out).fd
        if _unprivileged(ctx):  # no kill flag here either: see fallocate
            self._kill_setid(fd_out, ctx)
        return await self.run_blocking(os.copy_file_range, fd_in, fd_out, length, off_in, off_out)

    # -- directories -----------------------------------------------------

    @_errors
    async def opendir(self, inode: int, ctx: Any) -> int:
        return self.open_dir(inode)

    def open_dir(self, inode: int) -> int:
        """OPENDIR: a new directory handle. Raises OSError or FUSEError."""
        node = self._inode(inode)
        fh = self._new_fh()
        self._dirs[fh] = OpenDir(node)
        self.inodes.pin(node)
        if self.options.cache_dir:
            self._listing_keepers.setdefault(node.number, fh)
        return fh

    def keeps_listing(self, fh: int) -> bool:
        """Whether the kernel may keep the listing read through open directory `fh`
        (FOPEN_CACHE_DIR): only through one open of a directory at a time.

        The kernel stamps a kept listing with the directory's version when a
        read at offset 0 starts filling it, and then appends whatever any open
        with the flag reads from the end of it (fs/fuse/readdir.c). An open
        that went on listing from our snapshot taken before a change appended
        that old snapshot to a listing a newer open had restarted, stamped
        after the change: the name the change made or removed stayed wrong in
        every later listing. With one open keeping, what is appended comes
        from snapshots taken after the stamp (each of that open's listings
        starts at offset 0), and a change since makes the next one start
        afresh. Other opens read from us.
        """
        return self._listing_keepers.get(self._opendir(fh).inode.number) == fh

    def _opendir(self, fh: int) -> OpenDir:
        try:
            return self._dirs[fh]
        except KeyError:
            raise pyfuse3.FUSEError(errno.EBADF) from None

    def list_entries(self, fh: int, start: int) -> Iterator[tuple[int, bytes, int, int]]:
        """Yield (next_offset, name, d_ino, d_type) of the entries after offset `start`.

        An entry's offset is its cookie, a function of its name alone, and a
        listing goes in the order of cookies: going on from an offset means
        "the names whose cookie is larger", in this open or any other. The
        kernel may go on from an offset of another open (a listing it keeps,
        FOPEN_CACHE_DIR, dropped after a change), so a name present all along
        is listed exactly once, whatever appeared or vanished meanwhile.
        Offset 0 (re)reads the directory, like rewinddir().
        """
        opened = self._opendir(fh)
        if start == 0 or opened.entries is None:
            listing = sorted((_cookie(name), name, d_ino, d_type)
                             for name, d_ino, d_type in _read_directory(opened.inode.fd))
            opened.entries = self._dot_entries(opened.inode) + listing
        yield from opened.entries[bisect.bisect_right(opened.entries, start, key=_entry_cookie):]

    def _dot_entries(self, node: Inode) -> list[tuple[int, bytes, int, int]]:
        """"." and ".." with the node ids the kernel knows them by (as ext4,
        ".." of the root is the root); none for a removed directory, which
        lists nothing at all, like a local one."""
        if node.number == ROOT_INODE:
            parent = ROOT_INODE
        else:
            try:
                st = os.stat("..", dir_fd=node.fd)
            except FileNotFoundError:
                return []
            known = self.inodes.known(st, node.fd, b"..")
            parent = known.number if known is not None else st.st_ino
        return [(_DOT_COOKIES[0], b".", node.number, _DT_DIR), (_DOT_COOKIES[1], b"..", parent, _DT_DIR)]

    def list_looked_up(self, fh: int, start: int, files: bool = True) -> Iterator[ListedEntry]:
        """`list_entries` for READDIRPLUS: each name with its inode (one kernel
        lookup counted) and lstat, but "." and ".." (the kernel takes no
        lookup of them), and with `files` False all but subdirectories and
        objects in use (whose attributes the kernel may have dropped after a
        write), with None and None. Names gone since the listing was taken
        are left out. An entry the caller does not send must be forgotten
        (`inodes.forget`): the kernel will not count it.
        """
        parent = self._opendir(fh).inode
        dev = 0 if files else os.fstat(parent.fd).st_dev
        for next_offset, name, d_ino, d_type in self.list_entries(fh, start):
            if name in DOT_NAMES or not (files or d_type == _DT_DIR or self.inodes.in_use(dev, d_ino)):
                yield next_offset, name, d_ino, d_type, None, None
                continue
            try:
                inode, st = self._lookup_name(parent, name)
            except FileNotFoundError:
                continue  # vanished since the listing was taken
            yield next_offset, name, d_ino, d_type, inode, st

    @_errors
    async def readdir(self, fh: int, start_id: int, token: Any) -> None:
        for next_offset, name, d_ino, _, inode, st in self.list_looked_up(fh, start_id):
            if inode is None:
                entry = pyfuse3.EntryAttributes()
                entry.st_ino, entry.st_mode = d_ino, stat.S_IFDIR
            else:
                entry = self._attributes(inode, st)
            if not pyfuse3.readdir_reply(token, name, entry, next_offset):
                if inode is not None:
                    self.inodes.forget(inode.number, 1)
                break

    async def releasedir(self, fh: int) -> None:
        self.close_dir(fh)

    def close_dir(self, fh: int) -> None:
        """RELEASEDIR (the last close of directory handle `fh`)."""
        opened = self._dirs.pop(fh, None)
        if opened is not None:
            if self._listing_keepers.get(opened.inode.number) == fh:
                del self._listing_keepers[opened.inode.number]
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
        path = self._xattr_path(inode)
        os.setxattr(path, name, value, flags)
        if name == ACL_ACCESS_XATTR and _unprivileged(ctx):
            # The backing filesystem derived the mode from the ACL but kept
            # SGID for us (root); a caller outside the group loses it
            # (posix_acl_update_mode), as on a local filesystem.
            st = os.stat(path)
            if st.st_mode & stat.S_ISGID and not _in_group(st.st_gid, ctx):
                os.chmod(path, stat.S_IMODE(st.st_mode) & ~stat.S_ISGID)

    @_errors
    async def getxattr(self, inode: int, name: bytes, ctx: Any = None) -> bytes:
        return self.xattr(inode, name)

    def xattr(self, inode: int, name: bytes) -> bytes:
        """GETXATTR: the value of `name`. Raises OSError or FUSEError."""
        if inode == ROOT_INODE and name == STATS_XATTR and self.stats is not None:
            # Always the largest size, so the size a caller asks for first
            # still fits the value a moment later, however the counters grew.
            return self.stats.json().encode().ljust(STATS_XATTR_SIZE)
        try:
            return os.getxattr(self._xattr_path(inode), name)
        except OSError as exc:
            if exc.errno == errno.ENODATA and name == SELINUX_XATTR:
                # "Not supported" rather than "no such attribute": ls (and
                # anything using libselinux's caches) stops asking per file
                # for the rest of the mount, a round trip per listed file.
                # A label that is set is still read and listed.
                raise pyfuse3.FUSEError(errno.EOPNOTSUPP) from None
            raise

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
        self._listing_keepers.clear()
        self._gone.clear()
        self.inodes.close_all()


@contextlib.contextmanager
def _caller_umask(ctx: Any) -> Iterator[None]:
    """Create under the caller's umask, so the backing filesystem applies it
    as it would for the caller: ignored under a default ACL, applied otherwise.

    The native engine gets the mode unmasked (FUSE_DONT_MASK) and the umask
    beside it. The daemon's own umask is 0 (cli.py), and nothing else
    creates files meanwhile: namespace requests run one at a time (under the
    native session's lock, or on pyfuse3's loop), and what runs beside them
    (`run_blocking`) only reads and writes open files.
    """
    old = os.umask(ctx.umask)
    try:
        yield
    finally:
        os.umask(old)


def _setid_to_kill(st: os.stat_result, ctx: Any) -> int:
    """The set-id bits a local filesystem clears from a file with `st` when
    the caller in `ctx` writes, truncates, fallocates or chowns it (the
    kernel asks only on behalf of callers without CAP_FSETID, but for chown).

    SUID always; SGID when group-execute is set (a set-group-id program) or
    when an unprivileged caller is not in the file's group
    (setattr_should_drop_sgid).
    """
    if not stat.S_ISREG(st.st_mode):
        return 0
    kill = st.st_mode & stat.S_ISUID
    if st.st_mode & stat.S_ISGID and (
            st.st_mode & stat.S_IXGRP or (_unprivileged(ctx) and not _in_group(st.st_gid, ctx))):
        kill |= stat.S_ISGID
    return kill


def _unprivileged(ctx: Any) -> bool:
    """Whether the caller lacks CAP_FSETID (uid 0 stands in for it: the
    request carries no capabilities)."""
    return ctx is not None and ctx.uid != 0


def _truncating_kill(flags: int, kill_setid: bool | None, ctx: Any) -> bool:
    """Whether an open with `flags` must clear set-id bits.

    With FUSE_HANDLE_KILLPRIV_V2 the kernel says so (`kill_setid`). Without
    it (the pyfuse3 engine) the kernel's own kill of an O_TRUNC open is lost
    with FUSE_ATOMIC_O_TRUNC (fuse_do_setattr skips ATTR_OPEN), so we judge
    by the caller.
    """
    if not flags & os.O_TRUNC:
        return False
    return kill_setid if kill_setid is not None else _unprivileged(ctx)


def _in_group(gid: int, ctx: Any) -> bool:
    return ctx.gid == gid or gid in _groups_of(ctx.pid)


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


def _open_backing(path: str, flags: int, noatime: bool) -> int:
    """os.open, with O_NOATIME if asked and permitted (only the file's owner or CAP_FOWNER may)."""
    if noatime:
        try:
            return os.open(path, flags | os.O_NOATIME)
        except PermissionError as exc:
            if exc.errno != errno.EPERM:
                raise
    return os.open(path, flags)


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


_DOT_COOKIES = (1, 2)


def _cookie(name: bytes) -> int:
    """A listed name's offset: 63 bits of its hash (loff_t is signed), above the dot entries'.

    Python's own hash: keyed per process, so stable for the daemon's life,
    which is as long as the kernel keeps any offset of ours; and a quarter
    of a blake2b's cost, paid for every listed entry. Two names of one
    directory share a cookie once in about 2^63/n^2 listings of n names;
    going on from that cookie would then skip one.
    """
    return max(hash(name) & 0x7FFF_FFFF_FFFF_FFFF, 3)


def _entry_cookie(entry: tuple[int, bytes, int, int]) -> int:
    return entry[0]


def _read_directory(dir_o_path_fd: int) -> list[tuple[bytes, int, int]]:
    """List a directory (without . and .., whose numbers are ours) as (name, d_ino, d_type)."""
    # A bytes path: scandir then gives bytes names, as the kernel wants them.
    with os.scandir(os.fsencode(syscalls.proc_path(dir_o_path_fd))) as listing:
        return [(e.name, e.inode(), _dtype(e)) for e in listing]


def _dtype(entry: os.DirEntry) -> int:
    """The DT_* type of a directory entry, without a stat where possible
    (the commonest type asked first: this runs for every listed entry)."""
    try:
        if entry.is_file(follow_symlinks=False):
            return stat.S_IFREG >> 12
        if entry.is_dir(follow_symlinks=False):
            return stat.S_IFDIR >> 12
        if entry.is_symlink():
            return stat.S_IFLNK >> 12
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
