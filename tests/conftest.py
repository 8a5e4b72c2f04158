"""Shared fixtures: real mounts in temporary directories that always unmount."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

# Every engine × tier the integration suite runs against. ZCFS_TEST_MODES
# ("pyfuse3,native-splice") narrows it for a quick local run.
ALL_MODES = ["pyfuse3", "native-auto", "native-splice", "native-off"]
MODES = [m for m in os.environ.get("ZCFS_TEST_MODES", ",".join(ALL_MODES)).split(",") if m]

TEST_USER = "zcfs-test"


def fuse_skip_reason() -> str | None:
    """Why real mounts cannot run here, or None."""
    if not os.path.exists("/dev/fuse"):
        return "no /dev/fuse"
    if shutil.which("fusermount3") is None:
        return "fusermount3 not installed (apt-get install fuse3)"
    if os.geteuid() != 0:
        return "mount tests run as root"
    return None


@dataclasses.dataclass
class Mount:
    """A running zcfs daemon: backing dir, mountpoint, and the process we started."""

    backing: Path
    path: Path
    mode: str
    process: subprocess.Popen
    log: Path

    @property
    def engine(self) -> str:
        return self.mode.split("-")[0]

    def stats(self) -> dict:
        """The daemon's statistics snapshot, read through the mount."""
        return json.loads(os.getxattr(self.path, "user.zcfs.stats"))

    def drop_cache(self, path: Path) -> None:
        """Evict the mount's page cache of one file (reads then reach the daemon)."""
        fd = os.open(path, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def _mode_args(mode: str) -> list[str]:
    engine, _, tier = mode.partition("-")
    args = ["--engine", engine]
    if tier:
        args += ["--zero-copy", tier]
    return args


def start_mount(backing: Path, mountpoint: Path, mode: str, options: list[str] = (), log: Path | None = None) -> Mount:
    """Start a foreground daemon and wait until its mount is ready."""
    log = log or mountpoint.parent / f"{mountpoint.name}.log"
    read_end, write_end = os.pipe()
    args = [sys.executable, "-m", "zcfs", str(backing), str(mountpoint), "-f",
            "--ready-fd", str(write_end), "--log", str(log), *_mode_args(mode)]
    for opt in options:
        args += ["-o", opt]
    process = subprocess.Popen(args, pass_fds=(write_end,), stdin=subprocess.DEVNULL)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as status:
        line = status.readline().decode().strip()
    mount = Mount(backing, mountpoint, mode, process, log)
    if line != "ready":
        stop_mount(mount)
        raise RuntimeError(f"zcfs did not mount ({line or 'no answer'}): {log.read_text() if log.exists() else ''}")
    return mount


def stop_mount(mount: Mount) -> None:
    """Unmount and end the daemon we started (by its PID only)."""
    if mount_is_listed(mount.path):
        if subprocess.run(["fusermount3", "-u", str(mount.path)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(mount.path)], capture_output=True)
    try:
        mount.process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        mount.process.kill()
        mount.process.wait()


def mount_is_listed(path: Path) -> bool:
    with open("/proc/self/mountinfo") as info:
        return any(line.split()[4] == str(path) for line in info)


@pytest.fixture(params=MODES)
def mode(request) -> str:
    return request.param


@pytest.fixture
def mount_factory(tmp_path):
    """Start mounts on demand; every one is unmounted at teardown, even on failure."""
    reason = fuse_skip_reason()
    if reason:
        pytest.skip(reason)
    started: list[Mount] = []

    def factory(mode: str, options: list[str] = (), backing: Path | None = None, name: str = "mnt") -> Mount:
        backing = backing or tmp_path / f"{name}-backing"
        backing.mkdir(exist_ok=True)
        mountpoint = tmp_path / name
        mountpoint.mkdir(exist_ok=True)
        mount = start_mount(backing, mountpoint, mode, options)
        started.append(mount)
        return mount

    yield factory
    for mount in started:
        stop_mount(mount)


@pytest.fixture
def mnt(mount_factory, mode) -> Mount:
    """A zcfs mount of an empty backing dir, on each engine and tier."""
    return mount_factory(mode)


@pytest.fixture(scope="session")
def test_user() -> tuple[int, int]:
    """(uid, gid) of an unprivileged user (the set-up script creates it)."""
    import pwd
    try:
        entry = pwd.getpwnam(TEST_USER)
    except KeyError:
        pytest.skip(f"user {TEST_USER} missing: run scripts/setup.sh")
    return entry.pw_uid, entry.pw_gid


def wait_until(predicate, timeout: float = 5.0) -> bool:
    """Poll `predicate` until true or `timeout` seconds pass."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()
