"""Run workloads over configurations, interleaved round by round, and summarize.

Round r runs every workload on every configuration, the configurations
in an order rotated by r, so slow drifts of a shared machine spread over
all of them; each run's ratio is to direct access in the same round.
Everything `run_bench` creates lives in one temporary directory under
DIR, and every mount in it is unmounted and the directory removed when it
returns, fails or is interrupted (KeyboardInterrupt, also from SIGTERM).
"""

from __future__ import annotations

import dataclasses
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from ..testing import mount_is_listed, unmount
from .configs import READ_AHEAD_KB, Configuration, MountFailed, Target, open_target
from .workloads import DATASETS, Context, Measure, Scale, Workload, WorkloadError


@dataclasses.dataclass
class Cell:
    """Everything measured for one workload on one configuration."""

    runs: dict[int, Measure] = dataclasses.field(default_factory=dict)  # by round
    requests: list[dict[str, int]] = dataclasses.field(default_factory=list)  # zcfs: per run, by opcode
    inodes: list[int] = dataclasses.field(default_factory=list)         # zcfs: inodes held after each run
    grown_mib: list[float] = dataclasses.field(default_factory=list)    # fresh mounts: RSS growth in the run
    paths: dict[str, int] | None = None                                 # zcfs: what served READ/WRITE
    error: str | None = None


class Progress:
    """One live line on a terminal; one line per round otherwise."""

    def __init__(self, total: int, stream=sys.stderr) -> None:
        self.total, self.done, self.start = total, 0, time.monotonic()
        self.stream = stream
        self.live = stream.isatty()

    def say(self, text: str) -> None:
        if self.live:
            self.stream.write(f"\r\x1b[K{text}")
        else:
            self.stream.write(text + "\n")
        self.stream.flush()

    def step(self, round_no: int, rounds: int, workload: str, config: str) -> None:
        if not self.live:
            return
        elapsed = time.monotonic() - self.start
        eta = f", about {elapsed / self.done * (self.total - self.done):.0f} s left" if self.done else ""
        self.say(f"round {round_no + 1}/{rounds}  {workload} on {config}  [{self.done}/{self.total}{eta}]")

    def end(self) -> None:
        if self.live:
            self.stream.write("\r\x1b[K")
            self.stream.flush()


def run_bench(configs: list[Configuration], workloads: list[Workload], scale: Scale, rounds: int,
              parent: Path | None, suite: str, scale_name: str, versus: str | None = None,
              progress: Progress | None = None) -> dict:
    """Measure; return the results document (see the README for its schema)."""
    progress = progress or Progress(rounds * len(workloads) * len(configs))
    previous = signal.signal(signal.SIGTERM, _interrupt)
    work = Path(tempfile.mkdtemp(prefix="zcfs-bench.", dir=parent))
    try:
        return _Bench(configs, workloads, scale, rounds, work, progress, versus).run(suite, scale_name)
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not cut the cleanup short
        try:
            progress.end()
            _remove(work)
        finally:
            signal.signal(signal.SIGINT, signal.default_int_handler)
            signal.signal(signal.SIGTERM, previous)


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


