"""How zcfs gets mounted: as a user through fusermount3, in user namespaces,
through mount(8)/mount.fuse3 and fstab, with every option mount(8) hands
over, remount, atime options reaching the backing files, and `zcfs stats`
into a closed pipe.

Whatever would touch the machine (a 0666 /dev/fuse, a `zcfs` command in
/usr/local/bin, an fstab line) happens inside a private mount + pid
namespace: its mounts are seen by no one else, and when the namespace's
init is killed every process in it dies and every mount in it goes away.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import pwd
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

import pytest

from conftest import MODES, TEST_USER, _mode_args, fuse_skip_reason, mount_is_listed, wait_until

import zcfs

TIMEOUT = 60
ENGINES = sorted({mode.split("-")[0].split("+")[0] for mode in MODES})
CHECKOUT = Path(zcfs.__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _needs_fuse():
    reason = fuse_skip_reason()
    if reason:
        pytest.skip(reason)


def one_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("zcfs: ") and "Traceback" not in stderr, stderr
    return lines[0]


# -- a private mount + pid namespace ----------------------------------------

class Namespace:
    """A private mount and pid namespace set up by `setup` (sh), to run commands in."""

    def __init__(self, setup: str) -> None:
        self.holder = subprocess.Popen(
            ["unshare", "--mount", "--pid", "--fork", "--kill-child", "--mount-proc",
             "sh", "-ec", f"{setup}\necho ready\nexec sleep 100000"],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        line = self.holder.stdout.readline().strip()
        if line != "ready":
            self.close()
            raise RuntimeError(f"namespace set-up failed: {self.holder.stderr.read()}")
        with open(f"/proc/{self.holder.pid}/task/{self.holder.pid}/children") as children:
            self.init = int(children.read().split()[0])  # pid 1 inside

    def run(self, *args: str | Path, user: str | None = None, timeout: float = TIMEOUT,
            env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
        """Run a command in the namespace (as `user` if given); never raises on failure."""
        prefix = ["nsenter", "-t", str(self.init), "-m", "-p", "--"]
        if user:
            prefix += ["runuser", "-u", user, "--"]
        if env:
            prefix += ["env", *(f"{k}={v}" for k, v in env.items())]
        return subprocess.run([*prefix, *map(str, args)], capture_output=True, text=True,
                              timeout=timeout, stdin=subprocess.DEVNULL)

    def mounts(self, under: Path) -> list[str]:
        """Mountpoints at or below `under` in the namespace."""
        table = self.run("cat", "/proc/self/mountinfo").stdout
        return [f.split()[4] for f in table.splitlines() if f.split()[4].startswith(str(under))]

    def close(self) -> None:
        """Kill the namespace's init: every process in it dies, every mount in it goes."""
        self.holder.kill()
        self.holder.wait()
        self.holder.stdout.close()
        self.holder.stderr.close()


def _fuse_device(mode: int) -> str:
    """Set-up lines that put a /dev/fuse of `mode` in place (the host's stays as it is)."""
    return ("mount -t tmpfs -o mode=0755 zcfs-test-dev /mnt\n"
            f"mknod -m {mode:o} /mnt/fuse c 10 229\n"
            "mount --bind /mnt/fuse /dev/fuse\n"
            "umount -l /mnt\n")


@pytest.fixture
def namespace():
    """Make private namespaces; each is killed at teardown, whatever happened."""
    made: list[Namespace] = []

    def make(setup: str = "true") -> Namespace:
        ns = Namespace(setup)
        made.append(ns)
        return ns

    yield make
    for ns in made:
        ns.close()


@pytest.fixture
def user_area():
    """A directory the test user owns (tmp_path is private to root), with backing/ and mnt/."""
    pw = _test_user()
    area = Path(tempfile.mkdtemp(prefix="zcfs-user-", dir="/tmp"))
    try:
        for name in ("backing", "mnt"):
            (area / name).mkdir()
        (area / "backing" / "hello").write_bytes(b"hello\n")
        for path in [area, *area.iterdir(), *(area / "backing").iterdir()]:
            os.chown(path, pw.pw_uid, pw.pw_gid)
        area.chmod(0o755)
        yield area
    finally:
        shutil.rmtree(area, ignore_errors=True)


