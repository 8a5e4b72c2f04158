#!/usr/bin/env python3
"""Metadata-heavy throughput: `tar c` of a many-file tree, zcfs engines vs direct access.

Builds a tree of small files (default 20,000 in 200 directories), mounts it
once per engine with the same cache settings, and times `tar c` to
/dev/null directly and through each mount in rotating order. Each round
remounts, so the kernel's dentry/attribute caches start cold every time.

    .venv/bin/python scripts/bench_tar.py [--files 20000] [--rounds 5]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from zcfs.testing import start_mount, stop_mount  # noqa: E402

MODES = ["pyfuse3", "native-auto", "native-splice"]


def build_tree(root: Path, files: int, per_dir: int = 100) -> None:
    payload = os.urandom(4096)
    for i in range(files):
        directory = root / f"d{i // per_dir:04d}"
        if i % per_dir == 0:
            directory.mkdir()
        (directory / f"f{i:06d}.txt").write_bytes(payload[: 100 + (i * 37) % 3900])


def tar_seconds(path: Path) -> float:
    """Seconds for `tar c` of `path`, file contents included.

    GNU tar skips reading files when the archive is /dev/null, so the
    archive goes through a pipe.
    """
    start = time.perf_counter()
    result = subprocess.run("tar cf - . | cat >/dev/null; exit ${PIPESTATUS[0]}", shell=True,
                            executable="/bin/bash", cwd=path, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if result.returncode != 0:
        raise RuntimeError(f"tar failed in {path}: {result.stderr.strip()[-500:]}")
    return seconds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=20000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--modes", default=",".join(MODES))
    args = parser.parse_args()
    modes = args.modes.split(",")
    with tempfile.TemporaryDirectory(prefix="zcfs-tar.") as tmp:
        root = Path(tmp)
        backing = root / "backing"
        backing.mkdir()
        print(f"building {args.files} files ...", flush=True)
        build_tree(backing, args.files)
        tar_seconds(backing)  # warm the backing files' page cache
        times: dict[str, list[float]] = {m: [] for m in ["direct", *modes]}
        for round_no in range(args.rounds):
            times["direct"].append(tar_seconds(backing))
            order = modes[round_no % len(modes):] + modes[:round_no % len(modes)]
            for mode in order:
                mountpoint = root / f"mnt-{mode}"
                mountpoint.mkdir(exist_ok=True)
                mount = start_mount(backing, mountpoint, mode)
                try:
                    times[mode].append(tar_seconds(mount.path))
                finally:
                    stop_mount(mount)
        direct = statistics.median(times["direct"])
        base = statistics.median(times["pyfuse3"]) if "pyfuse3" in times else None
        print(f"\ntar c of {args.files} files, cold mount each round, median of {args.rounds} rounds")
        print(f"{'path':<16}{'seconds':>9}{'files/s':>10}{'vs direct':>11}{'vs pyfuse3':>12}")
        for name in ["direct", *modes]:
            med = statistics.median(times[name])
            vs_py = f"{base / med:>12.2f}" if base else f"{'-':>12}"
            print(f"{name:<16}{med:>9.2f}{args.files / med:>10.0f}{direct / med:>11.2f}{vs_py}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
