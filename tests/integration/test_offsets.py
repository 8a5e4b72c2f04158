"""Negative and huge offsets through the mount get the backing filesystem's errno.

The native engine once unpacked fuse_lseek_in.offset unsigned: lseek(fd, -1,
SEEK_DATA) became 2**64 - 1, os.lseek raised OverflowError and the caller got
EIO (with a traceback in the daemon log) where ext4 says ENXIO.
"""

from __future__ import annotations

import errno
import os

import pytest
from test_edge import assert_daemon_healthy

# (whence, offset): lseek's SEEK_DATA/SEEK_HOLE reach the daemon (LSEEK) on the native engine.
SEEKS = [(os.SEEK_DATA, -1), (os.SEEK_HOLE, -1), (os.SEEK_DATA, -(2**63)), (os.SEEK_HOLE, -(2**63)),
         (os.SEEK_DATA, 2**62), (os.SEEK_HOLE, 2**63 - 1), (os.SEEK_DATA, 3), (os.SEEK_HOLE, 0)]


def _outcome(call):
    try:
        return call()
    except OSError as exc:
        return errno.errorcode[exc.errno]


def _outcomes(path) -> list:
    fd = os.open(path, os.O_RDWR)
    try:
        results = [_outcome(lambda: os.lseek(fd, offset, whence)) for whence, offset in SEEKS]
        # These the kernel refuses itself; listed so any engine difference shows.
        results.append(_outcome(lambda: os.pread(fd, 10, -1)))
        results.append(_outcome(lambda: os.pwrite(fd, b"x", -5)))
        results.append(_outcome(lambda: os.posix_fallocate(fd, -1, 10)))
        results.append(_outcome(lambda: os.copy_file_range(fd, fd, 10, -1, 100)))
        return results
    finally:
        os.close(fd)


def test_negative_offsets_match_the_backing_fs(mnt):
    data = b"0123456789" * 100
    (mnt.path / "f").write_bytes(data)
    (mnt.backing / "direct").write_bytes(data)
    through_mount = _outcomes(mnt.path / "f")
    direct = _outcomes(mnt.backing / "direct")
    assert through_mount == direct
    assert through_mount[0] == "ENXIO"  # the case, on every engine
    assert_daemon_healthy(mnt)


@pytest.mark.parametrize("whence", [os.SEEK_DATA, os.SEEK_HOLE])
def test_seek_past_the_end_of_a_sparse_file(mnt, whence):
    with open(mnt.path / "sparse", "wb") as f:
        f.truncate(1 << 20)
        f.seek(1 << 19)
        f.write(b"data")
    fd = os.open(mnt.path / "sparse", os.O_RDONLY)
    try:
        assert _outcome(lambda: os.lseek(fd, 1 << 20, whence)) == "ENXIO"
        assert _outcome(lambda: os.lseek(fd, -(1 << 40), whence)) == "ENXIO"
    finally:
        os.close(fd)
    assert_daemon_healthy(mnt)
