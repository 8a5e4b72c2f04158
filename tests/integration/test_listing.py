"""What a listing costs a name walker (find) and a stat walker (du), counted by the stats layer.

A name walker should cost no lookup and no inode per listed file; a stat
walker no LOOKUP per listed file, but for one directory (engine/listing.py).
"""

from __future__ import annotations

import subprocess

import pytest

DIRS, FILES = 4, 40


def _tree(mount) -> None:
    for d in range(DIRS):
        directory = mount.backing / "top" / f"d{d}"
        directory.mkdir(parents=True)
        for f in range(FILES):
            (directory / f"f{f:03}").write_bytes(b"x" * f)


def _count(mount, opcode: str) -> int:
    return mount.stats()["ops"].get(opcode, {}).get("count", 0)


def _walk(command: list[str], cwd) -> list[str]:
    return sorted(subprocess.run(command, cwd=cwd, check=True, capture_output=True, text=True).stdout.splitlines())


def test_find_costs_no_lookup_and_no_inode_per_listed_file(mode, mount_factory):
    if mode == "pyfuse3":
        pytest.skip("pyfuse3 tells readdir no pid: every listing carries attributes")
    mount = mount_factory(mode)
    _tree(mount)
    inodes, lookups = mount.stats()["gauges"]["inodes"], _count(mount, "LOOKUP")
    assert _walk(["find", "top"], mount.path) == _walk(["find", "top"], mount.backing)
    # top (looked up), its DIRS subdirectories (listed with attributes): no file.
    assert mount.stats()["gauges"]["inodes"] - inodes <= 1 + DIRS
    assert _count(mount, "LOOKUP") - lookups <= 1


def test_du_pays_one_directory_of_lookups_and_then_none(mode, mount_factory):
    mount = mount_factory(mode)
    _tree(mount)
    lookups = _count(mount, "LOOKUP")
    assert _walk(["du", "-a", "top"], mount.path) == _walk(["du", "-a", "top"], mount.backing)
    assert _count(mount, "LOOKUP") - lookups <= 1 + FILES
