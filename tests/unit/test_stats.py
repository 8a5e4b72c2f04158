"""Stats counters, the latency histogram, the `zcfs stats` table, the metrics view, pyfuse3 instrumentation."""

from __future__ import annotations

import errno
import json
import os
import socket

import pyfuse3
import pytest
from prometheus_client import generate_latest
from prometheus_client.registry import CollectorRegistry

from stats_shape import check_shape
from zcfs import statscli
from zcfs.engine.reference import OPCODES, instrument
from zcfs.fs import FsOptions, ZcfsOperations
from zcfs.inodes import ROOT_INODE
from zcfs.metrics import StatsCollector, check_address, parse_address
from zcfs.mount import UsageError
from zcfs.proto import Opcode
from zcfs.stats import HISTOGRAM_BUCKETS, Stats, bucket_bounds, latency_percentile


def histogram_of(stats: Stats, opcode: str) -> list[int]:
    return stats.statistics()["ops"][opcode]["latency_us_log2"]


# -- counters and histogram ----------------------------------------------------

@pytest.mark.parametrize("micros, bucket", [
    (0, 0), (0.5, 0), (1, 1), (1.9, 1), (2, 2), (3, 2), (4, 3), (1000, 10), (1024, 11),
    (3600e6, HISTOGRAM_BUCKETS - 1),
])
def test_latency_lands_in_its_log2_bucket(micros, bucket):
    stats = Stats("native")
    stats.record_op("GETATTR", micros / 1e6)
    histogram = histogram_of(stats, "GETATTR")
    assert histogram[bucket] == 1 and sum(histogram) == 1
    low, high = bucket_bounds(bucket)
    assert low <= micros < high


def test_bucket_bounds_tile_the_line():
    assert bucket_bounds(0) == (0.0, 1.0)
    for k in range(1, HISTOGRAM_BUCKETS):
        assert bucket_bounds(k)[0] == bucket_bounds(k - 1)[1]
    assert bucket_bounds(HISTOGRAM_BUCKETS - 1)[1] == float("inf")


def test_percentiles_interpolate_inside_the_bucket():
    histogram = [0] * HISTOGRAM_BUCKETS
    assert latency_percentile(histogram, 0.5) is None
    histogram[5] = 100  # [16, 32) us
    assert latency_percentile(histogram, 0.5) == pytest.approx(24)
    assert latency_percentile(histogram, 0.99) == pytest.approx(16 + 16 * 0.99)
    histogram[11] = 100  # [1024, 2048) us: the upper half
    assert 16 <= latency_percentile(histogram, 0.5) <= 32
    assert 1024 <= latency_percentile(histogram, 0.99) < 2048
    histogram[HISTOGRAM_BUCKETS - 1] = 10_000  # open-ended: its lower bound
    assert latency_percentile(histogram, 0.99) == bucket_bounds(HISTOGRAM_BUCKETS - 1)[0]


def test_counts_errors_by_name_and_time():
    stats = Stats("native")
    stats.record_op("LOOKUP", 0.001)
    stats.record_op("LOOKUP", 0.002, errno.ENOENT)
    stats.record_op("LOOKUP", 0.003, errno.ENOENT)
    stats.record_op("LOOKUP", 0.0, 4242)  # no name: the number
    op = stats.statistics()["ops"]["LOOKUP"]
    assert op["count"] == 4
    assert op["errors"] == {"ENOENT": 2, "4242": 1}
    assert op["seconds"] == pytest.approx(0.006)


def test_data_opens_and_fallbacks():
    stats = Stats("native")
    stats.record_data("read", "splice", 4096)
    stats.record_data("read", "splice", 100)
    stats.record_data("write", "copy", 7)
    stats.record_open("passthrough")
    stats.record_open("splice")
    stats.record_release("splice")
    stats.record_fallback("splice-einval")
    snap = stats.statistics()
    assert snap["read"] == {"passthrough": {"opens": 1}, "splice": {"requests": 2, "bytes": 4196},
                            "copy": {"requests": 0, "bytes": 0}}
    assert snap["write"]["copy"] == {"requests": 1, "bytes": 7}
    assert snap["write"]["passthrough"]["opens"] == 1  # a passthrough open serves both directions
    assert snap["gauges"]["open_files"] == {"passthrough": 1, "splice": 0, "copy": 0}
    assert snap["fallbacks"] == {"splice-einval": 1}


