"""Shared fixtures: real mounts in temporary directories that always unmount."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from zcfs.testing import (  # noqa: F401
    Mount, fuse_uring_setting, mode_args as _mode_args, mount_is_listed, ring_skip_reason, start_mount, stop_mount,
)

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


@pytest.fixture(scope="session", autouse=True)
def fuse_over_io_uring():
    """FUSE over io_uring offered for the whole run, where root may turn it on
    (fuse's enable_uring, put back after): the native modes then run on their
    default transport, the ring (test_uring.py checks they do). Without it
    they serve on /dev/fuse, the fallback."""
    if ring_skip_reason() is not None:
        yield
        return
    with fuse_uring_setting(True):
        yield


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


@pytest.fixture
def tmpfs_dir(tmp_path):
    """Make tmpfs backing dirs of a given size; each is unmounted at teardown.

    Requested before mount_factory, so it is torn down after the mount.
    """
    made: list[Path] = []

    def make(name: str, size: str) -> Path:
        path = tmp_path / name
        path.mkdir()
        subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", f"zcfs-test-{name}", str(path)], check=True)
        made.append(path)
        return path

    yield make
    for path in reversed(made):
        subprocess.run(["umount", "-l", str(path)], check=True)


@pytest.fixture
def shared(mode, mount_factory):
    """An allow_other mount whose root anyone may write to."""
    mount = mount_factory(mode, options=["allow_other"])
    os.chmod(mount.path, 0o777)
    return mount
