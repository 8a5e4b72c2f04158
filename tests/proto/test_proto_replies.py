"""Reply packers: unpack what they produce with fuse.h layouts written out by hand."""

import errno
import os
import stat
import struct
from types import SimpleNamespace

import pytest

from zcfs.proto import abi
from zcfs.proto.replies import (
    DirentBuffer, pack_attr, pack_attr_out, pack_bmap_out, pack_copy_file_range_out,
    pack_create_out, pack_data, pack_empty, pack_entry_out, pack_error, pack_getxattr_size,
    pack_lk_out, pack_lseek_out, pack_notify_delete, pack_notify_inc_epoch, pack_notify_inval_entry,
    pack_notify_inval_inode, pack_open_out, pack_out_header,
    pack_statfs_out, pack_write_out,
)

U = 0xABCDEF0123
ATTR_FMT = "<QQQQQQIIIIIIIIII"  # struct fuse_attr
ENTRY_FMT = "<QQQQII"  # struct fuse_entry_out up to its fuse_attr

ST = SimpleNamespace(
    st_ino=77, st_size=12345, st_blocks=24, st_atime_ns=1_700_000_000_123_456_789,
    st_mtime_ns=-1_500_000_000,  # 1969-12-31T23:59:58.5
    st_ctime_ns=5, st_mode=stat.S_IFREG | 0o640, st_nlink=2, st_uid=1000, st_gid=100,
    st_rdev=(1 << 40) | 0x0801, st_blksize=4096)
ST_ATTR = (77, 12345, 24, 1_700_000_000, (1 << 64) - 2, 0, 123_456_789, 500_000_000, 5,
           stat.S_IFREG | 0o640, 2, 1000, 100, 0x0801, 4096, 0)


def split(reply):
    """(error, unique, payload) after checking fuse_out_header.len."""
    length, error, unique = struct.unpack_from("<IiQ", reply)
    assert length == len(reply)
    return error, unique, reply[16:]


def test_out_header():
    assert pack_out_header(U, -errno.ENOENT, 4096 + 16) == struct.pack("<IiQ", 4112, -2, U)


def test_error():
    assert split(pack_error(U, errno.ENOENT)) == (-errno.ENOENT, U, b"")


@pytest.mark.parametrize("bogus", [0, -5, 512, None])
def test_error_outside_the_kernels_range_becomes_eio(bogus):
    assert split(pack_error(U, bogus))[0] == -errno.EIO


def test_notify_inval_inode():
    # unique 0, error = the notify code; fuse_notify_inval_inode_out: ino, off (signed), len
    assert split(pack_notify_inval_inode(U)) == (abi.FUSE_NOTIFY_INVAL_INODE, 0, struct.pack("<QqQ", U, -1, 0))
    assert split(pack_notify_inval_inode(7, 4096, 8192))[2] == struct.pack("<Qqq", 7, 4096, 8192)


def test_notify_inval_entry():
    # fuse_notify_inval_entry_out: parent, namelen, flags; the name, then a NUL not counted in namelen
    assert split(pack_notify_inval_entry(U, b"name")) == (
        abi.FUSE_NOTIFY_INVAL_ENTRY, 0, struct.pack("<QII", U, 4, 0) + b"name\0")
    assert split(pack_notify_inval_entry(5, b"x", expire_only=True))[2] == struct.pack("<QII", 5, 1, 1) + b"x\0"


def test_notify_delete():
    # fuse_notify_delete_out: parent, child, namelen, padding; the name and a NUL
    assert split(pack_notify_delete(1, U, b"gone")) == (
        abi.FUSE_NOTIFY_DELETE, 0, struct.pack("<QQII", 1, U, 4, 0) + b"gone\0")


def test_notify_inc_epoch_has_no_body():
    assert split(pack_notify_inc_epoch()) == (abi.FUSE_NOTIFY_INC_EPOCH, 0, b"")


def test_empty_and_data():
    assert split(pack_empty(U)) == (0, U, b"")
    assert split(pack_data(U, b"payload")) == (0, U, b"payload")
    assert split(pack_data(U, memoryview(bytearray(b"view")))) == (0, U, b"view")


def test_attr_from_stat_like_object():
    assert struct.unpack(ATTR_FMT, pack_attr(ST)) == ST_ATTR


