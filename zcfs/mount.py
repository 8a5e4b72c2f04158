"""Mount configuration: option parsing, checks before mounting, stale mounts.

Everything here runs before a single byte goes to /dev/fuse, so a user's
mistake ends in one clear `UsageError` line and nothing mounted.
"""

from __future__ import annotations

import dataclasses
import errno
import os
import subprocess

from .fs import CACHE_POLICIES, FsOptions

ENGINES = ("native", "pyfuse3")
TIERS = ("auto", "passthrough", "splice", "off")


class UsageError(Exception):
    """A mistake on the command line or in the environment; the message says which."""


# Plain FUSE/VFS options we pass on (to libfuse or to mount(2)).
_MOUNT_FLAG_OPTIONS = {
    "ro", "rw", "nosuid", "suid", "nodev", "dev", "noexec", "exec",
    "noatime", "atime", "relatime", "norelatime", "strictatime", "sync", "async", "dirsync",
}
_FUSE_OPTIONS = {"allow_other", "allow_root", "default_permissions", "auto_unmount"}
_FUSE_VALUE_OPTIONS = {"fsname", "subtype", "max_read"}
# zcfs's own options.
_FLOAT_OPTIONS = {"entry_timeout", "attr_timeout", "negative_timeout"}


@dataclasses.dataclass
class MountConfig:
    """What to mount where, and how."""

    backing: str
    mountpoint: str
    engine: str = "native"
    zero_copy: str = "auto"
    fs: FsOptions = dataclasses.field(default_factory=FsOptions)
    allow_other: bool = False
    default_permissions: bool = True
    fsname: str = ""
    subtype: str = "zcfs"
    flag_options: list[str] = dataclasses.field(default_factory=list)
    extra_fuse_options: list[str] = dataclasses.field(default_factory=list)
    metrics: tuple[str, int] | None = None  # --metrics HOST:PORT: serve Prometheus metrics there

    @property
    def read_only(self) -> bool:
        return self.fs.read_only

    def describe(self) -> dict[str, object]:
        """The mount's settings, for stats."""
        return {
            "backing": self.backing, "mountpoint": self.mountpoint, "zero_copy": self.zero_copy,
            "allow_other": self.allow_other, "default_permissions": self.default_permissions,
            **dataclasses.asdict(self.fs), "flags": self.flag_options + self.extra_fuse_options,
        }

    def libfuse_options(self) -> set[str]:
        """Options in libfuse's spelling (for the pyfuse3 engine)."""
        opts = {f"fsname={_libfuse_escape(self.fsname)}", f"subtype={_libfuse_escape(self.subtype)}"}
        opts.update(self.flag_options)
        opts.update(self.extra_fuse_options)
        if self.allow_other:
            opts.add("allow_other")
        if self.default_permissions:
            opts.add("default_permissions")
        return opts


def _libfuse_escape(value: str) -> str:
    """Spell an option value for libfuse's -o parser (which pyfuse3 feeds ASCII only).

    A comma would split the option and a non-ASCII byte stops pyfuse3, so
    `,` and `\\` get a backslash and other bytes an octal escape (`\\351`).
    """
    out = []
    for byte in os.fsencode(value):
        if byte in b",\\":
            out.append("\\" + chr(byte))
        elif byte < 0x20 or byte >= 0x7F:
            out.append(f"\\{byte:03o}")
        else:
            out.append(chr(byte))
    return "".join(out)


def parse_options(specs: list[str], config: MountConfig) -> None:
    """Apply `-o a,b=c` strings to `config`; UsageError names an unknown option."""
    fs_changes: dict[str, object] = {}
    cache_policy: dict[str, object] = {}
    for spec in specs:
        for item in filter(None, spec.split(",")):
            name, has_value, value = item.partition("=")
            if name in _FLOAT_OPTIONS and has_value:
                try:
                    seconds = float(value)
                except ValueError:
                    raise UsageError(f"option {name} needs a number of seconds, not {value!r}") from None
                if seconds < 0:
                    raise UsageError(f"option {name} cannot be negative")
                fs_changes[name] = seconds
            elif name in _MOUNT_FLAG_OPTIONS and not has_value:
                if name in ("ro", "rw"):
                    fs_changes["read_only"] = name == "ro"
                config.flag_options.append(name)
            elif name == "allow_other" and not has_value:
                config.allow_other = True
            elif name == "default_permissions" and not has_value:
                config.default_permissions = True
            elif name == "nodefault_permissions" and not has_value:
                config.default_permissions = False
            elif name == "cache" and has_value:
                if value not in CACHE_POLICIES:
                    raise UsageError(f"option cache takes {'|'.join(CACHE_POLICIES)}, not {value!r}")
                cache_policy = dict(CACHE_POLICIES[value], cache=value)
            elif name in ("direct_io", "writeback_cache") and not has_value:
                fs_changes[name] = True
            elif name in ("keep_cache", "nokeep_cache") and not has_value:
                fs_changes["keep_cache"] = name == "keep_cache"
            elif name == "fsname" and has_value:
                config.fsname = value
            elif name == "subtype" and has_value:
                config.subtype = value
            elif name in _FUSE_OPTIONS and not has_value:
                config.extra_fuse_options.append(name)
            elif name in _FUSE_VALUE_OPTIONS and has_value:
                config.extra_fuse_options.append(item)
            else:
                raise UsageError(f"unknown mount option {item!r}")
    if config.allow_other and not config.default_permissions:
        # zcfs checks no permissions itself (only access()): every user would act as root.
        raise UsageError("options allow_other and nodefault_permissions together would let every "
                         "user read and write any backing file as root; drop one of them")
    if fs_changes.get("writeback_cache") and (config.engine != "native" or config.zero_copy == "passthrough"):
        # The kernel refuses passthrough with the writeback cache; auto then means splice.
        raise UsageError("option writeback_cache needs the native engine and a --zero-copy other than passthrough")
    if fs_changes or cache_policy:
        # Options given beside a cache policy refine it, in whatever order they came.
        config.fs = dataclasses.replace(config.fs, **{**cache_policy, **fs_changes})


