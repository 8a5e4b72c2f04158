"""Ownership and permissions for another user, through `-o allow_other`.

The daemon runs as root; a forked child drops to the unprivileged
`zcfs-test` user and acts on the mount. pytest's tmp_path is private to
root, so the child enters its directory (as root) before dropping
privileges and then works with relative paths.

Where the right answer is the kernel's own rule (setgid directories,
setuid bits cleared on write), the same steps also run on a plain local
directory and both results must agree.
"""

from __future__ import annotations

import errno
import os
import pickle
import stat
from pathlib import Path
from typing import Any, Callable

import pytest


def run_as(user: tuple[int, int], cwd: Path, fn: Callable[[], Any], umask: int = 0o022) -> Any:
    """Run fn() in a child process as `user`, in directory `cwd`; return its result.

    An OSError in the child comes back as ("error", errno-name) so tests
    can compare outcomes; any other exception fails the test.
    """
    uid, gid = user
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: never return into pytest
        status = 1
        try:
            os.close(read_end)
            os.chdir(cwd)
            os.setgroups([])
            os.setgid(gid)
            os.setuid(uid)
            os.umask(umask)
            try:
                outcome = ("ok", fn())
            except OSError as exc:
                outcome = ("oserror", errno.errorcode.get(exc.errno, exc.errno))
            with os.fdopen(write_end, "wb") as out:
                pickle.dump(outcome, out)
            status = 0
        except BaseException as exc:  # noqa: BLE001 - reported through the exit status
            try:
                with os.fdopen(write_end, "wb", closefd=False) as out:
                    pickle.dump(("crash", repr(exc)), out)
            except BaseException:  # noqa: BLE001
                pass
        finally:
            os._exit(status)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as data:
        raw = data.read()
    _, wait_status = os.waitpid(pid, 0)
    assert raw, f"child as uid {uid} died without an answer (status {wait_status})"
    kind, value = pickle.loads(raw)
    assert kind != "crash", f"child as uid {uid} crashed: {value}"
    if kind == "oserror":
        return ("error", value)
    return value


def errno_of(fn: Callable[[], Any]) -> Callable[[], Any]:
    """Wrap fn so the child reports ("error", name) or ("ok", result)."""
    def wrapped():
        try:
            return ("ok", fn())
        except OSError as exc:
            return ("error", errno.errorcode.get(exc.errno, exc.errno))
    return wrapped


def owner_mode(path: Path) -> tuple[int, int, int]:
    st = os.lstat(path)
    return st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)


def test_new_objects_belong_to_the_caller(shared, test_user):
    uid, gid = test_user

    def make():
        fd = os.open("file", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640)
        os.write(fd, b"mine")
        os.close(fd)
        os.mkdir("dir", 0o750)
        os.symlink("file", "link")
        os.mkfifo("fifo", 0o600)
        os.mknod("node", 0o604 | stat.S_IFREG)
        fd = os.open("dir/setuid", os.O_WRONLY | os.O_CREAT, 0o4755)
        os.close(fd)
        os.link("file", "dir/hardlink")

    run_as(test_user, shared.path, make, umask=0)
    b = shared.backing
    assert owner_mode(b / "file") == (uid, gid, 0o640)
    assert owner_mode(b / "dir") == (uid, gid, 0o750)
    assert owner_mode(b / "fifo") == (uid, gid, 0o600)
    assert owner_mode(b / "node") == (uid, gid, 0o604)
    assert owner_mode(b / "dir" / "setuid") == (uid, gid, 0o4755)  # a user may make setuid files of their own
    assert os.lstat(b / "link")[4:6] == (uid, gid)
    assert os.stat(b / "dir" / "hardlink").st_ino == os.stat(b / "file").st_ino
    assert (b / "file").read_bytes() == b"mine"
    # and the mount says the same
    assert owner_mode(shared.path / "file") == (uid, gid, 0o640)
    assert owner_mode(shared.path / "dir" / "setuid") == (uid, gid, 0o4755)


