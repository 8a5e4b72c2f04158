"""POSIX ACLs through the mount, compared with a plain directory of the same filesystem.

The native engine negotiates FUSE_POSIX_ACL (the kernel caches ACLs and
enforces them with default_permissions) and FUSE_DONT_MASK (the kernel
passes the mode unmasked with the caller's umask, and the backing
filesystem decides, as locally, whether a default ACL or the umask rules).

The pyfuse3 engine gets FUSE_POSIX_ACL (pyfuse3's `enable_acl`) but not
FUSE_DONT_MASK: its INIT callback sets a fixed set of flags and gives the
filesystem no way to add one, so the kernel strips the umask from the mode
before the daemon sees it, and no daemon can put the stripped bits back
under a default ACL.
"""

from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path

import pytest

from posix_checks import umask
from test_ownership import owner_mode, run_as

NO_DONT_MASK = ("pyfuse3 cannot negotiate FUSE_DONT_MASK (its INIT callback sets fixed flags), "
                "so the kernel applies the umask before the daemon sees the mode")


def getfacl(path: Path) -> str:
    """The ACL of `path` without the header (names differ between the two trees)."""
    return subprocess.run(["getfacl", "-cpn", str(path)], check=True, capture_output=True, text=True).stdout


def setfacl(*args: str) -> None:
    subprocess.run(["setfacl", *args], check=True, capture_output=True)


def _make_under_default_acl(root: Path, mask: int) -> None:
    os.mkdir(root / "dir")
    setfacl("-d", "-m", "u::rwx,g::rwx,o::rwx", str(root / "dir"))
    with umask(mask):
        (root / "dir" / "file").touch()
        os.mkdir(root / "dir" / "sub")
        os.mkfifo(root / "dir" / "fifo")
        os.mknod(root / "dir" / "node", 0o666 | stat.S_IFREG)


INHERITED = ["file", "sub", "fifo", "node"]


def _inherited_acls(root: Path) -> dict[str, tuple[str, int]]:
    return {name: (getfacl(root / "dir" / name), owner_mode(root / "dir" / name)[2]) for name in INHERITED}


@pytest.mark.parametrize("mask", [0o277, 0o022])
def test_default_acl_ignores_the_umask(mnt, tmp_path, mask):
    if mnt.engine == "pyfuse3":
        pytest.xfail(NO_DONT_MASK)
    local = tmp_path / "plain"
    local.mkdir()
    _make_under_default_acl(mnt.path, mask)
    _make_under_default_acl(local, mask)
    expected = _inherited_acls(local)
    assert _inherited_acls(mnt.path) == expected
    assert _inherited_acls(mnt.backing) == expected
    assert expected["file"][1] == 0o666  # the default ACL, not the umask, decided


def test_umask_applies_without_default_acl(mnt, tmp_path):
    local = tmp_path / "plain"
    local.mkdir()
    for root in (mnt.path, local):
        with umask(0o027):
            (root / "file").touch()
            os.mkdir(root / "sub")
            os.mknod(root / "node", 0o666 | stat.S_IFREG)
    for name in ("file", "sub", "node"):
        assert owner_mode(mnt.backing / name) == owner_mode(local / name)
    assert owner_mode(mnt.path / "file")[2] == 0o640


def test_getfacl_setfacl_through_the_mount(mnt, test_user):
    uid, _ = test_user
    (mnt.path / "f").write_bytes(b"x")
    setfacl("-m", f"u:{uid}:rw,g:4242:r,m::rw", str(mnt.path / "f"))
    os.mkdir(mnt.path / "d")
    setfacl("-d", "-m", f"u:{uid}:rx", str(mnt.path / "d"))
    for name in ("f", "d"):
        assert getfacl(mnt.path / name) == getfacl(mnt.backing / name)
    assert f"user:{uid}:rw-" in getfacl(mnt.path / "f")
    setfacl("-b", str(mnt.path / "f"))
    assert f"user:{uid}" not in getfacl(mnt.path / "f")
    assert getfacl(mnt.path / "f") == getfacl(mnt.backing / "f")


def test_setfacl_changes_the_mode_at_once(mnt):
    f = mnt.path / "f"
    f.write_bytes(b"x")
    os.chmod(f, 0o755)
    assert stat.S_IMODE(os.stat(f).st_mode) == 0o755  # cached now
    setfacl("-m", "u::rwx,g::rwx,o::rwx", str(f))
    out = subprocess.run(["stat", "-c", "%a", str(f)], check=True, capture_output=True, text=True).stdout
    assert out.strip() == "777"


def _acl_access_steps():
    out = {}
    for name in ("granted", "denied", "dir/inside"):
        try:
            with open(name, "rb") as f:
                out[name] = f.read()
        except OSError as exc:
            out[name] = exc.strerror
    try:
        with open("granted", "ab") as f:
            f.write(b"+")
        out["write granted"] = "ok"
    except OSError as exc:
        out["write granted"] = exc.strerror
    try:
        out["list dir"] = sorted(os.listdir("dir"))
    except OSError as exc:
        out["list dir"] = exc.strerror
    return out


def _acl_access_setup(root: Path, uid: int) -> None:
    (root / "granted").write_bytes(b"granted")
    os.chmod(root / "granted", 0o600)
    setfacl("-m", f"u:{uid}:rw", str(root / "granted"))
    (root / "denied").write_bytes(b"denied")
    os.chmod(root / "denied", 0o644)
    setfacl("-m", f"u:{uid}:---", str(root / "denied"))
    os.mkdir(root / "dir", 0o700)
    (root / "dir" / "inside").write_bytes(b"inside")
    os.chmod(root / "dir" / "inside", 0o644)
    setfacl("-m", f"u:{uid}:rx", str(root / "dir"))


def test_acl_entries_decide_for_other_users(shared, test_user, tmp_path):
    """An ACL entry grants what the mode bits refuse, and refuses what they grant."""
    uid, _ = test_user
    local = tmp_path / "plain"
    local.mkdir()
    os.chmod(local, 0o755)
    os.chmod(tmp_path, 0o755)
    for root in (shared.path, local):
        _acl_access_setup(root, uid)
    got = run_as(test_user, shared.path, _acl_access_steps)
    expected = run_as(test_user, local, _acl_access_steps)
    assert got == expected
    assert got["granted"] == b"granted" and got["write granted"] == "ok"
    assert got["denied"] == "Permission denied"
    assert got["dir/inside"] == b"inside" and got["list dir"] == ["inside"]


def _setfacl_own_sgid_file():
    subprocess.run(["setfacl", "-m", "u:0:r", "f"], check=True, capture_output=True)


def test_setfacl_by_a_non_member_clears_setgid(shared, test_user, tmp_path):
    local = tmp_path / "plain"
    local.mkdir()
    os.chmod(tmp_path, 0o755)
    uid, _ = test_user
    for root in (shared.path, local):
        os.chmod(root, 0o777)
        (root / "f").write_bytes(b"x")
        os.chown(root / "f", uid, 4242)  # a group the user is not in
        os.chmod(root / "f", 0o2775)
        run_as(test_user, root, _setfacl_own_sgid_file)
    assert owner_mode(local / "f")[2] & stat.S_ISGID == 0
    assert owner_mode(shared.backing / "f") == owner_mode(local / "f")
    assert owner_mode(shared.path / "f") == owner_mode(local / "f")
