#!/usr/bin/env python3
"""FUSE requests (from the stats layer) and wall time of two metadata-heavy workloads.

- `ls -l` of a directory of 5,000 files, cold (fresh mount) and warm;
- 10,000 appends of 10 bytes to one file (write(2) used to ask for
  security.capability before every write).

    .venv/bin/python scripts/bench_roundtrips.py [--modes native-auto,pyfuse3] [--rounds 5]

Counts are exact (reading the stats costs requests too; that is
subtracted); times are medians of the rounds.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from zcfs.testing import start_mount, stop_mount

FILES = 5000
APPENDS = 10_000


def _ops(mount) -> dict[str, int]:
    return {name: op["count"] for name, op in mount.stats()["ops"].items()}


def _measure(mount, work) -> tuple[dict[str, int], float]:
    """Requests `work()` caused, and its wall time."""
    first, second = _ops(mount), _ops(mount)
    reading = {k: second.get(k, 0) - first.get(k, 0) for k in second}
    before = _ops(mount)
    started = time.perf_counter()
    work()
    elapsed = time.perf_counter() - started
    after = _ops(mount)
    counts = {k: after.get(k, 0) - before.get(k, 0) - reading.get(k, 0) for k in after}
    return {k: v for k, v in counts.items() if v}, elapsed


def run(mode: str, rounds: int, workdir: Path) -> dict:
    top = Path(tempfile.mkdtemp(prefix="roundtrips-", dir=workdir))
    backing, mnt = top / "backing", top / "mnt"
    (backing / "many").mkdir(parents=True)
    mnt.mkdir()
    for i in range(FILES):
        (backing / "many" / f"f{i:05}").write_bytes(b"x")

    def ls() -> None:
        subprocess.run(["ls", "-l", str(mnt / "many")], stdout=subprocess.DEVNULL, check=True)

    def appends(name: str) -> None:
        fd = os.open(mnt / name, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            for _ in range(APPENDS):
                os.write(fd, b"0123456789")
        finally:
            os.close(fd)

    result: dict = {"mode": mode}
    try:
        cold_times, warm_times, append_times = [], [], []
        for r in range(rounds):
            mount = start_mount(backing, mnt, mode)
            try:
                counts, t = _measure(mount, ls)
                cold_times.append(t)
                result["ls -l cold"] = counts
                counts, t = _measure(mount, ls)
                warm_times.append(t)
                result["ls -l warm"] = counts
                counts, t = _measure(mount, lambda: appends(f"log{r}"))
                append_times.append(t)
                result[f"{APPENDS} appends"] = counts
            finally:
                stop_mount(mount)
        result["seconds (median)"] = {
            "ls -l cold": round(statistics.median(cold_times), 3),
            "ls -l warm": round(statistics.median(warm_times), 3),
            f"{APPENDS} appends": round(statistics.median(append_times), 3),
        }
    finally:
        shutil.rmtree(top)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--modes", default="native-auto,native-splice,pyfuse3")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--dir", type=Path, default=Path(tempfile.gettempdir()))
    args = parser.parse_args()
    for mode in args.modes.split(","):
        print(json.dumps(run(mode, args.rounds, args.dir)))


if __name__ == "__main__":
    main()
