"""Round trips a user-level operation costs, counted by the stats layer.

Each wasted round trip is a full client -> kernel -> daemon -> client
journey; these tests pin the ones the daemon can avoid.
"""

from __future__ import annotations

import os


def _count(mount, opcode: str) -> int:
    return mount.stats()["ops"].get(opcode, {}).get("count", 0)


def test_a_listing_carries_the_attributes_of_every_entry(mode, mount_factory):
    """Read a whole directory, then stat every entry (as fts does: du, git, find -type):
    the listing's attributes answer the stats, with no LOOKUP per entry."""
    mount = mount_factory(mode)
    (mount.backing / "d").mkdir()
    for i in range(600):  # more than one READDIRPLUS reply holds
        (mount.backing / "d" / f"entry-with-a-longish-name-{i:04d}").write_bytes(b"")
    os.stat(mount.path / "d")
    lookups = _count(mount, "LOOKUP")
    names = os.listdir(mount.path / "d")
    assert len(names) == 600
    for name in names:
        os.lstat(mount.path / "d" / name)
    assert _count(mount, "LOOKUP") - lookups < 10


def test_close_sends_no_flush_on_a_local_backing_filesystem(mode, mount_factory):
    """A local backing filesystem reports write errors at write(2): FLUSH has nothing to add,
    so after the first one (refused) the kernel sends none."""
    mount = mount_factory(mode)
    for i in range(20):
        with open(mount.path / f"f{i}", "wb") as f:
            f.write(b"data")
    assert _count(mount, "FLUSH") <= 1
    assert all((mount.backing / f"f{i}").read_bytes() == b"data" for i in range(20))
