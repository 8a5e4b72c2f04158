"""Run the POSIX check table (posix_checks.py) on a fresh mount of every mode."""

from __future__ import annotations

import os
import subprocess

import pytest

from posix_checks import CHECKS, UNCACHED_CHECKS, check_id, check_xattr_large_value


@pytest.mark.parametrize("check", CHECKS, ids=check_id)
def test_posix(check, mnt):
    check(mnt.path, mnt.backing)


@pytest.mark.parametrize("check", UNCACHED_CHECKS, ids=check_id)
def test_posix_uncached(check, mode, mount_factory):
    mount = mount_factory(mode, options=["attr_timeout=0,entry_timeout=0"])
    check(mount.path, mount.backing)


@pytest.fixture
def tmpfs_backing(tmp_path):
    """A tmpfs backing dir (it takes 64 KiB xattr values, ext4 does not).

    Requested before mount_factory, so it is torn down after the mount.
    """
    path = tmp_path / "tmpfs-backing"
    path.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "zcfs-test-tmpfs", str(path)], check=True)
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=True)


def test_xattr_64k_value_on_tmpfs(tmpfs_backing, mode, mount_factory):
    mount = mount_factory(mode, backing=tmpfs_backing)
    value = os.urandom(64 * 1024)
    (mount.path / "f").write_bytes(b"x")
    os.setxattr(mount.path / "f", "user.big", value)
    assert os.getxattr(tmpfs_backing / "f", "user.big") == value
    assert os.getxattr(mount.path / "f", "user.big") == value
    with pytest.raises(OSError):  # one byte over XATTR_SIZE_MAX: the kernel refuses it
        os.setxattr(mount.path / "f", "user.bigger", value + b"!")
    # the whole check table's xattr check also holds on this backing
    check_xattr_large_value(mount.path, mount.backing)


def test_access_handler_without_default_permissions(mode, mount_factory):
    """With nodefault_permissions the kernel asks zcfs's access() handler (as root here)."""
    mount = mount_factory(mode, options=["nodefault_permissions"])
    for name, perm in (("none", 0o000), ("plain", 0o644), ("exec", 0o100), ("group-exec", 0o610)):
        (mount.path / name).write_bytes(b"")
        os.chmod(mount.path / name, perm)
    os.mkdir(mount.path / "dir", 0o000)
    got = {name: tuple(os.access(mount.path / name, m) for m in (os.R_OK, os.W_OK, os.X_OK, os.F_OK))
           for name in ("none", "plain", "exec", "group-exec", "dir")}
    assert got == {
        "none": (True, True, False, True),
        "plain": (True, True, False, True),
        "exec": (True, True, True, True),
        "group-exec": (True, True, True, True),
        "dir": (True, True, True, True),
    }
    assert not os.access(mount.path / "missing", os.F_OK)
