"""INIT negotiation: kernel offer x wishes -> reply."""

import errno
import struct

import pytest

from zcfs.proto import abi
from zcfs.proto.negotiate import (
    DEFAULT_WANT, Wishes, negotiate, pack_init_out, request_buffer_size,
)
from zcfs.proto.opcodes import Opcode
from zcfs.proto.requests import InitIn, ProtocolError, parse_request

# What a 6.18 kernel (7.45, CONFIG_FUSE_PASSTHROUGH=y) offers, roughly.
KERNEL = (DEFAULT_WANT | abi.FUSE_POSIX_LOCKS | abi.FUSE_FLOCK_LOCKS | abi.FUSE_WRITEBACK_CACHE
          | abi.FUSE_SETXATTR_EXT | abi.FUSE_SECURITY_CTX | abi.FUSE_PASSTHROUGH
          | abi.FUSE_HAS_RESEND | abi.FUSE_REQUEST_TIMEOUT)
NO_PASSTHROUGH = KERNEL & ~abi.FUSE_PASSTHROUGH


def init(minor=45, flags=KERNEL, max_readahead=128 * 1024, major=7):
    return InitIn(major, minor, max_readahead, flags)


def unpack_init_out(reply):
    """fuse_init_out fields by name (fuse.h order)."""
    length, error, unique = struct.unpack_from("<IiQ", reply)
    assert (length, error) == (len(reply), 0)
    names = ("major minor max_readahead flags max_background congestion_threshold max_write "
             "time_gran max_pages map_alignment flags2 max_stack_depth request_timeout").split()
    return dict(zip(names, struct.unpack_from("<IIIIHHIIHHIIH", reply, 16)))


def test_defaults():
    neg = negotiate(init(), Wishes())
    assert neg.flags == DEFAULT_WANT
    assert (neg.major, neg.minor) == (7, 45)
    assert not neg.passthrough and neg.max_stack_depth == 0
    assert not neg.has(abi.FUSE_WRITEBACK_CACHE) and not neg.has(abi.FUSE_POSIX_LOCKS)
    assert not neg.has(abi.FUSE_SETXATTR_EXT) and not neg.has(abi.FUSE_HANDLE_KILLPRIV)
    assert neg.has(abi.FUSE_DO_READDIRPLUS | abi.FUSE_MAX_PAGES)
    assert neg.kernel_flags == KERNEL
    assert (neg.max_pages, neg.max_write, neg.max_readahead) == (256, 1 << 20, 128 * 1024)


@pytest.mark.parametrize("offered, wished, granted", [
    (KERNEL, True, True), (KERNEL, False, False),
    (NO_PASSTHROUGH, True, False), (NO_PASSTHROUGH, False, False),
])
def test_passthrough_needs_offer_and_wish(offered, wished, granted):
    neg = negotiate(init(flags=offered), Wishes(passthrough=wished))
    assert neg.passthrough is granted
    assert neg.has(abi.FUSE_PASSTHROUGH) is granted
    assert neg.max_stack_depth == (1 if granted else 0)


def test_passthrough_bit_in_want_alone_does_nothing():
    neg = negotiate(init(), Wishes(want=DEFAULT_WANT | abi.FUSE_PASSTHROUGH))
    assert not neg.passthrough and not neg.has(abi.FUSE_PASSTHROUGH)


def test_passthrough_travels_in_flags2_with_init_ext():
    wire = (struct.pack("<IIQQIIIHH", 104, Opcode.INIT, 1, 0, 0, 0, 0, 0, 0)
            + struct.pack("<IIIII44x", 7, 45, 1 << 17, KERNEL & 0xFFFFFFFF, KERNEL >> 32))
    req = parse_request(wire)
    neg = negotiate(req.body, Wishes(passthrough=True, max_stack_depth=2))
    out = unpack_init_out(pack_init_out(req.unique, neg))
    assert out["flags2"] == abi.FUSE_PASSTHROUGH >> 32
    assert out["flags"] & abi.FUSE_INIT_EXT
    assert out["max_stack_depth"] == 2


