"""Mount configuration: option parsing, checks before mounting, stale mounts.

Everything here runs before a single byte goes to /dev/fuse, so a user's
mistake ends in one clear `UsageError` line and nothing mounted.
"""

from __future__ import annotations

import dataclasses
import errno
import os
import subprocess
from typing import Callable

from . import mountinfo
from .fs import CACHE_POLICIES, FsOptions
from .usage import UsageError

ENGINES = ("native", "pyfuse3")
TIERS = ("auto", "passthrough", "splice", "off")
TRANSPORTS = ("auto", "uring", "devfuse")


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
    remount: bool = False  # -o remount: change the flags of the mount already there
    # Native engine: how long the reading worker polls /dev/fuse after a reply
    # before it sleeps, while requests keep coming back that fast (-o spin_us=).
    spin_seconds: float = 100e-6
    # Native engine: how requests travel (-o transport=): FUSE over io_uring
    # where the kernel offers it ("auto"), always ("uring"), or /dev/fuse.
    transport: str = "auto"

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


# Every -o option, by name: whether it takes a value (True, False, or None for
# either) and its handler. A handler changes `config`, or returns changes to the
# filesystem's settings (FsOptions fields), which are applied after every other
# option, so that explicit settings refine a cache policy in whatever order
# they came. mount(8), mount.fuse3 and systemd hand over whatever an fstab line
# says, so an option that means nothing to a FUSE daemon is accepted and
# ignored, never refused (also any `x-...`).
Handler = Callable[["MountConfig", str, str], "dict[str, object] | None"]
Option = tuple[bool | None, Handler]


# The atime options that turn MS_STRICTATIME on or off (devfuse.MOUNT_FLAGS), the last one winning.
_STRICTATIME = {"strictatime": True, "nostrictatime": False, "noatime": False, "relatime": False}


def _mount_flag(config: MountConfig, name: str, value: str) -> dict[str, object] | None:
    """A mount(2) flag (zcfs.engine.devfuse knows its bits)."""
    config.flag_options.append(name)
    if name in ("ro", "rw"):
        return {"read_only": name == "ro"}
    return {"strictatime": _STRICTATIME[name]} if name in _STRICTATIME else None


def _flag_alias(flag: str) -> Handler:
    """Another name for a mount flag, one that mount(8) hands over (it drops `suid` and `dev`)."""
    return lambda config, name, value: _mount_flag(config, flag, "")


def _fs_seconds(config: MountConfig, name: str, value: str) -> dict[str, object]:
    try:
        seconds = float(value)
    except ValueError:
        raise UsageError(f"option {name} needs a number of seconds, not {value!r}") from None
    if seconds < 0:
        raise UsageError(f"option {name} cannot be negative")
    return {name: seconds}


def _spin(config: MountConfig, name: str, value: str) -> None:
    try:
        micros = int(value)
    except ValueError:
        raise UsageError(f"option {name} needs a whole number of microseconds, not {value!r}") from None
    if not 0 <= micros <= 10_000:
        raise UsageError(f"option {name} must be between 0 (never poll) and 10000 microseconds")
    config.spin_seconds = micros / 1e6


def _fs_switch(field: str, on: bool) -> Handler:
    return lambda config, name, value: {field: on}


def _cache_policy(config: MountConfig, name: str, value: str) -> None:
    if value not in CACHE_POLICIES:
        raise UsageError(f"option cache takes {'|'.join(CACHE_POLICIES)}, not {value!r}")
    config.fs = dataclasses.replace(config.fs, **CACHE_POLICIES[value], cache=value)


def _setting(field: str, to: object = None) -> Handler:
    """Set a MountConfig field to `to`, or to the option's value."""
    return lambda config, name, value: setattr(config, field, value if to is None else to)


def _choice(field: str, choices: tuple[str, ...]) -> Handler:
    def apply(config: MountConfig, name: str, value: str) -> None:
        if value not in choices:
            raise UsageError(f"option {name} must be one of {', '.join(choices)}, not {value!r}")
        setattr(config, field, value)
    return apply


def _fuse_option(config: MountConfig, name: str, value: str) -> None:
    """Kernel FUSE mount data zcfs does not interpret (allow_root, max_read=N, ...)."""
    config.extra_fuse_options.append(f"{name}={value}" if value else name)