class _Bench:
    def __init__(self, configs, workloads, scale, rounds, work: Path, progress: Progress,
                 versus: str | None) -> None:
        self.configs, self.workloads, self.scale, self.rounds = configs, workloads, scale, rounds
        self.versus = versus  # a second base for ratios: a configuration's name
        self.work, self.progress = work, progress
        self.backing = work / "backing"
        self.backing.mkdir()
        (work / "mnt").mkdir()
        (work / "logs").mkdir()
        self.targets: dict[str, Target] = {}
        self.failed: dict[str, str] = {}
        self.cells = {(w.name, c.name): Cell() for w in workloads for c in configs}

    def run(self, suite: str, scale_name: str) -> dict:
        try:
            # The user's --compare commands first: a wrong one is said before any time is spent.
            for index, config in sorted(enumerate(self.configs), key=lambda item: item[1].kind != "compare"):
                try:
                    self.targets[config.name] = self._open(config, index, "")
                except MountFailed as exc:
                    if config.kind == "compare":
                        raise  # the user's command is wrong: say so before spending time
                    self.failed[config.name] = str(exc)
                    self.progress.say(f"{config.name}: not measured: {exc}")
            self._build_data()
            for round_no in range(self.rounds):
                if not self.progress.live:
                    self.progress.say(f"round {round_no + 1}/{self.rounds}")
                for workload in self.workloads:
                    shift = round_no % len(self.configs)
                    for config in self.configs[shift:] + self.configs[:shift]:
                        self.progress.step(round_no, self.rounds, workload.name, config.name)
                        self._run_cell(workload, config, round_no)
                        self.progress.done += 1
            return self._document(suite, scale_name)
        finally:
            for target in self.targets.values():
                target.close()

    def _open(self, config: Configuration, index: int, suffix: str) -> Target:
        name = f"{index}{suffix}"
        return open_target(config, self.backing, self.work / "mnt" / name, self.work / "logs" / f"{name}.log")

    def _build_data(self) -> None:
        for name in sorted({w.dataset for w in self.workloads if w.dataset}):
            self.progress.say(f"building the {name!r} data set ...")
            DATASETS[name](self.backing, self.work, self.scale)
        if (self.backing / "large.bin").exists():
            subprocess.run(["cat", str(self.backing / "large.bin")], stdout=subprocess.DEVNULL, check=True)

    def _run_cell(self, workload: Workload, config: Configuration, round_no: int) -> None:
        cell = self.cells[(workload.name, config.name)]
        if config.name in self.failed or cell.error:
            return
        index = self.configs.index(config)
        fresh = workload.fresh_mount and config.kind != "direct"
        try:
            target = self._open(config, index, f"-fresh{round_no}") if fresh else self.targets[config.name]
        except MountFailed as exc:
            cell.error = str(exc)
            return
        try:
            ctx = Context(target.root, self.backing, self.work, self.scale, f"{index}-{round_no}",
                          direct=config.kind == "direct", daemon_cpu=target.daemon_cpu)
            rss_at_mount = target.daemon_rss_mib() if fresh else None
            if workload.warmup:
                workload.run(dataclasses.replace(ctx, tag=ctx.tag + "-warmup"))
            reading = _requests_of_reading(target)
            before = target.stats()
            measure = workload.run(ctx)
            measure.rss_mib = target.daemon_rss_mib()
            after = target.stats()
            cell.runs[round_no] = measure
            if before is not None and after is not None:
                _count_requests(cell, before, after, reading)
                cell.inodes.append(after["gauges"]["inodes"])
            if rss_at_mount is not None and measure.rss_mib is not None:
                cell.grown_mib.append(measure.rss_mib - rss_at_mount)
        except WorkloadError as exc:
            cell.error = str(exc)
        except OSError as exc:  # a syscall of the workload itself (a peer that died: ENOTCONN)
            cell.error = f"{workload.name}: {exc.strerror or exc}"
        finally:
            if fresh:
                target.close()

    def _document(self, suite: str, scale_name: str) -> dict:
        direct = next((c.name for c in self.configs if c.kind == "direct"), None)
        results = []
        for workload in self.workloads:
            for config in self.configs:
                cell = self.cells[(workload.name, config.name)]
                base = self.cells[(workload.name, direct)].runs if direct else {}
                versus = self.cells[(workload.name, self.versus)].runs if self.versus else None
                results.append(_summarize(workload, config, cell, base, self.failed.get(config.name), versus))
        return {
            "schema": "zcfs-bench/1",
            "suite": suite,
            "machine": describe_machine(self.work),
            "settings": {"scale": scale_name, "rounds": self.rounds, **dataclasses.asdict(self.scale)},
            "configurations": [
                {"name": c.name, "kind": c.kind, "mode": c.mode or None, "command": c.command or None,
                 "read_ahead_kb": self.targets[c.name].read_ahead_kb if c.name in self.targets else None,
                 "error": self.failed.get(c.name)}
                for c in self.configs],
            "read_ahead_note": _read_ahead_note(self.configs, self.targets),
            "versus": self.versus,
            "between_rounds": BETWEEN_ROUNDS,
            "workloads": [{"name": w.name, "group": w.group, "description": w.description, "unit": w.unit,
                           "by_opcode": w.by_opcode, "expect": w.expect.text if w.expect else None}
                          for w in self.workloads],
            "results": results,
        }


