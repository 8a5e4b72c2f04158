"""The configurations `zcfs bench` compares, and how each is mounted and unmounted.

Direct access is the backing directory itself. zcfs configurations are
daemons started with `zcfs.testing.start_mount` (one mode string each, as
the test suite uses). A `--compare` peer is any command that mounts
`{backing}` at `{mountpoint}`, in the foreground or by daemonizing; its
daemon is found by its mountpoint on its command line, for its CPU time.
"""

from __future__ import annotations

import dataclasses
import os
import shlex
import subprocess
import time
from pathlib import Path

from ..testing import Mount, cpu_seconds, mount_is_listed, start_mount, stop_mount, unmount

READ_AHEAD_KB = 2040  # what the native engine sets on its own mounts; every mount gets the same
PAGE_MIB = os.sysconf("SC_PAGE_SIZE") / (1 << 20)
MOUNT_TIMEOUT = 30.0


class MountFailed(Exception):
    """A configuration could not be mounted; the message says why, in one line."""


@dataclasses.dataclass(frozen=True)
class Configuration:
    """One way of reaching the backing directory."""

    name: str
    kind: str                 # "direct", "zcfs" or "compare"
    mode: str = ""            # zcfs: a mode string for start_mount, "ENGINE[-TIER][+OPTION...]"
    command: str = ""         # compare: the command, with {backing} and {mountpoint}
    env: tuple[tuple[str, str], ...] = ()  # zcfs: added to the daemon's environment


DIRECT = Configuration("direct", "direct")


def zcfs(name: str, mode: str, env: dict[str, str] | None = None) -> Configuration:
    return Configuration(name, "zcfs", mode=mode, env=tuple((env or {}).items()))


def parse_compare(spec: str) -> Configuration:
    """`NAME=COMMAND {backing} {mountpoint}` → a Configuration; ValueError saying what is wrong."""
    name, sep, command = spec.partition("=")
    name, command = name.strip(), command.strip()
    if not sep or not name or not command:
        raise ValueError(f"--compare wants NAME=COMMAND, not {spec!r}")
    if "{backing}" not in command or "{mountpoint}" not in command:
        raise ValueError(f"--compare {name}: the command needs {{backing}} and {{mountpoint}}: {command!r}")
    try:
        shlex.split(command)
    except ValueError as exc:
        raise ValueError(f"--compare {name}: cannot split the command: {exc}") from None
    return Configuration(name, "compare", command=command)


class Target:
    """A configuration made reachable: `root` is where workloads run."""

    def __init__(self, root: Path, pid: int | None = None) -> None:
        self.root = root
        self.pid = pid
        self.read_ahead_kb: int | None = None

    def daemon_cpu(self) -> float | None:
        """User + system CPU seconds of the daemon so far (all its threads), or None."""
        if self.pid is None:
            return None
        try:
            return cpu_seconds(self.pid)
        except OSError:
            return None

    def daemon_rss_mib(self) -> float | None:
        try:
            return int(Path(f"/proc/{self.pid}/statm").read_text().split()[1]) * PAGE_MIB
        except (OSError, TypeError):
            return None

    def stats(self) -> dict | None:
        """The zcfs stats snapshot; None for other configurations."""
        return None

    def close(self) -> None:
        pass


class ZcfsTarget(Target):
    def __init__(self, mount: Mount) -> None:
        super().__init__(mount.path, mount.process.pid)
        self.mount = mount

    def stats(self) -> dict | None:
        return self.mount.stats()

    def close(self) -> None:
        stop_mount(self.mount)


class CompareTarget(Target):
    def __init__(self, mountpoint: Path, process: subprocess.Popen, pid: int | None) -> None:
        super().__init__(mountpoint, pid)
        self.process = process

    def close(self) -> None:
        unmount(self.root)
        if self.process.poll() is None:
            _wait_or_kill(self.process.pid, self.process)
        elif self.pid is not None and self.pid != self.process.pid:
            _wait_or_kill(self.pid, None)


