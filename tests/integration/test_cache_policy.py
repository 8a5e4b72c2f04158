"""-o cache=never|auto|always: what the kernel may remember without asking the daemon.

Counted with the stats layer: a request the kernel answers from its own
caches never reaches the daemon's counters.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest


def _count(mount, *opcodes: str) -> int:
    ops = mount.stats()["ops"]
    return sum(ops.get(op, {}).get("count", 0) for op in opcodes)


def _listing_requests(mount) -> int:
    return _count(mount, "READDIR", "READDIRPLUS")


def _assert_every_stat_asks(mount) -> None:
    """Three stats of a file after the first: each reaches the daemon."""
    (mount.backing / "f").write_bytes(b"x")
    os.stat(mount.path / "f")
    before = _count(mount, "LOOKUP", "GETATTR")
    for _ in range(3):
        os.stat(mount.path / "f")
    assert _count(mount, "LOOKUP", "GETATTR") >= before + 3


def test_cache_never_asks_for_every_stat(mode, mount_factory):
    mount = mount_factory(mode, options=["cache=never"])
    _assert_every_stat_asks(mount)


def test_cache_never_sees_backing_changes_at_once(mode, mount_factory):
    mount = mount_factory(mode, options=["cache=never"])
    (mount.backing / "f").write_bytes(b"first")
    assert (mount.path / "f").read_bytes() == b"first"
    (mount.backing / "f").write_bytes(b"second, longer")
    assert (mount.path / "f").read_bytes() == b"second, longer"
    os.unlink(mount.backing / "f")
    assert not os.path.exists(mount.path / "f")
    (mount.backing / "g").write_bytes(b"")
    assert sorted(os.listdir(mount.path)) == ["g"]


def test_cache_always_answers_repeats_from_the_kernel(mode, mount_factory):
    mount = mount_factory(mode, options=["cache=always"])
    (mount.backing / "d").mkdir()
    for name in "abc":
        (mount.backing / "d" / name).write_bytes(b"data")
    for name in "abc":
        os.stat(mount.path / "d" / name)
    assert not os.path.exists(mount.path / "d" / "missing")
    before = _count(mount, "LOOKUP", "GETATTR")
    for _ in range(3):
        for name in "abc":
            os.stat(mount.path / "d" / name)
        assert not os.path.exists(mount.path / "d" / "missing")  # a cached negative entry
    assert _count(mount, "LOOKUP", "GETATTR") == before


def test_cache_always_keeps_listings_and_sees_its_own_changes(mode, mount_factory):
    mount = mount_factory(mode, options=["cache=always"])
    (mount.backing / "d").mkdir()
    for name in "abc":
        (mount.backing / "d" / name).write_bytes(b"")
    assert sorted(os.listdir(mount.path / "d")) == ["a", "b", "c"]
    listed = _listing_requests(mount)
    assert sorted(os.listdir(mount.path / "d")) == ["a", "b", "c"]
    if mount.engine == "native":
        assert _listing_requests(mount) == listed  # FOPEN_CACHE_DIR: served from the kernel's copy
    # Changes made through the mount invalidate the kernel's copy.
    (mount.path / "d" / "new").write_bytes(b"")
    os.unlink(mount.path / "d" / "a")
    assert sorted(os.listdir(mount.path / "d")) == ["b", "c", "new"]
    os.rename(mount.path / "d" / "b", mount.path / "d" / "renamed")
    assert sorted(os.listdir(mount.path / "d")) == ["c", "new", "renamed"]


def test_explicit_timeouts_refine_a_policy(mode, mount_factory):
    # entry/attr timeouts of 0 beside cache=always: every stat asks again.
    mount = mount_factory(mode, options=["entry_timeout=0,cache=always,attr_timeout=0"])
    _assert_every_stat_asks(mount)
    options = mount.stats()["options"]
    assert (options["cache"], options["entry_timeout"], options["negative_timeout"]) == ("always", 0, 86400)


@pytest.mark.parametrize("bad", ["cache=sometimes", "cache"])
def test_bad_cache_policy_is_one_line(tmp_path, bad):
    (tmp_path / "b").mkdir()
    (tmp_path / "m").mkdir()
    result = subprocess.run([sys.executable, "-m", "zcfs", str(tmp_path / "b"), str(tmp_path / "m"), "-o", bad],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "cache" in lines[0], result.stderr
    assert not os.path.ismount(tmp_path / "m")