def _test_user() -> pwd.struct_passwd:
    try:
        return pwd.getpwnam(TEST_USER)
    except KeyError:
        pytest.skip(f"user {TEST_USER} missing: run scripts/setup.sh")


# The README's per-user install ("Installing zcfs for yourself"), word for word.
README_INSTALL = ["python3 -m venv ~/.local/zcfs", "~/.local/zcfs/bin/pip install /path/to/zcfs-checkout"]


def _read_only_checkout(into: Path) -> None:
    """Copy the checkout's tracked files to `into` (a clone's contents), root's and read-only."""
    listed = subprocess.run(["git", "-C", CHECKOUT, "ls-files", "-z"], capture_output=True, timeout=60)
    if listed.returncode != 0:
        pytest.skip(f"the checkout is not a git work tree: {listed.stderr.decode().strip()}")
    for name in os.fsdecode(listed.stdout).split("\0"):
        if name and (CHECKOUT / name).is_file():  # a tracked file deleted in the work tree is left out
            (into / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(CHECKOUT / name, into / name)
    for path in [into, *into.rglob("*")]:
        path.chmod(path.stat().st_mode & ~0o222)


def _tree_state(root: Path) -> dict:
    """Every name below root (and root) with its mode, size, mtime and contents: any write shows."""
    state = {}
    for path in [root, *root.rglob("*")]:
        st = os.lstat(path)
        content = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else None
        state[str(path.relative_to(root))] = (st.st_mode, st.st_size, st.st_mtime_ns, content)
    return state


@dataclasses.dataclass
class UserInstall:
    result: subprocess.CompletedProcess
    checkout_changed: list[str]  # names the install created, changed or removed in the checkout
    zcfs: Path


@pytest.fixture(scope="session")
def user_install():
    """The test user runs the README's install commands literally, against a read-only checkout.

    The checkout is a root-owned, read-only copy of this one's tracked files
    (like a clone in /opt that root made). HOME is a fresh temporary home.
    The user's step stays off the network by environment only (PIP_NO_INDEX,
    PIP_FIND_LINKS): root first builds the wheels of the build backend and
    of zcfs's dependencies, not zcfs's own, which the user's pip builds.
    """
    pw = _test_user()
    readme = (CHECKOUT / "README.md").read_text()
    assert all(line in readme for line in README_INSTALL), "the README's install commands changed"
    area = Path(tempfile.mkdtemp(prefix="zcfs-user-install-", dir="/tmp"))
    try:
        area.chmod(0o755)
        checkout, wheels, home = area / "zcfs-checkout", area / "wheels", area / "home"
        checkout.mkdir()
        _read_only_checkout(checkout)
        project = tomllib.loads((checkout / "pyproject.toml").read_text())
        requirements = project["build-system"]["requires"] + project["project"]["dependencies"]
        built = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "-w", wheels, *requirements],
                               capture_output=True, text=True, timeout=600)
        if built.returncode != 0:
            pytest.skip(f"cannot build the wheels of zcfs's dependencies: {built.stderr.strip().splitlines()[-1:]}")
        home.mkdir()
        os.chown(home, pw.pw_uid, pw.pw_gid)
        before = _tree_state(checkout)
        commands = "\n".join(line.replace("/path/to/zcfs-checkout", str(checkout)) for line in README_INSTALL)
        result = subprocess.run(
            ["runuser", "-u", TEST_USER, "--", "env", "-u", "PYTHONPATH", f"HOME={home}", "PATH=/usr/bin:/bin",
             "PIP_NO_INDEX=1", f"PIP_FIND_LINKS={wheels}", "sh", "-ec", f"cd\n{commands}\n"],
            capture_output=True, text=True, timeout=600, stdin=subprocess.DEVNULL)
        after = _tree_state(checkout)
        changed = sorted(name for name in before.keys() | after.keys() if before.get(name) != after.get(name))
        yield UserInstall(result, changed, home / ".local" / "zcfs" / "bin" / "zcfs")
    finally:
        shutil.rmtree(area, ignore_errors=True)