def test_snapshot_fits_the_documented_shape():
    stats = Stats("native", options={"backing": "/b", "mountpoint": "/m", "zero_copy": "auto"})
    stats.record_op("READ", 0.0001)
    stats.record_op("LOOKUP", 0.0001, errno.ENOENT)
    stats.record_fallback("passthrough-eperm")
    stats.gauge("inodes", lambda: 3)
    snap = json.loads(stats.json())
    check_shape(snap)
    assert snap["gauges"]["inodes"] == 3
    with pytest.raises(AssertionError, match="count"):
        snap["ops"]["READ"]["count"] = "1"
        check_shape(snap)


def test_snapshot_is_a_copy():
    stats = Stats("native")
    snap = stats.statistics()
    snap["read"]["splice"]["bytes"] = 99
    snap["gauges"]["open_files"]["copy"] = 5
    assert stats.statistics()["read"]["splice"]["bytes"] == 0
    assert stats.statistics()["gauges"]["open_files"]["copy"] == 0


def test_summary_paragraph():
    stats = Stats("pyfuse3")
    stats.record_op("READ", 0.001)
    stats.record_op("LOOKUP", 0.001, errno.ENOENT)
    stats.record_data("read", "copy", 3 << 20)
    stats.record_fallback("splice-einval")
    text = stats.summary()
    assert "\n" not in text
    assert text.startswith("zcfs (pyfuse3 engine) served 2 requests (1 errors) in ")
    assert "1 copy requests (3.0 MiB)" in text
    assert "fallbacks: splice-einval x1." in text


def test_no_stats_env_turns_recording_off(monkeypatch):
    monkeypatch.setenv("ZCFS_NO_STATS", "1")
    stats = Stats("native")
    assert not stats.enabled
    stats.record_op("READ", 0.1, errno.EIO)
    stats.record_data("read", "splice", 100)
    stats.record_open("passthrough")
    stats.record_release("passthrough")
    stats.record_fallback("x")
    snap = stats.statistics()
    assert snap["ops"] == {} and snap["fallbacks"] == {}
    assert snap["read"]["splice"]["bytes"] == 0 and snap["read"]["passthrough"]["opens"] == 0
    monkeypatch.setenv("ZCFS_NO_STATS", "0")
    assert Stats("native").enabled


# -- the `zcfs stats` table ----------------------------------------------------

def sample_stats() -> Stats:
    stats = Stats("native", options={"backing": "/data", "mountpoint": "/mnt/z", "zero_copy": "auto"})
    stats.info.update(protocol="7.45", capabilities=["async_read", "passthrough"], zero_copy="auto")
    stats.info["start_time"] -= 3723  # up 1h 02m 03s
    for _ in range(99):
        stats.record_op("LOOKUP", 20e-6)
    stats.record_op("LOOKUP", 20e-6, errno.ENOENT)
    stats.record_op("READ", 300e-6)
    stats.record_data("read", "splice", 5 << 20)
    stats.record_data("write", "copy", 1536)
    stats.record_open("passthrough")
    stats.record_fallback("passthrough-eperm")
    stats.gauge("inodes", lambda: 12)
    return stats


def test_table_shows_every_section():
    text = statscli.render(sample_stats().statistics())
    lines = text.splitlines()
    assert lines[0] == "zcfs mount /mnt/z of /data"
    assert lines[1].startswith("engine native, FUSE protocol 7.45, zero-copy auto, up 1h 02m 0")
    assert lines[2] == "capabilities: async_read passthrough"
    rows = {line.split()[0]: line.split() for line in lines if line.split()}
    assert rows["passthrough"][1:] == ["1", "opens", "-", "1", "opens", "-"]
    assert rows["splice"][1:] == ["1", "5.0", "MiB", "0", "0", "B"]
    assert rows["copy"][1:] == ["0", "0", "B", "1", "1.5", "KiB"]
    assert "fallbacks: passthrough-eperm 1" in lines
    assert rows["LOOKUP"][1:4] == ["100", "ENOENT", "1"]
    assert rows["LOOKUP"][4:] == ["24", "us", "32", "us"]  # 20 us sits in [16, 32)
    assert rows["READ"][1:3] == ["1", "-"]
    assert rows["all"][1:] == ["101", "1"]
    assert lines[-1] == ("gauges: open files passthrough 1, splice 0, copy 0; backing ids 0; "
                         "in flight 0; inodes 12")