def test_caller_umask_applies(shared, test_user):
    uid, gid = test_user

    def make():
        os.close(os.open("f", os.O_WRONLY | os.O_CREAT, 0o666))
        os.mkdir("d", 0o777)

    run_as(test_user, shared.path, make, umask=0o027)
    assert owner_mode(shared.backing / "f") == (uid, gid, 0o640)
    assert owner_mode(shared.backing / "d") == (uid, gid, 0o750)


def test_no_writes_into_a_root_directory(shared, test_user):
    os.mkdir(shared.path / "rootdir", 0o755)
    (shared.path / "rootdir" / "existing").write_bytes(b"root's")
    os.chmod(shared.path / "rootdir" / "existing", 0o644)
    before = sorted(os.listdir(shared.backing / "rootdir"))

    def attempts():
        return {
            "create": errno_of(lambda: os.close(os.open("rootdir/new", os.O_WRONLY | os.O_CREAT, 0o644)))(),
            "mkdir": errno_of(lambda: os.mkdir("rootdir/sub"))(),
            "unlink": errno_of(lambda: os.unlink("rootdir/existing"))(),
            "rename": errno_of(lambda: os.rename("rootdir/existing", "stolen"))(),
            "symlink": errno_of(lambda: os.symlink("x", "rootdir/link"))(),
            "write": errno_of(lambda: open("rootdir/existing", "ab").close())(),
            "chmod": errno_of(lambda: os.chmod("rootdir/existing", 0o666))(),
            "chown": errno_of(lambda: os.chown("rootdir/existing", os.getuid(), -1))(),
            "utime-explicit": errno_of(lambda: os.utime("rootdir/existing", ns=(0, 0)))(),
            "setxattr": errno_of(lambda: os.setxattr("rootdir/existing", "user.x", b"1"))(),
            "read": errno_of(lambda: open("rootdir/existing", "rb").read())(),
            "list": errno_of(lambda: sorted(os.listdir("rootdir")))(),
        }

    got = run_as(test_user, shared.path, attempts)
    assert got == {
        "create": ("error", "EACCES"),
        "mkdir": ("error", "EACCES"),
        "unlink": ("error", "EACCES"),
        "rename": ("error", "EACCES"),
        "symlink": ("error", "EACCES"),
        "write": ("error", "EACCES"),
        "chmod": ("error", "EPERM"),
        "chown": ("error", "EPERM"),
        "utime-explicit": ("error", "EPERM"),
        "setxattr": ("error", "EACCES"),
        "read": ("ok", b"root's"),
        "list": ("ok", ["existing"]),
    }
    assert sorted(os.listdir(shared.backing / "rootdir")) == before
    assert not os.path.exists(shared.backing / "stolen")
    assert owner_mode(shared.backing / "rootdir" / "existing") == (0, 0, 0o644)


def test_no_reads_of_a_private_root_file(shared, test_user):
    (shared.path / "secret").write_bytes(b"top secret")
    os.chmod(shared.path / "secret", 0o600)
    os.mkdir(shared.path / "private", 0o700)
    (shared.path / "private" / "inside").write_bytes(b"x")

    def attempts():
        return {
            "read": errno_of(lambda: open("secret", "rb").read())(),
            "write": errno_of(lambda: open("secret", "r+b").close())(),
            "getxattr": errno_of(lambda: os.getxattr("secret", "user.x"))(),
            "list-private": errno_of(lambda: os.listdir("private"))(),
            "stat-inside": errno_of(lambda: os.stat("private/inside").st_size)(),
            "access-r": os.access("secret", os.R_OK),
            "access-f": os.access("secret", os.F_OK),
        }

    got = run_as(test_user, shared.path, attempts)
    assert got == {
        "read": ("error", "EACCES"),
        "write": ("error", "EACCES"),
        "getxattr": ("error", "EACCES"),  # reading user.* xattrs needs read permission
        "list-private": ("error", "EACCES"),
        "stat-inside": ("error", "EACCES"),
        "access-r": False,
        "access-f": True,
    }


