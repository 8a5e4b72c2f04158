"""cache=watch (the default): changes made directly in the backing dir show through the mount.

The kernel keeps names, attributes, data and listings for a day under this
policy, so each test first makes the mount cache what it will check (a stat,
a listing, a read, an ACL, a negative lookup); without the watcher's
notifications the mount would show the old state for that day
(`ZCFS_NO_WATCH=1` in the environment turns the watcher off and these
tests fail). Each change is made in the backing dir by this process, never
by the daemon, and the mount must agree with the backing dir within a
generous deadline: the 100 ms target is measured by `zcfs bench`
(`watch-latency`), not asserted here.
"""

from __future__ import annotations

import errno
import os
import stat
import subprocess
from pathlib import Path
from typing import Callable

import pytest
from hypothesis import HealthCheck, settings, strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule, run_state_machine_as_test

from conftest import wait_until

DEADLINE = 10.0  # seconds; a loaded CI machine, not the latency target
ACL = "system.posix_acl_access"


def view(root: Path) -> dict[str, tuple]:
    """What a reader sees of a tree: per path, type and mode, size, link count,
    owner, mtime, contents or symlink target, user xattrs and the ACL."""
    seen: dict[str, tuple] = {}
    for directory, dirs, files in os.walk(root):
        for name in sorted(dirs + files) + ([] if directory != str(root) else ["."]):
            path = os.path.join(directory, name)
            try:
                st = os.lstat(path)
                if stat.S_ISREG(st.st_mode):
                    with open(path, "rb") as f:
                        body = f.read()
                elif stat.S_ISLNK(st.st_mode):
                    body = os.readlink(path).encode()
                else:
                    body = tuple(sorted(os.listdir(path)))
                xattrs = {} if stat.S_ISLNK(st.st_mode) else {
                    n: os.getxattr(path, n) for n in os.listxattr(path) if n.startswith("user.")}
                try:
                    acl = None if stat.S_ISLNK(st.st_mode) else os.getxattr(path, ACL)
                except OSError as exc:
                    acl = exc.errno
            except FileNotFoundError:
                continue  # vanished while walking: the next poll sees it settled
            key = os.path.relpath(path, root)
            seen[key] = (st.st_mode, st.st_size, st.st_nlink, st.st_uid, st.st_gid,
                         st.st_mtime_ns if not stat.S_ISLNK(st.st_mode) else 0, body, xattrs, acl)
    return seen


def assert_agrees(mount) -> None:
    """The mount shows what the backing dir holds, once the watcher has told the kernel."""
    if not wait_until(lambda: view(mount.path) == view(mount.backing), DEADLINE):
        theirs, ours = view(mount.backing), view(mount.path)
        diff = {k: (ours.get(k), theirs.get(k)) for k in theirs.keys() | ours.keys() if ours.get(k) != theirs.get(k)}
        pytest.fail(f"[{mount.mode}] mount (left) != backing dir (right): {diff}")


def _write_same_size_same_mtime(b: Path) -> None:
    """New bytes, same size and mtime: only an invalidation can tell the kernel."""
    st = os.stat(b / "d" / "f")
    (b / "d" / "f").write_bytes(b"NEW CONTENT!")
    os.utime(b / "d" / "f", ns=(st.st_atime_ns, st.st_mtime_ns))


def _set_acl(b: Path) -> None:
    subprocess.run(["setfacl", "-m", "u:12345:r", str(b / "d" / "f")], check=True)
    os.setxattr(b / "d" / "f", "user.colour", b"blue")


CHANGES: dict[str, Callable[[Path], None]] = {
    "create": lambda b: (b / "d" / "new").write_bytes(b"hello"),
    "mkdir": lambda b: (b / "d" / "newdir").mkdir(),
    "unlink": lambda b: os.unlink(b / "d" / "f"),
    "rename": lambda b: os.rename(b / "d" / "f", b / "d" / "sub" / "moved"),
    "rename-over": lambda b: os.rename(b / "d" / "f", b / "d" / "g"),
    "rmdir": lambda b: os.rmdir(b / "d" / "empty"),
    "link": lambda b: os.link(b / "d" / "f", b / "d" / "sub" / "hardlink"),
    "symlink": lambda b: os.symlink("f", b / "d" / "s"),
    "write": lambda b: (b / "d" / "f").write_bytes(b"rewritten, and longer than before"),
    "write-same-size-and-mtime": _write_same_size_same_mtime,
    "append": lambda b: open(b / "d" / "f", "ab").write(b"+tail"),
    "truncate": lambda b: os.truncate(b / "d" / "f", 3),
    "chmod": lambda b: os.chmod(b / "d" / "f", 0o600),
    "chown": lambda b: os.chown(b / "d" / "f", 4321, 4321),
    "utimes": lambda b: os.utime(b / "d" / "f", (1_000_000, 2_000_000)),
    "xattr-and-acl": _set_acl,
}


