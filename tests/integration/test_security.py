"""Security edges (issue #6): other users, escaping names and symlinks, absurd numbers,
garbage on the FUSE channel.

test_ownership.py covers what an unprivileged user may do in a root
directory (0755), to a private root file (0600) and when listing a 0700
directory; here: traversal into a 0700 directory by every route, backing
permission changes taking effect, trusted.* xattrs, symlinks resolved by the
client's kernel (never the daemon), the daemon's own name checks (driven
directly, without the kernel's), absurd sizes and offsets, and malformed
requests fed to the native engine's real Session through a fake /dev/fuse.
"""

from __future__ import annotations

import errno
import os
import random
import shutil
import socket
import stat
import struct
import tempfile
from pathlib import Path

import pyfuse3
import pytest
import trio

from test_ownership import errno_of, run_as
from zcfs.engine.native import RequestContext, Session, SetattrFields
from zcfs.fs import ZcfsOperations
from zcfs.inodes import ROOT_INODE
from zcfs.mount import MountConfig
from zcfs.proto import Opcode, abi
from zcfs.proto.negotiate import DEFAULT_WANT
from zcfs.proto.opcodes import OPCODES
from zcfs.stats import Stats


def assert_daemon_healthy(mount) -> None:
    assert mount.process.poll() is None, "the daemon died"
    log = mount.log.read_text() if mount.log.exists() else ""
    assert "Traceback" not in log, log[-3000:]


def op_count(mount, opname: str) -> int:
    return mount.stats()["ops"].get(opname, {}).get("count", 0)


# -- another user, through allow_other ----------------------------------------

def test_no_way_into_a_private_root_directory(shared, test_user):
    """Nothing below a 0700 root directory is reachable, however open its contents are."""
    m = shared.path
    os.mkdir(m / "private", 0o700)
    (m / "private" / "open-file").write_bytes(b"inside")
    os.chmod(m / "private" / "open-file", 0o666)
    os.mkdir(m / "private" / "open-dir", 0o777)
    os.chmod(m / "private" / "open-dir", 0o777)
    os.symlink("private/open-file", m / "link-in")  # a public symlink pointing inside
    before = sorted(p.name for p in (shared.backing / "private").rglob("*"))

    def attempts():
        return {
            "read": errno_of(lambda: open("private/open-file", "rb").read())(),
            "write": errno_of(lambda: open("private/open-file", "r+b").close())(),
            "truncate": errno_of(lambda: os.truncate("private/open-file", 0))(),
            "via-symlink": errno_of(lambda: open("link-in", "rb").read())(),
            "create-in-open-dir": errno_of(lambda: open("private/open-dir/new", "wb").close())(),
            "unlink": errno_of(lambda: os.unlink("private/open-file"))(),
            "rename-out": errno_of(lambda: os.rename("private/open-file", "mine"))(),
            "link-out": errno_of(lambda: os.link("private/open-file", "mine"))(),
            "chdir": errno_of(lambda: os.chdir("private/open-dir"))(),
            "getxattr": errno_of(lambda: os.getxattr("private/open-file", "user.x"))(),
            "access": os.access("private/open-file", os.R_OK),
        }

    got = run_as(test_user, m, attempts)
    assert got == {
        "read": ("error", "EACCES"), "write": ("error", "EACCES"), "truncate": ("error", "EACCES"),
        "via-symlink": ("error", "EACCES"), "create-in-open-dir": ("error", "EACCES"),
        "unlink": ("error", "EACCES"), "rename-out": ("error", "EACCES"), "link-out": ("error", "EACCES"),
        "chdir": ("error", "EACCES"), "getxattr": ("error", "EACCES"), "access": False,
    }
    assert sorted(p.name for p in (shared.backing / "private").rglob("*")) == before
    assert not os.path.lexists(shared.backing / "mine")
    assert (shared.backing / "private" / "open-file").read_bytes() == b"inside"
    assert_daemon_healthy(shared)