def test_utime_now_needs_only_write_permission(shared, test_user):
    (shared.path / "shared-file").write_bytes(b"x")
    os.chmod(shared.path / "shared-file", 0o666)
    os.utime(shared.path / "shared-file", ns=(10**9, 10**9))

    def touch():
        os.utime("shared-file")  # "now": allowed with write access
        return errno_of(lambda: os.utime("shared-file", ns=(5, 5)))()  # explicit: owner only

    assert run_as(test_user, shared.path, touch) == ("error", "EPERM")
    st = os.stat(shared.backing / "shared-file")
    assert st.st_mtime_ns > 10**18 and st.st_atime_ns > 10**18


def test_sticky_directory(shared, test_user):
    os.mkdir(shared.path / "tmp")
    os.chmod(shared.path / "tmp", 0o1777)
    (shared.path / "tmp" / "roots").write_bytes(b"r")
    os.chmod(shared.path / "tmp" / "roots", 0o666)

    def attempts():
        with open("tmp/mine", "wb") as f:
            f.write(b"m")
        return {
            "unlink-other": errno_of(lambda: os.unlink("tmp/roots"))(),
            "rename-other": errno_of(lambda: os.rename("tmp/roots", "tmp/moved"))(),
            "write-other": errno_of(lambda: open("tmp/roots", "ab").write(b"+"))(),
            "unlink-own": errno_of(lambda: os.unlink("tmp/mine"))(),
        }

    got = run_as(test_user, shared.path, attempts)
    assert got == {
        "unlink-other": ("error", "EPERM"),
        "rename-other": ("error", "EPERM"),
        "write-other": ("ok", 1),
        "unlink-own": ("ok", None),
    }
    assert sorted(os.listdir(shared.backing / "tmp")) == ["roots"]
    assert (shared.backing / "tmp" / "roots").read_bytes() == b"r+"


def _setgid_steps():
    """What a user does in a setgid directory of a group they are not in."""
    fd = os.open("shared/file", os.O_WRONLY | os.O_CREAT, 0o664)
    os.close(fd)
    fd = os.open("shared/sgid-file", os.O_WRONLY | os.O_CREAT, 0o2775)  # not in the group: bit dropped
    os.close(fd)
    os.mkdir("shared/sub", 0o775)
    os.mkdir("shared/sub/deeper", 0o755)
    fd = os.open("shared/sub/deeper/f", os.O_WRONLY | os.O_CREAT, 0o644)
    os.close(fd)
    os.mkfifo("shared/fifo", 0o660)


def _setgid_setup(root: Path, group: int) -> None:
    os.mkdir(root / "shared")
    os.chown(root / "shared", 0, group)
    os.chmod(root / "shared", 0o2777)


SETGID_NAMES = ["file", "sgid-file", "sub", "sub/deeper", "sub/deeper/f", "fifo"]


def test_setgid_directory_inheritance(shared, test_user, tmp_path):
    uid, gid = test_user
    group = 4242  # a group the test user is not in
    _setgid_setup(shared.path, group)
    run_as(test_user, shared.path, _setgid_steps, umask=0)
    # the same steps on a plain local directory give the kernel's answer
    local = tmp_path / "local-reference"
    local.mkdir()
    _setgid_setup(local, group)
    run_as(test_user, local, _setgid_steps, umask=0)

    got = {name: owner_mode(shared.backing / "shared" / name) for name in SETGID_NAMES}
    expected = {name: owner_mode(local / "shared" / name) for name in SETGID_NAMES}
    assert got == expected
    assert got["file"] == (uid, group, 0o664)
    assert got["sub"] == (uid, group, 0o2775)  # directories inherit the setgid bit
    assert got["sub/deeper/f"][1] == group
    assert got["sgid-file"][2] & stat.S_ISGID == 0
    through_mount = {name: owner_mode(shared.path / "shared" / name) for name in SETGID_NAMES}
    assert through_mount == expected