def _populate(backing: Path) -> None:
    (backing / "d" / "sub").mkdir(parents=True)
    (backing / "d" / "empty").mkdir()
    (backing / "d" / "f").write_bytes(b"old content!")
    (backing / "d" / "g").write_bytes(b"other file")


@pytest.mark.parametrize("change", list(CHANGES))
def test_backing_change_shows_through_the_mount(mode, mount_factory, tmp_path, change):
    """A change made directly in the backing dir: stat, listings and a fresh read through
    the mount agree with the backing dir, and so does a read through a file kept open."""
    backing = tmp_path / "backing"
    backing.mkdir()
    _populate(backing)
    mount = mount_factory(mode, backing=backing)
    assert view(mount.path) == view(backing)  # everything now cached by the kernel
    for name in ("new", "newdir", "s", "hardlink", "moved"):  # negative entries cached too
        assert not os.path.lexists(mount.path / "d" / name)
        assert not os.path.lexists(mount.path / "d" / "sub" / name)
    kept = os.open(mount.path / "d" / "f", os.O_RDONLY)
    theirs = os.open(backing / "d" / "f", os.O_RDONLY)  # the same object, whatever its name becomes
    try:
        assert os.pread(kept, 100, 0) == b"old content!"
        CHANGES[change](backing)
        assert_agrees(mount)

        def kept_file_agrees() -> bool:
            ours, want = os.fstat(kept), os.fstat(theirs)
            return (os.pread(kept, 100, 0) == os.pread(theirs, 100, 0)
                    and (ours.st_size, ours.st_nlink, ours.st_mode) == (want.st_size, want.st_nlink, want.st_mode))

        assert wait_until(kept_file_agrees, DEADLINE), "the file kept open shows the old state"
    finally:
        os.close(kept)
        os.close(theirs)
    watch = mount.stats()["watch"]
    assert watch["mechanism"] == "fanotify" and watch["fallback"] is None


def _changes_then_rewalk(mount) -> dict[str, int]:
    """Make changes through `mount`, settle, re-walk (stat and read every file):
    the LOOKUP, GETATTR and READ requests of the re-walk."""
    (mount.path / "d").mkdir()
    for n in range(20):
        (mount.path / "d" / f"f{n}").write_bytes(b"x" * n)
        os.chmod(mount.path / "d" / f"f{n}", 0o640)
    os.rename(mount.path / "d" / "f0", mount.path / "d" / "g0")
    os.unlink(mount.path / "d" / "f1")
    if mount.stats()["watch"]:
        # The events of these changes may still be on their way: wait until the watcher
        # counted them. On passthrough the kernel writes in the writer's name: those
        # come as others' changes, an attribute invalidation per file written.
        written = 18 if mount.mode == "native-auto" else 0
        assert wait_until(lambda: mount.stats()["watch"]["own_events"] >= 20
                          and mount.stats()["invalidations"].get("passthrough", 0) >= written, DEADLINE)
    assert view(mount.path) == view(mount.backing)
    before = mount.stats()["ops"]
    for entry in os.scandir(mount.path / "d"):
        os.lstat(entry.path)
        with open(entry.path, "rb") as f:
            f.read()
    after = mount.stats()["ops"]
    return {name: after.get(name, {}).get("count", 0) - before.get(name, {}).get("count", 0)
            for name in ("LOOKUP", "GETATTR", "READ")}


