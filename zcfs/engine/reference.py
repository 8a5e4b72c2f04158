"""The reference engine: pyfuse3's own loop serves the filesystem (--engine pyfuse3)."""

from __future__ import annotations

import signal
from typing import Callable

import pyfuse3
import trio

from ..fs import ZcfsOperations
from ..mount import MountConfig, UsageError


def run(ops: ZcfsOperations, config: MountConfig, on_ready: Callable[[], None]) -> None:
    """Mount, serve until unmounted or signalled, unmount. Blocks."""
    try:
        pyfuse3.init(ops, config.mountpoint, config.libfuse_options())
    except RuntimeError as exc:
        raise UsageError(f"cannot mount {config.mountpoint}: {exc}") from None
    try:
        on_ready()
        trio.run(_serve)
    finally:
        pyfuse3.close(unmount=True)


async def _serve() -> None:
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_terminate_on_signal, nursery.cancel_scope)
        await pyfuse3.main()
        nursery.cancel_scope.cancel()


async def _terminate_on_signal(scope: trio.CancelScope) -> None:
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM, signal.SIGHUP) as signals:
        async for _ in signals:
            pyfuse3.terminate()
            return