def _write_own_setid_files():
    for name, mode in (("suid", 0o4755), ("sgid", 0o2755), ("both", 0o6775), ("sgid-noexec", 0o2644)):
        fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        os.fchmod(fd, mode)
        os.close(fd)
        with open(name, "ab") as f:
            f.write(b"data")
    fd = os.open("trunc", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    os.write(fd, b"12345")
    os.fchmod(fd, 0o4755)
    os.close(fd)
    os.truncate("trunc", 1)


def test_writes_by_owner_clear_setid_bits_like_a_local_fs(shared, test_user, tmp_path):
    os.mkdir(shared.path / "work", 0o777)
    os.chmod(shared.path / "work", 0o777)
    run_as(test_user, shared.path / "work", _write_own_setid_files, umask=0)
    local = tmp_path / "local-setid"
    local.mkdir()
    os.chmod(local, 0o777)
    run_as(test_user, local, _write_own_setid_files, umask=0)
    names = ["suid", "sgid", "both", "sgid-noexec", "trunc"]
    got = {n: owner_mode(shared.backing / "work" / n) for n in names}
    expected = {n: owner_mode(local / n) for n in names}
    assert got == expected
    assert got["suid"][2] == 0o755


def test_group_member_access(shared, test_user):
    uid, gid = test_user
    (shared.path / "group-readable").write_bytes(b"for the group")
    os.chown(shared.path / "group-readable", 0, gid)
    os.chmod(shared.path / "group-readable", 0o640)
    (shared.path / "other-group").write_bytes(b"no")
    os.chown(shared.path / "other-group", 0, 4242)
    os.chmod(shared.path / "other-group", 0o640)

    def attempts():
        return (errno_of(lambda: open("group-readable", "rb").read())(),
                errno_of(lambda: open("other-group", "rb").read())(),
                errno_of(lambda: open("group-readable", "ab").close())())

    assert run_as(test_user, shared.path, attempts) == (
        ("ok", b"for the group"), ("error", "EACCES"), ("error", "EACCES"))


def test_other_users_shut_out_without_allow_other(mnt, test_user):
    (mnt.path / "f").write_bytes(b"x")
    os.chmod(mnt.path, 0o777)

    def attempts():
        return (errno_of(lambda: os.listdir("."))(),
                errno_of(lambda: open("f", "rb").read())())

    assert run_as(test_user, mnt.path, attempts) == (("error", "EACCES"), ("error", "EACCES"))


def test_allow_other_needs_default_permissions(mode, mount_factory, capfd, tmp_path):
    """zcfs checks no permissions of its own, so it refuses to open the mount to
    every user without the kernel's checks (each would act as root)."""
    with pytest.raises(RuntimeError, match="did not mount"):
        mount_factory(mode, options=["allow_other", "nodefault_permissions"])
    assert "allow_other and nodefault_permissions" in capfd.readouterr().err
    with open("/proc/self/mountinfo") as info:
        assert str(tmp_path) not in info.read()


def test_no_device_nodes_or_links_to_others_files(shared, test_user):
    (shared.path / "roots-private").write_bytes(b"r")
    os.chmod(shared.path / "roots-private", 0o600)
    with open("/proc/sys/fs/protected_hardlinks") as f:
        protected = f.read().strip() == "1"

    def attempts():
        return {
            "chardev": errno_of(lambda: os.mknod("null", 0o666 | stat.S_IFCHR, os.makedev(1, 3)))(),
            "hardlink": errno_of(lambda: os.link("roots-private", "mine-now"))(),
        }

    got = run_as(test_user, shared.path, attempts)
    assert got["chardev"] == ("error", "EPERM")
    if protected:
        assert got["hardlink"] == ("error", "EPERM")
        assert not os.path.lexists(shared.backing / "mine-now")
    assert not os.path.lexists(shared.backing / "null")
    assert owner_mode(shared.backing / "roots-private") == (0, 0, 0o600)
