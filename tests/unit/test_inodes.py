"""InodeTable: lookup counts, identity, node ids that encode file handles, the fd cache, memory."""

import errno
import os
import tracemalloc

import pytest

from zcfs.inodes import ROOT_INODE, InodeTable


def _lookup(table: InodeTable, root, name: str):
    fd = os.open(os.path.join(root, name), os.O_PATH | os.O_NOFOLLOW)
    return table.remember(fd, os.fstat(fd))


def _table(path, **kwargs) -> InodeTable:
    return InodeTable(os.open(path, os.O_PATH | os.O_DIRECTORY), **kwargs)


def _encodes(table: InodeTable) -> bool:
    return table._codec is not None


@pytest.fixture
def tree(tmp_path):
    for i in range(200):
        (tmp_path / f"f{i}").write_text(str(i))
    return tmp_path


def test_lookups_are_counted_and_forget_releases(tree):
    table = _table(tree)
    first = _lookup(table, tree, "f1")
    again = _lookup(table, tree, "f1")
    assert first == again and first.lookups == 2
    assert table.attr_ino(first.number) == os.stat(tree / "f1").st_ino
    assert first.mode == os.stat(tree / "f1").st_mode & 0o170000
    table.forget(first.number, 1)
    assert table.get(first.number) == first
    table.forget(first.number, 1)
    with pytest.raises(KeyError):
        table.get(first.number)
    table.forget(ROOT_INODE, 1)  # the root stays
    assert table.get(ROOT_INODE).fd >= 0
    table.close_all()


def test_a_repeated_lookup_of_an_open_inode_needs_no_handle(tree, monkeypatch):
    """While an inode's fd is open its (st_dev, st_ino) is exact: LOOKUP skips name_to_handle_at."""
    from zcfs import syscalls
    table = _table(tree, max_fds=16)
    first = _lookup(table, tree, "f1")
    calls = []
    real = syscalls.name_to_handle
    monkeypatch.setattr(syscalls, "name_to_handle", lambda *a: calls.append(a) or real(*a))
    assert _lookup(table, tree, "f1") == first and not calls
    for i in range(2, 40):
        _lookup(table, tree, f"f{i}")  # evicts f1's fd
    calls.clear()
    assert _lookup(table, tree, "f1") == first and calls  # evicted: the handle decides
    table.close_all()


def test_the_root_found_by_name_is_the_root(tree):
    (tree / "sub").mkdir()
    table = _table(tree)
    sub = _lookup(table, tree, "sub")
    fd = os.open("..", os.O_PATH, dir_fd=sub.fd)
    assert table.remember(fd, os.fstat(fd)).number == ROOT_INODE
    table.close_all()


def test_idle_fds_are_evicted_and_reopened(tree):
    table = _table(tree, max_fds=32)
    if table._mount_fd < 0:
        pytest.skip("file handles unusable on this filesystem")
    inodes = [_lookup(table, tree, f"f{i}") for i in range(200)]
    assert table.open_fds <= 32
    # Every evicted inode comes back as the same object.
    for i, inode in enumerate(inodes):
        assert os.fstat(inode.fd).st_ino == os.stat(tree / f"f{i}").st_ino
    # Looking a name up again while its fd is evicted finds the same inode.
    assert _lookup(table, tree, "f0") == inodes[0]
    table.close_all()


def test_pinned_inodes_keep_their_fd(tree):
    table = _table(tree, max_fds=16)
    pinned = _lookup(table, tree, "f0")
    table.pin(pinned)
    fd = pinned.fd
    for i in range(1, 100):
        _lookup(table, tree, f"f{i}")
    assert pinned.fd == fd and table._fds.get(pinned.number, fd) == fd
    table.close_all()