def test_own_changes_send_no_invalidations(mode, mount_factory):
    """Changes made through the mount are the daemon's own: no notification, and a warm
    re-walk asks no more than under cache=always (whatever the kernel revalidates itself)."""
    mount = mount_factory(mode)
    watched = _changes_then_rewalk(mount)
    sent = {kind: n for kind, n in mount.stats()["invalidations"].items() if kind != "passthrough"}
    assert sent == {}, mount.stats()["invalidations"]
    unwatched = _changes_then_rewalk(mount_factory(mode, options=["cache=always"], name="always"))
    # No more of any request than cache=always asks.
    assert all(watched[op] <= unwatched[op] for op in unwatched), (watched, unwatched)
    assert watched.keys() == unwatched.keys()


def _op_counts(mount) -> dict[str, int]:
    """Requests so far by opcode, but GETXATTR (reading the stats asks for them)."""
    return {name: op["count"] for name, op in mount.stats()["ops"].items() if name != "GETXATTR"}


def test_warm_reread_asks_open_and_release_only(mode, mount_factory, tmp_path):
    """Reading an unchanged file again (open, read, close) asks the daemon for OPEN and
    RELEASE only: no READ (kept or passed through), no LOOKUP, and no FLUSH, not even
    the first close's (read-only handles skip it: FOPEN_NOFLUSH). A writable handle's
    close still flushes, so close() can report a deferred write error."""
    if not mode.startswith("native"):
        pytest.skip("pyfuse3 cannot ask for FOPEN_NOFLUSH")
    backing = tmp_path / "backing"
    backing.mkdir()
    data = os.urandom(10_000)
    (backing / "f").write_bytes(data)
    mount = mount_factory(mode, backing=backing)

    def read() -> bytes:
        fd = os.open(mount.path / "f", os.O_RDONLY)
        try:
            return os.read(fd, 2 * len(data))  # no fstat: that asks for the atime a read moved
        finally:
            os.close(fd)

    assert read() == data
    assert wait_until(lambda: _op_counts(mount).get("RELEASE") == 1)  # RELEASE is sent in the background
    for released in range(2, 5):
        before = _op_counts(mount)
        assert read() == data
        assert wait_until(lambda: _op_counts(mount).get("RELEASE") == released)
        after = _op_counts(mount)
        assert {op: n - before.get(op, 0) for op, n in after.items() if n != before.get(op, 0)} == \
            {"OPEN": 1, "RELEASE": 1}
    assert "FLUSH" not in _op_counts(mount)
    os.close(os.open(mount.path / "f", os.O_WRONLY))
    assert _op_counts(mount).get("FLUSH") == 1


def test_event_storm_leaves_nothing_stale(mount_factory, tmp_path):
    """10,000 removals in the backing dir at once: the mount catches up, and the daemon's
    memory stays bounded (a batch past watch.MAX_PENDING turns into one broad invalidation:
    tests/unit/test_watch.py)."""
    backing = tmp_path / "backing"
    (backing / "d").mkdir(parents=True)
    names = [f"file-{n:05}" for n in range(10_000)]
    for name in names:
        (backing / "d" / name).write_bytes(b"1")
    mount = mount_factory("native-auto", backing=backing)
    assert sorted(os.listdir(mount.path / "d")) == names
    for name in names:
        os.stat(mount.path / "d" / name)
    for name in names:  # each one an entry and a delete notification
        os.unlink(backing / "d" / name)
    # Listings, names and attributes change once their notification came.
    assert wait_until(lambda: os.listdir(mount.path / "d") == [], DEADLINE)
    assert wait_until(lambda: not any(os.path.exists(mount.path / "d" / name) for name in names[::97]),
                      DEADLINE)
    sent = mount.stats()["invalidations"]
    assert sent.get("delete", 0) + sent.get("entry", 0) >= 10_000 or sent.get("epoch", 0) >= 1, sent
    rss_kib = int(next(line for line in open(f"/proc/{mount.process.pid}/status") if line.startswith("VmRSS")).split()[1])
    assert rss_kib < 200_000, rss_kib


