"""The real `zcfs` command: mistakes, background start, signals, stale mounts.

Every daemon started here is found only through its command line, which
holds this test's own tmp_path, and every mount is removed in `finally`.
"""

from __future__ import annotations

import errno
import hashlib
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import MODES, _mode_args, fuse_skip_reason, wait_until

TIMEOUT = 30


def zcfs(*args: str | Path, timeout: float = TIMEOUT) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "zcfs", *map(str, args)],
                          capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)


def mounts_under(root: Path) -> list[str]:
    """Mountpoints at or below `root`, from /proc/self/mountinfo (one entry per mount)."""
    found = []
    with open("/proc/self/mountinfo", "rb") as info:
        for line in info:
            raw = line.split()[4]
            path = os.fsdecode(re.sub(rb"\\([0-7]{3})", lambda m: bytes([int(m.group(1), 8)]), raw))
            if path == str(root) or path.startswith(str(root) + "/"):
                found.append(path)
    return found


def daemons_of(root: Path) -> list[int]:
    """PIDs of live processes whose command line names a path under `root` (ours only)."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                args = f.read().split(b"\0")
            with open(f"/proc/{entry}/stat", "rb") as f:
                state = f.read().rsplit(b")", 1)[1].split()[0]
        except OSError:
            continue
        if state != b"Z" and b"zcfs" in args and any(os.fsencode(str(root)) in a for a in args):
            pids.append(int(entry))
    return pids


def cleanup(root: Path) -> None:
    """Unmount everything under root and end the daemons we started (by PID)."""
    for path in sorted(mounts_under(root), reverse=True):
        if subprocess.run(["fusermount3", "-u", "-q", path], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", path], capture_output=True)
    wait_until(lambda: not daemons_of(root), timeout=5)
    for pid in daemons_of(root):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    for path in mounts_under(root):  # a daemon killed above may leave a stale mount
        subprocess.run(["umount", "-l", path], capture_output=True)


def tree_state(root: Path) -> dict:
    """Names, types, modes, sizes, mtimes and contents below (and of) root."""
    state = {}
    for path in [root, *root.rglob("*")]:
        st = os.lstat(path)
        content = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() and not path.is_symlink() else None
        state[str(path.relative_to(root))] = (st.st_mode, st.st_size, st.st_mtime_ns, content)
    return state


def one_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, f"expected one line on stderr, got {len(lines)}:\n{stderr}"
    assert lines[0].startswith("zcfs: "), lines[0]
    assert "Traceback" not in stderr
    return lines[0]


@pytest.fixture
def area(tmp_path):
    """tmp_path with a populated backing dir and an empty mountpoint; cleaned up after."""
    backing = tmp_path / "backing"
    backing.mkdir()
    (backing / "hello.txt").write_bytes(b"hello from the backing dir\n")
    (backing / "sub").mkdir()
    (backing / "sub" / "deeper").write_bytes(b"x" * 1000)
    (tmp_path / "mnt").mkdir()
    try:
        yield tmp_path
    finally:
        cleanup(tmp_path)


# -- mistakes ---------------------------------------------------------------

ENGINE = _mode_args(MODES[0]) if MODES else ["--engine", "pyfuse3"]

# name -> (function of the area giving argv, words the message must contain)
BAD_INPUTS = {
    "missing-backing": (lambda a: [a / "nope", a / "mnt"], ["does not exist", "nope"]),
    "backing-is-file": (lambda a: [a / "backing" / "hello.txt", a / "mnt"], ["not a directory", "hello.txt"]),
    "missing-mountpoint": (lambda a: [a / "backing", a / "no-mnt"], ["does not exist", "no-mnt"]),
    "mountpoint-is-file": (lambda a: [a / "backing", a / "backing" / "sub" / "deeper"], ["not a directory", "deeper"]),
    "mountpoint-inside-backing": (lambda a: [a / "backing", a / "backing" / "sub"], ["inside the backing"]),
    "unknown-option": (lambda a: [a / "backing", a / "mnt", "-o", "ro,frobnicate=3"], ["unknown mount option", "frobnicate"]),
    "bad-timeout": (lambda a: [a / "backing", a / "mnt", "-o", "attr_timeout=soon"], ["attr_timeout", "soon"]),
    "negative-timeout": (lambda a: [a / "backing", a / "mnt", "-o", "entry_timeout=-1"], ["entry_timeout", "negative"]),
    "bad-spin": (lambda a: [a / "backing", a / "mnt", "-o", "spin_us=soon"], ["spin_us", "soon"]),
    "spin-too-long": (lambda a: [a / "backing", a / "mnt", "-o", "spin_us=50000"], ["spin_us", "10000"]),
    "allow-other-without-checks": (lambda a: [a / "backing", a / "mnt", "-o", "allow_other,nodefault_permissions"],
                                   ["allow_other", "nodefault_permissions"]),
    "bad-engine": (lambda a: [a / "backing", a / "mnt", "--engine", "warp"], ["--engine", "warp"]),
    "bad-zero-copy": (lambda a: [a / "backing", a / "mnt", "--zero-copy", "teleport"], ["--zero-copy", "teleport"]),
    "no-mountpoint": (lambda a: [a / "backing"], ["mountpoint"]),
}


@pytest.mark.parametrize("how", ["background", "foreground"])
@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input(case, how, area):
    make_args, words = BAD_INPUTS[case]
    args = [*make_args(area), *(["-f"] if how == "foreground" else [])]
    if "--engine" not in args:
        args += ENGINE
    before = tree_state(area / "backing")
    result = zcfs(*args)
    assert result.returncode != 0
    line = one_line(result.stderr)
    for word in words:
        assert word in line, f"{word!r} not in {line!r}"
    assert result.stdout == ""
    assert mounts_under(area) == []
    assert daemons_of(area) == []
    assert tree_state(area / "backing") == before


@pytest.mark.parametrize("how", ["background", "foreground"])
def test_mountpoint_already_mounted(how, area, mount_factory):
    first = mount_factory(MODES[0], backing=area / "backing")
    other = area / "other-backing"
    other.mkdir()
    (other / "decoy").write_bytes(b"decoy")
    before = tree_state(other)
    result = zcfs(other, first.path, *ENGINE, *(["-f"] if how == "foreground" else []))
    assert result.returncode != 0
    line = one_line(result.stderr)
    assert "already" in line and str(first.path) in line
    assert mounts_under(first.path) == [str(first.path)]  # still just the first mount
    assert (first.path / "hello.txt").read_bytes() == b"hello from the backing dir\n"
    assert tree_state(other) == before
    assert [pid for pid in daemons_of(area) if pid != first.process.pid] == []


# -- starting and stopping --------------------------------------------------

def _foreground(area: Path, mode: str, log: Path) -> subprocess.Popen:
    """A foreground daemon of our own, once it says its mount is ready.

    (Polling the mount would not do: a dead mount's cached entries still answer.)
    """
    read_end, write_end = os.pipe()
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "zcfs", str(area / "backing"), str(area / "mnt"), "-f",
             "--ready-fd", str(write_end), *_mode_args(mode)],
            stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, pass_fds=(write_end,))
    os.close(write_end)
    with os.fdopen(read_end, "rb") as status:
        line = status.readline().decode().strip()
    assert line == "ready" and process.poll() is None, f"daemon did not come up ({line}): {log.read_text()}"
    return process


@pytest.fixture
def fuse_mode(mode):
    reason = fuse_skip_reason()
    if reason:
        pytest.skip(reason)
    return mode


def test_background_start_and_unmount(fuse_mode, area):
    mnt = area / "mnt"
    log = area / "daemon.log"
    result = zcfs(area / "backing", mnt, *_mode_args(fuse_mode), "--log", log)
    assert result.returncode == 0, result.stderr
    assert result.stderr == "" and result.stdout == ""
    # ready means ready: no waiting
    assert (mnt / "hello.txt").read_bytes() == b"hello from the backing dir\n"
    assert mounts_under(area) == [str(mnt)]
    daemons = daemons_of(area)
    assert len(daemons) == 1, daemons
    assert subprocess.run(["fusermount3", "-u", str(mnt)], capture_output=True).returncode == 0
    assert wait_until(lambda: not daemons_of(area), timeout=10), "the daemon outlived its mount"
    assert mounts_under(area) == []
    assert not os.path.exists(mnt / "hello.txt")
    assert "Traceback" not in (log.read_text() if log.exists() else "")


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=lambda s: s.name)
def test_signal_unmounts_foreground_daemon(sig, fuse_mode, area):
    log = area / "fg.log"
    process = _foreground(area, fuse_mode, log)
    try:
        held = open(area / "mnt" / "hello.txt", "rb")  # an open file must not block the exit
        process.send_signal(sig)
        assert process.wait(timeout=15) == 0, log.read_text()
        try:
            held.close()
        except OSError as exc:  # the file's daemon is gone
            assert exc.errno == errno.ENOTCONN
        assert mounts_under(area) == []
        assert os.listdir(area / "mnt") == []  # the plain directory again
        assert "Traceback" not in log.read_text()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


@pytest.mark.parametrize("how", ["background", "foreground"])
def test_stale_mount_is_cleared(how, fuse_mode, area):
    mnt = area / "mnt"
    first = _foreground(area, fuse_mode, area / "first.log")
    os.stat(mnt)  # the kernel caches the root's attributes for a second
    first.kill()  # SIGKILL: no chance to unmount
    first.wait()
    with pytest.raises(OSError) as stale:
        os.listdir(mnt)
    # ECONNABORTED while the kernel tears down a killed daemon's io_uring (mount.is_stale)
    assert stale.value.errno in (errno.ENOTCONN, errno.ECONNABORTED)
    # restarted at once, while stat() of the dead mount may still be answered from that cache
    assert mounts_under(area) == [str(mnt)]
    if how == "background":
        result = zcfs(area / "backing", mnt, *_mode_args(fuse_mode))
        assert result.returncode == 0, result.stderr
        stderr = result.stderr
    else:
        log = area / "second.log"
        second = _foreground(area, fuse_mode, log)
        stderr = log.read_text()
        assert second.poll() is None
    assert "stale" in one_line(stderr)
    assert (mnt / "hello.txt").read_bytes() == b"hello from the backing dir\n"
    assert mounts_under(area) == [str(mnt)]  # the dead mount is gone, not stacked under
    assert subprocess.run(["fusermount3", "-u", str(mnt)], capture_output=True).returncode == 0
    assert wait_until(lambda: not daemons_of(area), timeout=10)
    assert mounts_under(area) == []


def test_odd_path_names(fuse_mode, tmp_path):
    """Commas, spaces and non-ASCII letters in the backing dir and mountpoint."""
    backing = tmp_path / "back,ing d\u00e9j\u00e0"
    backing.mkdir()
    (backing / "f").write_bytes(b"odd")
    mnt = tmp_path / "mount point \u00f1"
    mnt.mkdir()
    try:
        result = zcfs(backing, mnt, *_mode_args(fuse_mode))
        assert result.returncode == 0, result.stderr
        assert (mnt / "f").read_bytes() == b"odd"
        assert mounts_under(tmp_path) == [str(mnt)]
        again = zcfs(backing, mnt, *_mode_args(fuse_mode))
        assert again.returncode != 0
        assert "already" in one_line(again.stderr)
        (mnt / "g").write_bytes(b"new")
        assert (backing / "g").read_bytes() == b"new"
    finally:
        cleanup(tmp_path)
    assert mounts_under(tmp_path) == []
