#!/usr/bin/env python3
"""Sequential read (and write) throughput of zcfs vs direct access, side by side.

For each engine/tier a fresh mount of the same backing dir is made; each
round reads the same warm file directly and through every mount (dd bs=1M,
the mount's page cache evicted first so every byte crosses FUSE), in
rotating order. Reported: median MB/s, the ratio to direct access in the
same round, the daemon's CPU seconds per GiB (from /proc/PID/stat), and
which path served the bytes (the daemon's stats). The first round also
checks sha256 through each mount against the backing file.

    .venv/bin/python scripts/bench_read.py [--size-mib 1024] [--rounds 5] [--write]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from zcfs.testing import Mount, evict_page_cache, start_mount, stop_mount  # noqa: E402

MODES = ["pyfuse3", "native-off", "native-splice", "native-splice+direct_io", "native-auto"]
LABELS = {"pyfuse3": "pyfuse3 engine (copy)", "native-off": "native copy",
          "native-splice": "native splice", "native-splice+direct_io": "splice, -o direct_io",
          "native-auto": "native passthrough"}
CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (all its threads)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def set_readahead(path: Path, kib: int = 1024) -> None:
    """Raise the mount's readahead so READs can be 1 MiB (see FUSE-NOTES)."""
    dev = os.stat(path).st_dev
    try:
        Path(f"/sys/class/bdi/{os.major(dev)}:{os.minor(dev)}/read_ahead_kb").write_text(str(kib))
    except OSError:
        pass


def dd_read(path: Path) -> float:
    """Seconds to read `path` with dd bs=1M."""
    start = time.perf_counter()
    subprocess.run(["dd", f"if={path}", "of=/dev/null", "bs=1M"], check=True, capture_output=True)
    return time.perf_counter() - start


def dd_write(path: Path, size_mib: int) -> float:
    """Seconds to write `size_mib` MiB of zeros to `path` (including fsync)."""
    start = time.perf_counter()
    subprocess.run(["dd", "if=/dev/zero", f"of={path}", "bs=1M", f"count={size_mib}", "conv=fsync"],
                   check=True, capture_output=True)
    return time.perf_counter() - start


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def data_paths(mount: Mount, direction: str) -> str:
    if mount.engine != "native":
        return "copy (pyfuse3)"
    d = mount.stats()[direction]
    return (f"passthrough opens {d['passthrough']['opens']}, splice {d['splice']['requests']} req, "
            f"copy {d['copy']['requests']} req")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--modes", default=",".join(MODES))
    parser.add_argument("--write", action="store_true", help="also measure sequential writes")
    parser.add_argument("--dir", default=None, help="where to put the backing file (default: a temp dir)")
    args = parser.parse_args()
    modes = args.modes.split(",")

    with tempfile.TemporaryDirectory(dir=args.dir, prefix="zcfs-bench.") as tmp:
        root = Path(tmp)
        backing = root / "backing"
        backing.mkdir()
        data = backing / "file.bin"
        print(f"writing a {args.size_mib} MiB test file ...", flush=True)
        with open(data, "wb") as f:
            block = os.urandom(1 << 20)
            for _ in range(args.size_mib):
                f.write(block)
        expected = sha256(data)  # also warms the backing file's page cache
        mounts: dict[str, Mount] = {}
        try:
            for mode in modes:
                mountpoint = root / f"mnt-{mode}"
                mountpoint.mkdir()
                mounts[mode] = start_mount(backing, mountpoint, mode)
                set_readahead(mountpoint, 2040)  # what the native engine sets itself
            for mode, mount in mounts.items():
                got = sha256(mount.path / "file.bin")
                if got != expected:
                    print(f"FAIL: sha256 through {mode} differs from the backing file", file=sys.stderr)
                    return 1
            print(f"sha256 through every mount matches the backing file ({expected[:16]}...)")

            times: dict[str, list[float]] = {m: [] for m in ["direct", *modes]}
            ratios: dict[str, list[float]] = {m: [] for m in modes}
            cpu: dict[str, float] = {m: 0.0 for m in modes}
            for round_no in range(args.rounds):
                order = modes[round_no % len(modes):] + modes[:round_no % len(modes)]
                direct = dd_read(data)
                times["direct"].append(direct)
                for mode in order:
                    mount = mounts[mode]
                    target = mount.path / "file.bin"
                    evict_page_cache(target)
                    before = cpu_seconds(mount.process.pid)
                    seconds = dd_read(target)
                    cpu[mode] += cpu_seconds(mount.process.pid) - before
                    times[mode].append(seconds)
                    ratios[mode].append(direct / seconds)
            gib = args.size_mib / 1024
            mbps = lambda s: args.size_mib * 1.048576 / s  # noqa: E731
            print(f"\nsequential read, {args.size_mib} MiB, dd bs=1M, median of {args.rounds} rounds")
            print(f"{'path':<24}{'MB/s':>8}{'vs direct':>11}{'vs pyfuse3':>12}{'daemon CPU s/GiB':>18}  served by")
            print(f"{'direct access':<24}{mbps(statistics.median(times['direct'])):>8.0f}{1:>11.2f}")
            base = statistics.median(times["pyfuse3"]) if "pyfuse3" in times else None
            for mode in modes:
                med = statistics.median(times[mode])
                vs_py = f"{base / med:>12.2f}" if base else f"{'-':>12}"
                print(f"{LABELS.get(mode, mode):<24}{mbps(med):>8.0f}{statistics.median(ratios[mode]):>11.2f}"
                      f"{vs_py}{cpu[mode] / (gib * args.rounds):>18.2f}  {data_paths(mounts[mode], 'read')}")

            if args.write:
                print(f"\nsequential write, {args.size_mib} MiB, dd bs=1M conv=fsync, median of {args.rounds} rounds")
                wtimes: dict[str, list[float]] = {m: [] for m in ["direct", *modes]}
                wratios: dict[str, list[float]] = {m: [] for m in modes}
                for round_no in range(args.rounds):
                    direct = dd_write(backing / "w-direct.bin", args.size_mib)
                    wtimes["direct"].append(direct)
                    # Rotating order, as for reads: the disk is slower for whoever follows a flush.
                    for mode in modes[round_no % len(modes):] + modes[:round_no % len(modes)]:
                        seconds = dd_write(mounts[mode].path / f"w-{mode}.bin", args.size_mib)
                        wtimes[mode].append(seconds)
                        wratios[mode].append(direct / seconds)
                print(f"{'direct access':<24}{mbps(statistics.median(wtimes['direct'])):>8.0f}{1:>11.2f}")
                for mode in modes:
                    each = " ".join(f"{r:.2f}" for r in wratios[mode])
                    print(f"{LABELS.get(mode, mode):<24}{mbps(statistics.median(wtimes[mode])):>8.0f}"
                          f"{statistics.median(wratios[mode]):>11.2f}  {data_paths(mounts[mode], 'write')}"
                          f"; ratio per round {each}")
        finally:
            for mount in mounts.values():
                stop_mount(mount)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