def open_target(config: Configuration, backing: Path, mountpoint: Path, log: Path) -> Target:
    """Mount `config` (or not, for direct access); MountFailed with one line if it cannot."""
    if config.kind == "direct":
        return Target(backing)
    mountpoint.mkdir(exist_ok=True)
    target = _mount_zcfs(config, backing, mountpoint, log) if config.kind == "zcfs" \
        else _mount_compare(config, backing, mountpoint, log)
    target.read_ahead_kb = set_read_ahead(mountpoint)
    return target


def _mount_zcfs(config: Configuration, backing: Path, mountpoint: Path, log: Path) -> Target:
    try:
        with open(log, "ab") as errors:  # what the daemon says before its logging starts (a refused option)
            mount = start_mount(backing, mountpoint, config.mode, log=log, stderr=errors, env=dict(config.env))
    except RuntimeError:
        raise MountFailed(f"zcfs did not mount: {_last_line(log)}") from None
    if "-passthrough" in config.mode and mount.notes:  # the daemon fell back: this tier is not here
        stop_mount(mount)
        raise MountFailed(f"passthrough is not available here: {mount.notes[0]}")
    return ZcfsTarget(mount)


def _mount_compare(config: Configuration, backing: Path, mountpoint: Path, log: Path) -> Target:
    args = [word.replace("{backing}", str(backing)).replace("{mountpoint}", str(mountpoint))
            for word in shlex.split(config.command)]
    with open(log, "ab") as out:
        try:
            process = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=out, stderr=out,
                                       start_new_session=True)  # a terminal's Ctrl-C is ours to handle
        except OSError as exc:
            raise MountFailed(f"{config.name}: cannot run {args[0]}: {exc.strerror}") from None
    deadline = time.monotonic() + MOUNT_TIMEOUT
    while not mount_is_listed(mountpoint):
        if process.poll() is not None and not mount_is_listed(mountpoint):
            raise MountFailed(f"{config.name}: {args[0]} exited (status {process.returncode}) without mounting: "
                              f"{_last_line(log)}")
        if time.monotonic() > deadline:
            process.kill()
            process.wait()
            raise MountFailed(f"{config.name}: nothing was mounted within {MOUNT_TIMEOUT:.0f} s")
        time.sleep(0.02)
    return CompareTarget(mountpoint, process, _daemon_pid(process, mountpoint))


def _daemon_pid(process: subprocess.Popen, mountpoint: Path, settle: float = 1.0) -> int | None:
    """The PID serving the mount: a child the command forked (it names the mountpoint on its command
    line, as it inherited it), else the command itself if it stays running (a foreground server)."""
    deadline = time.monotonic() + settle
    while True:
        forked = _find_daemon(mountpoint, exclude=process.pid)
        if forked is not None:
            return forked
        if time.monotonic() > deadline:
            return process.pid if process.poll() is None else None
        time.sleep(0.02)


def _find_daemon(mountpoint: Path, exclude: int) -> int | None:
    """A live process other than `exclude` (and us) whose command line names `mountpoint`."""
    wanted = os.fsencode(str(mountpoint))
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) in (os.getpid(), exclude):
            continue
        try:
            argv = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if wanted in argv:  # a zombie's cmdline is empty
            return int(entry)
    return None


def _wait_or_kill(pid: int, process: subprocess.Popen | None, timeout: float = 10.0) -> None:
    """Wait for a daemon we started to exit after its unmount; kill it (by PID) if it lingers."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            return
        if process is None and not os.path.exists(f"/proc/{pid}"):
            return
        time.sleep(0.02)
    try:
        os.kill(pid, 9)
    except ProcessLookupError:
        pass
    if process is not None:
        process.wait()


def set_read_ahead(mountpoint: Path, kib: int = READ_AHEAD_KB) -> int | None:
    """Give a mount the common readahead window; return what the knob says afterwards (None: no knob)."""
    dev = os.stat(mountpoint).st_dev
    knob = Path(f"/sys/class/bdi/{os.major(dev)}:{os.minor(dev)}/read_ahead_kb")
    try:
        knob.write_text(str(kib))
    except OSError:
        pass  # not root: the value read back tells
    try:
        return int(knob.read_text())
    except (OSError, ValueError):
        return None


def _last_line(path: Path) -> str:
    try:
        lines = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        lines = []
    return lines[-1] if lines else "no message"
