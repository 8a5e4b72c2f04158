"""The mount's page cache against what the backing file sees (issue 19).

`-o strictatime`: every read reaches the backing file, so its atime moves
on every read, not only the first (off the passthrough tier the mount's
page cache would answer the second one without asking the daemon).
"""

from __future__ import annotations

import mmap
import os
import shutil
import subprocess
from pathlib import Path

import pytest

PAGE = mmap.PAGESIZE


def _atime_into_past(path: Path) -> int:
    """Set the backing atime a year before the mtime (every policy then updates it); returns it."""
    st = path.stat()
    old = st.st_mtime_ns - 365 * 86400 * 10**9
    os.utime(path, ns=(old, st.st_mtime_ns))
    return old


def test_strictatime_every_read_moves_the_backing_atime(mode, mount_factory, tmp_path):
    """Each read through a strictatime mount updates the backing atime, the second read as
    the first (read(2) on one fd, a fresh open, mmap, exec), on every tier."""
    backing = tmp_path / "backing"
    backing.mkdir()
    data = b"x" * 100_000
    (backing / "data").write_bytes(data)
    shutil.copy("/bin/true", backing / "true")
    mount = mount_factory(mode, options=["strictatime"], backing=backing)
    target = mount.path / "data"

    def moved(read) -> None:
        for attempt in range(3):
            old = _atime_into_past(backing / "data")
            read()
            assert (backing / "data").stat().st_atime_ns != old, f"read {attempt + 1} left the atime"

    moved(lambda: target.read_bytes() == data or pytest.fail("wrong bytes"))
    with open(target, "rb") as f:  # one fd: the same pages asked again
        moved(lambda: os.pread(f.fileno(), len(data), 0) == data or pytest.fail("wrong bytes"))
    with open(target, "rb") as f:
        moved(lambda: _mapped_bytes(f.fileno(), mmap.MAP_PRIVATE) == data or pytest.fail("wrong bytes"))
    for _ in range(2):
        old = _atime_into_past(backing / "true")
        assert subprocess.run([mount.path / "true"]).returncode == 0
        assert (backing / "true").stat().st_atime_ns != old, "exec left the atime"


def _mapped_bytes(fd: int, flags: int) -> bytes:
    with mmap.mmap(fd, 0, flags=flags, prot=mmap.PROT_READ) as mapped:
        return mapped[:]


def test_strictatime_shared_mmap(mode, mount_factory):
    """A shared read-only mapping works on a strictatime mount (the native engine asks for
    FUSE_DIRECT_IO_ALLOW_MMAP); the pyfuse3 engine cannot ask for it (libfuse 3.14), and the
    kernel refuses a shared mapping of a direct_io file there with ENODEV, as with cache=never."""
    mount = mount_factory(mode, options=["strictatime"])
    (mount.backing / "f").write_bytes(b"map!" * 1024)
    with open(mount.path / "f", "rb") as f:
        if mode == "pyfuse3":
            with pytest.raises(OSError) as refused:
                _mapped_bytes(f.fileno(), mmap.MAP_SHARED)
            assert refused.value.errno == 19  # ENODEV
        else:
            assert _mapped_bytes(f.fileno(), mmap.MAP_SHARED) == b"map!" * 1024