def test_permission_changes_in_backing_take_effect(mode, mount_factory, test_user):
    """chmod/chown made in the backing dir bind other users at once (attr_timeout=0)."""
    mount = mount_factory(mode, options=["allow_other", "attr_timeout=0", "entry_timeout=0"])
    os.chmod(mount.path, 0o777)
    (mount.backing / "f").write_bytes(b"data")
    os.chmod(mount.backing / "f", 0o644)
    read = errno_of(lambda: open("f", "rb").read())
    assert run_as(test_user, mount.path, read) == ("ok", b"data")
    os.chmod(mount.backing / "f", 0o600)
    assert run_as(test_user, mount.path, read) == ("error", "EACCES")
    os.chown(mount.backing / "f", *test_user)
    assert run_as(test_user, mount.path, read) == ("ok", b"data")
    os.mkdir(mount.backing / "d", 0o755)
    create = errno_of(lambda: open("d/new", "wb").close())
    assert run_as(test_user, mount.path, create) == ("error", "EACCES")
    os.chmod(mount.backing / "d", 0o777)
    assert run_as(test_user, mount.path, create) == ("ok", None)
    assert os.stat(mount.backing / "d" / "new").st_uid == test_user[0]
    assert_daemon_healthy(mount)


def test_trusted_xattrs_are_root_only(shared, test_user):
    """trusted.* xattrs: neither values nor names for other users, as on a local filesystem."""
    (shared.path / "f").write_bytes(b"x")
    os.chmod(shared.path / "f", 0o666)
    os.setxattr(shared.path / "f", "trusted.secret", b"root only")
    os.setxattr(shared.path / "f", "user.public", b"anyone")

    def attempts():
        return {
            "get-trusted": errno_of(lambda: os.getxattr("f", "trusted.secret"))(),
            "set-trusted": errno_of(lambda: os.setxattr("f", "trusted.mine", b"1"))(),
            "list": errno_of(lambda: sorted(os.listxattr("f")))(),
            "get-user": errno_of(lambda: os.getxattr("f", "user.public"))(),
        }

    got = run_as(test_user, shared.path, attempts)
    # the same steps on the backing file directly: what a local filesystem tells this user
    os.chmod(shared.backing, 0o755)  # (tmp_path's parents are private: go in as root first)
    local = run_as(test_user, shared.backing, attempts)
    assert local["list"] == ("ok", ["user.public"])
    assert got == local
    assert "trusted.mine" not in os.listxattr(shared.backing / "f")
    assert_daemon_healthy(shared)


# -- symlinks out of the backing dir -----------------------------------------

@pytest.fixture
def outside():
    """A world-traversable directory outside every mount: public/ (0777) and private/ (0700)."""
    path = Path(tempfile.mkdtemp(prefix="zcfs-outside-"))
    try:
        os.chmod(path, 0o755)
        os.mkdir(path / "public")
        os.chmod(path / "public", 0o777)
        os.mkdir(path / "private", 0o700)
        yield path
    finally:
        shutil.rmtree(path)


