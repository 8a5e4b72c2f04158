#!/usr/bin/env python3
"""Daemon memory per inode the kernel remembers, through a real mount.

Builds DIRS x FILES empty files on a fresh tmpfs, mounts it with zcfs, walks
the mount with `find` (READDIRPLUS makes the kernel remember every entry),
and reports the daemon's RSS (/proc/PID/status) and the inodes it holds
(the stats gauge) after each walk. Repeated walks show whether memory grows.
Needs root (tmpfs mount). Issue 9's target: RSS <= 150 MiB with 1M inodes.

    .venv/bin/python scripts/bench_inodes.py                 # 100 x 1,000
    .venv/bin/python scripts/bench_inodes.py --million       # 1,000 x 1,000
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from zcfs.testing import start_mount, stop_mount


def status_kib(pid: int, field: str) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def build_tree(root: Path, dirs: int, files: int) -> None:
    for d in range(dirs):
        path = root / f"d{d:04d}"
        path.mkdir()
        dfd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
        try:
            for f in range(files):
                os.close(os.open(f"f{f:04d}", os.O_CREAT | os.O_WRONLY, 0o644, dir_fd=dfd))
        finally:
            os.close(dfd)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dirs", type=int, default=100)
    parser.add_argument("--files", type=int, default=1000, help="files per directory")
    parser.add_argument("--million", action="store_true", help="1,000 dirs x 1,000 files")
    parser.add_argument("--walks", type=int, default=3)
    parser.add_argument("--mode", default="native", help="zcfs mode: native, native-splice, pyfuse3, ...")
    args = parser.parse_args()
    if args.million:
        args.dirs, args.files = 1000, 1000
    if os.geteuid() != 0:
        sys.exit("bench_inodes: needs root (it mounts a tmpfs)")
    with tempfile.TemporaryDirectory(prefix="zcfs-bench-inodes-") as tmp:
        tmp_path = Path(tmp)
        backing, mountpoint = tmp_path / "backing", tmp_path / "mnt"
        backing.mkdir()
        mountpoint.mkdir()
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1g,nr_inodes=0", "zcfs-bench", str(backing)],
                       check=True)
        try:
            started = time.monotonic()
            build_tree(backing, args.dirs, args.files)
            total = args.dirs * (args.files + 1)
            print(f"tree: {args.dirs} dirs x {args.files} files = {total:,} entries "
                  f"({time.monotonic() - started:.0f} s to build)")
            run(backing, mountpoint, args)
        finally:
            subprocess.run(["umount", "-l", str(backing)], check=True)


def run(backing: Path, mountpoint: Path, args: argparse.Namespace) -> None:
    mount = start_mount(backing, mountpoint, args.mode)
    try:
        pid = mount.process.pid
        base = status_kib(pid, "VmRSS")
        print(f"mode {args.mode}, daemon pid {pid}: RSS after mounting {base / 1024:.1f} MiB")
        print(f"{'walk':>4} {'seconds':>8} {'inodes':>10} {'RSS MiB':>8} {'most inodes':>12} "
              f"{'RSS then':>9} {'B/inode then':>13}")
        for walk in range(1, args.walks + 1):
            started = time.monotonic()
            # -size makes find stat every entry: one LOOKUP each, so the kernel remembers them all
            find = subprocess.Popen(["find", str(mountpoint), "-size", "+1G"], stdout=subprocess.DEVNULL)
            most, rss_then = 0, 0
            while find.poll() is None:
                # The kernel may drop inodes during the walk (memory pressure, others' drop_caches):
                # sample, and keep the RSS at the moment it remembered the most.
                inodes = mount.stats()["gauges"]["inodes"]
                if inodes > most:
                    most, rss_then = inodes, status_kib(pid, "VmRSS")
                time.sleep(0.5)
            seconds = time.monotonic() - started
            inodes = mount.stats()["gauges"]["inodes"]
            rss = status_kib(pid, "VmRSS")
            if inodes >= most:
                most, rss_then = inodes, rss
            per_inode = (rss_then - base) * 1024 / max(most - 1, 1)
            print(f"{walk:>4} {seconds:>8.1f} {inodes:>10,} {rss / 1024:>8.1f} {most:>12,} "
                  f"{rss_then / 1024:>9.1f} {per_inode:>13.0f}", flush=True)
        print(f"peak RSS (VmHWM) {status_kib(pid, 'VmHWM') / 1024:.1f} MiB")
    finally:
        stop_mount(mount)


if __name__ == "__main__":
    main()