def _ignored(config: MountConfig, name: str, value: str) -> None:
    pass


def _remount(config: MountConfig, name: str, value: str) -> None:
    config.remount = True


OPTIONS: dict[str, Option] = {
    **{name: (False, _mount_flag) for name in (
        "ro", "rw", "nosuid", "suid", "nodev", "dev", "noexec", "exec", "sync", "async", "dirsync",
        # atime: on the mount, and on the backing files through a noatime view of the backing dir
        "noatime", "atime", "nodiratime", "diratime", "relatime", "norelatime", "strictatime",
        "nostrictatime")},
    "allow_suid": (False, _flag_alias("suid")),
    "allow_dev": (False, _flag_alias("dev")),
    "allow_other": (False, _setting("allow_other", True)),
    "default_permissions": (False, _setting("default_permissions", True)),
    "nodefault_permissions": (False, _setting("default_permissions", False)),
    "fsname": (True, _setting("fsname")),
    "subtype": (True, _setting("subtype")),
    "allow_root": (False, _fuse_option),
    "auto_unmount": (False, _fuse_option),
    "max_read": (True, _fuse_option),
    # zcfs's own (engine and zero_copy too, for fstab lines, which cannot pass --engine)
    "engine": (True, _choice("engine", ENGINES)),
    "zero_copy": (True, _choice("zero_copy", TIERS)),
    "cache": (True, _cache_policy),
    "entry_timeout": (True, _fs_seconds),
    "attr_timeout": (True, _fs_seconds),
    "negative_timeout": (True, _fs_seconds),
    "keep_cache": (False, _fs_switch("keep_cache", True)),
    "nokeep_cache": (False, _fs_switch("keep_cache", False)),
    "direct_io": (False, _fs_switch("direct_io", True)),
    "writeback_cache": (False, _fs_switch("writeback_cache", True)),
    "spin_us": (True, _spin),
    "transport": (True, _choice("transport", TRANSPORTS)),
    # mount(8) asks an existing mount to change its flags
    "remount": (False, _remount),
    # mount(8), fstab and systemd bookkeeping, and flags a FUSE mount has no use for
    **{name: (None, _ignored) for name in (
        "defaults", "auto", "noauto", "user", "nouser", "users", "owner", "group", "nofail", "_netdev",
        "comment", "lazytime", "nolazytime", "iversion", "noiversion", "nomand", "silent", "loud",
        # FUSE mount data zcfs fills in itself, which mount(8) hands back on a remount
        "user_id", "group_id", "rootmode")},
}
IGNORED_PREFIXES = ("x-",)  # x-systemd.*, x-gvfs-*, ...


def parse_options(specs: list[str], config: MountConfig) -> None:
    """Apply `-o a,b=c` strings to `config`; UsageError names an unknown or malformed option."""
    fs_changes: dict[str, object] = {}
    for spec in specs:
        for item in filter(None, spec.split(",")):
            name, has_value, value = item.partition("=")
            if name in OPTIONS:
                takes_value, apply = OPTIONS[name]
            elif name.startswith(IGNORED_PREFIXES):
                takes_value, apply = None, _ignored
            else:
                raise UsageError(f"unknown mount option {item!r}")
            if takes_value is True and not has_value:
                raise UsageError(f"mount option {name} needs a value ({name}=...)")
            if takes_value is False and has_value:
                raise UsageError(f"mount option {name} takes no value")
            fs_changes.update(apply(config, name, value) or {})
    if config.allow_other and not config.default_permissions:
        # zcfs checks no permissions itself (only access()): every user would act as root.
        raise UsageError("options allow_other and nodefault_permissions together would let every "
                         "user read and write any backing file as root; drop one of them")
    if fs_changes.get("writeback_cache") and (config.engine != "native" or config.zero_copy == "passthrough"):
        # The kernel refuses passthrough with the writeback cache; auto then means splice.
        raise UsageError("option writeback_cache needs the native engine and a --zero-copy other than passthrough")
    # Applied last: options given beside a cache policy refine it, in whatever order they came.
    config.fs = dataclasses.replace(config.fs, **fs_changes)


