"""INIT negotiation as a pure function: kernel offer + our wishes -> the reply we send."""

from __future__ import annotations

import errno as _errno
from dataclasses import dataclass

from . import abi
from .requests import InitIn, ProtocolError

#: Oldest kernel protocol minor we talk to; older kernels get EPROTO.
MIN_MINOR = 31
_PAGE = 4096
# FILESYSTEM_MAX_STACK_DEPTH (include/linux/fs.h): the kernel silently
# disables passthrough for a max_stack_depth outside 1..2.
_MAX_STACK_DEPTH = 2
# The kernel's max_pages without FUSE_MAX_PAGES (FUSE_DEFAULT_MAX_PAGES_PER_REQ).
_DEFAULT_MAX_PAGES = 32

DEFAULT_WANT = (
    abi.FUSE_ASYNC_READ | abi.FUSE_BIG_WRITES | abi.FUSE_PARALLEL_DIROPS
    | abi.FUSE_DO_READDIRPLUS | abi.FUSE_READDIRPLUS_AUTO | abi.FUSE_ATOMIC_O_TRUNC
    | abi.FUSE_EXPORT_SUPPORT | abi.FUSE_MAX_PAGES | abi.FUSE_SPLICE_WRITE
    | abi.FUSE_SPLICE_MOVE | abi.FUSE_SPLICE_READ | abi.FUSE_INIT_EXT
)


@dataclass(frozen=True)
class Wishes:
    """What we would like from INIT; the kernel's offer bounds what we get.

    ``want`` is a 64-bit mask of INIT flags. FUSE_PASSTHROUGH is governed by
    ``passthrough`` alone (any bit in ``want`` is ignored) because it also
    needs ``max_stack_depth``.
    """

    max_write: int = 1 << 20
    max_pages: int = 256
    max_readahead: int = 1 << 20
    max_background: int = 64
    congestion_threshold: int = 48
    time_gran: int = 1
    want: int = DEFAULT_WANT
    passthrough: bool = False
    max_stack_depth: int = 1

    def __post_init__(self) -> None:
        # Catch at configuration time what the kernel would silently ignore.
        if self.passthrough and not 1 <= self.max_stack_depth <= _MAX_STACK_DEPTH:
            raise ValueError(f"max_stack_depth must be 1..{_MAX_STACK_DEPTH} for passthrough")
        if self.passthrough and self.want & abi.FUSE_WRITEBACK_CACHE:
            raise ValueError("the kernel refuses passthrough together with FUSE_WRITEBACK_CACHE")
        if not 1 <= self.time_gran <= 1_000_000_000:
            raise ValueError("time_gran must be 1..1e9 ns")
        if not 1 <= self.max_pages <= 0xFFFF:
            raise ValueError("max_pages must fit fuse_init_out's u16")
        if self.max_write < _PAGE:
            raise ValueError("max_write below 4096 is raised to 4096 by the kernel anyway")


@dataclass(frozen=True)
class Negotiated:
    """The outcome of INIT: what we reply and what the session then uses.

    ``flags`` is the 64-bit mask we reply (granted features);
    ``kernel_flags`` what the kernel offered. When ``expect_reinit`` is set
    the kernel spoke a newer major: we reply only our major/minor and must
    wait for another INIT (fuse.h, "Version negotiation").
    """

    major: int
    minor: int
    flags: int
    max_readahead: int
    max_write: int
    max_pages: int
    max_background: int
    congestion_threshold: int
    time_gran: int
    max_stack_depth: int
    passthrough: bool
    kernel_flags: int
    expect_reinit: bool = False

    def has(self, flag: int) -> bool:
        """Whether every bit of ``flag`` was granted."""
        return self.flags & flag == flag


def negotiate(init_in: InitIn, wishes: Wishes) -> Negotiated:
    """Decide the INIT reply for ``init_in``.

    Raises ProtocolError(errno=EPROTO) for a kernel too old; its ``unique`` is
    None because this function never sees the request header: reply with
    ``pack_error(request.unique, exc.errno)``.
    """
    if init_in.major > abi.FUSE_KERNEL_VERSION:
        return Negotiated(abi.FUSE_KERNEL_VERSION, abi.FUSE_KERNEL_MINOR_VERSION, 0, 0, 0, 0,
                          0, 0, 0, 0, False, init_in.flags, expect_reinit=True)
    if init_in.major < abi.FUSE_KERNEL_VERSION or init_in.minor < MIN_MINOR:
        raise ProtocolError(
            f"kernel FUSE protocol {init_in.major}.{init_in.minor} is older than "
            f"{abi.FUSE_KERNEL_VERSION}.{MIN_MINOR}, the oldest zcfs supports",
            _errno.EPROTO)
    offered = init_in.flags
    flags = wishes.want & offered & ~abi.FUSE_PASSTHROUGH
    passthrough = wishes.passthrough and bool(offered & abi.FUSE_PASSTHROUGH)
    if passthrough:
        flags |= abi.FUSE_PASSTHROUGH
    # The kernel reads our flags2 only when the reply carries FUSE_INIT_EXT.
    if flags >> 32 and offered & abi.FUSE_INIT_EXT:
        flags |= abi.FUSE_INIT_EXT
    max_pages = wishes.max_pages if flags & abi.FUSE_MAX_PAGES else _DEFAULT_MAX_PAGES
    return Negotiated(
        major=abi.FUSE_KERNEL_VERSION,
        minor=min(init_in.minor, abi.FUSE_KERNEL_MINOR_VERSION),
        flags=flags,
        max_readahead=min(init_in.max_readahead, wishes.max_readahead),
        # A write never spans more than max_pages pages.
        max_write=min(wishes.max_write, max_pages * _PAGE),
        max_pages=max_pages,
        max_background=min(wishes.max_background, 0xFFFF),
        congestion_threshold=min(wishes.congestion_threshold, 0xFFFF),
        time_gran=wishes.time_gran,
        max_stack_depth=wishes.max_stack_depth if passthrough else 0,
        passthrough=passthrough,
        kernel_flags=offered,
    )


def request_buffer_size(neg: Negotiated) -> int:
    """Size of the buffer to read requests from /dev/fuse into.

    The kernel fails a read() smaller than max(FUSE_MIN_READ_BUFFER,
    in_header + write_in + max_write) with EINVAL; the extra page is headroom.
    """
    need = max(abi.FUSE_MIN_READ_BUFFER,
               abi.IN_HEADER.size + abi.WRITE_IN.size + neg.max_write)
    return -(-need // _PAGE) * _PAGE + _PAGE


def pack_init_out(unique: int, neg: Negotiated) -> bytes:
    """INIT reply for ``neg``.

    With ``expect_reinit`` only major/minor are sent (FUSE_COMPAT_INIT_OUT_SIZE),
    as fuse.h asks when the kernel's major is newer than ours.
    """
    if neg.expect_reinit:
        body = abi.INIT_OUT.pack(neg.major, neg.minor, *(0,) * 11)[:abi.FUSE_COMPAT_INIT_OUT_SIZE]
    else:
        body = abi.INIT_OUT.pack(
            neg.major, neg.minor, neg.max_readahead, neg.flags & 0xFFFFFFFF,
            neg.max_background, neg.congestion_threshold, neg.max_write, neg.time_gran,
            neg.max_pages, 0, neg.flags >> 32, neg.max_stack_depth, 0)
    return abi.OUT_HEADER.pack(abi.OUT_HEADER.size + len(body), 0, unique) + body
