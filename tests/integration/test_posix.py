"""Run the POSIX check table (posix_checks.py) on a fresh mount of every mode."""

from __future__ import annotations

import errno
import os
import time

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
def tmpfs_backing(tmpfs_dir):
    """A small tmpfs backing dir (it takes 64 KiB xattr values, ext4 does not; 4 MiB fill fast).

    Requested before mount_factory, so it is torn down after the mount.
    """
    return tmpfs_dir("tmpfs-backing", "4m")


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


def test_enospc_reaches_the_caller(tmpfs_backing, mode, mount_factory):
    mount = mount_factory(mode, backing=tmpfs_backing)
    chunk = b"z" * (256 * 1024)
    fd = os.open(mount.path / "filler", os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        with pytest.raises(OSError) as full:
            for _ in range(64):  # 16 MiB into a 4 MiB filesystem
                os.write(fd, chunk)
        assert full.value.errno == errno.ENOSPC
    finally:
        os.close(fd)
    assert os.statvfs(mount.path).f_bavail == os.statvfs(tmpfs_backing).f_bavail == 0
    with pytest.raises(OSError) as full:
        (mount.path / "another").write_bytes(b"y" * 8192)
    assert full.value.errno == errno.ENOSPC
    os.unlink(mount.path / "filler")
    # the space comes back once the kernel has sent RELEASE and FORGET (both asynchronous)
    from conftest import wait_until
    assert wait_until(lambda: os.statvfs(mount.path).f_bavail > 100, timeout=10)
    (mount.path / "another").write_bytes(b"y" * 8192)
    assert (tmpfs_backing / "another").stat().st_size == 8192


def test_read_only_mount(mode, mount_factory, tmp_path):
    backing = tmp_path / "ro-backing"
    backing.mkdir()
    (backing / "f").write_bytes(b"keep")
    (backing / "d").mkdir()
    os.setxattr(backing / "f", "user.x", b"1")
    before = sorted((p.name, p.stat().st_mode, p.stat().st_mtime_ns) for p in backing.iterdir())
    mount = mount_factory(mode, options=["ro"], backing=backing)
    m = mount.path
    assert (m / "f").read_bytes() == b"keep"
    assert os.getxattr(m / "f", "user.x") == b"1"
    attempts = [
        lambda: open(m / "f", "ab"),
        lambda: open(m / "new", "wb"),
        lambda: os.mkdir(m / "nd"),
        lambda: os.unlink(m / "f"),
        lambda: os.rmdir(m / "d"),
        lambda: os.rename(m / "f", m / "g"),
        lambda: os.chmod(m / "f", 0o600),
        lambda: os.utime(m / "f", None),
        lambda: os.truncate(m / "f", 0),
        lambda: os.setxattr(m / "f", "user.y", b"2"),
        lambda: os.symlink("f", m / "l"),
        lambda: os.link(m / "f", m / "h"),
    ]
    for attempt in attempts:
        with pytest.raises(OSError) as refused:
            attempt()
        assert refused.value.errno == errno.EROFS
    assert sorted((p.name, p.stat().st_mode, p.stat().st_mtime_ns) for p in backing.iterdir()) == before
    assert (backing / "f").read_bytes() == b"keep"


TMPFILE_MISSING = {
    "pyfuse3": "pyfuse3 has no TMPFILE handler: open(O_TMPFILE) on the mount gives EOPNOTSUPP",
    "native": "the native engine does not answer FUSE_TMPFILE (kernel >= 6.1 would allow it): "
              "open(O_TMPFILE) on the mount gives EOPNOTSUPP",
}


def test_o_tmpfile(mnt, request):
    if mnt.engine in TMPFILE_MISSING:
        request.applymarker(pytest.mark.xfail(strict=True, raises=OSError, reason=TMPFILE_MISSING[mnt.engine]))
    fd = os.open(mnt.path, os.O_TMPFILE | os.O_RDWR, 0o640)
    try:
        os.write(fd, b"anonymous")
        assert os.listdir(mnt.backing) == []
        os.link(f"/proc/self/fd/{fd}", mnt.path / "named", follow_symlinks=True)
    finally:
        os.close(fd)
    assert (mnt.backing / "named").read_bytes() == b"anonymous"
    assert (os.stat(mnt.backing / "named").st_mode & 0o777) == 0o640 & ~_umask()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _backing_fds(pid: int, backing) -> list[str]:
    """What the daemon's fds below the backing dir point at (its inode fds)."""
    inside = []
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith(f"{backing}/"):
            inside.append(target)
    return inside


def test_forget_releases_backing_fds(mnt):
    """Every inode the kernel forgets gives back its O_PATH fd (exact lookup counts).

    Names are looked up by LOOKUP, CREATE, MKDIR and READDIRPLUS; dropping
    the kernel's dentry cache then makes it FORGET them all.
    """
    from conftest import wait_until

    pid = mnt.process.pid
    assert _backing_fds(pid, mnt.backing) == []
    for d in range(5):
        os.mkdir(mnt.path / f"d{d}")
        for i in range(60):
            (mnt.path / f"d{d}" / f"f{i}").write_bytes(b"x")
    for d in range(5):
        (mnt.backing / f"d{d}" / "only-in-backing").touch()  # first seen through READDIRPLUS
        os.listdir(mnt.path / f"d{d}")
        os.stat(mnt.path / f"d{d}" / "f0")
    os.link(mnt.path / "d0" / "f0", mnt.path / "d1" / "hardlink")
    # (usually 300+; fewer if something else on the machine dropped caches meanwhile)
    assert _backing_fds(pid, mnt.backing)

    def forgotten() -> bool:
        # again each time: an inode whose (asynchronous) RELEASE was still
        # pending could not be dropped by the previous round
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("2")
        time.sleep(0.2)
        return _backing_fds(pid, mnt.backing) == []

    assert wait_until(forgotten, timeout=15), \
        f"backing fds still held after the kernel forgot every inode: {sorted(_backing_fds(pid, mnt.backing))[:20]}"
    # and the mount still works after all those forgets
    assert sorted(os.listdir(mnt.path / "d1"))[:2] == ["f0", "f1"]
    assert (mnt.path / "d1" / "hardlink").read_bytes() == b"x"
