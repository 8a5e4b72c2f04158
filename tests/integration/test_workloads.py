"""Real tools writing into the mount: cp -a, tar x, git, rsync -aHX.

Each workload builds a tree in the mount from a source tree made here, and
the backing directory (and the view through the mount) must then equal the
source: contents, types, modes, owners, symlink targets, hard-link groups,
xattrs and, for the tools that keep them, mtimes.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

# -- the source tree --------------------------------------------------------

def make_tree(root: Path) -> None:
    """A small tree with most things a copy tool can get wrong."""
    root.mkdir()
    files = {
        "empty": b"",
        "small.txt": b"hello, world\n",
        "page.bin": os.urandom(4096),
        "big.bin": os.urandom(300_000),
        "deep/a/b/c/leaf.txt": b"leaf\n",
        "deep/a/sibling": b"s" * 5000,
        "caf\u00e9 \u00f1 space.txt": b"non-ascii name\n",
        "bad-utf8-\udcff": b"not utf-8 name\n",
        "ro.txt": b"read only\n",
        "private": b"secret\n",
        "exec.sh": b"#!/bin/sh\necho hi\n",
        "setuid": b"\x7fELF-ish",
        "setgid": b"g",
        "noperm": b"nobody may",
        "owned": b"someone else's",
        "sticky/inside": b"i",
        "sgid-dir/inside": b"i",
        "readonly-dir/inside": b"in a read-only dir",
        "hl1": b"hard-linked three times\n",
        "pair-a": b"two names\n",
    }
    for rel, data in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    (root / "empty-dir").mkdir()
    os.link(root / "hl1", root / "deep" / "hl2")
    os.link(root / "hl1", root / "deep" / "a" / "hl3")
    os.link(root / "pair-a", root / "pair-b")
    os.symlink("small.txt", root / "link-rel")
    os.symlink("deep", root / "link-dir")
    os.symlink("nowhere/at/all", root / "link-dangling")
    os.symlink("/etc/hostname", root / "link-abs")
    os.symlink("../../small.txt", root / "deep" / "a" / "link-up")
    os.mkfifo(root / "fifo", 0o640)
    os.setxattr(root / "small.txt", "user.comment", b"a comment")
    os.setxattr(root / "big.bin", "user.binary", bytes(range(256)))
    os.setxattr(root / "big.bin", "user.empty", b"")
    os.setxattr(root / "deep", "user.on-dir", b"dir xattr")
    os.setxattr(root / "hl1", "user.hardlinked", b"shared by all names")
    os.setxattr(root / "private", "trusted.root-only", b"t")
    os.chown(root / "owned", 1234, 5678)
    os.chown(root / "deep" / "a", 4321, 4321)
    os.lchown(root / "link-rel", 1234, 1234)
    modes = {
        "ro.txt": 0o444, "private": 0o600, "exec.sh": 0o755, "setuid": 0o4755, "setgid": 0o2755,
        "noperm": 0o000, "owned": 0o640, "sticky": 0o1777, "sgid-dir": 0o2750,
        "readonly-dir/inside": 0o644, "readonly-dir": 0o555, "deep/a": 0o711,
    }
    for rel, mode in modes.items():
        os.chmod(root / rel, mode)
    # distinct nanosecond mtimes, children first so directories keep theirs
    paths = sorted((p for p in root.rglob("*")), key=lambda p: -len(p.parts))
    for i, path in enumerate(paths + [root]):
        t = 1_600_000_000_000_000_000 + i * 1_000_000_123
        os.utime(path, ns=(t + 7, t), follow_symlinks=False)


# -- comparing trees --------------------------------------------------------

def snapshot(root: Path, mtimes: bool = True) -> tuple[dict[str, tuple], set[frozenset[str]]]:
    """Everything that must survive a copy, per relative path; and the hard-link groups."""
    entries: dict[str, tuple] = {}
    by_inode: dict[tuple[int, int], set[str]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in ["."] if dirpath == str(root) else []:
            entries["."] = _record(root, mtimes)
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            rel = str(path.relative_to(root))
            entries[rel] = _record(path, mtimes)
            st = os.lstat(path)
            if not stat.S_ISDIR(st.st_mode) and st.st_nlink > 1:
                by_inode.setdefault((st.st_dev, st.st_ino), set()).add(rel)
    return entries, {frozenset(names) for names in by_inode.values()}


def _record(path: Path, mtimes: bool) -> tuple:
    st = os.lstat(path)
    kind = stat.S_IFMT(st.st_mode)
    if stat.S_ISREG(kind):
        with open(path, "rb") as f:
            payload = hashlib.sha256(f.read()).hexdigest()
    elif stat.S_ISLNK(kind):
        payload = os.readlink(path)
    elif stat.S_ISCHR(kind) or stat.S_ISBLK(kind):
        payload = st.st_rdev
    else:
        payload = None
    size = st.st_size if not stat.S_ISDIR(kind) else None  # directory sizes are the fs's business
    xattrs = {}
    for name in os.listxattr(path, follow_symlinks=False):
        if not name.startswith("security."):
            xattrs[name] = os.getxattr(path, name, follow_symlinks=False)
    nlink = st.st_nlink if not stat.S_ISDIR(kind) else None
    return (stat.filemode(st.st_mode), st.st_uid, st.st_gid, size, nlink, payload,
            tuple(sorted(xattrs.items())), st.st_mtime_ns if mtimes else None)


FIELDS = ("mode", "uid", "gid", "size", "nlink", "content", "xattrs", "mtime_ns")


def assert_same_tree(copy: Path, source: Path, mtimes: bool = True, ignore: tuple[str, ...] = ()) -> None:
    got, got_links = snapshot(copy, mtimes)
    want, want_links = snapshot(source, mtimes)
    for rel in ignore:
        got.pop(rel, None)
        want.pop(rel, None)
    problems = [f"missing: {rel}" for rel in sorted(want.keys() - got.keys())]
    problems += [f"extra: {rel}" for rel in sorted(got.keys() - want.keys())]
    for rel in sorted(want.keys() & got.keys()):
        for field, a, b in zip(FIELDS, got[rel], want[rel]):
            if a != b:
                problems.append(f"{rel}: {field} is {a!r}, source has {b!r}")
    if got_links != want_links:
        problems.append(f"hard-link groups {sorted(map(sorted, got_links))} != {sorted(map(sorted, want_links))}")
    assert not problems, f"{copy} differs from {source}:\n  " + "\n  ".join(problems[:40])


def run(*args: str | Path, cwd: Path | None = None, env: dict | None = None) -> str:
    result = subprocess.run([str(a) for a in args], cwd=cwd, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, f"{args} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}"
    return result.stdout


@pytest.fixture(scope="module")
def source_tree(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("workload-source") / "src"
    make_tree(root)
    return root


def test_helper_sees_differences(source_tree, tmp_path):
    """The comparison itself must catch a wrong mode, mtime, xattr or hard link."""
    copy = tmp_path / "copy"
    run("cp", "-a", source_tree, copy)
    assert_same_tree(copy, source_tree)
    for breakage in (
        lambda: os.chmod(copy / "ro.txt", 0o644),
        lambda: os.utime(copy / "deep" / "a" / "b", ns=(0, 0)),
        lambda: os.removexattr(copy / "small.txt", "user.comment"),
        lambda: os.utime(copy / "link-rel", ns=(0, 1), follow_symlinks=False),
        lambda: (os.unlink(copy / "pair-b"), shutil.copy2(copy / "pair-a", copy / "pair-b")),
    ):
        run("rm", "-rf", copy)
        run("cp", "-a", source_tree, copy)
        breakage()
        with pytest.raises(AssertionError):
            assert_same_tree(copy, source_tree)


# -- workloads --------------------------------------------------------------

def test_cp_a_in_and_out(mnt, source_tree, tmp_path):
    run("cp", "-a", source_tree, mnt.path / "copy")
    assert_same_tree(mnt.backing / "copy", source_tree)
    assert_same_tree(mnt.path / "copy", source_tree)
    # and back out of the mount: the read side (readdir, readlink, getxattr)
    run("cp", "-a", mnt.path / "copy", tmp_path / "out")
    assert_same_tree(tmp_path / "out", source_tree)


def test_tar_x(mnt, source_tree, tmp_path):
    archive = tmp_path / "tree.tar"
    run("tar", "-C", source_tree, "--xattrs", "--xattrs-include=*", "--numeric-owner", "-cf", archive, ".")
    (mnt.path / "x").mkdir()
    run("tar", "-C", mnt.path / "x", "--xattrs", "--xattrs-include=*", "--numeric-owner", "-xpf", archive)
    assert_same_tree(mnt.backing / "x", source_tree)
    assert_same_tree(mnt.path / "x", source_tree)
    # tar c from the mount lists the same members as from the source
    listing = run("tar", "-C", mnt.path / "x", "--numeric-owner", "-cvf", "/dev/null", ".").split()
    assert sorted(listing) == sorted(run("tar", "-C", source_tree, "-cvf", "/dev/null", ".").split())


def test_rsync_ahx(mnt, source_tree, tmp_path):
    run("rsync", "-aHX", "--modify-window=-1", f"{source_tree}/", f"{mnt.path}/r/")
    assert_same_tree(mnt.backing / "r", source_tree)
    assert_same_tree(mnt.path / "r", source_tree)
    # the mount reports exactly what rsync set: a second run has nothing to do
    again = run("rsync", "-aHXi", "--modify-window=-1", f"{source_tree}/", f"{mnt.path}/r/")
    assert again.strip() == "", again
    # an update: rsync rewrites changed files through a temp file and a rename
    src = tmp_path / "changed-src"
    run("cp", "-a", source_tree, src)
    (src / "small.txt").write_bytes(b"changed contents\n")
    os.chmod(src / "ro.txt", 0o440)
    os.setxattr(src / "big.bin", "user.binary", b"new value")
    os.unlink(src / "deep" / "a" / "hl3")
    (src / "added").write_bytes(b"new file")
    run("rsync", "-aHX", "--modify-window=-1", "--delete", f"{src}/", f"{mnt.path}/r/")
    assert_same_tree(mnt.backing / "r", src)
    assert_same_tree(mnt.path / "r", src)


GIT_ENV = {
    "GIT_AUTHOR_DATE": "2020-01-02T03:04:05+00:00",
    "GIT_COMMITTER_DATE": "2020-01-02T03:04:05+00:00",
    "GIT_CONFIG_NOSYSTEM": "1",
    "HOME": "/nonexistent",
    "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
    "LC_ALL": "C",
}


def _git_workload(repo: Path) -> str:
    """init, add, commit, change, commit, gc; returns HEAD."""
    git = ["git", "-c", "user.name=Zcfs Test", "-c", "user.email=zcfs@example.invalid",
           "-c", "init.defaultBranch=main", "-c", "core.fsync=all"]
    run(*git, "init", "-q", repo, env=GIT_ENV)
    for i in range(30):
        sub = repo / f"dir{i % 4}"
        sub.mkdir(exist_ok=True)
        (sub / f"file{i}.txt").write_text(f"line {i}\n" * (i + 1))
    (repo / "run.sh").write_text("#!/bin/sh\necho run\n")
    os.chmod(repo / "run.sh", 0o755)
    os.symlink("dir0/file0.txt", repo / "link")
    run(*git, "add", "-A", cwd=repo, env=GIT_ENV)
    run(*git, "commit", "-q", "-m", "first", cwd=repo, env=GIT_ENV)
    (repo / "dir1" / "file1.txt").write_text("changed\n")
    os.rename(repo / "dir2" / "file2.txt", repo / "dir3" / "moved.txt")
    os.unlink(repo / "dir0" / "file4.txt")
    run(*git, "add", "-A", cwd=repo, env=GIT_ENV)
    run(*git, "commit", "-q", "-m", "second", cwd=repo, env=GIT_ENV)
    run(*git, "gc", "-q", cwd=repo, env=GIT_ENV)
    run("git", "fsck", "--full", "--strict", cwd=repo, env=GIT_ENV)
    assert run("git", "status", "--porcelain", cwd=repo, env=GIT_ENV) == ""
    return run("git", "rev-parse", "HEAD", cwd=repo, env=GIT_ENV).strip()


def test_git_init_add_commit(mnt, tmp_path):
    head = _git_workload(mnt.path / "repo")
    reference = _git_workload(tmp_path / "local-repo")
    assert head == reference  # same commits, byte for byte
    # the index holds stat data (inode numbers, ctimes), git's own timestamps differ
    volatile = (".git/index", ".git/ORIG_HEAD")
    assert_same_tree(mnt.backing / "repo", tmp_path / "local-repo", mtimes=False, ignore=volatile)
    assert run("git", "fsck", "--full", cwd=mnt.backing / "repo", env=GIT_ENV) == ""
    assert run("git", "log", "--format=%s", cwd=mnt.backing / "repo", env=GIT_ENV).split() == ["second", "first"]


def test_sqlite(mnt):
    """sqlite: fcntl locks, pread/pwrite at odd offsets, fsync, a journal made and unlinked."""
    import sqlite3

    db = sqlite3.connect(mnt.path / "db.sqlite")
    try:
        db.execute("create table t (id integer primary key, payload blob)")
        for batch in range(5):
            with db:
                db.executemany("insert into t (payload) values (?)",
                               [(os.urandom(100 + i),) for i in range(200)])
        with db:
            db.execute("delete from t where id % 3 = 0")
        db.execute("vacuum")
        expected = db.execute("select count(*), sum(length(payload)) from t").fetchone()
    finally:
        db.close()
    direct = sqlite3.connect(mnt.backing / "db.sqlite")
    try:
        assert direct.execute("pragma integrity_check").fetchone() == ("ok",)
        assert direct.execute("select count(*), sum(length(payload)) from t").fetchone() == expected
    finally:
        direct.close()
    assert expected[0] == 1000 - 333
    assert sorted(os.listdir(mnt.backing)) == ["db.sqlite"]  # the journal is gone
