"""Setuid programs and device nodes in the backing dir stay powerless on a zcfs
mount, however it was made, unless `suid`/`dev` were asked for.

A setuid-root program that prints its effective uid sits in the backing dir,
beside a device node (/dev/null's numbers). Each way into a mount (the `zcfs`
command on both engines, `mount -t fuse.zcfs`, an fstab line and `mount MNT`,
the command systemd runs for a mount unit, the Python API) mounts it with
`allow_other`; the unprivileged test user then runs the program and writes the
device through the mount. By default the program runs as the user and the
device refuses; asked for explicitly, the program runs as root (the control
that proves the check can fail) and the device opens.

The hole closed here: mount(8) runs libfuse's mount.fuse3, which appends
`dev,suid` to the options it hands to `zcfs`.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from conftest import TEST_USER, fuse_skip_reason
from test_mounting import _zcfs_on_path, namespace  # noqa: F401 (namespace: a fixture)

import zcfs
from zcfs.mount import without_mount_fuse_additions

PRINT_EUID = ('#include <stdio.h>\n#include <unistd.h>\n'
              'int main(void) { printf("%d\\n", (int) geteuid()); return 0; }\n')


@pytest.fixture(autouse=True)
def _needs_fuse():
    reason = fuse_skip_reason()
    if reason:
        pytest.skip(reason)


@pytest.fixture(scope="module")
def user_uid() -> int:
    import pwd
    try:
        return pwd.getpwnam(TEST_USER).pw_uid
    except KeyError:
        pytest.skip(f"user {TEST_USER} missing: run scripts/setup.sh")


@pytest.fixture(scope="module")
def print_euid(tmp_path_factory) -> Path:
    """A compiled program that prints its effective uid."""
    if shutil.which("gcc") is None:
        pytest.skip("gcc is not installed")
    source = tmp_path_factory.mktemp("euid") / "euid.c"
    source.write_text(PRINT_EUID)
    subprocess.run(["gcc", "-o", source.with_suffix(""), source], check=True)
    return source.with_suffix("")


@pytest.fixture
def area(print_euid, user_uid):
    """backing/ (a setuid-root `euid` and a device node `null`) and mnt/, reachable by the test user."""
    area = Path(tempfile.mkdtemp(prefix="zcfs-setuid-", dir="/tmp"))
    try:
        area.chmod(0o755)
        backing = area / "backing"
        backing.mkdir(mode=0o755)
        (area / "mnt").mkdir()
        shutil.copy(print_euid, backing / "euid")
        os.chown(backing / "euid", 0, 0)
        (backing / "euid").chmod(0o4755)  # after chown, which clears the setuid bit
        os.mknod(backing / "null", 0o666 | 0o020000, os.makedev(1, 3))
        (backing / "null").chmod(0o666)
        assert os.stat(backing / "euid").st_mode & 0o7777 == 0o4755
        yield area
    finally:
        shutil.rmtree(area, ignore_errors=True)


def _flags(mountinfo: str, mountpoint: Path) -> list[str]:
    """The per-mount options of the mount on top at `mountpoint`, from a mountinfo text."""
    lines = [line.split() for line in mountinfo.splitlines() if line.split()[4] == str(mountpoint)]
    assert lines, f"nothing mounted at {mountpoint}"
    return lines[-1][5].split(",")


def _as_user(*args, ns=None) -> subprocess.CompletedProcess:
    if ns is not None:
        return ns.run(*args, user=TEST_USER)
    return subprocess.run(["runuser", "-u", TEST_USER, "--", *map(str, args)],
                          capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)


def _check(mnt: Path, flags: list[str], user_uid: int, explicit: bool, ns=None) -> None:
    """What the test user gets from the mount: root or not, a device or not."""
    ran = _as_user(mnt / "euid", ns=ns)
    assert ran.returncode == 0, ran.stderr
    wrote = _as_user("sh", "-c", f"echo x > {mnt}/null", ns=ns)
    if explicit:
        assert ran.stdout.strip() == "0", "suid asked for: the setuid-root program should run as root"
        assert "nosuid" not in flags and "nodev" not in flags, flags
        assert wrote.returncode == 0, wrote.stderr
    else:
        assert ran.stdout.strip() == str(user_uid), "a setuid-root program ran as root through the mount"
        assert "nosuid" in flags and "nodev" in flags, flags
        assert wrote.returncode != 0 and "Permission denied" in wrote.stderr, wrote


# How each way in mounts BACKING at MNT with OPTIONS. mount(8) (util-linux 2.38)
# drops `suid` and `dev` before its helper sees them, so through it they are
# asked for as allow_suid,allow_dev.
def _zcfs_command(*engine_args: str):
    def mount(ns, backing, mnt, options):
        return ns.run("/usr/local/bin/zcfs", backing, mnt, "-o", options, *engine_args)
    return mount


def _mount_t(ns, backing, mnt, options):
    return ns.run("mount", "-t", "fuse.zcfs", backing, mnt, "-o", options)


def _fstab(ns, backing, mnt, options):
    return ns.run("mount", mnt)  # the line is in the namespace's /etc/fstab


def _systemd(ns, backing, mnt, options):
    # A mount unit What=BACKING Where=MNT Type=fuse.zcfs Options=OPTIONS,nofail: systemd runs
    # mount(8) with this command line (src/core/mount.c, mount_enter_mounting: nofail, auto
    # and noauto filtered out). systemd is not PID 1 here, so its command is run directly.
    return ns.run("mount", backing, mnt, "-t", "fuse.zcfs", "-o", options)


WAYS = {
    "zcfs-native": (_zcfs_command("--engine", "native"), "suid,dev"),
    "zcfs-pyfuse3": (_zcfs_command("--engine", "pyfuse3"), "suid,dev"),
    "zcfs-plain": (_zcfs_command(), "suid,dev"),  # exactly the shape mount.fuse3 runs
    "zcfs-fusermount3": (_zcfs_command("-o", "auto_unmount"), "suid,dev"),  # fusermount3 mounts
    "mount-t": (_mount_t, "allow_suid,allow_dev"),
    "fstab": (_fstab, "allow_suid,allow_dev"),
    "systemd": (_systemd, "allow_suid,allow_dev"),
}


@pytest.mark.parametrize("explicit", [False, True], ids=["default", "explicit"])
@pytest.mark.parametrize("way", WAYS)
def test_setuid_program_through_mount(way, explicit, area, user_uid, namespace):
    mount, asked = WAYS[way]
    backing, mnt = area / "backing", area / "mnt"
    options = f"allow_other,{asked}" if explicit else "allow_other"
    fstab = area / "fstab"
    # as the README's fstab line
    fstab.write_text(f"{backing} {mnt} fuse.zcfs defaults,{options},nofail,zero_copy=auto 0 0\n")
    ns = namespace(_zcfs_on_path(area / "bin") + f"mount --bind {fstab} /etc/fstab\n"
                   "mount -t tmpfs zcfs-test-run /run/mount\n")
    result = mount(ns, backing, mnt, options)
    assert result.returncode == 0, result.stderr
    flags = _flags(ns.run("cat", "/proc/self/mountinfo").stdout, mnt)
    _check(mnt, flags, user_uid, explicit, ns=ns)
    assert ns.run("umount", mnt).returncode == 0
    assert ns.mounts(mnt) == []


@pytest.mark.parametrize("explicit", [False, True], ids=["default", "explicit"])
@pytest.mark.parametrize("engine", ["native", "pyfuse3"])
def test_setuid_program_through_python_api(engine, explicit, area, user_uid):
    options = ["allow_other", *(["suid", "dev"] if explicit else [])]
    with zcfs.mounted(area / "backing", area / "mnt", engine=engine, options=options) as mount:
        flags = _flags(Path("/proc/self/mountinfo").read_text(), mount.path)
        _check(mount.path, flags, user_uid, explicit)


def test_remount_through_mount8_keeps_nosuid_nodev(area, user_uid, namespace):
    """`mount -o remount,ro` and back through mount(8) and mount.fuse3 leave nosuid,nodev on."""
    backing, mnt = area / "backing", area / "mnt"
    fstab = area / "fstab"
    fstab.write_text(f"{backing} {mnt} fuse.zcfs defaults,allow_other 0 0\n")
    ns = namespace(_zcfs_on_path(area / "bin") + f"mount --bind {fstab} /etc/fstab\n"
                   "mount -t tmpfs zcfs-test-run /run/mount\n")
    assert ns.run("mount", mnt).returncode == 0
    for change in ("remount,ro", "remount,rw"):
        result = ns.run("mount", "-o", change, mnt)
        assert result.returncode == 0, result.stderr
        flags = _flags(ns.run("cat", "/proc/self/mountinfo").stdout, mnt)
        assert change.split(",")[1] in flags
        _check(mnt, flags, user_uid, explicit=False, ns=ns)
    assert ns.run("umount", mnt).returncode == 0


@pytest.mark.parametrize("given, seen", [
    ("rw,allow_other,dev,suid", "rw,allow_other"),            # nothing said: mount.fuse3 adds both
    ("rw,nodev,allow_other,suid", "rw,nodev,allow_other"),    # nodev said: it adds suid only
    ("rw,nosuid,allow_other,dev", "rw,nosuid,allow_other"),   # nosuid said: dev only
    ("rw,nosuid,nodev,allow_other", "rw,nosuid,nodev,allow_other"),  # both said: nothing added
    ("rw,allow_other,suid,dev,suid", "rw,allow_other,suid"),  # a suid that got through stays
    ("ro,remount,dev,suid", "ro,remount"),
    ("allow_other,suid", "allow_other,suid"),                 # not what mount.fuse3 appends
    ("allow_other,suid,dev", "allow_other,suid,dev"),
])
def test_mount_fuse_additions_go(given, seen):
    assert without_mount_fuse_additions(["SRC", "MNT", "-o", given]) == ["SRC", "MNT", "-o", seen]


def test_mount_fuse_additions_only_from_its_command_shape():
    """Another command line (more arguments, -o repeated) is the user's own."""
    for args in (["SRC", "MNT", "-o", "dev,suid", "-f"], ["SRC", "MNT", "-o", "x", "-o", "dev,suid"],
                 ["--engine", "native", "-o", "dev,suid"]):
        assert without_mount_fuse_additions(args) == args
