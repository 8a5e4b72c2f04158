"""Writes on every tier, and the splice tier's spliced WRITE payloads.

On the splice tier a worker receives requests through a pipe while big
WRITEs flow, and splices their payloads from the pipe into the backing
file (zcfs/engine/splice.py). These tests check that exactly the bytes
written land where they were written, that errors reach the writer without
disturbing the requests that follow, and that the stats show the path.
"""

from __future__ import annotations

import errno
import hashlib
import mmap
import os
import random
import struct
import threading
from pathlib import Path

import pytest

from test_faults import assert_daemon_healthy, errno_name
from zcfs.mount import filesystem_type

MiB = 1 << 20
PAGE = 4096


def spliced(mount) -> dict:
    return mount.stats()["write"]["splice"]


def write_all(fd: int, data: bytes | memoryview, offset: int | None = None) -> None:
    """Write all of `data` (at `offset`, or at the file position), retrying short writes."""
    view = memoryview(data)
    while view:
        n = os.write(fd, view) if offset is None else os.pwrite(fd, view, offset)
        assert n > 0
        view = view[n:]
        if offset is not None:
            offset += n


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(MiB):
            digest.update(chunk)
    return digest.hexdigest()


def test_big_file_lands_whole(mnt, tmp_path):
    """A 48 MiB file copied in with 1 MiB writes: the backing file's sha256 matches the source."""
    source = tmp_path / "source"
    source.write_bytes(os.urandom(48 * MiB - 12345))  # a ragged tail: the last write is short
    fd = os.open(mnt.path / "big", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        with open(source, "rb") as src:
            while chunk := src.read(MiB):
                write_all(fd, chunk)
        os.fsync(fd)
    finally:
        os.close(fd)
    assert sha256_of(mnt.backing / "big") == sha256_of(source)
    assert sha256_of(mnt.path / "big") == sha256_of(source)
    if mnt.mode == "native-splice":
        # All but the first write (which switches the workers to the pipe) are spliced.
        assert spliced(mnt)["bytes"] >= 40 * MiB, mnt.stats()["write"]
        assert not mnt.stats()["fallbacks"]
    assert_daemon_healthy(mnt)


# -- many writers against a model --------------------------------------------

WRITERS = 4
REGION = 6 * MiB  # each writer's own stretch of the shared file (page aligned: mmap writes back whole pages)
OPS = 24


def _payload(rng: random.Random, size: int) -> bytes:
    return rng.randbytes(size)


def _writer(number: int, path: Path, log_path: Path, shared_log: Path, model: bytearray,
            logs: dict[int, bytearray], records: list[bytes], failures: list[BaseException]) -> None:
    """Random pwrites (small and big), O_DIRECT writes and mmap writes to the writer's
    region of `path`, appends to its own log and to the shared one; the model follows."""
    try:
        rng = random.Random(number)
        base = number * REGION
        fd = os.open(path, os.O_RDWR)
        direct = os.open(path, os.O_RDWR | os.O_DIRECT)
        log = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        shared = os.open(shared_log, os.O_WRONLY | os.O_APPEND)
        mapped = mmap.mmap(fd, REGION, mmap.MAP_SHARED, offset=base)
        aligned = mmap.mmap(-1, 2 * MiB)  # O_DIRECT wants an aligned buffer
        mine = logs[number] = bytearray()
        try:
            for seq in range(OPS):
                kind = rng.choice(["small", "big", "big", "direct", "mmap", "append", "shared"])
                if kind in ("small", "big"):
                    size = rng.randint(1, 8192) if kind == "small" else rng.randint(64 * 1024, 2 * MiB)
                    offset = rng.randint(0, REGION - size)
                    data = _payload(rng, size)
                    write_all(fd, data, base + offset)
                    model[base + offset:base + offset + size] = data
                elif kind == "direct":
                    size = rng.randint(1, 2 * MiB // PAGE) * PAGE
                    offset = rng.randint(0, (REGION - size) // PAGE) * PAGE
                    data = _payload(rng, size)
                    aligned[:size] = data
                    write_all(direct, memoryview(aligned)[:size], base + offset)
                    model[base + offset:base + offset + size] = data
                elif kind == "mmap":
                    size = rng.randint(1, 512 * 1024)
                    offset = rng.randint(0, REGION - size)
                    data = _payload(rng, size)
                    mapped[offset:offset + size] = data
                    model[base + offset:base + offset + size] = data
                elif kind == "append":
                    data = _payload(rng, rng.randint(1, 300 * 1024))
                    write_all(log, data)
                    mine += data
                else:  # one whole record among the other writers' appends
                    body = _payload(rng, rng.randint(1, 300 * 1024))
                    record = struct.pack("<III", number, seq, len(body)) + body
                    assert os.write(shared, record) == len(record)  # an append is never split
                    records.append(record)
            mapped.flush()
            os.fsync(fd)
        finally:
            mapped.close()
            aligned.close()
            for f in (fd, direct, log, shared):
                os.close(f)
    except BaseException as exc:  # reported by the test, with the writer's traceback
        failures.append(exc)


def _split_records(data: bytes) -> list[bytes]:
    out, at = [], 0
    while at < len(data):
        assert at + 12 <= len(data), "a torn record header at the end of the shared log"
        (_, _, length) = struct.unpack_from("<III", data, at)
        out.append(data[at:at + 12 + length])
        at += 12 + length
    return out


def test_concurrent_writers_match_model(mnt):
    """Several writers at once: random offsets and sizes, O_DIRECT, mmap, appends."""
    check_concurrent_writers(mnt)


@pytest.mark.parametrize("tier", ["splice", "off"])
def test_writeback_cache_concurrent_writers_match_model(mount_factory, tier):
    """The same with -o writeback_cache: the kernel gathers the writes and sends them later."""
    mnt = mount_factory(f"native-{tier}+writeback_cache")
    assert "writeback_cache" in mnt.stats()["capabilities"]
    check_concurrent_writers(mnt)


def test_writeback_cache_is_refused_with_passthrough(tmp_path):
    from zcfs.cli import parse_args
    from zcfs.mount import UsageError
    with pytest.raises(UsageError, match="writeback_cache"):
        parse_args([str(tmp_path), str(tmp_path), "--zero-copy", "passthrough", "-o", "writeback_cache"])
    with pytest.raises(UsageError, match="writeback_cache"):
        parse_args([str(tmp_path), str(tmp_path), "--engine", "pyfuse3", "-o", "writeback_cache"])
    config, _ = parse_args([str(tmp_path), str(tmp_path), "-o", "writeback_cache"])
    assert config.fs.writeback_cache


def check_concurrent_writers(mnt) -> None:
    m = mnt.path
    path = m / "shared"
    model = bytearray(WRITERS * REGION)
    with open(path, "wb") as f:
        f.truncate(len(model))
    (m / "shared.log").write_bytes(b"")
    logs: dict[int, bytearray] = {}
    records: list[bytes] = []
    failures: list[BaseException] = []
    threads = [threading.Thread(target=_writer, args=(n, path, m / f"log-{n}", m / "shared.log", model,
                                                      logs, records, failures)) for n in range(WRITERS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if failures:
        raise failures[0]
    for root in (mnt.backing, m):
        got = (root / "shared").read_bytes()
        assert len(got) == len(model)
        for n in range(WRITERS):  # per region, so a failure says whose bytes went wrong
            region = slice(n * REGION, (n + 1) * REGION)
            assert got[region] == model[region], f"writer {n}'s region differs under {root}"
            assert (root / f"log-{n}").read_bytes() == logs[n], f"writer {n}'s appends differ under {root}"
        assert sorted(_split_records((root / "shared.log").read_bytes())) == sorted(records)
    if mnt.mode.startswith("native-splice"):
        assert spliced(mnt)["requests"] > 0
    assert_daemon_healthy(mnt)


# -- errors reach the writer and leave the session healthy --------------------

def test_full_disk_gives_enospc_and_keeps_data(tmpfs_dir, mode, mount_factory):
    backing = tmpfs_dir("small", "8m")
    mount = mount_factory(mode, backing=backing)
    m = mount.path
    keep = os.urandom(MiB + 100)
    (m / "keep").write_bytes(keep)
    chunk = os.urandom(MiB)
    written = 0
    fd = os.open(m / "filler", os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        with pytest.raises(OSError) as full:
            for _ in range(16):  # twice what fits
                n = os.write(fd, chunk)
                written += n
                if n < len(chunk):  # the disk filled up mid-write: a short write
                    os.write(fd, chunk[n:])
        assert full.value.errno == errno.ENOSPC
        assert 5 * MiB <= written < 8 * MiB
        # and again, for a write big enough to be spliced
        assert errno_name(lambda: os.pwrite(fd, chunk, written)) == "ENOSPC"
        os.fsync(fd)
    finally:
        os.close(fd)
    expected = (chunk * 16)[:written]
    for root in (m, backing):
        assert (root / "keep").read_bytes() == keep
        assert (root / "filler").read_bytes() == expected
    if mode == "native-splice":
        stats = mount.stats()
        assert spliced(mount)["bytes"] >= 4 * MiB, stats["write"]
        # The write that found the disk full moved nothing: copied, counted, refused.
        assert stats["fallbacks"].get("splice-enospc", 0) >= 1, stats["fallbacks"]
    # The next requests, big ones included, find nothing of the failed ones in their way.
    os.unlink(m / "filler")
    after = os.urandom(3 * MiB)
    (m / "after").write_bytes(after)
    assert (backing / "after").read_bytes() == after
    assert (m / "keep").read_bytes() == keep
    assert_daemon_healthy(mount)


def test_write_beyond_max_file_size_is_efbig(mnt):
    """ext4 takes no byte at 16 TiB: EFBIG reaches the writer, then writing goes on."""
    if filesystem_type(str(mnt.backing)) != "ext4":
        pytest.skip("needs an ext4 backing dir (16 TiB file size limit)")
    fd = os.open(mnt.path / "f", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        first = os.urandom(MiB)
        write_all(fd, first, 0)  # switches the splice tier's workers to the pipe
        assert errno_name(lambda: os.pwrite(fd, os.urandom(MiB), 1 << 44)) == "EFBIG"
        second = os.urandom(MiB)
        write_all(fd, second, MiB)
        os.fsync(fd)
    finally:
        os.close(fd)
    assert (mnt.backing / "f").read_bytes() == first + second
    if mnt.mode == "native-splice":
        assert mnt.stats()["fallbacks"].get("splice-efbig") == 1
        assert spliced(mnt)["requests"] >= 1  # the second write
    assert_daemon_healthy(mnt)