def test_forget_before_the_last_unpin_keeps_the_inode_until_then(tree):
    """The kernel may send FORGET before RELEASE: the open file's inode stays usable."""
    table = _table(tree, max_fds=16)
    inode = _lookup(table, tree, "f0")
    table.pin(inode)
    table.forget(inode.number, 1)
    assert inode.mode == os.stat(tree / "f0").st_mode & 0o170000
    assert os.fstat(inode.fd).st_ino == os.stat(tree / "f0").st_ino
    table.unpin(inode)
    with pytest.raises(KeyError):
        table.get(inode.number)
    assert inode.number not in table._fds
    table.close_all()


def test_a_removed_inode_keeps_its_fd_until_forgotten(tree):
    table = _table(tree, max_fds=16)
    inode = _lookup(table, tree, "f5")
    table.keep_fd(inode)
    fd = inode.fd
    os.unlink(tree / "f5")
    for i in range(6, 100):
        _lookup(table, tree, f"f{i}")  # evicts every other fd
    assert inode.fd == fd and os.fstat(fd).st_nlink == 0
    table.forget(inode.number, 1)
    with pytest.raises(OSError):
        os.fstat(fd)  # closed: the space of the removed file is free
    table.close_all()


def test_reused_inode_number_is_a_new_inode(tree):
    table = _table(tree, max_fds=16)
    if table._mount_fd < 0:
        pytest.skip("file handles unusable on this filesystem")
    old = _lookup(table, tree, "f0")
    for i in range(1, 100):
        _lookup(table, tree, f"f{i}")  # evicts f0's fd
    assert old.number not in table._fds
    os.unlink(tree / "f0")
    # Whatever number the new file gets, it must not be mistaken for the old one.
    (tree / "f0").write_text("new")
    new = _lookup(table, tree, "f0")
    assert new != old
    with pytest.raises(OSError):
        old.fd  # the old object is gone: ESTALE
    table.close_all()


# -- node ids that survive being forgotten (FUSE_EXPORT_SUPPORT) -------------

@pytest.fixture(params=["tmpfs", "subdir"])
def backing(request, tmp_path):
    """A backing dir that is a whole filesystem (a fresh tmpfs), or a subdirectory of one."""
    if request.param == "subdir":
        return tmp_path
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    return request.getfixturevalue("tmpfs_dir")("whole", "16m")


def test_a_forgotten_node_id_is_reopened_by_its_handle(backing):
    tree = backing
    for i in range(3):
        (tree / f"f{i}").write_text(str(i))
    (tree / "dir").mkdir()
    os.link(tree / "f1", tree / "dir" / "hard")
    table = _table(tree)
    if not _encodes(table):
        pytest.skip("this filesystem's handles are not (ino, generation)")
    numbers = {}
    for name in ("f1", "dir", "dir/hard"):
        inode = _lookup(table, tree, name)
        numbers[name] = inode.number
        table.forget(inode.number, inode.lookups)
    assert numbers["f1"] == numbers["dir/hard"]  # one object, one node id
    assert len(table) == 1  # only the root is left
    for name, number in numbers.items():
        if not table._whole_fs and not (tree / name).is_dir():
            # Under a subdirectory backing only directories can be checked to lie inside.
            with pytest.raises(OSError):
                table.relookup(number)
            continue
        inode = table.relookup(number)
        assert inode.number == number and inode.lookups == 1
        assert os.fstat(inode.fd).st_ino == os.stat(tree / name).st_ino
        table.forget(number, 1)
    table.close_all()


def test_a_forgotten_node_id_of_a_removed_object_is_stale(tree):
    table = _table(tree)
    if not _encodes(table):
        pytest.skip("this filesystem's handles are not (ino, generation)")
    inode = _lookup(table, tree, "f2")
    number = inode.number
    table.forget(number, 1)
    os.unlink(tree / "f2")
    with pytest.raises(OSError) as info:
        table.relookup(number)
    assert info.value.errno == errno.ESTALE
    with pytest.raises(OSError) as info:
        table.relookup(0x12345678_00000063)  # a node id no object ever had here
    assert info.value.errno == errno.ESTALE
    assert len(table) == 1
    table.close_all()