def without_mount_fuse_additions(args: list[str]) -> list[str]:
    """The command line without the `dev`/`suid` that mount.fuse3 adds on its own.

    mount(8) runs libfuse's mount.fuse3 for type fuse.zcfs, which runs
    `zcfs SOURCE MOUNTPOINT -o OPTIONS` and appends `dev` unless OPTIONS hold
    `nodev`, then `suid` unless they hold `nosuid`: mount(2)'s defaults, not
    zcfs's `nosuid,nodev`. A `suid`/`dev` the user wrote cannot be among them:
    mount(8) (util-linux 2.38) drops those before any helper sees them, and
    one that gets through stays in place with mount.fuse3's appended after
    it. So that exact ending of a lone `-o` goes, whoever wrote it: a command
    line typed that way only loses `dev,suid`, the safe side.
    """
    if len(args) != 4 or args[2] != "-o" or args[0].startswith("-") or args[1].startswith("-"):
        return args
    items = args[3].split(",")
    for added in (["dev", "suid"], ["suid"], ["dev"]):
        given = items[:-len(added)]
        appended = ["dev"] * ("nodev" not in given) + ["suid"] * ("nosuid" not in given)
        if items[-len(added):] == added and appended == added:
            return [*args[:3], ",".join(given)]
    return args


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


def mount_options(path: str) -> list[str]:
    """The per-mount options of the mount at `path` (rw, nosuid, noatime, ...); [] if none."""
    fields = _mountinfo_fields(path)
    return [] if fields is None else fields[5].decode().split(",")


def mount_device(path: str) -> str | None:
    """"major:minor" of the mount at `path` (without a stat, which could call into it)."""
    fields = _mountinfo_fields(path)
    return None if fields is None else fields[2].decode()


def _unescape(field: bytes) -> str:
    return os.fsdecode(mountinfo.unescape(field))


def is_stale(path: str) -> bool:
    """True if `path` is a FUSE mount whose daemon is gone (ENOTCONN).

    ECONNABORTED too: a daemon killed while serving over io_uring keeps the
    connection open until the kernel has torn its rings down, and a request
    made meanwhile is ended with it.
    """
    try:
        # statfs always asks the daemon; stat may be answered from the kernel's
        # attribute cache for a while after the daemon died.
        os.statvfs(path)
    except OSError as exc:
        return exc.errno in (errno.ENOTCONN, errno.ECONNABORTED)
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
    if in_use is not None and in_use.split(".")[0] in ("fuse", "fuseblk"):
        # Any other mount may be mounted over (a container's volume, a bind mount).
        raise UsageError(
            f"mountpoint {config.mountpoint} is already a mount ({in_use}); unmount it first")
    _refuse_overlap(config.backing, config.mountpoint)
    if not config.fsname:
        config.fsname = config.backing
    return notes


def _refuse_overlap(backing: str, mountpoint: str) -> None:
    """UsageError if the mount would cover the backing dir, or sit inside it.

    Either way the daemon would serve requests about its own mount, and wait
    on itself. Directories are compared by (st_dev, st_ino), not by path, so
    a symlink or a bind mount of the same directory under another name is
    caught too. Only the two paths' ancestors are looked at, all before
    mounting.
    """
    backing_id, mountpoint_id = _dir_id(backing), _dir_id(mountpoint)
    if backing_id == mountpoint_id:
        raise UsageError(f"mountpoint {mountpoint} is the backing directory {backing} itself; "
                         "mount the mirror somewhere else")
    if mountpoint_id in _ancestor_ids(backing):
        raise UsageError(f"backing directory {backing} is inside the mountpoint {mountpoint}; "
                         "the mount would hide it")
    if backing_id in _ancestor_ids(mountpoint):
        raise UsageError(f"mountpoint {mountpoint} is inside the backing directory {backing}")


def _dir_id(path: str) -> tuple[int, int]:
    st = os.stat(path)
    return st.st_dev, st.st_ino


def _ancestor_ids(path: str) -> set[tuple[int, int]]:
    """(st_dev, st_ino) of every proper ancestor of the resolved `path`, up to /."""
    ids = set()
    while (parent := os.path.dirname(path)) != path:
        ids.add(_dir_id(parent))
        path = parent
    return ids