@pytest.fixture
def user_zcfs(user_install):
    """The `zcfs` command of the test user's own install (see user_install)."""
    if user_install.result.returncode != 0:
        pytest.fail(f"the user's install failed: {user_install.result.stderr.strip()[-2000:]}")
    return user_install.zcfs


def test_user_installs_from_a_read_only_checkout(user_install):
    """The README's per-user install works from a checkout the user cannot write to, and writes nothing there."""
    result = user_install.result
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    assert user_install.checkout_changed == []
    version = subprocess.run(["runuser", "-u", TEST_USER, "--", user_install.zcfs, "--version"],
                             capture_output=True, text=True, timeout=TIMEOUT)
    assert (version.returncode, version.stdout, version.stderr) == (0, f"zcfs {zcfs.__version__}\n", "")


# -- as an ordinary user ------------------------------------------------------

@pytest.mark.parametrize("engine", ENGINES)
def test_user_mounts_through_fusermount(engine, user_zcfs, user_area, namespace):
    """A user mounts (fusermount3 does the mount), reads, writes, reads stats, unmounts."""
    ns = namespace(_fuse_device(0o666))  # as on a stock Debian host
    backing, mnt = user_area / "backing", user_area / "mnt"
    result = ns.run(user_zcfs, backing, mnt, "--engine", engine, "-o", "noatime", user=TEST_USER)
    assert result.returncode == 0, result.stderr
    # no atime view of the backing dir without CAP_SYS_ADMIN: said in one line
    assert "zcfs: the atime options reach the mount, but the backing files only through O_NOATIME" \
        in result.stderr
    assert ns.mounts(mnt) == [str(mnt)]
    atime = _touch_atime_back(backing / "hello")
    assert ns.run("cat", mnt / "hello", user=TEST_USER).stdout == "hello\n"
    assert (backing / "hello").stat().st_atime_ns == atime  # O_NOATIME: the user owns it
    assert ns.run("sh", "-c", f"echo written > {mnt}/new", user=TEST_USER).returncode == 0
    assert (backing / "new").read_text() == "written\n"
    assert (backing / "new").stat().st_uid == _test_user().pw_uid
    stats = json.loads(ns.run(user_zcfs, "stats", "--json", mnt, user=TEST_USER).stdout)
    assert stats["engine"] == engine and stats["options"]["mountpoint"] == str(mnt)
    assert ns.run("fusermount3", "-u", mnt, user=TEST_USER).returncode == 0
    assert ns.mounts(mnt) == []


@pytest.mark.parametrize("engine", ENGINES)
def test_user_where_dev_fuse_is_root_only(engine, user_zcfs, user_area, namespace):
    """/dev/fuse 0600: fusermount3 opens it with the user's rights, so no mount; one line says what to change."""
    ns = namespace(_fuse_device(0o600))
    mnt = user_area / "mnt"
    result = ns.run(user_zcfs, user_area / "backing", mnt, "--engine", engine, user=TEST_USER)
    assert result.returncode == 1
    line = one_line(result.stderr)
    assert "0600" in line and "chmod 0666 /dev/fuse" in line, line
    assert ns.mounts(mnt) == []


@pytest.mark.parametrize("engine", ENGINES)
def test_user_allow_other_needs_fuse_conf(engine, user_zcfs, user_area, namespace):
    conf = user_area / "fuse.conf"
    conf.write_text("# mount_max = 1000\n")  # no user_allow_other
    ns = namespace(_fuse_device(0o666) + f"mount --bind {conf} /etc/fuse.conf\n")
    mnt = user_area / "mnt"
    result = ns.run(user_zcfs, user_area / "backing", mnt, "--engine", engine, "-o", "allow_other",
                    user=TEST_USER)
    assert result.returncode == 1
    assert "user_allow_other" in one_line(result.stderr) and "/etc/fuse.conf" in result.stderr
    assert ns.mounts(mnt) == []