def _mountinfo_fields(path: str) -> list[bytes] | None:
    """The /proc/self/mountinfo line of the mount on top at `path`, split."""
    found = None
    with open("/proc/self/mountinfo", "rb") as info:
        for line in info:
            fields = line.split()
            if _unescape(fields[4]) == path:
                found = fields  # the last one is on top
    return found


def filesystem_type(path: str) -> str | None:
    """The type of the filesystem holding `path` (its closest mount), or None."""
    path = os.path.realpath(path)
    best, found = -1, None
    with open("/proc/self/mountinfo", "rb") as info:
        for line in info:
            fields = line.split()
            point = _unescape(fields[4])
            inside = path == point or path.startswith(point.rstrip("/") + "/")
            if inside and len(point) >= best:
                best, found = len(point), fields[fields.index(b"-") + 1].decode()
    return found


def mounted_at(path: str) -> str | None:
    """The filesystem type mounted exactly at `path`, or None."""
    fields = _mountinfo_fields(path)
    return None if fields is None else fields[fields.index(b"-") + 1].decode()


def mount_device(path: str) -> str | None:
    """"major:minor" of the mount at `path` (without a stat, which could call into it)."""
    fields = _mountinfo_fields(path)
    return None if fields is None else fields[2].decode()


def _unescape(field: bytes) -> str:
    """Decode mountinfo's octal escapes (\\040 for a space, ...)."""
    out, i = bytearray(), 0
    while i < len(field):
        if field[i] == 0x5C and field[i + 1:i + 4].isdigit():
            out.append(int(field[i + 1:i + 4], 8))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return os.fsdecode(bytes(out))


def is_stale(path: str) -> bool:
    """True if `path` is a FUSE mount whose daemon is gone (ENOTCONN)."""
    try:
        # statfs always asks the daemon; stat may be answered from the kernel's
        # attribute cache for a while after the daemon died.
        os.statvfs(path)
    except OSError as exc:
        return exc.errno == errno.ENOTCONN
    return False


def unmount(path: str, lazy: bool = False) -> bool:
    """Unmount `path` (fusermount3 -u, then umount -l); True on success."""
    commands = [["fusermount3", "-u", "-q"] + (["-z"] if lazy else []) + [path], ["umount", "-l", path]]
    for command in commands:
        try:
            if subprocess.run(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).returncode == 0:
                return True
        except FileNotFoundError:
            continue
    return False


def check_paths(config: MountConfig) -> list[str]:
    """Validate backing dir and mountpoint; returns notes for the user.

    Raises UsageError for a missing or non-directory backing dir or
    mountpoint, a mountpoint already in use, or a mountpoint inside the
    backing directory (the daemon would call into its own mount). A stale
    mount left by a killed zcfs daemon is cleared, and a note says so.
    """
    notes: list[str] = []
    config.mountpoint = os.path.abspath(config.mountpoint)
    if is_stale(config.mountpoint):
        if not unmount(config.mountpoint, lazy=True):
            raise UsageError(
                f"mountpoint {config.mountpoint} is a stale FUSE mount whose daemon died, and it could "
                f"not be cleared; run: fusermount3 -u -z {config.mountpoint}")
        notes.append(f"cleared a stale FUSE mount at {config.mountpoint} (its daemon had died)")
    if not os.path.exists(config.backing):
        raise UsageError(f"backing directory {config.backing} does not exist")
    if not os.path.isdir(config.backing):
        raise UsageError(f"backing path {config.backing} is not a directory")
    config.backing = os.path.realpath(config.backing)
    if not os.path.exists(config.mountpoint):
        raise UsageError(f"mountpoint {config.mountpoint} does not exist")
    if not os.path.isdir(config.mountpoint):
        raise UsageError(f"mountpoint {config.mountpoint} is not a directory")
    config.mountpoint = os.path.realpath(config.mountpoint)
    in_use = mounted_at(config.mountpoint)
    if in_use is not None:
        raise UsageError(
            f"mountpoint {config.mountpoint} is already a mount ({in_use}); unmount it first")
    if config.mountpoint.startswith(config.backing.rstrip("/") + "/"):
        raise UsageError(
            f"mountpoint {config.mountpoint} is inside the backing directory {config.backing}")
    if not config.fsname:
        config.fsname = config.backing
    return notes
