"""`zcfs stats MOUNTPOINT [--json] [--watch SECONDS]`: show what a mount's daemon has served.

The statistics come through the mount itself: the daemon answers a
getxattr of `user.zcfs.stats` on the mount root with the JSON snapshot
(then spaces up to 64 KiB), so anyone who may read the mount root may read
them, in a container too, without a socket or a PID to find.
"""

from __future__ import annotations

import argparse
import ctypes
import errno
import json
import os
import signal
import sys
import time
from typing import Any

from .fs import STATS_XATTR, STATS_XATTR_SIZE
from .stats import latency_percentile
from .usage import ArgumentParser, UsageError

MB = 1_000_000  # rates in MB/s, as dd reports them


class NotAvailable(Exception):
    """The statistics cannot be read at that path; the message says why."""


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(prog="zcfs stats", description="Show the statistics of a zcfs mount.")
    parser.add_argument("mountpoint", help="the root of a zcfs mount")
    parser.add_argument("--json", action="store_true",
                        help="print the JSON snapshot (one line per sample with --watch)")
    parser.add_argument("--watch", type=float, metavar="SECONDS",
                        help="redraw every SECONDS with rates since the previous sample, until Ctrl-C")
    return parser


def main(argv: list[str]) -> int:
    """Run `zcfs stats`; 0 on success, 1 if the path has no statistics, 2 on usage errors."""
    try:
        ns = build_parser().parse_args(argv)
        if ns.watch is not None and not ns.watch > 0:
            raise UsageError(f"--watch needs a number of seconds above 0, not {ns.watch}")
    except UsageError as exc:
        print(f"zcfs: {exc}", file=sys.stderr)
        return 2
    try:
        snap = read_stats(ns.mountpoint)
        if ns.watch is None:
            print(json.dumps(snap, indent=2) if ns.json else render(snap), flush=True)
            return 0
        return watch(ns.mountpoint, ns.watch, snap, as_json=ns.json)
    except NotAvailable as exc:
        print(f"zcfs: {exc}", file=sys.stderr)
        return 1
    except BrokenPipeError:
        return _reader_went_away()


def _reader_went_away() -> int:
    """End quietly when stdout's reader closed the pipe (`zcfs stats MNT | head`), as Unix tools do.

    stdout now points at /dev/null, so Python's own flush at exit finds no
    pipe to fail on. The status is a SIGPIPE death's, 128 + 13.
    """
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)
    return 128 + signal.SIGPIPE


def read_stats(mountpoint: str) -> dict[str, Any]:
    """The statistics snapshot of the mount at `mountpoint`; NotAvailable if there is none."""
    try:
        raw = _getxattr(mountpoint, STATS_XATTR)
    except OSError as exc:
        if exc.errno in (errno.ENOENT, errno.ENOTDIR):
            raise NotAvailable(f"{mountpoint} is not a zcfs mount (it does not exist)") from None
        if exc.errno in (errno.ENODATA, errno.ENOTSUP, errno.EPERM):
            # EPERM: user.* xattrs exist only on files and directories.
            raise NotAvailable(f"{mountpoint} is not a zcfs mount") from None
        if exc.errno == errno.ENOTCONN:
            raise NotAvailable(f"{mountpoint} is a FUSE mount whose daemon is gone "
                               f"(run: fusermount3 -u {mountpoint})") from None
        raise NotAvailable(f"cannot read the statistics of {mountpoint}: {exc.strerror}") from None
    try:
        snap = json.loads(raw.rstrip())
    except ValueError:
        snap = None
    if not isinstance(snap, dict) or not {"engine", "ops", "read", "write"} <= snap.keys():
        # Some other file that happens to carry a user.zcfs.stats xattr.
        raise NotAvailable(f"{mountpoint} is not a zcfs mount")
    return snap


def _getxattr(path: str, name: bytes) -> bytes:
    """An xattr's value, read in one call into a buffer of the largest xattr size.

    (os.getxattr tries a 128-byte buffer first, which the stats value never
    fits: every read would count an ERANGE error in the very stats it reads.)
    """
    getxattr = ctypes.CDLL(None, use_errno=True).getxattr
    getxattr.restype = ctypes.c_ssize_t
    getxattr.argtypes = (ctypes.c_char_p, ctypes.c_char_p, ctypes.c_void_p, ctypes.c_size_t)
    buf = ctypes.create_string_buffer(STATS_XATTR_SIZE)
    size = getxattr(os.fsencode(path), name, buf, STATS_XATTR_SIZE)
    if size < 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code), path)
    return buf.raw[:size]


def watch(mountpoint: str, interval: float, snap: dict[str, Any], as_json: bool = False) -> int:
    """Redraw every `interval` seconds with rates since the previous sample, until Ctrl-C."""
    # A terminal gets its screen redrawn; a pipe or file one block per sample.
    redraw = sys.stdout.isatty()
    previous = None
    try:
        while True:
            if as_json:
                print(json.dumps(snap, separators=(",", ":")), flush=True)
            else:
                rates = render_rates(previous, snap) if previous else f"rates: after the next sample, in {interval:g} s"
                print(("\x1b[H\x1b[2J" if redraw else "") + render(snap) + "\n\n" + rates + ("" if redraw else "\n"),
                      flush=True)
            time.sleep(interval)
            previous, snap = snap, read_stats(mountpoint)
    except KeyboardInterrupt:
        return 0


# -- rendering ----------------------------------------------------------------

