"""InodeTable: lookup counts, identity, and the fd cache that evicts idle inodes."""

import errno
import os

import pytest

from zcfs.inodes import ROOT_INODE, InodeTable


def _lookup(table: InodeTable, root: str, name: str):
    fd = os.open(os.path.join(root, name), os.O_PATH | os.O_NOFOLLOW)
    return table.remember(fd, os.fstat(fd))


@pytest.fixture
def tree(tmp_path):
    for i in range(200):
        (tmp_path / f"f{i}").write_text(str(i))
    return tmp_path


def test_lookups_are_counted_and_forget_releases(tree):
    table = InodeTable(os.open(tree, os.O_PATH | os.O_DIRECTORY))
    first = _lookup(table, tree, "f1")
    again = _lookup(table, tree, "f1")
    assert first is again and first.lookups == 2
    assert first.number == os.stat(tree / "f1").st_ino
    table.forget(first.number, 1)
    assert table.get(first.number) is first
    table.forget(first.number, 1)
    with pytest.raises(KeyError):
        table.get(first.number)
    table.forget(ROOT_INODE, 1)  # the root stays
    assert table.get(ROOT_INODE).fd >= 0
    table.close_all()


def test_idle_fds_are_evicted_and_reopened(tree):
    table = InodeTable(os.open(tree, os.O_PATH | os.O_DIRECTORY), max_fds=32)
    if table._mount_fd < 0:
        pytest.skip("file handles unusable on this filesystem")
    inodes = [_lookup(table, tree, f"f{i}") for i in range(200)]
    assert table.open_fds <= 32
    assert sum(1 for i in inodes if i._fd >= 0) <= 33  # the root never counts
    # Every evicted inode comes back as the same object.
    for i, inode in enumerate(inodes):
        assert os.fstat(inode.fd).st_ino == os.stat(tree / f"f{i}").st_ino
    # Looking a name up again while its fd is evicted finds the same inode.
    assert _lookup(table, tree, "f0") is inodes[0]
    table.close_all()


def test_pinned_inodes_keep_their_fd(tree):
    table = InodeTable(os.open(tree, os.O_PATH | os.O_DIRECTORY), max_fds=16)
    pinned = _lookup(table, tree, "f0")
    table.pin(pinned)
    fd = pinned._fd
    for i in range(1, 100):
        _lookup(table, tree, f"f{i}")
    assert pinned._fd == fd
    table.close_all()


def test_reused_inode_number_is_a_new_inode(tree):
    table = InodeTable(os.open(tree, os.O_PATH | os.O_DIRECTORY), max_fds=16)
    if table._mount_fd < 0:
        pytest.skip("file handles unusable on this filesystem")
    old = _lookup(table, tree, "f0")
    for i in range(1, 100):
        _lookup(table, tree, f"f{i}")  # evicts f0's fd
    assert old._fd < 0
    os.unlink(tree / "f0")
    # Whatever number the new file gets, it must not be mistaken for the old one.
    (tree / "f0").write_text("new")
    new = _lookup(table, tree, "f0")
    assert new is not old
    with pytest.raises(OSError):
        old.fd  # the old object is gone: ESTALE
    table.close_all()


def test_released_fd_stays_known_until_forgotten(tree):
    table = InodeTable(os.open(tree, os.O_PATH | os.O_DIRECTORY))
    inode = _lookup(table, tree, "f1")
    os.unlink(tree / "f1")
    table.release_fd(inode)
    assert table.open_fds == 0 and table.get(inode.number) is inode
    with pytest.raises(OSError) as gone:
        inode.fd
    assert gone.value.errno == errno.ESTALE
    # a new object that gets the same inode number is a new inode
    (tree / "f1").write_text("new")
    fresh = _lookup(table, tree, "f1")
    assert fresh is not inode and os.fstat(fresh.fd).st_size == 3
    table.forget(inode.number, 1)
    with pytest.raises(KeyError):
        table.get(inode.number)
    table.close_all()