@pytest.mark.parametrize("who", ["root", "user"])
@pytest.mark.parametrize("mode", MODES)
def test_mount_in_user_namespace(mode, who, user_zcfs, user_area, namespace):
    """`unshare -Urmpf` (what rootless runtimes do): reads and writes work, splice stands in
    for passthrough, and when the namespace's init exits nothing is left mounted or running."""
    ns = namespace(_fuse_device(0o666))
    backing, mnt = user_area / "backing", user_area / "mnt"
    if who == "root":  # root of the namespace may write only what root owns
        for path in [backing, mnt, *backing.iterdir()]:
            os.chown(path, 0, 0)
    script = (f'{user_zcfs} {backing} {mnt} {" ".join(_mode_args(mode))}\n'
              f'cat {mnt}/hello\n'
              f'echo from-namespace > {mnt}/ns-file\n'
              f'cat {mnt}/ns-file\n'
              f'{user_zcfs} stats --json {mnt}\n')  # and exit without unmounting
    result = ns.run("unshare", "-Urmpf", "--mount-proc", "sh", "-ec", script,
                    user=TEST_USER if who == "user" else None)
    assert result.returncode == 0, result.stderr
    out = result.stdout.splitlines()
    assert out[:2] == ["hello", "from-namespace"]
    assert (backing / "ns-file").read_text() == "from-namespace\n"
    stats = json.loads("\n".join(out[2:]))
    if mode == "native-auto":  # the kernel refuses passthrough outside the initial user namespace
        assert stats["fallbacks"].get("passthrough-eperm", 0) >= 1, stats["fallbacks"]
        assert stats["read"]["passthrough"]["opens"] == 0
    if mode in ("native-auto", "native-splice"):
        assert stats["read"]["splice"]["requests"] >= 1, stats["read"]
    assert ns.mounts(mnt) == []
    assert wait_until(lambda: "zcfs" not in ns.run("ps", "-eo", "args").stdout, timeout=10)


# -- what a container without the right flags hears -------------------------

@pytest.mark.parametrize("engine", ENGINES)
def test_no_dev_fuse_names_the_device_flag(engine, user_area, namespace):
    # as in a container without --device: a /dev without fuse
    ns = namespace("mount -t tmpfs zcfs-test-dev /dev\nmknod -m 666 /dev/null c 1 3")
    result = ns.run(sys.executable, "-m", "zcfs", user_area / "backing", user_area / "mnt", "--engine", engine)
    assert result.returncode == 1
    assert "--device /dev/fuse" in one_line(result.stderr)
    assert ns.mounts(user_area / "mnt") == []


@pytest.mark.parametrize("engine", ENGINES)
def test_no_sys_admin_names_the_capability(engine, user_area, namespace):
    ns = namespace()
    # root without CAP_SYS_ADMIN, as in a container without --cap-add SYS_ADMIN
    result = ns.run("setpriv", "--bounding-set", "-sys_admin", "--inh-caps", "-sys_admin", "--",
                    sys.executable, "-m", "zcfs", user_area / "backing", user_area / "mnt", "--engine", engine)
    assert result.returncode == 1
    line = one_line(result.stderr)
    assert "--cap-add SYS_ADMIN" in line and "unshare" in line and "seccomp" in line, line
    assert ns.mounts(user_area / "mnt") == []


# -- mount(8), mount.fuse3 and fstab ------------------------------------------

# mount(8) runs helpers with a fixed PATH: inside the namespace a directory of
# ours, holding a `zcfs` that runs this checkout, hides /usr/local/bin.
def _zcfs_on_path(bindir: Path) -> str:
    bindir.mkdir()
    (bindir / "zcfs").write_text(f"#!/bin/sh\nexec {sys.executable} -m zcfs \"$@\"\n")
    (bindir / "zcfs").chmod(0o755)
    return f"mount --bind {bindir} /usr/local/bin\n"


