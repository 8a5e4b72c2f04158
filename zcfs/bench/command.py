"""`zcfs bench [DIR]`: the command line.

    zcfs bench [DIR] [--suite default|meta|watch|write|requests|stats] [--quick] [--workloads A,B]
               [--configs A,B] [--versus CONFIG] [--compare 'NAME=COMMAND {backing} {mountpoint}']
               [--json] [--output DIR]

Exit status: 0 measured (a configuration that could not mount is reported
as failed in the results), 1 the benchmark could not run (a --compare
command that does not mount, a missing tool), 2 a usage error, 130
interrupted (everything it made is removed first).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import sys
from pathlib import Path

from ..usage import ArgumentParser, import_optional
from ..mount import UsageError
from . import report
from .configs import DIRECT, MountFailed, parse_compare, zcfs
from .runner import run_bench
from .workloads import SCALES, WORKLOADS

UNCACHED = "native-splice+entry_timeout=0+attr_timeout=0"  # every stat a LOOKUP: the stats layer's worst case
CONFIGURATIONS = {c.name: c for c in [
    DIRECT,
    zcfs("pyfuse3", "pyfuse3"),
    zcfs("native-off", "native-off"),
    zcfs("native-splice", "native-splice"),
    zcfs("native-splice+direct_io", "native-splice+direct_io"),
    zcfs("native-splice+writeback_cache", "native-splice+writeback_cache"),
    zcfs("native-passthrough", "native-passthrough"),
    zcfs("native", "native-auto"),
    zcfs("native+cache=auto", "native-auto+cache=auto"),
    zcfs("native+cache=always", "native-auto+cache=always"),
    zcfs("uncached", UNCACHED),
    zcfs("uncached-again", UNCACHED),  # the same again: the noise floor of the comparison
    zcfs("uncached-nostats", UNCACHED, env={"ZCFS_NO_STATS": "1"}),  # every record_* a no-op
    # The two transports side by side (uring needs fuse's enable_uring on).
    *(zcfs(f"{name}+{transport}", f"{mode}+transport={transport}")
      for name, mode in (("native", "native-auto"), ("native-splice", "native-splice"), ("native-off", "native-off"))
      for transport in ("uring", "devfuse")),
]}


@dataclasses.dataclass(frozen=True)
class Suite:
    """The workloads a suite runs and the configurations it compares (direct access always included)."""

    workloads: list[str]
    configs: list[str]
    help: str
    versus: str | None = None  # a second base for ratios, besides direct access


SUITES = {
    "default": Suite(
        ["seqread-warm", "seqread-cold", "seqread-reread", "mmap-read", "randread-4k", "randread-4k-4jobs", "seqwrite",
         "syncwrite-4k", "cp-large", "create-stat-unlink", "cat-small", "tar-c", "git-status-cold",
         "git-status-warm"],
        ["direct", "pyfuse3", "native-off", "native-splice", "native-splice+direct_io", "native-passthrough"],
        "data and metadata workloads over every read tier"),
    "meta": Suite(
        ["cat-small", "git-status-cold", "git-status-warm", "git-grep-cold", "git-grep-warm", "untar", "rm-rf",
         "tar-c", "find-cold", "ls-lR-cold", "du-cold", "round-trip", "sqlite-journal", "sqlite-wal", "visible-p50",
         "visible-p99"],
        ["direct", "pyfuse3", "native", "native+cache=auto", "native+cache=always"],
        "small files, git, untar, find, sqlite over both engines and the cache policies"),
    "watch": Suite(
        ["git-status-warm", "git-grep-warm", "test-rerun", "visible-p50", "visible-p99", "rewalk-warm"],
        ["direct", "native", "native+cache=always"],
        "cache=watch (the default) against direct access and cache=always: warm git, a test suite's "
        "second run, how soon a backing change shows, a warm re-walk's requests and memory (issue 20)"),
    "write": Suite(
        ["seqwrite", "seqwrite-128k", "seqwrite-16k", "syncwrite-4k"],
        ["direct", "native-off", "native-splice", "native-splice+writeback_cache", "pyfuse3", "native-passthrough"],
        "the write paths, also against the copy tier (vs native-off)", versus="native-off"),
    "requests": Suite(
        ["ls-l-cold", "ls-l-warm", "appends", "round-trip"],
        ["direct", "native", "native-splice", "pyfuse3"],
        "the FUSE requests per user-level operation, by opcode"),
    "stats": Suite(
        ["seqread-warm", "stat-files"],
        ["direct", "uncached", "uncached-again", "uncached-nostats"],
        "what the stats layer costs: the splice tier with entry/attr_timeout=0, stats on (twice: "
        "the noise floor) and off (vs uncached-nostats)", versus="uncached-nostats"),
}
MILLION = ["million-find-cold", "million-du"]
TOOLS = {"fio": "fio", "git": "git", "tar": "tar", "dd": "coreutils", "xargs": "findutils"}


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(prog="zcfs bench",
                     description="Measure zcfs against direct access (and other FUSE filesystems) on this machine.")
    parser.add_argument("dir", nargs="?", help="where to put the test data (its filesystem is the one measured); "
                                               "default: a temporary directory")
    parser.add_argument("--suite", choices=SUITES, default="default",
                        help="; ".join(f"{name}: {suite.help}" for name, suite in SUITES.items()))
    parser.add_argument("--quick", action="store_true", help="small data sets, 3 rounds: under two minutes")
    parser.add_argument("--scale", choices=SCALES, help="data set sizes (default full, quick with --quick)")
    parser.add_argument("--rounds", type=int, help="rounds per workload (default 5, 3 with --quick)")
    parser.add_argument("--workloads", metavar="A,B", help=f"run these instead of the suite's: {', '.join(WORKLOADS)}")
    parser.add_argument("--configs", metavar="A,B",
                        help=f"compare these zcfs configurations instead of the suite's: "
                             f"{', '.join(n for n in CONFIGURATIONS if n != 'direct')}")
    parser.add_argument("--compare", action="append", default=[], metavar="'NAME=COMMAND {backing} {mountpoint}'",
                        help="also measure another FUSE filesystem, mounted by this command (repeatable)")
    parser.add_argument("--versus", metavar="CONFIG",
                        help="also give each row's speed relative to this configuration (default: the suite's)")
    parser.add_argument("--million", action="store_true",
                        help="meta suite: also walk 1,000 directories x 1,000 files (slow)")
    parser.add_argument("--json", action="store_true", help="print the results as JSON instead of the table")
    parser.add_argument("--output", metavar="DIR", default=".",
                        help="write zcfs-bench-SUITE.json and .png here (default: the current directory)")
    parser.add_argument("--no-chart", action="store_true", help="do not draw the PNG chart")
    return parser


def _names(text: str, known, what: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in known]
    if unknown or not names:
        raise UsageError(f"unknown {what} {', '.join(map(repr, unknown)) or repr(text)} "
                         f"(known: {', '.join(known)})")
    return names


def parse_args(argv: list[str]) -> argparse.Namespace:
    """The command line, checked; UsageError says what is wrong."""
    ns = build_parser().parse_args(argv)
    suite = SUITES[ns.suite]
    ns.workload_list = [WORKLOADS[n] for n in (_names(ns.workloads, WORKLOADS, "workload") if ns.workloads
                                               else suite.workloads + (MILLION if ns.million else []))]
    configs = _names(ns.configs, CONFIGURATIONS, "configuration") if ns.configs else suite.configs
    ns.config_list = [DIRECT] + [CONFIGURATIONS[n] for n in configs if n != "direct"]
    for spec in ns.compare:
        try:
            peer = parse_compare(spec)
        except ValueError as exc:
            raise UsageError(str(exc)) from None
        if any(c.name == peer.name for c in ns.config_list):
            raise UsageError(f"--compare {peer.name}: that name is taken")
        ns.config_list.append(peer)
    measured = {c.name for c in ns.config_list}
    if ns.versus is None:
        ns.versus = suite.versus if suite.versus in measured else None  # --configs may leave it out
    elif ns.versus not in measured:
        raise UsageError(f"--versus {ns.versus}: not among the configurations measured")
    ns.scale_name = ns.scale or ("quick" if ns.quick else "full")
    ns.rounds = ns.rounds if ns.rounds is not None else 3 if ns.quick else 5
    if ns.rounds < 1:
        raise UsageError(f"--rounds needs at least 1, not {ns.rounds}")
    if ns.dir is not None and not Path(ns.dir).is_dir():
        raise UsageError(f"DIR is not a directory: {ns.dir}")
    if not Path(ns.output).is_dir():
        raise UsageError(f"--output is not a directory: {ns.output}")
    return ns


def _check_tools() -> None:
    missing = [f"{tool} (package {package})" for tool, package in TOOLS.items() if shutil.which(tool) is None]
    if missing:
        raise UsageError(f"missing {', '.join(missing)}: run scripts/setup.sh")


def main(argv: list[str]) -> int:
    try:
        ns = parse_args(argv)
        _check_tools()
        if not ns.no_chart:  # say so now, not after the whole run
            import_optional("matplotlib", "the chart", "bench", otherwise="--no-chart")
    except UsageError as exc:
        print(f"zcfs bench: {exc}", file=sys.stderr)
        return 2
    try:
        doc = run_bench(ns.config_list, ns.workload_list, SCALES[ns.scale_name], ns.rounds,
                        Path(ns.dir) if ns.dir else None, suite=ns.suite, scale_name=ns.scale_name,
                        versus=ns.versus)
    except MountFailed as exc:
        print(f"zcfs bench: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("zcfs bench: interrupted; its mounts and test data are removed", file=sys.stderr)
        return 130
    stem = Path(ns.output) / f"zcfs-bench-{ns.suite}"
    stem.with_suffix(".json").write_text(json.dumps(doc, indent=1) + "\n")
    print(json.dumps(doc, indent=1) if ns.json else report.table(doc))
    if not ns.no_chart:
        report.chart(doc, stem.with_suffix(".png"))
    return 0

