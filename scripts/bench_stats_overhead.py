#!/usr/bin/env python3
"""What the stats layer costs: the native engine (splice tier) with stats on and off, side by side.

The same backing dir is mounted with stats recording on and off
(ZCFS_NO_STATS=1 in the daemon's environment makes every record_* a no-op).
Two workloads, each measured in rounds that alternate which mount goes
first, reporting the median wall time, the daemon's mean CPU time per
round, and the differences in %:

  * data: a warm 512 MiB file read with dd bs=1M, the mount's page cache
    evicted first (posix_fadvise DONTNEED) so every byte is a READ request;
  * metadata: stat() of 20,000 files, on mounts with entry_timeout=0 and
    attr_timeout=0 so every stat is answered by the daemon (LOOKUPs).

--control mounts both with stats on: the differences it shows are the
noise floor of this machine.

    .venv/bin/python scripts/bench_stats_overhead.py [--size-mib 512] [--files 20000] [--rounds 7] [--control]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Iterator

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from zcfs.statscli import read_stats  # noqa: E402
from zcfs.testing import Mount, cpu_seconds, evict_page_cache, start_mount, stop_mount  # noqa: E402

MODE = "native-splice"
UNCACHED = "entry_timeout=0,attr_timeout=0"


@contextlib.contextmanager
def stats_off(off: bool) -> Iterator[None]:
    """Start daemons inside with ZCFS_NO_STATS=1 (if `off`); they inherit our environment."""
    if off:
        os.environ["ZCFS_NO_STATS"] = "1"
    try:
        yield
    finally:
        os.environ.pop("ZCFS_NO_STATS", None)


def dd_read(mount: Mount, part: int) -> None:
    target = mount.path / "file.bin"
    evict_page_cache(target)
    subprocess.run(["dd", f"if={target}", "of=/dev/null", "bs=1M"], check=True, capture_output=True)


def stat_files(mount: Mount, part: int, per_part: int) -> None:
    directory = mount.path / "many"
    for i in range(part * per_part, (part + 1) * per_part):
        os.stat(directory / f"f{i}")


def measure(mounts: dict[str, Mount], work: Callable[[Mount, int], None], rounds: int,
            parts: int = 1) -> dict[str, tuple[list[float], list[float]]]:
    """(wall seconds, daemon CPU seconds) per round for each mount.

    A round does parts 0..parts-1 of `work` on every mount, part by part,
    alternating who goes first: both see the same moments of a busy machine.
    """
    results: dict[str, tuple[list[float], list[float]]] = {name: ([], []) for name in mounts}
    names = list(mounts)
    for mount in mounts.values():  # one warm-up round each
        for part in range(parts):
            work(mount, part)
    turn = 0
    for _ in range(rounds):
        totals = {name: [0.0, 0.0] for name in names}
        for part in range(parts):
            for name in names if turn % 2 == 0 else names[::-1]:
                mount = mounts[name]
                cpu = cpu_seconds(mount.process.pid)
                start = time.perf_counter()
                work(mount, part)
                totals[name][0] += time.perf_counter() - start
                totals[name][1] += cpu_seconds(mount.process.pid) - cpu
            turn += 1
        for name, (wall, cpu) in totals.items():
            results[name][0].append(wall)
            results[name][1].append(cpu)
    return results


def report(title: str, results: dict[str, tuple[list[float], list[float]]], unit: Callable[[float], str],
           labels: dict[str, str]) -> None:
    """Median wall time and mean daemon CPU per round (CPU is counted in 10 ms ticks: the mean is finer)."""
    print(f"\n{title}")
    print(f"  {'stats':<6}{'median wall':>14}{'':>14}{'daemon CPU/round':>19}   all rounds (wall s)")
    figures = {}
    for name, (wall, cpu) in results.items():
        figures[name] = (statistics.median(wall), statistics.mean(cpu))
        print(f"  {labels[name]:<6}{figures[name][0]:>12.3f} s{unit(figures[name][0]):>14}"
              f"{figures[name][1]:>17.3f} s   {' '.join(f'{w:.3f}' for w in wall)}")
    (on_wall, on_cpu), (off_wall, off_cpu) = figures["on"], figures["off"]
    print(f"  {labels['on']} vs {labels['off']}: wall {100 * (on_wall - off_wall) / off_wall:+.2f} %, "
          f"daemon CPU {100 * (on_cpu - off_cpu) / off_cpu:+.2f} %")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=512)
    parser.add_argument("--files", type=int, default=20_000, help="a multiple of 1000")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--dir", default=None, help="where to put the backing dir (default: a temp dir)")
    parser.add_argument("--control", action="store_true", help="stats on in both mounts (the noise floor)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(dir=args.dir, prefix="zcfs-bench-stats.") as tmp:
        root = Path(tmp)
        backing = root / "backing"
        (backing / "many").mkdir(parents=True)
        print(f"writing a {args.size_mib} MiB file and {args.files} empty files ...", flush=True)
        with open(backing / "file.bin", "wb") as f:
            block = os.urandom(1 << 20)
            for _ in range(args.size_mib):
                f.write(block)
        for i in range(args.files):
            (backing / "many" / f"f{i}").touch()
        subprocess.run(["cat", str(backing / "file.bin")], stdout=subprocess.DEVNULL, check=True)  # warm
        data: dict[str, Mount] = {}
        meta: dict[str, Mount] = {}
        try:
            for name in ("on", "off"):
                with stats_off(name == "off" and not args.control):
                    for kind, mounts, options in (("data", data, []), ("meta", meta, [UNCACHED])):
                        mountpoint = root / f"mnt-{kind}-{name}"
                        mountpoint.mkdir()
                        mounts[name] = start_mount(backing, mountpoint, MODE, options)
            labels = {"on": "on", "off": "on(2)" if args.control else "off"}
            mib = args.size_mib * 1.048576
            data_results = measure(data, dd_read, args.rounds)
            report(f"sequential read, {args.size_mib} MiB warm file, dd bs=1M, {MODE}, median of {args.rounds}",
                   data_results, lambda s: f"{mib / s:.0f} MB/s", labels)
            parts = args.files // 1000
            meta_results = measure(meta, lambda m, part: stat_files(m, part, 1000), args.rounds, parts)
            report(f"stat() of {args.files} files (in {parts} alternating parts), entry/attr_timeout=0, {MODE}, "
                   f"median of {args.rounds}", meta_results, lambda s: f"{args.files / s:.0f} stat/s", labels)
            # The "off" daemons really recorded nothing, the "on" ones everything.
            for kind, mounts in (("data", data), ("meta", meta)):
                on, off = read_stats(str(mounts["on"].path)), read_stats(str(mounts["off"].path))
                print(f"\n{kind} mounts: stats {labels['on']} counted {sum(op['count'] for op in on['ops'].values())} "
                      f"requests ({on['read']['splice']['bytes'] >> 20} MiB spliced); stats {labels['off']} counted "
                      f"{sum(op['count'] for op in off['ops'].values())} requests "
                      f"({off['read']['splice']['bytes'] >> 20} MiB)")
        finally:
            for mount in [*data.values(), *meta.values()]:
                stop_mount(mount)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