def test_a_forgotten_node_id_outside_a_subdirectory_backing_is_refused(tmp_path):
    """A handle opens anything on its filesystem: only what lies under the backing dir is resolved."""
    backing = tmp_path / "backing"
    (backing / "inner").mkdir(parents=True)
    (backing / "inner" / "file").write_text("in")
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside-file").write_text("secret")
    table = _table(backing)
    if not _encodes(table):
        pytest.skip("this filesystem's handles are not (ino, generation)")
    assert not table._whole_fs  # tmp_path is no filesystem's root
    inner = _lookup(table, backing, "inner")
    number = inner.number
    table.forget(number, 1)
    assert table.relookup(number).number == number  # a directory: its ".." chain is checked
    table.forget(number, 1)
    file_number = _lookup(table, backing, "inner/file").number
    table.forget(file_number, 1)
    outsiders = []
    for path in (tmp_path / "outside", tmp_path / "outside-file"):
        probe = _table(tmp_path)
        outsiders.append(_lookup(probe, tmp_path, path.name).number)
        probe.close_all()
    for number in [file_number, *outsiders]:
        with pytest.raises(OSError) as info:
            table.relookup(number)
        assert info.value.errno == errno.ESTALE
    table.close_all()


def test_known_finds_an_inode_by_name(tree):
    table = _table(tree)
    inode = _lookup(table, tree, "f3")
    dfd = os.open(tree, os.O_PATH)
    try:
        st = os.stat("f3", dir_fd=dfd, follow_symlinks=False)
        assert table.known(st, dfd, b"f3") == inode
        st4 = os.stat("f4", dir_fd=dfd, follow_symlinks=False)
        assert table.known(st4, dfd, b"f4") is None
    finally:
        os.close(dfd)
    table.close_all()


# -- memory -------------------------------------------------------------------

N_MEASURED = 20_000
BYTES_PER_INODE = 150  # issue 9's bound


def _traced_bytes_after(table: InodeTable, root, names) -> int:
    """Bytes the table holds (tracemalloc) after remembering `names`."""
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for name in names:
            _lookup(table, root, name)
        return tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()


@pytest.fixture(scope="module")
def many(tmp_path_factory):
    root = tmp_path_factory.mktemp("many")
    dfd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for i in range(N_MEASURED):
            os.close(os.open(f"{i}", os.O_CREAT | os.O_WRONLY, 0o644, dir_fd=dfd))
    finally:
        os.close(dfd)
    return root, [str(i) for i in range(N_MEASURED)]


def test_bytes_per_inode(many):
    """Each remembered inode costs the table at most 150 bytes (issue 9), fds evicted."""
    root, names = many
    table = _table(root, max_fds=64)
    if not _encodes(table):
        pytest.skip("this filesystem's handles are not (ino, generation)")
    used = _traced_bytes_after(table, root, names)
    assert len(table) == N_MEASURED + 1
    per_inode = used / N_MEASURED
    assert per_inode <= BYTES_PER_INODE, f"{per_inode:.0f} bytes per inode"
    table.close_all()


def test_no_growth_across_repeated_walks(many):
    """Forgetting and remembering the same inodes again and again keeps the table's size."""
    root, names = many
    table = _table(root, max_fds=64)
    sizes = []
    tracemalloc.start()
    try:
        for _ in range(4):
            for name in names:
                _lookup(table, root, name)
            full = tracemalloc.get_traced_memory()[0]
            for number in list(table._counts):
                table.forget(number, 1)
            sizes.append((full, tracemalloc.get_traced_memory()[0]))
    finally:
        tracemalloc.stop()
    assert len(table) == 1
    # the first walk sizes the dict; every later one ends where the second did
    assert all(abs(full - sizes[1][0]) < 4096 and abs(empty - sizes[1][1]) < 4096
               for full, empty in sizes[2:]), sizes
    table.close_all()
