#!/usr/bin/env python3
"""Sequential write throughput and daemon CPU of zcfs vs direct access, side by side.

Each round writes SIZE MiB with `dd bs=1M conv=fsync` directly into the
backing dir, then through every mount (fresh mounts of one backing dir, in
rotating order). Reported: median MB/s, median ratio to direct access in
the same round and to the copy tier, the daemon's CPU seconds per GiB
(from /proc/PID/stat: user + system, all threads, the fsync included),
and which path took the bytes (the daemon's stats). The first round also
checks the sha256 of each written file against the data.

--sizes writes with smaller blocks too (each write(2) is one WRITE), for
where splicing a payload starts to pay (splice.SPLICE_WRITE_MIN).

--peer PATH adds libfuse's example/passthrough_hp (built outside this
repository) as `--nopassthrough`: its defaults otherwise (writeback cache,
splice, attributes cached for a day).

    .venv/bin/python scripts/bench_write.py [--size-mib 1024] [--rounds 5] [--peer PATH] [--sizes]
"""

from __future__ import annotations

import argparse
import itertools
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from zcfs.testing import Mount, cpu_seconds, mount_is_listed, sha256, start_mount, stop_mount  # noqa: E402

MODES = ["native-off", "native-splice", "native-splice+writeback_cache", "pyfuse3", "native-auto"]
LABELS = {"native-off": "native, copy tier", "native-splice": "native, splice tier",
          "native-splice+writeback_cache": "splice, -o writeback_cache", "pyfuse3": "pyfuse3 engine (copy)",
          "native-auto": "native, passthrough", "peer": "libfuse passthrough_hp"}
BASE = "native-off"