@pytest.mark.parametrize("mode", MODES)
def test_mount_t_fuse_zcfs_and_fstab(mode, tmp_path, namespace):
    engine, _, tier = mode.partition("-")
    backing, mnt = tmp_path / "backing", tmp_path / "mnt"
    backing.mkdir()
    mnt.mkdir()
    (backing / "hello").write_bytes(b"hello\n")
    own = f"engine={engine}" + (f",zero_copy={tier}" if tier else "")
    fstab = tmp_path / "fstab"
    fstab.write_text(f"{backing} {mnt} fuse.zcfs defaults,allow_other,nofail,_netdev,noauto,"
                     f"x-systemd.requires=network-online.target,x-systemd.automount,{own} 0 0\n")
    # (libmount notes some options in /run/mount/utab: a private one)
    ns = namespace(_zcfs_on_path(tmp_path / "bin") + f"mount --bind {fstab} /etc/fstab\n"
                   "mount -t tmpfs zcfs-test-run /run/mount\n")

    # mount -t, with options fstab users write
    result = ns.run("mount", "-t", "fuse.zcfs", backing, mnt, "-o",
                    f"allow_other,nofail,_netdev,user,nodiratime,lazytime,{own}")
    assert result.returncode == 0, result.stderr
    assert ns.run("cat", mnt / "hello").stdout == "hello\n"
    stats = json.loads(ns.run("zcfs", "stats", "--json", mnt).stdout)
    assert stats["engine"] == engine and stats["options"]["allow_other"]
    options = ns.run("findmnt", "-no", "OPTIONS", mnt).stdout
    assert "nodiratime" in options and "noexec" in options  # `user` means noexec,nosuid,nodev to mount(8)
    assert ns.run("umount", mnt).returncode == 0
    assert ns.mounts(mnt) == []

    # an fstab line, then mount MOUNTPOINT
    result = ns.run("mount", mnt)
    assert result.returncode == 0, result.stderr
    assert ns.run("cat", mnt / "hello").stdout == "hello\n"
    flags = ns.run("findmnt", "-no", "OPTIONS", mnt).stdout.strip().split(",")
    assert "nosuid" in flags and "nodev" in flags, flags  # though mount.fuse3 appends dev,suid

    # remount read-only and back, as fstab users and scripts do
    assert ns.run("mount", "-o", "remount,ro", mnt).returncode == 0
    flags = ns.run("findmnt", "-no", "OPTIONS", mnt).stdout.strip().split(",")
    assert "ro" in flags and "nosuid" in flags and "nodev" in flags, flags
    refused = ns.run("sh", "-c", f"echo x > {mnt}/new")
    assert refused.returncode != 0 and "Read-only file system" in refused.stderr
    assert not (backing / "new").exists()
    assert ns.run("mount", "-o", "remount,rw", mnt).returncode == 0
    assert ns.run("sh", "-c", f"echo x > {mnt}/new").returncode == 0
    assert (backing / "new").read_text() == "x\n"
    flags = ns.run("findmnt", "-no", "OPTIONS", mnt).stdout.strip().split(",")
    assert "nosuid" in flags and "nodev" in flags, flags
    assert ns.run("umount", mnt).returncode == 0
    assert ns.mounts(mnt) == []


def _readme_fstab_section() -> list[str]:
    """The lines of the sh block in the README's "fstab, `mount(8)` and systemd"."""
    section = (CHECKOUT / "README.md").read_text().split("### fstab, `mount(8)` and systemd\n", 1)[1]
    return section.split("```sh\n", 1)[1].split("```", 1)[0].splitlines()


def test_readme_fstab_section(tmp_path, namespace):
    """The README's fstab section as written, its /srv/data and /mnt/data being temporary dirs."""
    backing, mnt = tmp_path / "backing", tmp_path / "mnt"
    backing.mkdir()
    mnt.mkdir()
    (backing / "hello").write_bytes(b"hello\n")
    lines = [line.replace("/srv/data", str(backing)).replace("/mnt/data", str(mnt))
             for line in _readme_fstab_section()]
    fstab_line = lines[lines.index("# /etc/fstab:") + 1]
    commands = [shlex.split(line) for line in lines if not line.startswith("#") and line != fstab_line]
    assert [c[:2] for c in commands] == [["mount", "-t"], ["mount", str(mnt)], ["mount", "-o"],
                                         ["umount", str(mnt)]], commands
    (tmp_path / "fstab").write_text(fstab_line + "\n")
    ns = namespace(_zcfs_on_path(tmp_path / "bin") + f"mount --bind {tmp_path / 'fstab'} /etc/fstab\n"
                   "mount -t tmpfs zcfs-test-run /run/mount\n")

    def flags() -> list[str]:
        return ns.run("findmnt", "-no", "OPTIONS", mnt).stdout.strip().split(",")

    mount_t, mount_fstab, remount_ro, umount = commands
    result = ns.run(*mount_t)
    assert result.returncode == 0, result.stderr
    assert ns.run("cat", mnt / "hello").stdout == "hello\n"
    assert "nosuid" in flags() and "nodev" in flags() and "allow_other" in ns.run(
        "findmnt", "-no", "FS-OPTIONS", mnt).stdout, flags()
    assert ns.run("umount", mnt).returncode == 0  # the fstab line mounts the same place

    result = ns.run(*mount_fstab)
    assert result.returncode == 0, result.stderr
    assert ns.run("cat", mnt / "hello").stdout == "hello\n"
    assert "nosuid" in flags() and "nodev" in flags(), flags()

    result = ns.run(*remount_ro)
    assert result.returncode == 0, result.stderr
    assert "ro" in flags() and "nosuid" in flags() and "nodev" in flags(), flags()
    refused = ns.run("sh", "-c", f"echo x > {mnt}/new")
    assert refused.returncode != 0 and "Read-only file system" in refused.stderr

    assert ns.run(*umount).returncode == 0
    assert ns.mounts(mnt) == []