def test_symlinks_out_are_resolved_by_the_client(mode, mount_factory, tmp_path, outside, test_user):
    """Symlinks leading out of the mount are followed by the caller's kernel, with the
    caller's permissions; the daemon never creates anything through them.

    The backing dir sits deeper than the mountpoint, so a relative "../x"
    means a different place for the client (next to the mountpoint) than
    it would for a daemon following it in the backing tree.
    """
    backing = tmp_path / "deep" / "er" / "backing"
    backing.mkdir(parents=True)
    (tmp_path / "client-side").mkdir()
    (tmp_path / "deep" / "er" / "client-side").mkdir()  # where a daemon would land
    mount = mount_factory(mode, options=["allow_other"], backing=backing)
    m = mount.path
    os.chmod(m, 0o777)
    os.symlink("../client-side", m / "rel")
    os.symlink(str(outside / "public"), m / "abs-public")
    os.symlink(str(outside / "private"), m / "abs-private")
    os.symlink("../client-side/dangling-target", m / "dangling")
    (m / "control").write_bytes(b"c")  # the counter does count the daemon's creates
    creates = op_count(mount, "CREATE")
    assert creates >= 1

    (m / "rel" / "via-rel").write_bytes(b"r")
    (m / "abs-public" / "via-abs").write_bytes(b"a")
    fd = os.open(m / "dangling", os.O_WRONLY | os.O_CREAT, 0o644)  # follows the dangling link
    os.close(fd)
    assert (tmp_path / "client-side" / "via-rel").read_bytes() == b"r"
    assert (tmp_path / "client-side" / "dangling-target").exists()
    assert (outside / "public" / "via-abs").read_bytes() == b"a"
    assert os.listdir(tmp_path / "deep" / "er" / "client-side") == []
    assert op_count(mount, "CREATE") == creates, "the daemon created something"
    # O_EXCL does not follow: the name exists (as a symlink)
    with pytest.raises(FileExistsError):
        os.open(m / "dangling", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)

    def as_user():
        return {
            "public": errno_of(lambda: open("abs-public/by-user", "wb").close())(),
            "private": errno_of(lambda: open("abs-private/by-user", "wb").close())(),
        }

    assert run_as(test_user, m, as_user) == {"public": ("ok", None), "private": ("error", "EACCES")}
    assert os.stat(outside / "public" / "by-user").st_uid == test_user[0]
    assert os.listdir(outside / "private") == []
    assert op_count(mount, "CREATE") == creates
    assert sorted(os.listdir(backing)) == ["abs-private", "abs-public", "control", "dangling", "rel"]
    assert_daemon_healthy(mount)


# -- the daemon's own checks, without the kernel's ------------------------------

CTX = RequestContext(0, 0, os.getpid())
BAD_NAMES = [b"..", b".", b"../x", b"../../escaped", b"a/b", b"/abs", b"", b"x\0y"]


