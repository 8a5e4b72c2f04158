"""The request pipe of the splice tier, against a socket standing in for /dev/fuse (no mount)."""

from __future__ import annotations

import os
import fcntl

import pytest

from zcfs.engine.splice import (
    F_SETPIPE_SZ, SPLICE_WRITE_MIN, WRITE_HEADERS, ReceiveMode, RequestPipe, SpliceError, splice_write,
)
from zcfs.proto import Opcode, abi, parse_request

MAX_WRITE = 255 * 4096


def write_request(unique: int, offset: int, data: bytes) -> bytes:
    head = abi.IN_HEADER.pack(WRITE_HEADERS + len(data), Opcode.WRITE, unique, 5, 0, 0, 1, 0)
    return head + abi.WRITE_IN.pack(7, offset, len(data), 0, 0, os.O_WRONLY) + data


def setxattr_request(unique: int, value: bytes) -> bytes:
    body = abi.SETXATTR_IN_COMPAT.pack(len(value), 0) + b"user.big\0" + value
    return abi.IN_HEADER.pack(abi.IN_HEADER.size + len(body), Opcode.SETXATTR, unique, 5, 0, 0, 1, 0) + body


class FakeDevice:
    """A pipe standing in for /dev/fuse: one request at a time, spliced out whole."""

    def __init__(self) -> None:
        self.r, self.w = os.pipe()
        fcntl.fcntl(self.w, F_SETPIPE_SZ, 1 << 20)

    def sendall(self, message: bytes) -> None:
        view = memoryview(message)
        while view:
            view = view[os.write(self.w, view):]

    def fileno(self) -> int:
        return self.r

    def close(self) -> None:
        os.close(self.r)
        os.close(self.w)


@pytest.fixture
def device():
    """(kernel side, daemon side) of the fake device."""
    fake = FakeDevice()
    yield fake, fake
    fake.close()


@pytest.fixture
def pipe():
    made = RequestPipe(MAX_WRITE)
    yield made
    made.close()


def receive(pipe: RequestPipe, daemon: FakeDevice, message: bytes) -> tuple[bytearray, int, int]:
    buf = bytearray(MAX_WRITE + 8192)
    length, payload = pipe.receive(daemon.fileno(), buf)
    return buf, length, payload


def test_small_requests_are_read_whole(device, pipe):
    kernel, daemon = device
    for message in (write_request(1, 0, b"tiny"), setxattr_request(2, b"v" * 3 * SPLICE_WRITE_MIN)):
        kernel.sendall(message)
        buf, length, payload = receive(pipe, daemon, message)
        assert (length, payload) == (len(message), 0)
        assert bytes(buf[:length]) == message
        parse_request(memoryview(buf)[:length])  # parses as if read from the device


def test_big_write_payload_is_spliced_to_its_offset(device, pipe, tmp_path):
    kernel, daemon = device
    data = os.urandom(MAX_WRITE)
    kernel.sendall(write_request(3, 4096, data))
    buf, length, payload = receive(pipe, daemon, b"")
    assert (length, payload) == (WRITE_HEADERS, len(data))
    fd = os.open(tmp_path / "f", os.O_RDWR | os.O_CREAT)
    try:
        assert splice_write(pipe, fd, 4096, payload) == len(data)
        assert os.pread(fd, len(data) + 10, 4096) == data
    finally:
        os.close(fd)
    # the pipe is empty: the next request comes out whole
    kernel.sendall(write_request(4, 0, b"next"))
    buf, length, payload = receive(pipe, daemon, b"")
    assert bytes(buf[length - 4:length]) == b"next" and payload == 0


def test_a_failure_before_a_byte_moved_leaves_the_payload_for_a_copy(device, pipe, tmp_path):
    kernel, daemon = device
    data = os.urandom(SPLICE_WRITE_MIN * 2)
    kernel.sendall(write_request(5, 0, data))
    _, _, payload = receive(pipe, daemon, b"")
    (tmp_path / "ro").write_bytes(b"")
    fd = os.open(tmp_path / "ro", os.O_RDONLY)
    try:
        with pytest.raises(SpliceError) as failed:
            splice_write(pipe, fd, 0, payload)
        assert failed.value.reason == "splice-ebadf"
    finally:
        os.close(fd)
    assert pipe.read_payload(payload) == data


def test_settle_empties_what_a_handler_left(device, pipe):
    kernel, daemon = device
    kernel.sendall(write_request(6, 0, os.urandom(SPLICE_WRITE_MIN)))
    _, _, payload = receive(pipe, daemon, b"")
    assert payload == SPLICE_WRITE_MIN
    pipe.settle()  # e.g. the handle was unknown (EBADF): nothing consumed the payload
    kernel.sendall(write_request(7, 0, b"after"))
    buf, length, payload = receive(pipe, daemon, b"")
    assert payload == 0 and parse_request(memoryview(buf)[:length]).body.data == b"after"


def test_receive_mode_follows_big_writes():
    mode = ReceiveMode()
    big = bytearray(write_request(1, 0, bytes(SPLICE_WRITE_MIN)))
    small = bytearray(write_request(2, 0, b"x"))
    mode.note(small, len(small))
    assert not mode.splicing
    mode.note(big, len(big))
    assert mode.splicing
    for _ in range(ReceiveMode.QUIET - 1):
        mode.note(small, len(small))
    assert mode.splicing
    mode.note(small, len(small))
    assert not mode.splicing