# -- options -------------------------------------------------------------------

# What mount(8), mount.fuse3, fstab and systemd may hand over.
MOUNT8_OPTIONS = ["rw", "dev", "suid", "exec", "auto", "noauto", "user", "nouser", "users", "nofail",
                  "_netdev", "defaults", "x-systemd.automount", "x-systemd.requires=foo.service",
                  "x-gvfs-show", "comment=anything", "nodiratime", "diratime", "lazytime", "nolazytime",
                  "relatime", "norelatime", "strictatime", "nostrictatime", "atime", "noatime",
                  "sync", "async", "dirsync", "iversion", "noiversion", "nomand", "silent", "loud"]


@pytest.mark.parametrize("option", MOUNT8_OPTIONS)
@pytest.mark.parametrize("engine", ENGINES)
def test_every_mount8_option_is_accepted(engine, option, mount_factory):
    mount = mount_factory(engine, options=[option])
    (mount.backing / "f").write_bytes(b"data")
    assert (mount.path / "f").read_bytes() == b"data"


@pytest.mark.parametrize("options, present, absent", [
    ("nodiratime", ["nodiratime"], []),
    ("noatime", ["noatime"], ["relatime"]),
    ("noatime,atime", ["relatime"], ["noatime"]),
    ("ro", ["ro"], ["rw"]),
    ("noexec,nosuid", ["noexec", "nosuid"], []),
])
@pytest.mark.parametrize("engine", ENGINES)
def test_flag_options_reach_the_mount(engine, options, present, absent, mount_factory):
    mount = mount_factory(engine, options=[options])
    listed = subprocess.run(["findmnt", "-no", "OPTIONS", mount.path], capture_output=True, text=True).stdout
    flags = listed.strip().split(",")
    assert all(p in flags for p in present) and not any(a in flags for a in absent), flags


def _touch_atime_back(path: Path) -> int:
    """Set the atime a year before the mtime (relatime then updates on the next read); returns it."""
    st = path.stat()
    old = st.st_mtime_ns - 365 * 86400 * 10**9
    os.utime(path, ns=(old, st.st_mtime_ns))
    return old


def _accesses(mnt: Path) -> None:
    """Read, map, execute and list through the mount, with the mount's cache dropped first."""
    subprocess.run(["cat", mnt / "data"], check=True, capture_output=True)
    with open(mnt / "mapped", "rb") as f:
        import mmap
        with mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ) as m:
            assert m[:4] == b"map!"
    assert subprocess.run([mnt / "script"], capture_output=True, text=True).stdout == "ran\n"
    os.listdir(mnt / "dir")