# A configuration whose fastest round is more than this many times its slowest is flagged.
UNSTEADY = 2.0

# What happens between two runs, said with every result: a reader can then
# tell what state a round starts in (see the README on page reporting).
BETWEEN_ROUNDS = (
    "rounds run every workload on every configuration in turn, the order of configurations rotated "
    "each round; between runs nothing is synced, dropped or waited for: each workload prepares only "
    "what it says (the sequential and mmap reads evict the mount's cached pages of the file with "
    "fadvise(DONTNEED) just before reading, which frees them), and cold and fresh-mount workloads "
    "mount anew")


def _requests(snap: dict) -> dict[str, int]:
    return {op: counters["count"] for op, counters in snap["ops"].items()}


def _requests_of_reading(target: Target) -> dict[str, int]:
    """The requests that reading the stats itself sends (two reads back to back), to subtract."""
    first, second = target.stats(), target.stats()
    if first is None or second is None:
        return {}
    now, then = _requests(second), _requests(first)
    return {op: n - then.get(op, 0) for op, n in now.items()}


def _count_requests(cell: Cell, before: dict, after: dict, reading: dict[str, int]) -> None:
    """Add the run's requests by opcode, and what served its READs and WRITEs
    (passthrough: opens; splice, copy: requests)."""
    def served(snap: dict) -> dict[str, int]:
        return {"passthrough": snap["read"]["passthrough"]["opens"],
                **{tier: snap["read"][tier]["requests"] + snap["write"][tier]["requests"]
                   for tier in ("splice", "copy")}}
    delta = {tier: served(after)[tier] - served(before)[tier] for tier in ("passthrough", "splice", "copy")}
    cell.paths = {tier: (cell.paths or {}).get(tier, 0) + n for tier, n in delta.items()}
    now, then = _requests(after), _requests(before)
    sent = {op: n - then.get(op, 0) - reading.get(op, 0) for op, n in now.items()}
    cell.requests.append({op: n for op, n in sorted(sent.items()) if n > 0})


def _ratios(runs: dict[int, Measure], base: dict[int, Measure]) -> list[float]:
    """Each round's time of `base` divided by this configuration's in the same round."""
    return [base[r].seconds / m.seconds for r, m in sorted(runs.items()) if r in base]