def _snapshot(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


async def _fuse_errno(coro) -> int | str:
    try:
        result = await coro
    except pyfuse3.FUSEError as exc:
        return errno.errorcode[exc.errno]
    return getattr(result, "st_ino", "ok")


@pytest.fixture
def ops(tmp_path):
    backing = tmp_path / "backing"
    backing.mkdir()
    (backing / "file").write_bytes(b"in backing")
    (backing / "sub").mkdir()
    (tmp_path / "outside-file").write_bytes(b"precious")
    operations = ZcfsOperations(str(backing))
    yield operations
    operations.close()


async def test_daemon_refuses_names_that_leave_their_directory(ops, tmp_path):
    before = _snapshot(tmp_path)
    assert (await ops.lookup(ROOT_INODE, b"..", CTX)).st_ino == ROOT_INODE
    assert (await ops.lookup(ROOT_INODE, b".", CTX)).st_ino == ROOT_INODE
    sub = (await ops.lookup(ROOT_INODE, b"sub", CTX)).st_ino
    assert (await ops.lookup(sub, b"..", CTX)).st_ino == ROOT_INODE
    file_ino = (await ops.lookup(ROOT_INODE, b"file", CTX)).st_ino
    for name in BAD_NAMES:
        results = {
            "create": await _fuse_errno(ops.create(ROOT_INODE, name, 0o644, os.O_WRONLY, CTX)),
            "mkdir": await _fuse_errno(ops.mkdir(sub, name, 0o755, CTX)),
            "mknod": await _fuse_errno(ops.mknod(ROOT_INODE, name, stat.S_IFIFO | 0o644, 0, CTX)),
            "symlink": await _fuse_errno(ops.symlink(ROOT_INODE, name, b"target", CTX)),
            "link": await _fuse_errno(ops.link(file_ino, sub, name, CTX)),
            "rename-to": await _fuse_errno(ops.rename(ROOT_INODE, b"file", sub, name, 0, CTX)),
            "rename-from": await _fuse_errno(ops.rename(sub, name, ROOT_INODE, b"new", 0, CTX)),
            "unlink": await _fuse_errno(ops.unlink(sub, name, CTX)),
            "rmdir": await _fuse_errno(ops.rmdir(sub, name, CTX)),
        }
        assert set(results.values()) == {"EINVAL"}, (name, results)
        if name not in (b".", b".."):
            assert await _fuse_errno(ops.lookup(ROOT_INODE, name, CTX)) == "EINVAL", name
    too_long = b"n" * 256
    assert await _fuse_errno(ops.create(ROOT_INODE, too_long, 0o644, os.O_WRONLY, CTX)) == "ENAMETOOLONG"
    assert await _fuse_errno(ops.lookup(ROOT_INODE, too_long, CTX)) == "ENAMETOOLONG"
    # unknown node ids and handles
    assert await _fuse_errno(ops.getattr(123456789, CTX)) == "ESTALE"
    assert await _fuse_errno(ops.create(123456789, b"x", 0o644, os.O_WRONLY, CTX)) == "ESTALE"
    assert await _fuse_errno(ops.read(987654, 0, 10)) == "EBADF"
    assert await _fuse_errno(ops.write(987654, 0, b"x")) == "EBADF"
    assert _snapshot(tmp_path) == before
    assert (tmp_path / "outside-file").read_bytes() == b"precious"


@pytest.mark.skipif(os.geteuid() != 0, reason="trusted.* xattrs (the only ones symlinks take) need root")
async def test_daemon_never_follows_symlinks(ops, tmp_path):
    """Symlink inodes pointing out (absolute and ../): no operation reaches the target."""
    target = tmp_path / "outside-file"
    for link, dest in ((b"abs", os.fsencode(target)), (b"rel", b"../outside-file"),
                       (b"dir", os.fsencode(tmp_path))):
        ino = (await ops.symlink(ROOT_INODE, link, dest, CTX)).st_ino
        size_only = SetattrFields(False, False, False, False, False, False, True)
        mode_only = SetattrFields(False, False, False, True, False, False, False)
        attrs = type("Attrs", (), {"st_size": 0, "st_mode": 0o777})()
        assert await ops.readlink(ino, CTX) == dest
        assert await _fuse_errno(ops.open(ino, os.O_RDWR | os.O_TRUNC, CTX)) == "ELOOP"
        assert await _fuse_errno(ops.create(ROOT_INODE, link, 0o644, os.O_WRONLY | os.O_TRUNC, CTX)) == "ELOOP"
        assert await _fuse_errno(ops.setattr(ino, attrs, size_only, None, CTX)) == "EINVAL"
        assert await _fuse_errno(ops.setattr(ino, attrs, mode_only, None, CTX)) in ("EOPNOTSUPP", "ENOTSUP")
        assert await _fuse_errno(ops.create(ino, b"x", 0o644, os.O_WRONLY, CTX)) == "ENOTDIR"
        assert await _fuse_errno(ops.mkdir(ino, b"x", 0o755, CTX)) == "ENOTDIR"
        assert await _fuse_errno(ops.lookup(ino, b"outside-file", CTX)) == "ENOTDIR"
        await ops.setxattr(ino, b"trusted.on-link", b"1", CTX)  # lands on the link itself
        assert os.getxattr(tmp_path / "backing" / os.fsdecode(link), "trusted.on-link",
                           follow_symlinks=False) == b"1"
        hard = (await ops.link(ino, ROOT_INODE, link + b"-hard", CTX)).st_ino
        assert hard == ino  # a link to the symlink, not to its target
        assert os.readlink(tmp_path / "backing" / os.fsdecode(link + b"-hard")) == os.fsdecode(dest)
    assert target.read_bytes() == b"precious"
    assert "trusted.on-link" not in os.listxattr(target)
    assert stat.S_IMODE(os.stat(target).st_mode) == 0o644
    assert sorted(os.listdir(tmp_path)) == ["backing", "outside-file"]


async def test_daemon_takes_absurd_numbers(ops, tmp_path):
    fi, _ = await ops.create(ROOT_INODE, b"f", 0o644, os.O_RDWR, CTX)
    fh = fi.fh
    assert await ops.write(fh, 0, b"0123456789") == 10
    assert await ops.read(fh, 0, 0) == b""
    assert await ops.read(fh, 2**63 - 2, 1) == b""
    assert await _fuse_errno(ops.read(fh, 2**63 - 1, 4096)) == "EINVAL"  # offset + size overflows
    assert await ops.read(fh, 5, 1 << 30) == b"56789"  # a huge size is a short read
    assert await _fuse_errno(ops.read(fh, -1, 10)) == "EINVAL"
    assert await _fuse_errno(ops.write(fh, 2**63 - 1, b"x")) in ("EFBIG", "EINVAL")
    assert await _fuse_errno(ops.write(fh, 1 << 50, b"x")) == "EFBIG"  # past ext4's 16 TiB
    size_only = SetattrFields(False, False, False, False, False, False, True)
    node = (await ops.lookup(ROOT_INODE, b"f", CTX)).st_ino
    for size, expected in ((-1, "EINVAL"), (1 << 50, "EFBIG")):
        attrs = type("Attrs", (), {"st_size": size})()
        assert await _fuse_errno(ops.setattr(node, attrs, size_only, fh, CTX)) == expected, size
        assert await _fuse_errno(ops.setattr(node, attrs, size_only, None, CTX)) == expected, size
        assert await _fuse_errno(ops.setattr(ROOT_INODE, attrs, size_only, None, CTX)) in ("EISDIR", "EINVAL")
    assert await _fuse_errno(ops.lseek(fh, 1 << 40, os.SEEK_DATA)) == "ENXIO"
    assert await _fuse_errno(ops.lseek(fh, 0, 12345)) == "EINVAL"
    assert await _fuse_errno(ops.fallocate(fh, 0, 2**63 - 5, 10)) == "EFBIG"
    assert await _fuse_errno(ops.fallocate(fh, 0xFFFF, 0, 10)) in ("EOPNOTSUPP", "ENOTSUP", "EINVAL")
    assert os.stat(tmp_path / "backing" / "f").st_size == 10
    await ops.release(fh)


def test_absurd_sizes_and_offsets_through_the_mount(mnt):
    """The kernel passes or refuses each as for the backing file; the daemon survives all."""
    (mnt.path / "f").write_bytes(b"0123456789")
    (mnt.backing / "probe").write_bytes(b"0123456789")
    calls = {
        "read-0": lambda fd: os.pread(fd, 0, 0),
        "read-at-max": lambda fd: os.pread(fd, 10, 2**63 - 1),
        "read-negative": lambda fd: os.pread(fd, 10, -1),
        "read-64MiB": lambda fd: len(os.pread(fd, 64 << 20, 3)),
        "write-at-max": lambda fd: os.pwrite(fd, b"x", 2**63 - 1),
        "write-past-ext4-max": lambda fd: os.pwrite(fd, b"x", 1 << 50),
        "ftruncate-negative": lambda fd: os.ftruncate(fd, -1),
        "ftruncate-huge": lambda fd: os.ftruncate(fd, 1 << 50),
        "fallocate-overflow": lambda fd: os.posix_fallocate(fd, 2**63 - 5, 10),
        "seek-data-far": lambda fd: os.lseek(fd, 1 << 40, os.SEEK_DATA),
        "seek-negative": lambda fd: os.lseek(fd, -5, os.SEEK_SET),
        "size": lambda fd: os.fstat(fd).st_size,
    }

    def outcomes(path: Path) -> dict:
        fd = os.open(path, os.O_RDWR)
        try:
            results = {}
            for name, call in calls.items():
                try:
                    results[name] = call(fd)
                except OSError as exc:
                    results[name] = errno.errorcode[exc.errno]
            return results
        finally:
            os.close(fd)

    expected = outcomes(mnt.backing / "probe")
    got = outcomes(mnt.path / "f")
    assert got == expected
    assert errno_of(lambda: os.truncate(mnt.path / "f", -1))() == ("error", "EINVAL")
    assert (mnt.path / "f").read_bytes() == b"0123456789"
    assert_daemon_healthy(mnt)


# -- garbage on the FUSE channel ------------------------------------------------

def _message(opcode: int, body: bytes = b"", *, unique: int, nodeid: int = ROOT_INODE,
             length: int | None = None, extlen: int = 0) -> bytes:
    total = abi.IN_HEADER.size + len(body) if length is None else length
    return struct.pack("<IIQQIIIHH", total, opcode, unique, nodeid, 0, 0, os.getpid(), extlen, 0) + body


INIT_BODY = struct.pack("<IIIII44x", 7, 45, 128 * 1024, DEFAULT_WANT & 0xFFFFFFFF, DEFAULT_WANT >> 32)
GETATTR_BODY = struct.pack("<I4xQ", 0, 0)


class FakeDevice:
    """A Session serving a SEQPACKET socket instead of /dev/fuse (boundaries are kept)."""

    def __init__(self, backing: Path) -> None:
        self.kernel, self.dev = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.ops = ZcfsOperations(str(backing))
        config = MountConfig(str(backing), "/nonexistent", zero_copy="off")
        self.stats = Stats("native")
        self.session = Session(self.ops, config, self.dev.fileno(), self.stats)

    def close(self) -> None:
        self.ops.close()
        self.kernel.close()
        self.dev.close()

    def send(self, message: bytes) -> None:
        self.kernel.send(message)

    async def replies(self, wait: float = 0.05, until: int | None = None) -> list[tuple[int, int, bytes]]:
        """Replies as (unique, error, payload): those sent within `wait` seconds, or,
        with `until`, those sent until the reply to that unique came (at most 60 s).

        The session answers in threads of its own, so a reply we expect is
        waited for, never assumed to have come after some time.
        """
        deadline = trio.current_time() + (60 if until is not None else wait)
        out = []
        while True:
            try:
                raw = self.kernel.recv(1 << 21, socket.MSG_DONTWAIT)
            except BlockingIOError:
                if trio.current_time() >= deadline:
                    return out
                await trio.sleep(0.002)
                continue
            length, error, unique = abi.OUT_HEADER.unpack_from(raw)
            assert length == len(raw), "a reply's length field is wrong"
            out.append((unique, error, raw[abi.OUT_HEADER.size:]))
            if until is not None and unique == until:
                return out

    async def ask(self, message: bytes) -> list[tuple[int, int, bytes]]:
        """Send a request; the replies until its own (or for a silent one, those within 50 ms)."""
        self.send(message)
        return await self.replies(until=_expected_reply(message))


def _expected_reply(message: bytes) -> int | None:
    """The unique whose reply a request must get; None if it may get none."""
    if len(message) < abi.IN_HEADER.size:
        return None
    _, opcode, unique = struct.unpack_from("<IIQ", message)
    spec = OPCODES.get(opcode)
    return None if spec is not None and not spec.replies else unique


@pytest.fixture
async def fake(tmp_path):
    backing = tmp_path / "backing"
    backing.mkdir()
    (backing / "file").write_bytes(b"0123456789")
    device = FakeDevice(backing)
    try:
        async with trio.open_nursery() as nursery:
            device.send(_message(Opcode.INIT, INIT_BODY, unique=1))
            await nursery.start(device.session.serve)
            [(unique, error, _)] = await device.replies()
            assert (unique, error) == (1, 0)
            yield device
            nursery.cancel_scope.cancel()
    finally:
        device.close()


async def _alive(fake: FakeDevice, unique: int = 999) -> None:
    assert [(u, e) for u, e, _ in await fake.ask(_message(Opcode.GETATTR, GETATTR_BODY, unique=unique))] \
        == [(unique, 0)]


async def test_malformed_requests_get_error_replies(fake, tmp_path):
    before = _snapshot(tmp_path)
    E = lambda code: -code  # noqa: E731 - errors travel negated
    cases = [
        # (message, expected [(unique, error)] replies)
        (b"\x01\x02\x03", []),  # shorter than a header: no unique to answer
        (_message(Opcode.GETATTR, GETATTR_BODY, unique=10, length=99), [(10, E(errno.EIO))]),
        (_message(9999, b"whatever", unique=11), [(11, E(errno.ENOSYS))]),
        (_message(Opcode.LOOKUP, b"no-terminator", unique=12), [(12, E(errno.EINVAL))]),
        (_message(Opcode.LOOKUP, b"../etc\0", unique=13), [(13, E(errno.EINVAL))]),
        (_message(Opcode.LOOKUP, b"a/b\0", unique=14), [(14, E(errno.EINVAL))]),
        (_message(Opcode.GETATTR, GETATTR_BODY, unique=15, nodeid=123456789), [(15, E(errno.ESTALE))]),
        (_message(Opcode.GETATTR, GETATTR_BODY, unique=16, extlen=200), [(16, E(errno.EINVAL))]),
        (_message(Opcode.SETATTR, b"\x01\x00", unique=17), [(17, E(errno.EINVAL))]),
        (_message(Opcode.READ, abi.READ_IN.pack(77, 0, 4096, 0, 0, 0), unique=18), [(18, E(errno.EBADF))]),
        (_message(Opcode.WRITE, abi.WRITE_IN.pack(77, 0, 3, 0, 0, 0) + b"abc", unique=19), [(19, E(errno.EBADF))]),
        (_message(Opcode.WRITE, abi.WRITE_IN.pack(77, 0, 300, 0, 0, 0) + b"abc", unique=20), [(20, E(errno.EINVAL))]),
        (_message(Opcode.CREATE, abi.CREATE_IN.pack(os.O_WRONLY, 0o644, 0, 0) + b"../escape\0", unique=21),
         [(21, E(errno.EINVAL))]),
        (_message(Opcode.MKDIR, abi.MKDIR_IN.pack(0o755, 0) + b"..\0", unique=22), [(22, E(errno.EINVAL))]),
        (_message(Opcode.RENAME, abi.RENAME_IN.pack(ROOT_INODE) + b"file\0../out\0", unique=23),
         [(23, E(errno.EINVAL))]),
        (_message(Opcode.LINK, abi.LINK_IN.pack(555555) + b"x\0", unique=24), [(24, E(errno.ESTALE))]),
        (_message(Opcode.INIT, INIT_BODY, unique=25), [(25, E(errno.EIO))]),  # a second INIT
        (_message(Opcode.FORGET, abi.FORGET_IN.pack(5), unique=26, nodeid=ROOT_INODE), []),
        (_message(Opcode.FORGET, abi.FORGET_IN.pack(5), unique=27, nodeid=424242), []),
        (_message(Opcode.BATCH_FORGET, abi.BATCH_FORGET_IN.pack(1000) + abi.FORGET_ONE.pack(1, 1), unique=28), []),
        (_message(Opcode.INTERRUPT, struct.pack("<Q", 31337), unique=29), []),
    ]
    for message, expected in cases:
        got = [(u, e) for u, e, _ in await fake.ask(message)]
        assert got == expected, (message[:48], got)
    # LOOKUP of ".." at the root is the root itself
    [(unique, error, entry)] = await fake.ask(_message(Opcode.LOOKUP, b"..\0", unique=30))
    assert (unique, error) == (30, 0) and struct.unpack_from("<Q", entry)[0] == ROOT_INODE
    await _alive(fake)
    assert _snapshot(tmp_path) == before


async def test_absurd_requests_on_an_open_file(fake):
    """Numbers the kernel never sends (offsets past 2**63, reused uniques) cost an error reply,
    not the session."""
    [(_, error, entry)] = await fake.ask(_message(Opcode.LOOKUP, b"file\0", unique=2))
    assert error == 0
    nodeid = struct.unpack_from("<Q", entry)[0]
    [(_, error, opened)] = await fake.ask(_message(Opcode.OPEN, abi.OPEN_IN.pack(os.O_RDWR, 0), unique=3,
                                                   nodeid=nodeid))
    assert error == 0
    fh = struct.unpack_from("<Q", opened)[0]
    read = lambda offset, size, unique: _message(  # noqa: E731
        Opcode.READ, abi.READ_IN.pack(fh, offset, size, 0, 0, 0), unique=unique, nodeid=nodeid)
    [(u, e, data)] = await fake.ask(read(2, 5, 4))
    assert (u, e, data) == (4, 0, b"23456")
    [(u, e, _)] = await fake.ask(read(-10, 4096, 5))  # 2**64 - 10 on the wire: crashed the session before
    assert u == 5 and e < 0
    [(u, e, data)] = await fake.ask(read(2**63 - 1, 4096, 6))
    assert (u, e, data) == (6, -errno.EINVAL, b"")  # offset + size overflows loff_t
    # two requests in flight with one unique (the second WRITE and a GETATTR reuse it)
    write = _message(Opcode.WRITE, abi.WRITE_IN.pack(fh, 0, 3, 0, 0, 0) + b"abc", unique=7, nodeid=nodeid)
    fake.send(write)
    fake.send(write)
    fake.send(_message(Opcode.GETATTR, GETATTR_BODY, unique=7))
    got = []
    for _ in range(3):
        got += await fake.replies(until=7)
    assert sorted(e for _, e, _ in got) == [0, 0, 0] and {u for u, _, _ in got} == {7}
    await _alive(fake)


async def test_random_garbage_never_ends_the_session(fake, tmp_path):
    """Random bodies for every opcode (unknown node ids and handles, so nothing real is
    touched): each request gets one reply with its unique, or none if it takes none."""
    before = _snapshot(tmp_path)
    rng = random.Random(6)
    opcodes = [op for op in OPCODES if op not in (Opcode.INIT,)] + [0, 4242, 2**32 - 1]
    answers: dict[int, list[int]] = {}
    silent = set()  # uniques of requests that take no reply
    for unique in range(1000, 1600):
        opcode = rng.choice(opcodes)
        spec = OPCODES.get(opcode)
        if spec is not None and not spec.replies:
            silent.add(unique)
        body = rng.randbytes(rng.choice((0, 1, 7, 8, 16, 24, 40, 64, 80, 100, 200)))
        if rng.random() < 0.3:
            body += b"name\0other\0"
        nodeid = rng.choice((2**64 - 1, 77777777, 2**40))
        length = None if rng.random() < 0.9 else rng.randrange(0, 400)
        message = _message(opcode, body, unique=unique, nodeid=nodeid, length=length,
                           extlen=0 if rng.random() < 0.9 else rng.randrange(0, 100))
        for u, error, _ in await fake.ask(message) if unique not in silent else (fake.send(message) or []):
            answers.setdefault(u, []).append(error)
        if unique % 100 == 0:
            await _alive(fake, unique=unique + 10**6)
            answers.pop(unique + 10**6, None)
    for u, error, _ in await fake.replies(0.3):
        answers.setdefault(u, []).append(error)
    assert set(answers) <= set(range(1000, 1600)) - silent, set(answers) & silent
    assert all(len(errors) == 1 and errors[0] <= 0 for errors in answers.values())
    assert len(answers) > 400  # most took a reply: an error (or success for the few that can succeed)
    await fake.replies(0.2)
    await _alive(fake)
    assert _snapshot(tmp_path) == before