def test_attr_from_os_stat():
    st = os.stat(__file__)
    fields = struct.unpack(ATTR_FMT, pack_attr(st))
    assert fields[0:3] == (st.st_ino, st.st_size, st.st_blocks)
    assert (fields[4], fields[7]) == divmod(st.st_mtime_ns, 1_000_000_000)
    assert fields[9] == st.st_mode


def test_entry_out():
    error, unique, body = split(pack_entry_out(U, 9, 3, 1.5, 0.25, ST))
    assert (error, unique, len(body)) == (0, U, 128)
    assert struct.unpack_from(ENTRY_FMT, body) == (9, 3, 1, 0, 500_000_000, 250_000_000)
    assert struct.unpack_from(ATTR_FMT, body, 40) == ST_ATTR


def test_negative_entry():
    _, _, body = split(pack_entry_out(U, 0, 0, 10.0, 0, None))
    assert struct.unpack_from(ENTRY_FMT, body) == (0, 0, 10, 0, 0, 0)
    assert body[40:] == bytes(88)


@pytest.mark.parametrize("timeout, expected", [
    (0, (0, 0)), (-1.0, (0, 0)), (float("nan"), (0, 0)), (2.000000001, (2, 1)),
    (float("inf"), (1 << 32, 0)), (1e300, (1 << 32, 0)),
])
def test_timeouts(timeout, expected):
    _, _, body = split(pack_attr_out(U, timeout, ST))
    assert struct.unpack_from("<QI", body) == expected


def test_attr_out():
    _, _, body = split(pack_attr_out(U, 1.0, ST))
    assert len(body) == 104
    assert struct.unpack_from("<QII", body) == (1, 0, 0)
    assert struct.unpack_from(ATTR_FMT, body, 16) == ST_ATTR


def test_ino_replaces_st_ino_and_nothing_else():
    """The native engine packs an os.stat_result as it is, showing another inode number."""
    shown = SimpleNamespace(**{**vars(ST), "st_ino": 5})
    assert pack_attr_out(U, 1.0, ST, ino=5) == pack_attr_out(U, 1.0, shown)
    assert pack_entry_out(U, 9, 3, 1.5, 0.25, ST, ino=5) == pack_entry_out(U, 9, 3, 1.5, 0.25, shown)
    _, _, body = split(pack_attr_out(U, 1.0, ST, ino=5))
    assert struct.unpack_from(ATTR_FMT, body, 16) == (5, *ST_ATTR[1:])
    st = os.stat(__file__)
    assert pack_attr_out(U, 1.0, st, ino=st.st_ino) == pack_attr_out(U, 1.0, st)


def test_open_out():
    _, _, body = split(pack_open_out(U, 5, abi.FOPEN_PASSTHROUGH, backing_id=3))
    assert struct.unpack("<QIi", body) == (5, abi.FOPEN_PASSTHROUGH, 3)
    _, _, body = split(pack_open_out(U, 5, abi.FOPEN_KEEP_CACHE))
    assert struct.unpack("<QIi", body) == (5, abi.FOPEN_KEEP_CACHE, 0)


def test_create_out():
    _, _, body = split(pack_create_out(U, 9, 1, 1.0, 1.0, ST, 5, abi.FOPEN_PASSTHROUGH, 7))
    assert len(body) == 128 + 16
    assert struct.unpack_from(ENTRY_FMT, body)[:2] == (9, 1)
    assert struct.unpack_from(ATTR_FMT, body, 40) == ST_ATTR
    assert struct.unpack_from("<QIi", body, 128) == (5, abi.FOPEN_PASSTHROUGH, 7)


@pytest.mark.parametrize("packer, args, fmt", [
    (pack_write_out, (4096,), "<II"),
    (pack_getxattr_size, (17,), "<II"),
    (pack_lseek_out, (1 << 40,), "<Q"),
    (pack_bmap_out, (99,), "<Q"),
    (pack_copy_file_range_out, (1 << 33,), "<Q"),
    (pack_lk_out, (0, 99, 2, 4242), "<QQII"),
])
def test_small_replies(packer, args, fmt):
    error, unique, body = split(packer(U, *args))
    assert (error, unique) == (0, U)
    assert struct.unpack(fmt, body)[:len(args)] == args
    assert body == struct.pack(fmt, *args, *(0,) * (len(fmt) - 1 - len(args)))