@pytest.mark.parametrize("atime", ["noatime", "default"])
def test_noatime_keeps_backing_atime(mode, atime, mount_factory, tmp_path):
    """-o noatime leaves every backing atime alone (read, mmap, exec, listing; passthrough too);
    without it the same accesses do update them, so the check can see a change."""
    backing = tmp_path / "backing"
    backing.mkdir()
    (backing / "data").write_bytes(b"x" * 100_000)
    (backing / "mapped").write_bytes(b"map!" * 1024)
    (backing / "script").write_text("#!/bin/sh\necho ran\n")
    (backing / "script").chmod(0o755)
    (backing / "dir").mkdir()
    (backing / "dir" / "entry").write_bytes(b"")
    names = ["data", "mapped", "script", "dir"]
    before = {name: _touch_atime_back(backing / name) for name in names}
    mount = mount_factory(mode, options=["noatime"] if atime == "noatime" else [], backing=backing)
    _accesses(mount.path)
    after = {name: (backing / name).stat().st_atime_ns for name in names}
    seen = {name: (mount.path / name).stat().st_atime_ns for name in names}
    if atime == "noatime":
        assert after == before
        assert seen == before
    else:
        changed = [name for name in names if after[name] != before[name]]
        if not changed:
            pytest.skip("the backing filesystem updates no atime here")
        assert changed == names


def test_remount_by_zcfs_command(mode, mount_factory):
    """What mount.fuse3 runs for `mount -o remount,ro MNT`: `zcfs SRC MNT -o ...,remount`."""
    mount = mount_factory(mode)
    remount = [sys.executable, "-m", "zcfs", str(mount.backing), str(mount.path), "-o"]
    assert subprocess.run([*remount, "ro,remount,user_id=0,group_id=0,default_permissions"],
                          capture_output=True, text=True).returncode == 0
    with pytest.raises(OSError) as refused:
        (mount.path / "f").write_bytes(b"x")
    assert refused.value.errno == 30  # EROFS
    assert subprocess.run([*remount, "remount,rw"], capture_output=True).returncode == 0
    (mount.path / "f").write_bytes(b"x")
    assert (mount.backing / "f").read_bytes() == b"x"
    assert mount.process.poll() is None


def test_remount_needs_privilege_one_line(user_zcfs, user_area, namespace):
    ns = namespace(_fuse_device(0o666))
    backing, mnt = user_area / "backing", user_area / "mnt"
    assert ns.run(user_zcfs, backing, mnt, user=TEST_USER).returncode == 0
    try:
        result = ns.run(user_zcfs, backing, mnt, "-o", "remount,ro", user=TEST_USER)
        assert result.returncode == 1
        line = one_line(result.stderr)
        assert "fusermount3 -u" in line and "mount it again" in line, line
    finally:
        ns.run("fusermount3", "-u", mnt, user=TEST_USER)


def test_remount_of_something_else(tmp_path):
    result = subprocess.run([sys.executable, "-m", "zcfs", str(tmp_path), str(tmp_path), "-o", "remount,ro"],
                            capture_output=True, text=True)
    assert result.returncode == 1 and "not a zcfs mount" in one_line(result.stderr)


# -- zcfs stats into a closed pipe ------------------------------------------------

@pytest.mark.parametrize("how", [[], ["--json"], ["--watch", "0.1"]])
def test_stats_into_closed_pipe_ends_quietly(how, mnt):
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader is gone, as after `| head` has had its lines
    try:
        result = subprocess.run([sys.executable, "-m", "zcfs", "stats", *how, str(mnt.path)],
                                stdout=write_end, stderr=subprocess.PIPE, text=True, timeout=TIMEOUT)
    finally:
        os.close(write_end)
    assert result.stderr == ""
    assert result.returncode == 128 + signal.SIGPIPE


def test_stats_head(mnt):
    result = subprocess.run(f"{sys.executable} -m zcfs stats {mnt.path} | head -1", shell=True,
                            capture_output=True, text=True, timeout=TIMEOUT)
    assert result.stdout.startswith("zcfs mount ") and result.stderr == ""


# -- the Python API and the pytest plugin ------------------------------------------

def test_mounted_context_manager(mode, tmp_path):
    engine, _, tier = mode.partition("-")
    backing = tmp_path / "backing"
    backing.mkdir()
    (backing / "f").write_bytes(b"through the mount")
    with zcfs.mounted(backing, engine=engine, zero_copy=tier or "auto") as mount:
        path = mount.path
        assert mount_is_listed(path)
        assert (path / "f").read_bytes() == b"through the mount"
        assert mount.stats()["engine"] == engine
    assert not mount_is_listed(path) and not path.exists()
    with pytest.raises(ZeroDivisionError):
        with zcfs.mounted(backing, engine=engine) as mount:
            path = mount.path
            1 / 0
    assert not mount_is_listed(path)