def test_table_columns_line_up():
    lines = statscli.table([["name", "count"], ["LOOKUP", "7"], ["all", "12345"]])
    assert lines == ["name    count", "LOOKUP      7", "all     12345"]


def test_table_of_a_fresh_pyfuse3_mount():
    text = statscli.render(Stats("pyfuse3").statistics())
    assert "FUSE protocol unknown" in text and "capabilities: unknown" in text
    assert "fallbacks: none" in text


@pytest.mark.parametrize("n, text", [(0, "0 B"), (1023, "1023 B"), (1024, "1.0 KiB"), (5 << 20, "5.0 MiB"),
                                     (3 << 30, "3.0 GiB"), (5 << 50, "5120.0 TiB")])
def test_format_bytes(n, text):
    assert statscli.format_bytes(n) == text


@pytest.mark.parametrize("micros, text", [(None, "-"), (0.4, "0 us"), (999, "999 us"), (1500, "1.5 ms"),
                                          (2_500_000, "2.50 s")])
def test_format_latency(micros, text):
    assert statscli.format_latency(micros) == text


@pytest.mark.parametrize("seconds, text", [(0.5, "0s"), (59, "59s"), (65, "1m 05s"), (3723, "1h 02m 03s"),
                                           (2 * 86400 + 3723, "2d 01h 02m")])
def test_format_duration(seconds, text):
    assert statscli.format_duration(seconds) == text


def test_rates_between_two_samples():
    stats = sample_stats()
    before = stats.statistics()
    after = json.loads(json.dumps(before))
    after["uptime"] = before["uptime"] + 2.0
    after["read"]["splice"]["bytes"] += 300_000_000
    after["read"]["splice"]["requests"] += 300
    after["read"]["passthrough"]["opens"] += 4
    after["ops"]["READ"]["count"] += 300
    after["ops"]["LOOKUP"]["errors"]["ENOENT"] += 2
    lines = statscli.render_rates(before, after).splitlines()
    assert lines[0] == "rates over the last 2.00 s:"
    assert lines[1].split() == ["read", "passthrough", "2.0", "opens/s", "|", "splice", "150.0", "MB/s,",
                                "150", "req/s", "|", "copy", "0.0", "MB/s,", "0", "req/s"]
    assert lines[2].split()[:4] == ["write", "passthrough", "0.0", "opens/s"]
    assert lines[3].split() == ["all", "requests", "150/s,", "errors", "1/s"]


def test_cli_mistakes(tmp_path, capsys):
    assert statscli.main([]) == 2
    assert "mountpoint" in capsys.readouterr().err
    assert statscli.main([str(tmp_path), "--watch", "-1"]) == 2
    assert "--watch" in capsys.readouterr().err
    assert statscli.main([str(tmp_path / "nope")]) == 1
    assert capsys.readouterr().err == f"zcfs: {tmp_path / 'nope'} is not a zcfs mount (it does not exist)\n"


# -- Prometheus view ------------------------------------------------------------

@pytest.mark.parametrize("text, address", [("127.0.0.1:9100", ("127.0.0.1", 9100)),
                                           ("localhost:1", ("localhost", 1)),
                                           ("[::1]:9100", ("::1", 9100))])
def test_metrics_address(text, address):
    assert parse_address(text) == address


@pytest.mark.parametrize("text", ["9100", ":9100", "host:", "host:port", "host:0", "host:70000", "host:-1"])
def test_bad_metrics_address(text):
    with pytest.raises(UsageError, match="HOST:PORT"):
        parse_address(text)


def test_busy_metrics_port_is_refused():
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(UsageError, match=f"cannot serve metrics on 127.0.0.1:{port}"):
            check_address("127.0.0.1", port)


def scrape(stats: Stats) -> dict[str, float]:
    registry = CollectorRegistry()
    registry.register(StatsCollector(stats))
    samples = {}
    for line in generate_latest(registry).decode().splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            samples[name] = float(value)
    return samples


