"""The reference engine: pyfuse3's own loop serves the filesystem (--engine pyfuse3)."""

from __future__ import annotations

import errno
import logging
import os
import signal
import stat
import time
from typing import Any, Awaitable, Callable

import pyfuse3
import trio

from ..fs import ZcfsOperations
from ..mount import MountConfig, UsageError
from ..stats import Stats
from . import devfuse, watch

log = logging.getLogger(__name__)

# The handlers pyfuse3 calls, and the request each answers, named as the
# native engine names them (zcfs.proto.Opcode). pyfuse3 asks the kernel for
# READDIRPLUS only and serves it with `readdir`; FORGET and BATCH_FORGET
# both reach `forget`.
OPCODES = {
    "lookup": "LOOKUP", "forget": "FORGET", "getattr": "GETATTR", "setattr": "SETATTR",
    "readlink": "READLINK", "mknod": "MKNOD", "mkdir": "MKDIR", "unlink": "UNLINK", "rmdir": "RMDIR",
    "symlink": "SYMLINK", "rename": "RENAME", "link": "LINK", "open": "OPEN", "read": "READ",
    "write": "WRITE", "flush": "FLUSH", "release": "RELEASE", "fsync": "FSYNC", "opendir": "OPENDIR",
    "readdir": "READDIRPLUS", "releasedir": "RELEASEDIR", "fsyncdir": "FSYNCDIR", "statfs": "STATFS",
    "setxattr": "SETXATTR", "getxattr": "GETXATTR", "listxattr": "LISTXATTR",
    "removexattr": "REMOVEXATTR", "access": "ACCESS", "create": "CREATE",
}


def run(ops: ZcfsOperations, config: MountConfig, on_ready: Callable[[], None]) -> None:
    """Mount, serve until unmounted or signalled, unmount. Blocks."""
    stats = ops.stats
    if stats is not None:
        # Every byte crosses user space here (pyfuse3 has neither splice nor passthrough).
        stats.info["zero_copy"] = "off"
        stats.gauge("inodes", lambda: len(ops.inodes))
        if stats.enabled:
            instrument(ops, stats)
    # FUSE_POSIX_ACL turns the kernel's permission checks on: only with
    # default_permissions. pyfuse3 cannot ask for FUSE_DONT_MASK or
    # FUSE_HANDLE_KILLPRIV_V2 (its INIT callback sets a fixed set of flags).
    ops.enable_acl = config.default_permissions
    # zcfs mounts (the same way as the native engine, fusermount3 included)
    # and hands libfuse the open device as /dev/fd/N: libfuse then takes no
    # mount options at all, so none of them can be refused there.
    watcher, dev_fd = watch.open_then_mount(ops, lambda: devfuse.mount(config))
    try:
        pyfuse3.init(ops, f"/dev/fd/{dev_fd}", set())
    except RuntimeError as exc:
        if watcher is not None:
            watcher.close()
        os.close(dev_fd)
        devfuse.unmount(config.mountpoint)
        raise UsageError(f"cannot mount {config.mountpoint}: {exc}") from None

    def ready() -> None:
        if watcher is not None:
            # libfuse reads and answers on this very fd; each notification is
            # a write of its own, which the kernel takes apart from replies.
            watcher.start(watch.device_sender(dev_fd))
        on_ready()

    try:
        trio.run(_serve, config.mountpoint, ready)
    finally:
        if watcher is not None:
            watcher.close()  # before libfuse closes the device
        pyfuse3.close(unmount=False)  # libfuse closes the device; the mount is ours to remove
        devfuse.unmount(config.mountpoint)
        if stats is not None:
            log.info("%s", stats.summary())


def instrument(ops: ZcfsOperations, stats: Stats) -> None:
    """Make every handler of `ops` report its requests to `stats`, as the native engine does.

    pyfuse3 looks the handlers up on the instance it is given, so wrappers
    set as instance attributes see every request, and cost one extra call
    each. Data goes the copy path; regular files opened count as copy-tier
    open files until released.
    """
    read, write, open_, create, release = ops.read, ops.write, ops.open, ops.create, ops.release

    def is_regular(fh: int) -> bool:
        opened = ops.find_file(fh)
        return opened is not None and stat.S_ISREG(opened.inode.mode)

    async def read_counted(fh: int, off: int, size: int) -> bytes:
        data = await read(fh, off, size)
        stats.record_data("read", "copy", len(data))
        return data

    async def write_counted(fh: int, off: int, buf: bytes) -> int:
        written = await write(fh, off, buf)
        stats.record_data("write", "copy", written)
        return written

    async def open_counted(*args: Any) -> pyfuse3.FileInfo:
        fi = await open_(*args)
        if is_regular(fi.fh):
            stats.record_open("copy")
        return fi

    async def create_counted(*args: Any) -> tuple[pyfuse3.FileInfo, pyfuse3.EntryAttributes]:
        result = await create(*args)
        if is_regular(result[0].fh):
            stats.record_open("copy")
        return result

    async def release_counted(fh: int) -> None:
        if is_regular(fh):  # asked before the handle is gone
            stats.record_release("copy")
        await release(fh)

    counted = {"read": read_counted, "write": write_counted, "open": open_counted,
               "create": create_counted, "release": release_counted}
    for method, opname in OPCODES.items():
        setattr(ops, method, _timed(counted.get(method) or getattr(ops, method), opname, stats))


def _timed(handler: Callable[..., Awaitable[Any]], opname: str, stats: Stats) -> Callable[..., Awaitable[Any]]:
    """`handler`, recording each call's latency and errno as one `opname` request in flight."""
    record_op = stats.record_op

    async def timed(*args: Any) -> Any:
        started = time.perf_counter()
        error = 0
        stats.in_flight += 1
        try:
            return await handler(*args)
        except pyfuse3.FUSEError as exc:
            error = exc.errno
            raise
        except Exception:
            error = errno.EIO
            raise
        finally:
            stats.in_flight -= 1
            record_op(opname, time.perf_counter() - started, error)

    return timed


async def _serve(mountpoint: str, on_ready: Callable[[], None]) -> None:
    async with trio.open_nursery() as nursery:
        # Ready once signals are handled and trio's own fds exist (tests count the daemon's fds).
        await nursery.start(_terminate_on_signal)
        nursery.start_soon(_terminate_when_unmounted, mountpoint)
        on_ready()
        await pyfuse3.main()
        nursery.cancel_scope.cancel()


async def _terminate_when_unmounted(mountpoint: str) -> None:
    """End the session once our mount is gone from our namespace (see devfuse.wait_unmounted)."""
    if await trio.to_thread.run_sync(devfuse.wait_unmounted, mountpoint, abandon_on_cancel=True):
        log.info("%s was unmounted", mountpoint)
        pyfuse3.terminate()


async def _terminate_on_signal(task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM, signal.SIGHUP) as signals:
        task_status.started()
        async for _ in signals:
            pyfuse3.terminate()
            return