def test_init_ext_added_when_high_flags_are_granted():
    want = abi.FUSE_ASYNC_READ  # INIT_EXT not wished, but passthrough is
    neg = negotiate(init(), Wishes(want=want, passthrough=True))
    assert neg.flags == want | abi.FUSE_PASSTHROUGH | abi.FUSE_INIT_EXT


def test_flags_are_the_intersection():
    neg = negotiate(init(flags=abi.FUSE_ASYNC_READ | abi.FUSE_POSIX_ACL), Wishes())
    assert neg.flags == abi.FUSE_ASYNC_READ


@pytest.mark.parametrize("kernel_minor, minor", [(31, 31), (40, 40), (45, 45), (99, 45)])
def test_minor_is_capped(kernel_minor, minor):
    assert negotiate(init(minor=kernel_minor), Wishes()).minor == minor


@pytest.mark.parametrize("major, minor", [(7, 30), (7, 0), (6, 99)])
def test_old_kernel_refused(major, minor):
    with pytest.raises(ProtocolError) as info:
        negotiate(init(major=major, minor=minor), Wishes())
    assert info.value.errno == errno.EPROTO
    assert f"{major}.{minor}" in str(info.value)


def test_newer_major_gets_a_short_reply():
    neg = negotiate(init(major=8, minor=0), Wishes())
    assert neg.expect_reinit
    reply = pack_init_out(5, neg)
    assert reply == struct.pack("<IiQII", 24, 0, 5, 7, 45)


def test_without_max_pages_the_kernel_default_bounds_writes():
    neg = negotiate(init(flags=KERNEL & ~abi.FUSE_MAX_PAGES), Wishes())
    assert not neg.has(abi.FUSE_MAX_PAGES)
    assert (neg.max_pages, neg.max_write) == (32, 32 * 4096)


def test_max_write_never_exceeds_max_pages():
    neg = negotiate(init(), Wishes(max_write=4 << 20, max_pages=64))
    assert neg.max_write == 64 * 4096


def test_readahead_is_the_minimum():
    assert negotiate(init(max_readahead=1 << 22), Wishes()).max_readahead == 1 << 20
    assert negotiate(init(max_readahead=4096), Wishes()).max_readahead == 4096


def test_init_out_round_trip():
    neg = negotiate(init(), Wishes(max_background=100, congestion_threshold=75, time_gran=1000))
    assert unpack_init_out(pack_init_out(9, neg)) == dict(
        major=7, minor=45, max_readahead=128 * 1024, flags=DEFAULT_WANT & 0xFFFFFFFF,
        max_background=100, congestion_threshold=75, max_write=1 << 20, time_gran=1000,
        max_pages=256, map_alignment=0, flags2=0, max_stack_depth=0, request_timeout=0)
    assert len(pack_init_out(9, neg)) == 16 + 64


@pytest.mark.parametrize("kwargs", [
    dict(passthrough=True, max_stack_depth=0),
    dict(passthrough=True, max_stack_depth=3),
    dict(passthrough=True, want=DEFAULT_WANT | abi.FUSE_WRITEBACK_CACHE),
    dict(time_gran=0), dict(max_pages=0), dict(max_pages=1 << 16), dict(max_write=1024),
])
def test_wishes_the_kernel_would_silently_ignore_are_refused(kwargs):
    with pytest.raises(ValueError):
        Wishes(**kwargs)


@pytest.mark.parametrize("max_write, size", [
    (1 << 20, (1 << 20) + 8192),  # 1 MiB + 80 rounds up to 1 MiB + 4096, plus a page
    (4096, 8192 + 4096),  # FUSE_MIN_READ_BUFFER dominates
    (32 * 4096, 32 * 4096 + 8192),
])
def test_request_buffer_size(max_write, size):
    neg = negotiate(init(), Wishes(max_write=max_write))
    assert request_buffer_size(neg) == size
    assert request_buffer_size(neg) >= 40 + 40 + neg.max_write