def start_peer(binary: str, backing: Path, mountpoint: Path) -> Mount:
    """Start passthrough_hp in the foreground and wait until it is mounted."""
    log = mountpoint.parent / "peer.log"
    process = subprocess.Popen([binary, "--foreground", "--nopassthrough", str(backing), str(mountpoint)],
                               stdout=open(log, "wb"), stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 30
    while not mount_is_listed(mountpoint):
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            raise RuntimeError(f"passthrough_hp did not mount: {log.read_text()}")
        time.sleep(0.05)
    return Mount(backing, mountpoint, "peer", process, log)


def dd_write(source: Path, target: Path, block: str = "1M") -> tuple[float, float]:
    """Seconds to copy `source` to `target` with dd (fsync included), and dd's CPU seconds."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    subprocess.run(["dd", f"if={source}", f"of={target}", f"bs={block}", "conv=fsync"],
                   check=True, capture_output=True)
    seconds = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return seconds, after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime


def write_paths(mount: Mount) -> str:
    if mount.engine != "native":
        return "-"
    d = mount.stats()["write"]
    fallbacks = mount.stats()["fallbacks"]
    return (f"splice {d['splice']['requests']} req {d['splice']['bytes'] >> 20} MiB, "
            f"copy {d['copy']['requests']} req {d['copy']['bytes'] >> 20} MiB"
            + (f"; fallbacks {fallbacks}" if fallbacks else ""))


def measure(source: Path, mounts: dict[str, Mount], direct_dir: Path, rounds: int, block: str,
            check: bool) -> tuple[dict[str, list[float]], dict[str, list[float]], dict[str, float]]:
    """Per mode: seconds per round, ratio to direct per round, CPU seconds in all
    (the daemon's; for "direct", dd's own: the copy a daemon cannot avoid either)."""
    modes = list(mounts)
    times: dict[str, list[float]] = {m: [] for m in ["direct", *modes]}
    ratios: dict[str, list[float]] = {m: [] for m in modes}
    cpu = {m: 0.0 for m in ["direct", *modes]}
    expected = sha256(source) if check else ""
    for round_no in range(rounds):
        direct, dd_cpu = dd_write(source, direct_dir / "direct.bin", block)
        times["direct"].append(direct)
        cpu["direct"] += dd_cpu
        # Rotating order: the disk is slower for whoever follows a flush.
        for mode in modes[round_no % len(modes):] + modes[:round_no % len(modes)]:
            mount = mounts[mode]
            target = mount.path / f"w-{mode}.bin"
            before = cpu_seconds(mount.process.pid)
            seconds, _ = dd_write(source, target, block)
            cpu[mode] += cpu_seconds(mount.process.pid) - before
            times[mode].append(seconds)
            ratios[mode].append(direct / seconds)
            if check and round_no == 0 and sha256(mount.backing / target.name) != expected:
                raise SystemExit(f"FAIL: the file written through {mode} differs from its source")
            target.unlink()  # keeps a tmpfs --dir small (through the mount: peers cache names)
        (direct_dir / "direct.bin").unlink()
    return times, ratios, cpu


def report(title: str, size_mib: int, rounds: int, results: tuple, mounts: dict[str, Mount]) -> None:
    times, ratios, cpu = results
    gib = size_mib / 1024
    mbps = lambda s: size_mib * 1.048576 / s  # noqa: E731
    print(f"\n{title}, median of {rounds} rounds")
    print(f"{'path':<30}{'MB/s':>7}{'vs direct':>11}{'vs copy tier':>14}{'daemon CPU s/GiB':>18}  written by")
    print(f"{'direct access':<30}{mbps(statistics.median(times['direct'])):>7.0f}{1:>11.2f}{'':>14}"
          f"{cpu['direct'] / (gib * rounds):>18.2f}  (dd's own CPU)")
    for mode in mounts:
        med = statistics.median(times[mode])
        vs_copy = (f"{statistics.median(b / t for b, t in zip(times[BASE], times[mode])):>14.2f}"
                   if BASE in times else f"{'-':>14}")
        print(f"{LABELS.get(mode, mode):<30}{mbps(med):>7.0f}{statistics.median(ratios[mode]):>11.2f}"
              f"{vs_copy}{cpu[mode] / (gib * rounds):>18.2f}  {write_paths(mounts[mode])}")
        print(f"{'':<30}ratio to direct per round: {' '.join(f'{r:.2f}' for r in ratios[mode])}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--modes", default=",".join(MODES))
    parser.add_argument("--peer", default=None, help="path of a libfuse passthrough_hp binary")
    parser.add_argument("--sizes", action="store_true", help="also write with 16 KiB .. 512 KiB blocks")
    parser.add_argument("--dir", default=None, help="where to put the files (default: a temp dir); "
                        "on a tmpfs (/dev/shm) the disk, shared and noisy, is out of the figures")
    args = parser.parse_args()
    modes = args.modes.split(",")
    load = os.getloadavg()[0]
    print(f"load average {load:.1f} on {os.cpu_count()} CPUs" + (" (a loaded machine: compare ratios, "
          "not MB/s)" if load > 1 else ""))

    with tempfile.TemporaryDirectory(dir=args.dir, prefix="zcfs-bench.") as tmp:
        root = Path(tmp)
        backing = root / "backing"
        backing.mkdir()
        source = root / "source.bin"
        with open(source, "wb") as f:
            f.writelines(itertools.repeat(os.urandom(1 << 20), args.size_mib))
        sha256(source)  # warm: dd then reads it from the page cache
        mounts: dict[str, Mount] = {}
        try:
            for mode in modes:
                mountpoint = root / f"mnt-{mode}"
                mountpoint.mkdir()
                mounts[mode] = start_mount(backing, mountpoint, mode)
            if args.peer:
                (root / "mnt-peer").mkdir()
                mounts["peer"] = start_peer(args.peer, backing, root / "mnt-peer")
            report(f"sequential write, {args.size_mib} MiB, dd bs=1M conv=fsync", args.size_mib, args.rounds,
                   measure(source, mounts, backing, args.rounds, "1M", check=True), mounts)
            if args.sizes:
                small = min(args.size_mib, 256)
                with open(source, "r+b") as f:
                    f.truncate(small << 20)
                picked = {m: mounts[m] for m in ("native-off", "native-splice") if m in mounts}
                for block in ("16K", "32K", "64K", "128K", "256K", "512K"):
                    report(f"sequential write, {small} MiB, dd bs={block} conv=fsync", small, args.rounds,
                           measure(source, picked, backing, args.rounds, block, check=False), picked)
        finally:
            for mount in mounts.values():
                if mount.mode == "peer":
                    subprocess.run(["fusermount3", "-u", str(mount.path)], capture_output=True)
                    mount.process.wait(timeout=30)
                else:
                    stop_mount(mount)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
