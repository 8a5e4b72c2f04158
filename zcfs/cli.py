"""The `zcfs` command: mount a mirror (`zcfs BACKING MNT`), or run another command (`zcfs stats MNT`, `zcfs bench`)."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import importlib
import logging
import os
import resource
import subprocess
import sys
from typing import Callable, Iterator

from . import __version__, syscalls
from .mount import (ENGINES, TIERS, MountConfig, check_paths, filesystem_type, parse_options,
                    without_mount_fuse_additions)
from .usage import ArgumentParser, UsageError, import_optional

log = logging.getLogger("zcfs")


# `zcfs NAME ...` runs the module's main(argv) instead of mounting.
SUBCOMMANDS = {"stats": "zcfs.statscli", "bench": "zcfs.bench.command"}

# The end of `zcfs --help`: argparse only knows the mount command, so the others are named here.
OTHER_COMMANDS = """\
other commands:
  zcfs stats MOUNTPOINT [--json] [--watch SECONDS]   a mount's statistics (zcfs stats -h)
  zcfs bench [DIR] [--quick] [--suite NAME]          measure zcfs on this machine (zcfs bench -h)
  fusermount3 -u MOUNTPOINT                          unmount; the daemon exits"""


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(prog="zcfs", description="Mount a zero-copy mirror of BACKING at MOUNTPOINT.",
                            epilog=OTHER_COMMANDS, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-V", "--version", action="version", version=f"zcfs {__version__}")
    parser.add_argument("backing", help="the directory to mirror")
    parser.add_argument("mountpoint", help="where to mount the mirror")
    parser.add_argument("-o", dest="options", action="append", default=[], metavar="OPT[,OPT...]",
                        help="mount options: allow_other, ro, fsname=, entry_timeout=S, attr_timeout=S, ...")
    parser.add_argument("-f", "--foreground", action="store_true", help="stay in the foreground")
    parser.add_argument("--engine", choices=ENGINES, default="native",
                        help="native (default, zero-copy) or pyfuse3 (reference)")
    parser.add_argument("--zero-copy", choices=TIERS, default="auto",
                        help="best read tier to use: auto (default), passthrough, splice or off (copy)")
    parser.add_argument("--debug", action="store_true", help="log every request")
    parser.add_argument("--log", metavar="FILE", help="log file of the background daemon")
    parser.add_argument("--metrics", metavar="HOST:PORT",
                        help="serve Prometheus metrics at http://HOST:PORT/metrics (e.g. 127.0.0.1:9100)")
    parser.add_argument("--ready-fd", type=int, help=argparse.SUPPRESS)
    return parser


def parse_args(args: list[str]) -> tuple[MountConfig, argparse.Namespace]:
    """Turn the command line into a MountConfig; UsageError on mistakes."""
    ns = build_parser().parse_args(args)
    config = MountConfig(ns.backing, ns.mountpoint, engine=ns.engine, zero_copy=ns.zero_copy)
    parse_options(ns.options, config)
    if ns.metrics is not None:
        import_optional("prometheus_client", "--metrics", "metrics")  # before zcfs.metrics imports it
        from .metrics import parse_address
        config.metrics = parse_address(ns.metrics)
    return config, ns


def main(argv: list[str] | None = None) -> int:
    # Here, once: the daemon started below gets the cleaned command line (its own has -f).
    argv = without_mount_fuse_additions(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in SUBCOMMANDS:
        return importlib.import_module(SUBCOMMANDS[argv[0]]).main(argv[1:])
    try:
        config, ns = parse_args(argv)
    except UsageError as exc:
        print(f"zcfs: {exc}", file=sys.stderr)
        return 2
    if config.remount:
        return _remount(config)
    if not ns.foreground:
        # Check here too, so notes (a stale mount cleared) reach the user:
        # the daemon's own stderr goes to its log or nowhere.
        try:
            for note in check_paths(config):
                print(f"zcfs: {note}", file=sys.stderr)
        except UsageError as exc:
            print(f"zcfs: {exc}", file=sys.stderr)
            return 1
        return _spawn_daemon(argv, ns)
    _setup_logging(ns)
    report = _ready_reporter(ns.ready_fd)
    notes = _NoteForwarder(ns, report)
    logging.getLogger().addHandler(notes)
    try:
        for note in check_paths(config):
            print(f"zcfs: {note}", file=sys.stderr)
        serve(config, on_ready=lambda: (notes.stop(), report("ready")))
    except UsageError as exc:
        report(f"error {exc}")
        if ns.ready_fd is None:
            print(f"zcfs: {exc}", file=sys.stderr)
        return 1
    return 0


def serve(config: MountConfig, on_ready: Callable[[], None]) -> None:
    """Mount `config` and serve it until unmounted. Blocks."""
    from .fs import ZcfsOperations
    from .stats import Stats

    os.umask(0)  # the kernel already applied the caller's umask
    _raise_fd_limit()
    stats = Stats(config.engine, options=config.describe())
    if config.metrics is not None:
        from .metrics import serve_when_ready
        on_ready = serve_when_ready(stats, config.metrics, on_ready)  # a busy port fails before mounting
    with _backing_root(config) as root:
        ops = ZcfsOperations(root, config.fs, stats=stats, backing_type=filesystem_type(config.backing))
    try:
        if config.engine == "pyfuse3":
            from .engine import reference
            reference.run(ops, config, on_ready)
        else:
            from .engine import native
            native.run(ops, config, on_ready)
    finally:
        ops.close()


@contextlib.contextmanager
def _backing_root(config: MountConfig) -> Iterator[str]:
    """The path the filesystem opens as its root: the backing dir, or its atime view (-o noatime, ...)."""
    from .engine import devfuse
    try:
        view = devfuse.atime_view(config.backing, config.flag_options)
    except OSError as exc:
        # Second best for noatime: O_NOATIME on the backing files this daemon's user owns.
        noatime = bool(devfuse.mount_flags(config.flag_options, flags=0) & devfuse.MS_NOATIME)
        config.fs = dataclasses.replace(config.fs, noatime=noatime)
        log.warning("the atime options reach the mount, but the backing files %s (a private view of the "
                    "backing dir with those options needs CAP_SYS_ADMIN: %s)",
                    "only through O_NOATIME on the files this user owns" if noatime else "not", exc.strerror)
        view = -1
    if view < 0:
        yield config.backing
        return
    try:
        yield syscalls.proc_path(view)
    finally:
        os.close(view)


def _remount(config: MountConfig) -> int:
    """`-o remount,...` (what mount(8) hands over for `mount -o remount,ro MNT`): change the mount's flags."""
    from .engine import devfuse
    from .mount import mounted_at
    mountpoint = os.path.realpath(config.mountpoint)
    try:
        if not (mounted_at(mountpoint) or "").startswith("fuse"):
            raise UsageError(f"cannot remount {mountpoint}: it is not a zcfs mount")
        devfuse.remount(mountpoint, config.flag_options)
    except UsageError as exc:
        print(f"zcfs: {exc}", file=sys.stderr)
        return 1
    return 0