@pytest.mark.zcfs(zero_copy="splice")
def test_plugin_fixture_reads_through_splice(zcfs_mount):
    data = os.urandom(1 << 20)
    (zcfs_mount.backing / "f").write_bytes(data)
    assert (zcfs_mount.path / "f").read_bytes() == data
    assert zcfs_mount.stats()["read"]["splice"]["bytes"] >= len(data)


def test_plugin_fixture_unmounts_a_failed_test(tmp_path):
    """In another project's suite (no conftest of ours): the entry point brings the fixture,
    and a failing test's mount is gone afterwards."""
    seen = tmp_path / "mountpoint"
    (tmp_path / "test_theirs.py").write_text(
        "import pathlib\n"
        "import pytest\n"
        "@pytest.mark.zcfs(engine='pyfuse3')\n"
        "def test_fails(zcfs_mount):\n"
        f"    pathlib.Path({str(seen)!r}).write_text(str(zcfs_mount.path))\n"
        "    (zcfs_mount.path / 'f').write_text('x')\n"
        "    assert zcfs_mount.stats()['engine'] == 'pyfuse3'\n"
        "    assert False, 'this test fails on purpose'\n")
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                             "--basetemp", str(tmp_path / "base"), str(tmp_path / "test_theirs.py")],
                            cwd=tmp_path, capture_output=True, text=True, timeout=TIMEOUT)
    assert result.returncode == 1 and "this test fails on purpose" in result.stdout, result.stdout
    assert not mount_is_listed(Path(seen.read_text()))


@pytest.mark.parametrize("engine", ENGINES)
def test_mounts_over_a_volume(engine, tmp_path, namespace):
    """A container's volume is a bind mount: zcfs mounts over it (over a FUSE mount it still refuses)."""
    backing, mnt = tmp_path / "backing", tmp_path / "mnt"
    backing.mkdir()
    mnt.mkdir()
    (backing / "hello").write_bytes(b"hello\n")
    ns = namespace(f"mount --bind {mnt} {mnt}")
    result = ns.run(sys.executable, "-m", "zcfs", backing, mnt, "--engine", engine)
    assert result.returncode == 0, result.stderr
    assert ns.run("cat", mnt / "hello").stdout == "hello\n"
    again = ns.run(sys.executable, "-m", "zcfs", backing, mnt, "--engine", engine)
    assert again.returncode == 1 and "already a mount (fuse.zcfs)" in one_line(again.stderr)
    assert ns.run("umount", mnt).returncode == 0


def test_auto_unmount_after_the_daemon_is_killed(mode, mount_factory):
    """-o auto_unmount: fusermount3 stays and unmounts when the daemon dies, so no stale mount is left."""
    mount = mount_factory(mode, options=["auto_unmount"])
    (mount.backing / "f").write_bytes(b"x")
    assert (mount.path / "f").read_bytes() == b"x"
    mount.process.kill()
    mount.process.wait()
    assert wait_until(lambda: not mount_is_listed(mount.path), timeout=10)


@pytest.mark.parametrize("engine", ENGINES)
def test_daemon_leaves_a_mount_on_top_alone(engine, tmp_path, namespace):
    """On SIGTERM the daemon unmounts its own mount only: not one mounted over it since."""
    backing, mnt = tmp_path / "backing", tmp_path / "mnt"
    backing.mkdir()
    mnt.mkdir()
    ns = namespace()
    script = (f"{sys.executable} -m zcfs {backing} {mnt} -f --engine {engine} --log {tmp_path}/log &\n"
              "pid=$!\n"
              f"for i in $(seq 600); do grep -q ' {mnt} fuse' /proc/mounts && break; sleep 0.1; done\n"
              f"mount -t tmpfs zcfs-test-on-top {mnt}\n"
              "kill -TERM $pid\n"
              "wait $pid\n")
    result = ns.run("sh", "-ec", script)
    assert result.returncode == 0, result.stderr
    table = [line.split() for line in ns.run("cat", "/proc/self/mountinfo").stdout.splitlines()]
    on_top = [fields for fields in table if fields[4] == str(mnt)][-1]
    assert on_top[on_top.index("-") + 1] == "tmpfs"
