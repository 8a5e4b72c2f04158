"""A listing's offsets mean the same in every open of a directory.

The kernel keeps listings (FOPEN_CACHE_DIR, under cache=watch and always)
and, once a change drops the kept one, goes on from the last offset it had
through whatever open reads next. An offset that meant "the k-th entry of
this open's snapshot" then listed names twice or never (64 concurrent
clients on one directory saw "an entry listed twice").
"""

from __future__ import annotations

import os

import pytest

from zcfs.fs import FsOptions, ZcfsOperations
from zcfs.inodes import ROOT_INODE


class Ctx:
    uid = gid = pid = umask = 0


@pytest.mark.parametrize("removed, added", [(200, 0), (0, 600), (200, 200)])
async def test_going_on_in_another_open_lists_each_lasting_name_once(removed, added, tmp_path):
    lasting = {f"keep-{n:03}".encode() for n in range(200)}
    leaving = {f"gone-{n:03}".encode() for n in range(removed)}
    for name in lasting | leaving:
        (tmp_path / os.fsdecode(name)).write_bytes(b"")
    ops = ZcfsOperations(str(tmp_path), FsOptions())
    try:
        first = await ops.opendir(ROOT_INODE, Ctx())
        head = []
        for offset, name, _, _ in ops.list_entries(first, 0):
            head.append(name)
            if len(head) == 100:
                break
        # The directory changes; the next chunk comes through a fresh open.
        for name in leaving:
            os.unlink(tmp_path / os.fsdecode(name))
        for n in range(added):
            (tmp_path / f"new-{n:03}").write_bytes(b"")
        second = await ops.opendir(ROOT_INODE, Ctx())
        tail = [name for _, name, _, _ in ops.list_entries(second, offset)]
        listed = head + tail
        assert len(listed) == len(set(listed)), "a name listed twice"
        assert lasting <= set(listed), "a name present all along never listed"
        assert {b".", b".."} <= set(head)
        offsets = [o for o, *_ in ops.list_entries(second, 0)]
        assert offsets == sorted(offsets) and len(set(offsets)) == len(offsets)
        assert all(0 < o < 1 << 63 for o in offsets)
    finally:
        ops.close()