def render(snap: dict[str, Any]) -> str:
    """The readable table of one snapshot."""
    options = snap.get("options", {})
    lines = [
        f"zcfs mount {options.get('mountpoint', '?')} of {options.get('backing', '?')}",
        f"engine {snap['engine']}, FUSE protocol {snap['protocol'] or 'unknown'}, "
        f"zero-copy {snap['zero_copy'] or 'unknown'}, up {format_duration(snap['uptime'])}"
        + (f", transport {snap['transport']}" if snap.get("transport") else "")
        + (f" ({snap['transport_fallback']})" if snap.get("transport_fallback") else ""),
        "capabilities: " + (" ".join(snap["capabilities"]) or "unknown"),
        "",
    ]
    data_rows = [["data path", "read requests", "read bytes", "write requests", "write bytes"]]
    data_rows.append(["passthrough", f"{snap['read']['passthrough']['opens']} opens", "-",
                      f"{snap['write']['passthrough']['opens']} opens", "-"])
    for path in ("splice", "copy"):
        row = [path]
        for direction in ("read", "write"):
            row += [str(snap[direction][path]["requests"]), format_bytes(snap[direction][path]["bytes"])]
        data_rows.append(row)
    lines += table(data_rows)
    lines.append("(bytes of passthrough opens go from the backing file to the reader without the daemon)")
    lines.append("")
    fallbacks = ", ".join(f"{reason} {count}" for reason, count in sorted(snap["fallbacks"].items()))
    lines.append("fallbacks: " + (fallbacks or "none"))
    watch = snap.get("watch")
    if watch is not None:
        if watch["mechanism"]:
            state = (f"{watch['mechanism']}, {watch['marks']} mark(s), {watch['events']} events "
                     f"({watch['own_events']} the daemon's own), {watch['overflows']} overflows")
        else:
            state = f"none ({watch['fallback']}): cache=auto's timeouts instead"
        sent = ", ".join(f"{kind} {n}" for kind, n in sorted(snap.get("invalidations", {}).items()))
        lines.append(f"backing-dir watch: {state}; invalidations sent: {sent or 'none'}")
    lines.append("")

    op_rows = [["opcode", "count", "errors", "p50", "p99"]]
    total = errors = 0
    for name, op in sorted(snap["ops"].items()):
        op_errors = sum(op["errors"].values())
        total += op["count"]
        errors += op_errors
        op_rows.append([name, str(op["count"]),
                        ", ".join(f"{e} {n}" for e, n in sorted(op["errors"].items())) or "-",
                        format_latency(latency_percentile(op["latency_us_log2"], 0.5)),
                        format_latency(latency_percentile(op["latency_us_log2"], 0.99))])
    op_rows.append(["all", str(total), str(errors), "", ""])
    lines += table(op_rows)
    lines.append("")
    lines.append("gauges: " + "; ".join(_gauge(name, value) for name, value in snap["gauges"].items()))
    return "\n".join(lines)


def render_rates(before: dict[str, Any], after: dict[str, Any]) -> str:
    """Rates between two snapshots of one mount (per second of the daemon's clock)."""
    seconds = max(after["uptime"] - before["uptime"], 1e-9)

    def rate(*keys: str) -> float:
        old, new = before, after
        for key in keys:
            old, new = old[key], new[key]
        return (new - old) / seconds

    lines = [f"rates over the last {seconds:.2f} s:"]
    for direction in ("read", "write"):
        lines.append(
            f"  {direction:<5} passthrough {rate(direction, 'passthrough', 'opens'):.1f} opens/s | "
            + " | ".join(f"{path} {rate(direction, path, 'bytes') / MB:.1f} MB/s, "
                         f"{rate(direction, path, 'requests'):.0f} req/s" for path in ("splice", "copy")))
    requests = sum(op["count"] for op in after["ops"].values()) - sum(op["count"] for op in before["ops"].values())
    errors = (sum(sum(op["errors"].values()) for op in after["ops"].values())
              - sum(sum(op["errors"].values()) for op in before["ops"].values()))
    lines.append(f"  all requests {requests / seconds:.0f}/s, errors {errors / seconds:.0f}/s")
    return "\n".join(lines)


def table(rows: list[list[str]]) -> list[str]:
    """Rows as aligned text lines: the first column left-aligned, the others right."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return ["  ".join(cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in enumerate(zip(row, widths)))
            .rstrip() for row in rows]


def format_bytes(n: int) -> str:
    """A byte count in binary units: 0 B, 512 B, 1.5 KiB, 12.0 MiB, ..."""
    if n < 1024:
        return f"{n} B"
    for unit in ("KiB", "MiB", "GiB", "TiB"):
        n /= 1024
        if n < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}"
    raise AssertionError("unreachable")


def format_latency(micros: float | None) -> str:
    """A latency estimate from microseconds: 12 us, 3.4 ms, 1.20 s ('-' if none)."""
    if micros is None:
        return "-"
    if micros < 1000:
        return f"{micros:.0f} us"
    if micros < 1_000_000:
        return f"{micros / 1000:.1f} ms"
    return f"{micros / 1_000_000:.2f} s"


def format_duration(seconds: float) -> str:
    """An uptime: 42s, 3m 05s, 2h 03m 05s, 4d 02h 03m."""
    s = int(seconds)
    days, s = divmod(s, 86400)
    hours, s = divmod(s, 3600)
    minutes, s = divmod(s, 60)
    if days:
        return f"{days}d {hours:02d}h {minutes:02d}m"
    if hours:
        return f"{hours}h {minutes:02d}m {s:02d}s"
    if minutes:
        return f"{minutes}m {s:02d}s"
    return f"{s}s"


def _gauge(name: str, value: Any) -> str:
    label = name.replace("_", " ")
    if isinstance(value, dict):
        return f"{label} " + ", ".join(f"{key} {number}" for key, number in value.items())
    return f"{label} {value}"
