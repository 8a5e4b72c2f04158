"""Start and stop real zcfs mounts: shared by the tests and the benchmarks."""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Iterator


@dataclasses.dataclass
class Mount(os.PathLike):
    """A running zcfs daemon: backing dir, mountpoint, and the process we started.

    It stands for its mountpoint wherever a path goes: `open(f"{m}/f")`,
    `os.path.join(m, "f")`, `m / "f"` (a Path), `os.listdir(m)`.
    """

    backing: Path
    path: Path
    mode: str
    process: subprocess.Popen
    log: Path
    notes: list[str] = dataclasses.field(default_factory=list)  # what the daemon told the user

    def __fspath__(self) -> str:
        return os.fspath(self.path)

    def __str__(self) -> str:
        return os.fspath(self.path)

    def __truediv__(self, name: str | os.PathLike) -> Path:
        return self.path / name

    @property
    def engine(self) -> str:
        return self.mode.split("-")[0]

    def stats(self) -> dict:
        """The daemon's statistics snapshot, read through the mount."""
        return json.loads(os.getxattr(self.path, "user.zcfs.stats"))

    def drop_cache(self, path: Path) -> None:
        evict_page_cache(path)


def evict_page_cache(path: Path) -> None:
    """Evict one file's page cache (on a mount: its next reads reach the daemon)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def mode_args(mode: str) -> list[str]:
    """Command-line arguments for a mode: "ENGINE[-TIER][+OPTION...]"."""
    mode, *options = mode.split("+")
    engine, _, tier = mode.partition("-")
    args = ["--engine", engine]
    if tier:
        args += ["--zero-copy", tier]
    for option in options:
        args += ["-o", option]
    return args


def start_mount(backing: Path, mountpoint: Path, mode: str, options: list[str] = (), log: Path | None = None,
                extra_args: list[str] = (), stderr=None, env: dict[str, str] | None = None) -> Mount:
    """Start a foreground daemon and wait until its mount is ready (`extra_args`: more zcfs options;
    `stderr`: where the daemon's own stderr goes, default ours; `env`: added to its environment)."""
    log = log or mountpoint.parent / f"{mountpoint.name}.log"
    read_end, write_end = os.pipe()
    args = [sys.executable, "-m", "zcfs", str(backing), str(mountpoint), "-f",
            "--ready-fd", str(write_end), "--log", str(log), *mode_args(mode)]
    for opt in options:
        args += ["-o", opt]
    args += extra_args
    process = subprocess.Popen(args, pass_fds=(write_end,), stdin=subprocess.DEVNULL, stderr=stderr,
                               env={**os.environ, **env} if env else None)
    os.close(write_end)
    notes = []
    with os.fdopen(read_end, "rb") as status:
        while (line := status.readline().decode().strip()).startswith("note "):
            notes.append(line[5:])
    mount = Mount(backing, mountpoint, mode, process, log, notes)
    if line != "ready":
        stop_mount(mount)
        raise RuntimeError(f"zcfs did not mount ({line or 'no answer'}): {log.read_text() if log.exists() else ''}")
    return mount


def stop_mount(mount: Mount) -> None:
    """Unmount and end the daemon we started (by its PID only)."""
    unmount(mount.path)
    try:
        mount.process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        mount.process.kill()
        mount.process.wait()


def unmount(path: Path) -> None:
    """Unmount whatever is mounted at `path` (fusermount3, else a lazy umount)."""
    if mount_is_listed(path):
        if subprocess.run(["fusermount3", "-u", str(path)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(path)], capture_output=True)


def mount_is_listed(path: Path) -> bool:
    from .mount import mounted_at  # knows mountinfo's escapes (spaces in paths)
    return mounted_at(str(path)) is not None


@contextlib.contextmanager
def mounted(backing: str | os.PathLike, mountpoint: str | os.PathLike | None = None, *, engine: str = "native",
            zero_copy: str = "auto", options: list[str] = ()) -> Iterator[Mount]:
    """Mount a zcfs mirror of `backing` for the body of a `with`; unmounted after it, even on an error.

    Yields the Mount: `.path` is the mountpoint (a fresh temporary one
    unless given), and the Mount itself stands for it as a path
    (`open(f"{m}/f")`, `os.path.join(m, "f")`, `m / "f"`); `.stats()` is a
    live snapshot of the mount's counters.
    RuntimeError (with the daemon's log) if it does not mount.
    """
    scratch = Path(tempfile.mkdtemp(prefix="zcfs-"))
    try:
        if mountpoint is None:
            mountpoint = scratch / "mnt"
            mountpoint.mkdir()
        mode = engine if engine == "pyfuse3" else f"{engine}-{zero_copy}"
        mount = start_mount(Path(backing), Path(mountpoint), mode, options, log=scratch / "zcfs.log")
        try:
            yield mount
        finally:
            stop_mount(mount)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process so far, all its threads (OSError once it is gone)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def sha256(path: Path) -> str:
    """The hex SHA-256 of a file's contents."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()
