"""Round trips a user-level operation costs, counted by the stats layer.

Each wasted round trip is a full client -> kernel -> daemon -> client
journey; these tests pin the ones the daemon can avoid.
"""

from __future__ import annotations

import errno
import os
import subprocess

import pytest


def _count(mount, opcode: str) -> int:
    return mount.stats()["ops"].get(opcode, {}).get("count", 0)


def test_a_listing_carries_the_attributes_of_every_entry(mode, mount_factory):
    """Read a whole directory, then stat every entry (as fts does: du, git, find -type):
    the listing's attributes answer the stats, with no LOOKUP per entry."""
    mount = mount_factory(mode)
    (mount.backing / "d").mkdir()
    for i in range(600):  # more than one READDIRPLUS reply holds
        (mount.backing / "d" / f"entry-with-a-longish-name-{i:04d}").write_bytes(b"")
    os.stat(mount.path / "d")
    lookups = _count(mount, "LOOKUP")
    names = os.listdir(mount.path / "d")
    assert len(names) == 600
    for name in names:
        os.lstat(mount.path / "d" / name)
    assert _count(mount, "LOOKUP") - lookups < 10


def test_close_sends_no_flush_on_a_local_backing_filesystem(mode, mount_factory):
    """A local backing filesystem reports write errors at write(2): FLUSH has nothing to add,
    so after the first one (refused) the kernel sends none."""
    mount = mount_factory(mode)
    for i in range(20):
        with open(mount.path / f"f{i}", "wb") as f:
            f.write(b"data")
    assert _count(mount, "FLUSH") <= 1
    assert all((mount.backing / f"f{i}").read_bytes() == b"data" for i in range(20))


def test_ls_l_asks_once_for_selinux_labels_the_files_do_not_have(mode, mount_factory):
    """ls -l asks every file for security.selinux, and stops asking on a device
    that says labels are unsupported. Unlabeled files say so, so a listing
    costs one GETXATTR per file (the ACL probe), not two."""
    mount = mount_factory(mode)
    for i in range(60):
        (mount.backing / f"f{i:02d}").write_bytes(b"x")
    os.stat(mount.path)
    before = _count(mount, "GETXATTR")
    listing = subprocess.run(["ls", "-l", str(mount.path)], check=True, capture_output=True, text=True).stdout
    asked = _count(mount, "GETXATTR") - before - 1  # - 1: reading the stats is one
    assert listing.count(" f") == 60
    assert asked <= 60 + 5


def test_an_unlabeled_file_reports_selinux_labels_unsupported_and_a_label_still_reads(mode, mount_factory):
    mount = mount_factory(mode)
    (mount.backing / "plain").write_bytes(b"")
    (mount.backing / "labeled").write_bytes(b"")
    label = b"system_u:object_r:etc_t:s0\0"
    try:
        os.setxattr(mount.backing / "labeled", "security.selinux", label)
    except OSError as exc:
        pytest.skip(f"the backing filesystem keeps no security.selinux here: {exc}")
    with pytest.raises(OSError) as info:
        os.getxattr(mount.path / "plain", "security.selinux")
    assert info.value.errno == errno.EOPNOTSUPP
    assert os.getxattr(mount.path / "labeled", "security.selinux") == label
    assert "security.selinux" in os.listxattr(mount.path / "labeled")
    # Other missing attributes are still just missing.
    with pytest.raises(OSError) as info:
        os.getxattr(mount.path / "plain", "user.absent")
    assert info.value.errno == errno.ENODATA


@pytest.mark.parametrize("spin_us", ["0", "10000"])
def test_the_reading_worker_serves_with_and_without_polling(mode, mount_factory, spin_us):
    """-o spin_us: 0 sleeps at once after every reply, 10000 polls 10 ms;
    either way every request is answered."""
    mount = mount_factory(mode, options=[f"spin_us={spin_us}"])
    for i in range(200):
        (mount.path / f"f{i}").write_bytes(b"%d" % i)
    assert sorted(os.listdir(mount.path)) == sorted(f"f{i}" for i in range(200))
    assert all((mount.backing / f"f{i}").read_bytes() == b"%d" % i for i in range(200))
    mount.stats()
    assert (mount.path / "f7").read_bytes() == b"7"


def test_files_written_write_only_keep_their_attributes_cached(mode, mount_factory):
    """tar x: create write-only, write, chmod, set times, close. A write-only
    file cannot be mapped, so even on passthrough its attributes stay cached:
    the only GETATTR per file is the directory's, which each create changes."""
    mount = mount_factory(mode)
    os.stat(mount.path)
    before = _count(mount, "GETATTR")
    for i in range(50):
        fd = os.open(mount.path / f"f{i}", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, b"x" * 100)
            os.fchmod(fd, 0o644)
            os.utime(fd, ns=(10**18, 10**18))
        finally:
            os.close(fd)
    asked = _count(mount, "GETATTR") - before
    assert all(os.stat(mount.backing / f"f{i}").st_mtime_ns == 10**18 for i in range(50))
    assert asked <= 50 + 5, asked