def _raise_fd_limit() -> None:
    """Allow as many fds as the hard limit: every inode the kernel knows holds one."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def _setup_logging(ns: argparse.Namespace) -> None:
    logging.basicConfig(
        level=logging.DEBUG if ns.debug else logging.INFO,
        filename=ns.log,
        format="%(asctime)s zcfs[%(process)d] %(levelname)s %(name)s: %(message)s",
    )


def _ready_reporter(fd: int | None) -> Callable[[str], None]:
    """A function that tells the waiting parent "note ..." lines, then one final line."""
    def report(line: str) -> None:
        nonlocal fd
        if fd is not None:
            os.write(fd, line.encode(errors="replace") + b"\n")
            if not line.startswith("note "):
                os.close(fd)
                fd = None
    return report


class _NoteForwarder(logging.Handler):
    """Until the mount is ready, warnings reach the user too, one line each.

    A daemon started by the launcher sends them up the ready pipe ("note
    ..." lines, which the launcher prints); a foreground one logging to a
    file prints them on stderr. (Logging to stderr shows them anyway.)
    """

    def __init__(self, ns: argparse.Namespace, report: Callable[[str], None]) -> None:
        super().__init__(logging.WARNING)
        self.report = report
        self.mode = "pipe" if ns.ready_fd is not None else "stderr" if ns.log else None

    def emit(self, record: logging.LogRecord) -> None:
        message = " ".join(record.getMessage().split())  # one line, whatever it holds
        if self.mode == "pipe":
            try:
                self.report(f"note {message}")
            except OSError:  # the launcher is gone; the log still has it
                self.mode = None
        elif self.mode == "stderr":
            print(f"zcfs: {message}", file=sys.stderr)

    def stop(self) -> None:
        self.mode = None


def _spawn_daemon(argv: list[str], ns: argparse.Namespace) -> int:
    """Run the daemon in the background; return once its mount is ready."""
    read_end, write_end = os.pipe()
    log_target = open(ns.log, "ab") if ns.log else subprocess.DEVNULL
    try:
        child = subprocess.Popen(
            [sys.executable, "-m", "zcfs", *argv, "-f", "--ready-fd", str(write_end)],
            pass_fds=(write_end,), stdin=subprocess.DEVNULL, stdout=log_target, stderr=log_target,
            start_new_session=True,
        )
    finally:
        os.close(write_end)
        if ns.log:
            log_target.close()
    with os.fdopen(read_end, "rb") as status:
        while (line := status.readline().decode(errors="replace").strip()).startswith("note "):
            print(f"zcfs: {line[5:]}", file=sys.stderr)
    if line == "ready":
        return 0
    if line.startswith("error "):
        print(f"zcfs: {line[6:]}", file=sys.stderr)
    else:
        code = child.wait()
        print(f"zcfs: the daemon exited (status {code}) before the mount was ready"
              + ("" if ns.log else "; run with -f or --log FILE to see why"), file=sys.stderr)
    child.wait()
    return 1