def test_metrics_read_the_counters_at_scrape_time():
    stats = sample_stats()
    first = scrape(stats)
    assert first['zcfs_read_bytes_total{path="splice"}'] == 5 << 20
    assert first['zcfs_read_requests_total{path="splice"}'] == 1
    assert first['zcfs_write_bytes_total{path="copy"}'] == 1536
    assert first["zcfs_read_passthrough_opens_total"] == 1
    assert first['zcfs_requests_total{opcode="LOOKUP"}'] == 100
    assert first['zcfs_errors_total{errno="ENOENT",opcode="LOOKUP"}'] == 1
    assert first['zcfs_fallbacks_total{reason="passthrough-eperm"}'] == 1
    assert first['zcfs_open_files{tier="passthrough"}'] == 1
    assert first["zcfs_inodes"] == 12
    assert first['zcfs_request_duration_seconds_count{opcode="LOOKUP"}'] == 100
    assert first['zcfs_request_duration_seconds_sum{opcode="LOOKUP"}'] == pytest.approx(100 * 20e-6)
    # 20 us: in the bucket [16, 32) us, so counted from le=32e-06 on
    assert first['zcfs_request_duration_seconds_bucket{le="1.6e-05",opcode="LOOKUP"}'] == 0
    assert first['zcfs_request_duration_seconds_bucket{le="3.2e-05",opcode="LOOKUP"}'] == 100
    assert first['zcfs_request_duration_seconds_bucket{le="+Inf",opcode="LOOKUP"}'] == 100
    info = next(name for name in first if name.startswith("zcfs_info{"))
    assert 'engine="native"' in info and 'protocol="7.45"' in info
    stats.record_data("read", "splice", 10)
    assert scrape(stats)['zcfs_read_bytes_total{path="splice"}'] == (5 << 20) + 10


# -- pyfuse3 instrumentation ----------------------------------------------------

def test_handler_names_are_native_opcode_names():
    assert all(name in Opcode.__members__ for name in OPCODES.values())
    assert all(callable(getattr(ZcfsOperations, method)) for method in OPCODES)


class Ctx:
    uid = gid = pid = umask = 0


async def test_instrumented_handlers_report(tmp_path):
    (tmp_path / "f").write_bytes(b"x" * 5000)
    stats = Stats("pyfuse3")
    ops = ZcfsOperations(str(tmp_path), FsOptions(negative_timeout=0.0), stats=stats)  # a missing name is an error
    try:
        instrument(ops, stats)
        entry = await ops.lookup(ROOT_INODE, b"f", Ctx())
        with pytest.raises(pyfuse3.FUSEError):
            await ops.lookup(ROOT_INODE, b"missing", Ctx())
        fi = await ops.open(entry.st_ino, os.O_RDWR, Ctx())
        assert stats.statistics()["gauges"]["open_files"]["copy"] == 1
        assert len(await ops.read(fi.fh, 0, 4096)) == 4096
        assert len(await ops.read(fi.fh, 4096, 4096)) == 904
        assert await ops.write(fi.fh, 5000, b"abc") == 3
        await ops.release(fi.fh)
        snap = stats.statistics()
        assert snap["ops"]["LOOKUP"]["count"] == 2 and snap["ops"]["LOOKUP"]["errors"] == {"ENOENT": 1}
        assert snap["ops"]["READ"]["count"] == 2 and snap["ops"]["RELEASE"]["count"] == 1
        assert snap["read"]["copy"] == {"requests": 2, "bytes": 5000}
        assert snap["write"]["copy"] == {"requests": 1, "bytes": 3}
        assert snap["gauges"]["open_files"]["copy"] == 0
    finally:
        ops.close()


def test_watch_prints_samples_until_ctrl_c(monkeypatch, capsys):
    stats = sample_stats()
    samples = iter([stats.statistics(), stats.statistics()])
    sleeps = []

    def sleep(seconds):
        sleeps.append(seconds)
        if len(sleeps) == 3:
            raise KeyboardInterrupt

    monkeypatch.setattr(statscli, "read_stats", lambda path: next(samples))
    monkeypatch.setattr(statscli.time, "sleep", sleep)
    assert statscli.watch("/mnt/z", 0.5, stats.statistics()) == 0
    out = capsys.readouterr().out
    assert sleeps == [0.5, 0.5, 0.5]
    assert out.count("zcfs mount /mnt/z of /data") == 3
    assert out.count("rates: after the next sample, in 0.5 s") == 1
    assert out.count("rates over the last") == 2
    assert "\x1b" not in out  # not a terminal: no screen clearing

    samples = iter([stats.statistics()])
    sleeps.clear()
    sleeps.append(None)  # stop after two lines
    assert statscli.watch("/mnt/z", 1, stats.statistics(), as_json=True) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2 and all(json.loads(line)["engine"] == "native" for line in lines)
