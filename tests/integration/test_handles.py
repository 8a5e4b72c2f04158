"""File handles of the mount (name_to_handle_at / open_by_handle_at) outlive the kernel's caches.

The kernel's FUSE handle is (node id, generation) (fs/fuse/inode.c). Once
it has dropped an inode (drop_caches, then FORGET), decoding a handle sends
LOOKUP(node id, "."); zcfs negotiates FUSE_EXPORT_SUPPORT and rebuilds the
backing file handle from the node id (zcfs/inodes.py). Each test drops the
caches once.

What cannot work, and is checked here as the documented limit: with a
backing dir that is not the root of its filesystem, a forgotten non-directory
cannot be shown to lie under it, so its handle is stale (ESTALE).
"""

from __future__ import annotations

import errno
import os
import shutil

import pytest
from test_differential import BALLAST_FILES, EVICTING_NOFILE, nofile_limit
from test_edge import assert_daemon_healthy

from conftest import wait_until
from zcfs import syscalls


def _drop_kernel_caches(mount) -> None:
    """Make the kernel forget the mount's unused inodes (it sends FORGET for them)."""
    before = mount.stats()["gauges"]["inodes"]
    os.sync()
    with open("/proc/sys/vm/drop_caches", "w") as knob:
        knob.write("3")
    # the daemon has processed the FORGETs: it remembers fewer inodes
    assert wait_until(lambda: mount.stats()["gauges"]["inodes"] < before, timeout=30), before


def _handle(path) -> bytes:
    fd = os.open(path, os.O_PATH | os.O_NOFOLLOW)
    try:
        return syscalls.name_to_handle(fd)[0]
    finally:
        os.close(fd)


def _open_by_handle(mount, handle: bytes, flags: int = os.O_RDONLY) -> int:
    mount_fd = os.open(mount.path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        return syscalls.open_by_handle(mount_fd, handle, flags)
    finally:
        os.close(mount_fd)


def _read_by_handle(mount, handle: bytes) -> bytes:
    fd = _open_by_handle(mount, handle)
    try:
        return os.pread(fd, 100, 0)
    finally:
        os.close(fd)


def _list_by_handle(mount, handle: bytes) -> list[str]:
    fd = _open_by_handle(mount, handle, os.O_RDONLY | os.O_DIRECTORY)
    try:
        return sorted(os.listdir(fd))
    finally:
        os.close(fd)


def _tree(root) -> dict[str, bytes]:
    """Files, a directory and a hard link made through the mount; their handles."""
    (root / "dir" / "sub").mkdir(parents=True)
    (root / "file").write_bytes(b"plain")
    (root / "dir" / "sub" / "deep").write_bytes(b"deep")
    os.link(root / "file", root / "dir" / "hard")
    return {name: _handle(root / name) for name in ("file", "dir", "dir/sub", "dir/sub/deep", "dir/hard")}


# Any atime option makes the daemon open the backing dir through a private,
# detached copy of its mount (engine/devfuse.atime_view): handles must survive there too.
@pytest.mark.parametrize("atime", [None, "noatime", "strictatime"])
def test_handles_survive_drop_caches(atime, tmpfs_dir, mode, mount_factory):
    mount = mount_factory(mode, options=[atime] if atime else [], backing=tmpfs_dir("backing", "16m"))
    handles = _tree(mount.path)
    inos = {name: os.lstat(mount.path / name).st_ino for name in handles}
    assert handles["file"] == handles["dir/hard"]  # one object, one handle
    _drop_kernel_caches(mount)
    assert _read_by_handle(mount, handles["file"]) == b"plain"
    assert _read_by_handle(mount, handles["dir/hard"]) == b"plain"
    assert _read_by_handle(mount, handles["dir/sub/deep"]) == b"deep"
    assert _list_by_handle(mount, handles["dir"]) == ["hard", "sub"]
    assert _list_by_handle(mount, handles["dir/sub"]) == ["deep"]
    for name, handle in handles.items():
        fd = _open_by_handle(mount, handle, os.O_PATH)
        try:
            assert os.fstat(fd).st_ino == inos[name], name
        finally:
            os.close(fd)
    # a removed file's handle is stale, as on any filesystem
    os.unlink(mount.path / "dir" / "sub" / "deep")
    with pytest.raises(OSError) as info:
        _read_by_handle(mount, handles["dir/sub/deep"])
    assert info.value.errno == errno.ESTALE
    assert_daemon_healthy(mount)


def test_handles_survive_inode_fd_eviction(tmpfs_dir, mode, mount_factory, tmp_path):
    """The daemon's fd of the object is evicted (tiny fd cache), then the kernel forgets it too."""
    if shutil.which("prlimit") is None:
        pytest.skip("prlimit (util-linux) not installed")
    backing = tmpfs_dir("backing", "16m")
    with nofile_limit(EVICTING_NOFILE, tmp_path):
        mount = mount_factory(mode, backing=backing)
    handles = _tree(mount.path)
    ballast = [mount.path / f"ballast{i}" for i in range(BALLAST_FILES)]
    for path in ballast:
        path.write_bytes(b"")
    for path in ballast:
        os.listxattr(path)  # the daemon reopens these, evicting the tree's fds
    held = {os.readlink(f"/proc/{mount.process.pid}/fd/{fd}")
            for fd in os.listdir(f"/proc/{mount.process.pid}/fd")}
    assert str(backing / "file") not in held, "no eviction happened"
    # the kernel still knows the inodes: the daemon reopens the evicted fds by handle
    assert _read_by_handle(mount, handles["dir/hard"]) == b"plain"
    assert _list_by_handle(mount, handles["dir"]) == ["hard", "sub"]
    _drop_kernel_caches(mount)
    for path in ballast:
        os.listxattr(path)
    assert _read_by_handle(mount, handles["file"]) == b"plain"
    assert _read_by_handle(mount, handles["dir/sub/deep"]) == b"deep"
    assert _list_by_handle(mount, handles["dir/sub"]) == ["deep"]
    assert_daemon_healthy(mount)


def test_handles_under_a_subdirectory_backing(mode, mount_factory):
    """The documented limit: only directories resolve when the backing dir is not a filesystem root."""
    mount = mount_factory(mode)  # backing: a directory in tmp_path
    handles = _tree(mount.path)
    _drop_kernel_caches(mount)
    with pytest.raises(OSError) as info:
        _read_by_handle(mount, handles["dir/sub/deep"])
    assert info.value.errno == errno.ESTALE
    assert _list_by_handle(mount, handles["dir/sub"]) == ["deep"]
    # Looked up again by name (as ls -l, or an NFS server's READDIRPLUS, does;
    # a listing alone may leave files out: engine/listing.py).
    os.lstat(mount.path / "dir" / "sub" / "deep")
    assert _read_by_handle(mount, handles["dir/sub/deep"]) == b"deep"
    assert_daemon_healthy(mount)
