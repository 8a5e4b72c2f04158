#!/usr/bin/env python3
"""Microseconds the native engine spends per request in Python, without a mount.

A `Session` serves a SEQPACKET socket instead of /dev/fuse; each request
is built once and handed to `Session._handle` (parse, handle, pack, stats,
write of the reply) many times in-process, the reply drained after each.
The parse and the handle+pack steps are also timed alone. Medians of the
rounds, in CPU µs per request (thread time: less swayed by a busy machine than
wall time): compare two checkouts on one machine, in one run.

    .venv/bin/python scripts/bench_hotpath.py [--rounds 7] [--count 20000]
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import struct
import tempfile
import time
from pathlib import Path

import trio

from zcfs.fs import ZcfsOperations
from zcfs.mount import MountConfig
from zcfs.engine.native import Session
from zcfs.proto import Opcode, abi, parse_request
from zcfs.proto.negotiate import DEFAULT_WANT
from zcfs.stats import Stats

ROOT = 1


def _message(opcode: int, body: bytes = b"", nodeid: int = ROOT, unique: int = 2) -> bytes:
    return struct.pack("<IIQQIIIHH", abi.IN_HEADER.size + len(body), opcode, unique, nodeid,
                       0, 0, os.getpid(), 0, 0) + body


def _cases(session: Session, fake_kernel: socket.socket) -> dict[str, list[bytes]]:
    """Requests per case; a case is a sequence replayed in order (OPEN then RELEASE)."""
    session._handle(bytearray(_message(Opcode.LOOKUP, b"file\0")), abi.IN_HEADER.size + 5)
    raw = fake_kernel.recv(1 << 16)
    nodeid = abi.ENTRY_OUT.unpack_from(raw, abi.OUT_HEADER.size)[0]
    getxattr = abi.GETXATTR_IN.pack(0) + b"security.capability\0"
    return {
        "LOOKUP": [_message(Opcode.LOOKUP, b"file\0")],
        "GETATTR": [_message(Opcode.GETATTR, abi.GETATTR_IN.pack(0, 0), nodeid)],
        "GETXATTR (ENODATA)": [_message(Opcode.GETXATTR, getxattr, nodeid)],
        "OPEN+FLUSH+RELEASE": [
            _message(Opcode.OPEN, abi.OPEN_IN.pack(os.O_RDONLY, 0), nodeid),
            _message(Opcode.FLUSH, abi.FLUSH_IN.pack(1, 0), nodeid),
            _message(Opcode.RELEASE, abi.RELEASE_IN.pack(1, 0, 0, 0), nodeid),
        ],
        "LOOKUP (ENOENT)": [_message(Opcode.LOOKUP, b"absent\0")],
    }


def _round(session: Session, fake_kernel: socket.socket, messages: list[bytes], count: int) -> dict[str, float]:
    bufs = [(bytearray(m), len(m)) for m in messages]
    n = count * len(bufs)
    handle, recv = session._handle, fake_kernel.recv
    # OPEN hands out fh 1, 2, ...: patch the FLUSH/RELEASE fh each time.
    fh_cases = len(bufs) == 3
    t0 = time.thread_time()
    for _ in range(count):
        for i, (buf, length) in enumerate(bufs):
            handle(buf, length)
            raw = recv(1 << 16)
            if fh_cases and i == 0:
                fh = struct.unpack_from("<Q", raw, abi.OUT_HEADER.size)[0]
                struct.pack_into("<Q", bufs[1][0], abi.IN_HEADER.size, fh)
                struct.pack_into("<Q", bufs[2][0], abi.IN_HEADER.size, fh)
    total = (time.thread_time() - t0) / n
    t0 = time.thread_time()
    for _ in range(count):
        for buf, length in bufs:
            parse_request(memoryview(buf)[:length])
    parse = (time.thread_time() - t0) / n
    return {"total": total * 1e6, "parse": parse * 1e6}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--count", type=int, default=20000)
    parser.add_argument("--case", help="only this request (e.g. GETATTR): run under `valgrind --tool=callgrind`, "
                                       "the difference of two counts' instructions is a noise-free cost")
    ns = parser.parse_args()
    with tempfile.TemporaryDirectory(dir="/var/tmp") as tmp:
        backing = Path(tmp)
        (backing / "file").write_bytes(b"0123456789")
        fake_kernel, dev = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        ops = ZcfsOperations(str(backing))
        config = MountConfig(str(backing), "/nonexistent", zero_copy="off")
        session = Session(ops, config, dev.fileno(), Stats("native"))
        session._task_status = trio.TASK_STATUS_IGNORED
        init = struct.pack("<IIIII44x", 7, 45, 128 * 1024, DEFAULT_WANT & 0xFFFFFFFF, DEFAULT_WANT >> 32)
        message = _message(Opcode.INIT, init, unique=1)
        session._handle(bytearray(message), len(message))
        fake_kernel.recv(1 << 16)
        try:
            cases = _cases(session, fake_kernel)
            print(f"{'request':22} {'total µs':>9} {'parse µs':>9}   (median of {ns.rounds} rounds "
                  f"of {ns.count}; total includes the reply's send and recv)")
            for name, messages in cases.items():
                if ns.case and name != ns.case:
                    continue
                rounds = [_round(session, fake_kernel, messages, ns.count) for _ in range(ns.rounds)]
                total = statistics.median(r["total"] for r in rounds)
                parse = statistics.median(r["parse"] for r in rounds)
                print(f"{name:22} {total:9.2f} {parse:9.2f}")
        finally:
            ops.close()
            fake_kernel.close()
            dev.close()


if __name__ == "__main__":
    main()