def test_statfs_out():
    st = os.statvfs("/")
    _, _, body = split(pack_statfs_out(U, st))
    assert len(body) == 80
    assert struct.unpack_from("<QQQQQIII", body) == (
        st.f_blocks, st.f_bfree, st.f_bavail, st.f_files, st.f_ffree, st.f_bsize,
        st.f_namemax, st.f_frsize)
    assert body[52:] == bytes(28)  # padding + spare[6]


def walk(payload, plus):
    """Read records back like fs/fuse/readdir.c: (entry_out | None, ino, off, type, name)."""
    out, pos = [], 0
    while pos < len(payload):
        start, entry = pos, None
        if plus:
            entry = struct.unpack_from(ENTRY_FMT, payload, pos)
            pos += 128
        ino, off, namelen, type_ = struct.unpack_from("<QQII", payload, pos)
        name = payload[pos + 24:pos + 24 + namelen]
        reclen = (pos - start) + 24 + namelen
        padded = (reclen + 7) & ~7
        assert payload[start + reclen:start + padded] == bytes(padded - reclen)
        out.append((entry, ino, off, type_, name))
        pos = start + padded
    assert pos == len(payload)
    return out


def test_dirents_are_aligned_and_carry_the_next_cookie():
    buf = DirentBuffer(4096)
    for i, name in enumerate([b"a", b"seven77", b"eight888", b"x" * 255], start=1):
        assert buf.add(name, 100 + i, stat.S_IFREG >> 12, i)
        assert len(buf) % 8 == 0
    assert buf.count == 4
    assert len(buf) == 32 + 32 + 32 + 280
    error, unique, payload = split(buf.pack(U))
    assert (error, unique) == (0, U)
    assert walk(payload, plus=False) == [
        (None, 101, 1, 8, b"a"), (None, 102, 2, 8, b"seven77"),
        (None, 103, 3, 8, b"eight888"), (None, 104, 4, 8, b"x" * 255)]


def test_dirent_overflow_adds_nothing():
    buf = DirentBuffer(64)
    assert buf.add(b"one", 1, 4, 1)  # 32 bytes
    assert buf.add(b"two", 2, 4, 2)  # exactly fills 64
    before = buf.pack(U)
    assert not buf.add(b"3", 3, 4, 3)
    assert buf.pack(U) == before and buf.count == 2 and len(buf) == 64


def test_dirent_too_small_for_even_one_entry():
    buf = DirentBuffer(31)
    assert not buf.add(b"a", 1, 4, 1)
    assert len(buf) == 0 and split(buf.pack(U)) == (0, U, b"")


def test_direntplus():
    buf = DirentBuffer(4096, plus=True)
    assert buf.add(b".", 1, 4, 1)
    assert buf.add(b"..", 1, 4, 2, None)
    assert buf.add(b"file", 77, 8, 3, (9, 2, 1.0, 0.5, ST))
    assert len(buf) % 8 == 0 and buf.count == 3
    records = walk(split(buf.pack(U))[2], plus=True)
    assert [r[1:] for r in records] == [(1, 1, 4, b"."), (1, 2, 4, b".."), (77, 3, 8, b"file")]
    assert records[0][0] == (0, 0, 0, 0, 0, 0)  # nodeid 0: the kernel skips the lookup
    assert records[2][0] == (9, 2, 1, 0, 0, 500_000_000)


def test_direntplus_size_accounts_for_entry_out():
    buf = DirentBuffer(160, plus=True)  # 128 + 24 + 1 -> 160 after padding
    assert buf.add(b"a", 1, 8, 1, (5, 0, 1.0, 1.0, ST))
    assert not buf.add(b"b", 2, 8, 2, (6, 0, 1.0, 1.0, ST))


@pytest.mark.parametrize("plus, name, entry", [
    (False, b"", None), (False, b"a/b", None), (False, b"n" * 1025, None),
    (False, b"a", (5, 0, 1.0, 1.0, ST)),  # entry_out only exists in READDIRPLUS
    (True, b".", (5, 0, 1.0, 1.0, ST)),  # the kernel ignores it: its lookup would leak
    (True, b"..", (5, 0, 1.0, 1.0, ST)),
    (True, b"root", (abi.FUSE_ROOT_ID, 0, 1.0, 1.0, ST)),
])
def test_dirent_rejects_what_the_kernel_would_fail(plus, name, entry):
    buf = DirentBuffer(4096, plus=plus)
    with pytest.raises(ValueError):
        buf.add(name, 1, 8, 1, entry)
    assert len(buf) == 0 and buf.count == 0