def _summarize(workload: Workload, config: Configuration, cell: Cell, base: dict[int, Measure],
               config_error: str | None, versus: dict[int, Measure] | None = None) -> dict:
    row = {"workload": workload.name, "group": workload.group, "configuration": config.name,
           "kind": config.kind, "unit": workload.unit, "rounds": len(cell.runs),
           "seconds": [round(m.seconds, 6) for _, m in sorted(cell.runs.items())],
           "value": None, "spread": None, "ratio": None, "ratio_spread": None,
           "daemon_cpu_s": None, "cpu_s_per_gib": None, "daemon_rss_mib": None, "requests": None,
           "paths": None, "path_shares": None, "error": config_error or cell.error,
           "values": None, "ratios": None, "unsteady": False, "versus": None, "versus_ratios": None,
           "requests_by_opcode": None, "inodes": None, "rss_per_inode_bytes": None, "expectation": None}
    runs = list(cell.runs.values())
    if not runs:
        row["error"] = row["error"] or "no run completed"
        return row
    values = row["values"] = [_value(workload.unit, m) for _, m in sorted(cell.runs.items())]
    row["value"] = statistics.median(values)
    row["spread"] = [min(values), max(values)]
    row["unsteady"] = min(values) > 0 and max(values) / min(values) > UNSTEADY
    ratios = _ratios(cell.runs, base)
    if ratios:
        row["ratio"] = statistics.median(ratios)
        row["ratio_spread"] = [min(ratios), max(ratios)]
        row["ratios"] = ratios
    if versus is not None and (versus_ratios := _ratios(cell.runs, versus)):
        row["versus"] = statistics.median(versus_ratios)
        row["versus_ratios"] = versus_ratios
    cpus = [m.cpu_seconds for m in runs if m.cpu_seconds is not None]
    if cpus and config.kind != "direct":
        row["daemon_cpu_s"] = statistics.median(cpus)
        moved = sum(m.bytes for m in runs if m.cpu_seconds is not None)
        if moved and workload.unit != "s":  # a data workload
            row["cpu_s_per_gib"] = sum(cpus) / (moved / (1 << 30))
    rss = [m.rss_mib for m in runs if m.rss_mib is not None]
    if rss and config.kind != "direct":
        row["daemon_rss_mib"] = max(rss)
    if cell.requests:
        row["requests"] = statistics.median(sum(run.values()) for run in cell.requests)
        opcodes = sorted({op for run in cell.requests for op in run})
        medians = {op: statistics.median(run.get(op, 0) for run in cell.requests) for op in opcodes}
        row["requests_by_opcode"] = {op: n for op, n in medians.items() if n}
        if workload.expect is not None:
            unmet = workload.expect.unmet(row["requests_by_opcode"])
            row["expectation"] = {"text": workload.expect.text, "met": unmet is None, "unmet": unmet}
    if cell.inodes:
        row["inodes"] = statistics.median(cell.inodes)
        if cell.grown_mib and row["inodes"]:
            row["rss_per_inode_bytes"] = statistics.median(cell.grown_mib) * (1 << 20) / row["inodes"]
    if cell.paths is not None:
        row["paths"] = cell.paths
        total = sum(cell.paths.values())
        row["path_shares"] = {tier: n / total for tier, n in cell.paths.items()} if total else None
    return row


def _value(unit: str, m: Measure) -> float:
    if unit == "MB/s":
        return m.bytes / 1e6 / m.seconds
    if unit == "IOPS":
        return m.ops / m.seconds
    return m.seconds


def _read_ahead_note(configs: list[Configuration], targets: dict[str, Target]) -> str | None:
    """Say so when the mounts do not all read ahead the same amount."""
    values = {c.name: targets[c.name].read_ahead_kb for c in configs if c.kind != "direct" and c.name in targets}
    if len(set(values.values())) > 1:
        return "mounts read ahead differently: " + ", ".join(f"{n} {v} KiB" for n, v in values.items())
    return None


def describe_machine(path: Path) -> dict:
    """Kernel, CPUs and the backing filesystem: what the figures depend on."""
    fs = subprocess.run(["findmnt", "-n", "-o", "FSTYPE", "--target", str(path)],
                        capture_output=True, text=True).stdout.strip()
    model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), platform.machine())
    return {"kernel": platform.release(), "cpus": os.cpu_count(), "cpu_model": model,
            "backing_fs": fs, "read_ahead_kb": READ_AHEAD_KB,
            "cold_cache": ("not possible: the backing filesystem is in memory" if fs in ("tmpfs", "ramfs")
                           else "backing file evicted with posix_fadvise(DONTNEED)")}


def _remove(work: Path) -> None:
    """Unmount whatever is still mounted under `work`, then delete it (never through a live mount)."""
    points = sorted((work / "mnt").iterdir()) if (work / "mnt").is_dir() else []
    for point in points:
        unmount(point)
    still = [str(p) for p in points if mount_is_listed(p)]
    if still:
        print(f"zcfs bench: still mounted, so {work} is kept: {', '.join(still)}", file=sys.stderr)
        return
    shutil.rmtree(work, ignore_errors=True)
