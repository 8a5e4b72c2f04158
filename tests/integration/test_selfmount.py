"""A mount that would cover its own backing dir is refused before mounting.

`zcfs B B`, `zcfs B L` (L a symlink to B) and `zcfs OUTER/B OUTER` once hung
forever: the daemon looked a path up through its own mount before answering
INIT, and waited on itself. Each case, and its bind-mount variants, must end
in one line and a non-zero exit with nothing mounted, on both engines.

Every case runs in a private mount + pid namespace, so that even a daemon
that did hang (the bug) dies with the namespace and takes its mount along.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from conftest import fuse_skip_reason
from test_mounting import ENGINES, namespace, one_line  # noqa: F401 (namespace is a fixture)

# Each case: set-up lines for the namespace (with $A the test's area, holding
# backing/ and its parent outer/), the zcfs arguments, and a word of the message.
CASES = {
    "mountpoint-is-backing": ("", ["outer/b", "outer/b"], "is the backing directory"),
    "mountpoint-is-symlink-to-backing": ("ln -s outer/b $A/link", ["outer/b", "link"],
                                         "is the backing directory"),
    "backing-inside-mountpoint": ("", ["outer/b", "outer"], "inside the mountpoint"),
    "backing-inside-mountpoint-through-symlink": ("ln -s outer $A/link", ["link/b", "outer"],
                                                  "inside the mountpoint"),
    "mountpoint-is-bind-of-backing": ("mkdir $A/m && mount --bind $A/outer/b $A/m", ["outer/b", "m"],
                                      "is the backing directory"),
    "backing-through-bind-of-mountpoint": ("mkdir $A/x && mount --bind $A/outer $A/x", ["x/b", "outer"],
                                           "inside the mountpoint"),
    "mountpoint-inside-bind-of-backing": ("mkdir $A/x && mount --bind $A/outer/b $A/x", ["outer/b", "x/sub"],
                                          "inside the backing directory"),
}


@pytest.fixture(autouse=True)
def _needs_fuse():
    reason = fuse_skip_reason()
    if reason:
        pytest.skip(reason)


@pytest.mark.parametrize("how", ["background", "foreground"])
@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("case", list(CASES))
def test_mount_over_own_backing_is_refused(case, engine, how, tmp_path, namespace):
    setup, args, words = CASES[case]
    (tmp_path / "outer" / "b" / "sub").mkdir(parents=True)
    (tmp_path / "outer" / "b" / "kept").write_bytes(b"kept\n")
    ns = namespace(setup.replace("$A", str(tmp_path)) or "true")
    command = [sys.executable, "-m", "zcfs", *(tmp_path / a for a in args), "--engine", engine]
    result = ns.run(*command, *(["-f"] if how == "foreground" else []), timeout=60)
    assert result.returncode != 0
    line = one_line(result.stderr)
    assert words in line, line
    assert [m for m in ns.mounts(tmp_path) if _is_fuse(ns, m)] == []
    assert (tmp_path / "outer" / "b" / "kept").read_bytes() == b"kept\n"


def _is_fuse(ns, mountpoint: str) -> bool:
    return ns.run("findmnt", "-no", "FSTYPE", mountpoint).stdout.startswith("fuse")


def test_mount_beside_backing_still_works(tmp_path, namespace):
    """The control: a sibling mountpoint, and one named like the backing dir, mount as before."""
    (tmp_path / "outer" / "b").mkdir(parents=True)
    (tmp_path / "outer" / "b" / "kept").write_bytes(b"kept\n")
    (tmp_path / "outer" / "b2").mkdir()  # a prefix of the name is not inside
    ns = namespace()
    for engine in ENGINES:
        mnt = tmp_path / "outer" / "b2"
        result = ns.run(sys.executable, "-m", "zcfs", tmp_path / "outer" / "b", mnt, "--engine", engine)
        assert result.returncode == 0, result.stderr
        assert ns.run("cat", mnt / "kept").stdout == "kept\n"
        assert ns.run("umount", mnt).returncode == 0
    assert Path(tmp_path / "outer" / "b" / "kept").exists()
