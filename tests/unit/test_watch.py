"""The watcher's event parsing and batching: fanotify bytes in, notifications out (no I/O)."""

from __future__ import annotations

import struct

from zcfs.engine import watch
from zcfs.proto import abi
from zcfs.proto.replies import pack_notify_delete, pack_notify_inval_entry, pack_notify_inval_inode

DIR = struct.pack("<Ii", 8, 1) + b"D" * 8  # struct file_handle of a directory
FILE = struct.pack("<Ii", 8, 1) + b"F" * 8
NODES = {DIR: 10, FILE: 20}
FSID = bytes(8)


def record(info_type: int, handle: bytes, name: bytes = b"") -> bytes:
    body = FSID + handle + (name + b"\0" if name else b"")
    body += bytes(-(4 + len(body)) % 4)
    return struct.pack("<BBH", info_type, 0, 4 + len(body)) + body


def event(mask: int, pid: int, *records: bytes) -> bytes:
    rest = b"".join(records)
    return struct.pack("<IBBHQii", 24 + len(rest), 3, 0, 24, mask, -1, pid) + rest


def parse(*events: bytes, own_pid: int = 1, passthrough=lambda n: False) -> watch.Batch:
    batch = watch.Batch()
    watch.parse_events(b"".join(events), own_pid, NODES.get, passthrough, batch)
    return batch


def test_name_changes_invalidate_the_entry_and_the_listing():
    batch = parse(event(watch.FAN_CREATE, 2, record(2, DIR, b"new"), record(1, FILE)))
    assert list(batch.messages) == [pack_notify_inval_entry(10, b"new"), pack_notify_inval_inode(10, 0),
                                    pack_notify_inval_inode(20, -1)]


def test_a_removal_is_a_delete_notification():
    batch = parse(event(watch.FAN_DELETE, 2, record(2, DIR, b"gone"), record(1, FILE)))
    assert pack_notify_delete(10, 20, b"gone") in batch.messages


def test_contents_drop_pages_except_on_passthrough():
    modify = event(watch.FAN_MODIFY, 2, record(2, DIR, b"f"), record(1, FILE))
    assert list(parse(modify).messages) == [pack_notify_inval_inode(20, 0)]
    assert list(parse(modify, passthrough=lambda n: True).messages) == [pack_notify_inval_inode(20, -1)]


def test_own_and_unknown_events_are_dropped():
    other = struct.pack("<Ii", 8, 1) + b"X" * 8
    assert parse(event(watch.FAN_MODIFY, 1, record(1, FILE))).messages == {}  # the daemon's own
    assert parse(event(watch.FAN_MODIFY, 2, record(1, other))).messages == {}  # not known to the kernel


def test_duplicates_coalesce():
    one = event(watch.FAN_ATTRIB, 2, record(2, DIR, b"f"), record(1, FILE))
    assert len(parse(one, one, one).messages) == 1


def test_queue_overflow_and_too_many_changes_invalidate_broadly():
    assert parse(event(watch.FAN_Q_OVERFLOW, 0)).overflow
    batch = watch.Batch()
    for n in range(watch.MAX_PENDING + 1):
        batch.add(pack_notify_inval_inode(n, -1), "inode")
    assert batch.overflow and batch.messages == {}  # memory bounded: the detail is dropped


def test_notify_codes():
    assert struct.unpack_from("<i", pack_notify_inval_entry(1, b"x"), 4)[0] == abi.FUSE_NOTIFY_INVAL_ENTRY