def test_no_watch_falls_back_to_timeouts(mount_factory, tmp_path):
    """Without CAP_SYS_ADMIN (a user namespace of its own) fanotify cannot mark the
    filesystem: the mount says why in stats and serves cache=auto's timeouts instead."""
    backing = tmp_path / "backing"
    backing.mkdir()
    mountpoint = tmp_path / "mnt"
    mountpoint.mkdir()
    script = (f"zcfs {backing} {mountpoint} && stat -c %s {mountpoint} >/dev/null && "
              f"zcfs stats {mountpoint} --json > {tmp_path}/stats.json; fusermount3 -u {mountpoint} || umount {mountpoint}")
    env = dict(os.environ, PATH=f"{Path(os.sys.executable).parent}:{os.environ['PATH']}")
    subprocess.run(["unshare", "-Urm", "sh", "-c", script], check=True, timeout=60, env=env)
    import json
    stats = json.loads((tmp_path / "stats.json").read_text())
    assert stats["watch"]["mechanism"] is None
    # The first reason found: there, open_by_handle_at needs CAP_DAC_READ_SEARCH in the
    # initial namespace (node ids cannot encode handles), and fanotify CAP_SYS_ADMIN.
    reason = stats["watch"]["fallback"]
    assert reason == "no-file-handles" or reason.startswith("fanotify-"), stats["watch"]
    assert stats["options"]["entry_timeout"] == 1.0 and stats["options"]["cache_dir"] is False
    assert stats["fallbacks"].get(f"watch-{reason}") == 1, stats["fallbacks"]


# -- differential: random changes on both sides ---------------------------------

NAMES = st.sampled_from(["a", "b", "c", "sub/a", "sub/b"])


class BothSidesMachine(RuleBasedStateMachine):
    """Random operations, each on the backing dir or through the mount; after every step the
    two agree (waiting for the watcher's notifications)."""

    MOUNT = None

    def __init__(self) -> None:
        super().__init__()
        self.mount = self.MOUNT
        for root in (self.mount.backing,):
            for entry in os.scandir(root):
                subprocess.run(["rm", "-rf", entry.path], check=True)
        (self.mount.backing / "sub").mkdir()
        assert_agrees(self.mount)

    def _root(self, through_mount: bool) -> Path:
        return self.mount.path if through_mount else self.mount.backing

    @rule(side=st.booleans(), name=NAMES, data=st.binary(max_size=64))
    def write(self, side, name, data):
        try:
            (self._root(side) / name).write_bytes(data)
        except (IsADirectoryError, FileNotFoundError):
            pass

    @rule(side=st.booleans(), name=NAMES)
    def remove(self, side, name):
        path = self._root(side) / name
        try:
            os.rmdir(path) if path.is_dir() else os.unlink(path)
        except OSError as exc:
            assert exc.errno in (errno.ENOENT, errno.ENOTEMPTY), exc

    @rule(side=st.booleans(), old=NAMES, new=NAMES)
    def rename(self, side, old, new):
        try:
            os.rename(self._root(side) / old, self._root(side) / new)
        except OSError as exc:
            assert exc.errno in (errno.ENOENT, errno.EISDIR, errno.ENOTDIR, errno.ENOTEMPTY, errno.EINVAL), exc

    @rule(side=st.booleans(), name=NAMES)
    def mkdir(self, side, name):
        try:
            (self._root(side) / name).mkdir()
        except OSError as exc:
            assert exc.errno in (errno.EEXIST, errno.ENOENT, errno.ENOTDIR), exc

    @rule(side=st.booleans(), name=NAMES, mode=st.sampled_from([0o600, 0o644, 0o755]))
    def chmod(self, side, name, mode):
        try:
            os.chmod(self._root(side) / name, mode)
        except FileNotFoundError:
            pass

    @rule(side=st.booleans(), name=NAMES, size=st.integers(0, 40))
    def truncate(self, side, name, size):
        try:
            os.truncate(self._root(side) / name, size)
        except (IsADirectoryError, FileNotFoundError):
            pass

    @rule(side=st.booleans(), old=NAMES, new=NAMES)
    def link(self, side, old, new):
        try:
            os.link(self._root(side) / old, self._root(side) / new)
        except OSError as exc:
            assert exc.errno in (errno.ENOENT, errno.EEXIST, errno.EPERM), exc

    @invariant()
    def agree(self):
        assert_agrees(self.mount)


@pytest.mark.parametrize("mode", ["native-auto", "pyfuse3"])
def test_differential_backing_and_mount(mode, mount_factory):
    """Random changes, alternating between the backing dir and the mount: they always agree."""
    machine = type("BothSides_" + mode.replace("-", "_"), (BothSidesMachine,),
                   {"MOUNT": mount_factory(mode)})
    run_state_machine_as_test(machine, settings=settings(
        max_examples=10, stateful_step_count=20, deadline=None, suppress_health_check=list(HealthCheck)))
