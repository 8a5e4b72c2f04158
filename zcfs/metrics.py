"""Prometheus metrics of a mount (`zcfs --metrics HOST:PORT`), read from its Stats at scrape time.

The collector turns one `Stats.statistics()` snapshot into metric families
each time /metrics is scraped, so nothing is counted twice and a mount
nobody scrapes pays nothing. The HTTP server is prometheus_client's, in a
daemon thread; a snapshot only reads counters the event loop keeps.
"""

from __future__ import annotations

import logging
import socket
from typing import Callable, Iterator

from prometheus_client import start_http_server
from prometheus_client.core import (
    CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, InfoMetricFamily, Metric,
)
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector, CollectorRegistry

from .mount import UsageError
from .stats import HISTOGRAM_BUCKETS, Stats, bucket_bounds

log = logging.getLogger(__name__)

# Label of the keys of a gauge that is a mapping (others get "key").
_GAUGE_LABELS = {"open_files": "tier"}
_PAST = {"read": "read", "write": "written"}


def parse_address(text: str) -> tuple[str, int]:
    """HOST:PORT (or [IPv6]:PORT) -> (host, port); UsageError if it is not one."""
    host, colon, port = text.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not colon or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise UsageError(f"--metrics needs HOST:PORT (e.g. 127.0.0.1:9100), not {text!r}")
    return host, int(port)


def check_address(host: str, port: int) -> None:
    """Make sure HOST:PORT can be listened on now; UsageError says why not.

    Binds and closes a socket as the server will (SO_REUSEADDR), so a busy
    port or unknown host stops zcfs before it mounts anything.
    """
    try:
        family, _, _, _, sockaddr = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                                       flags=socket.AI_PASSIVE)[0]
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind(sockaddr)
    except OSError as exc:
        raise UsageError(f"cannot serve metrics on {host}:{port}: {exc.strerror or exc}") from None


def serve_when_ready(stats: Stats, address: tuple[str, int], on_ready: Callable[[], None]) -> Callable[[], None]:
    """Check `address` now; return an on_ready that starts serving /metrics, then calls `on_ready`."""
    check_address(*address)

    def start_then_report() -> None:
        registry = CollectorRegistry()
        registry.register(StatsCollector(stats))
        ProcessCollector(registry=registry)  # the daemon's CPU, memory and fds
        host, port = address
        try:
            start_http_server(port, host, registry=registry)
        except OSError as exc:  # taken since check_address: the mount is up, so serve it anyway
            log.error("cannot serve metrics on %s:%d: %s", host, port, exc.strerror or exc)
        on_ready()

    return start_then_report


class StatsCollector(Collector):
    """Metric families from a Stats snapshot, built at each scrape."""

    def __init__(self, stats: Stats) -> None:
        self.stats = stats

    def collect(self) -> Iterator[Metric]:
        return iter(metric_families(self.stats.statistics()))


def metric_families(snap: dict) -> list[Metric]:
    """The Prometheus view of one statistics snapshot (see `Stats.statistics`)."""
    info = InfoMetricFamily("zcfs", "The mount: engine, protocol, zero-copy setting, capabilities")
    info.add_metric([], {
        "engine": snap["engine"], "protocol": snap["protocol"] or "", "zero_copy": snap["zero_copy"] or "",
        "capabilities": ",".join(snap["capabilities"]),
        "backing": str(snap["options"].get("backing", "")),
        "mountpoint": str(snap["options"].get("mountpoint", "")),
    })
    families: list[Metric] = [
        info,
        GaugeMetricFamily("zcfs_start_time_seconds", "When the daemon started (Unix time)",
                          value=snap["start_time"]),
    ]

    for direction in ("read", "write"):
        data = snap[direction]
        families.append(CounterMetricFamily(
            f"zcfs_{direction}_passthrough_opens", f"Opens served by kernel passthrough ({direction} bytes "
            "then bypass the daemon)", value=data["passthrough"]["opens"]))
        requests = CounterMetricFamily(f"zcfs_{direction}_requests", f"{direction.upper()} requests served, "
                                       "by data path", labels=["path"])
        nbytes = CounterMetricFamily(f"zcfs_{direction}_bytes", f"Bytes {_PAST[direction]}, by data path",
                                     labels=["path"])
        for path in ("splice", "copy"):
            requests.add_metric([path], data[path]["requests"])
            nbytes.add_metric([path], data[path]["bytes"])
        families += [requests, nbytes]

    fallbacks = CounterMetricFamily("zcfs_fallbacks", "Falls to a slower data path, by reason",
                                    labels=["reason"])
    for reason, count in snap["fallbacks"].items():
        fallbacks.add_metric([reason], count)

    requests = CounterMetricFamily("zcfs_requests", "FUSE requests answered, by opcode", labels=["opcode"])
    errors = CounterMetricFamily("zcfs_errors", "FUSE requests answered with an error, by opcode and errno",
                                 labels=["opcode", "errno"])
    latency = HistogramMetricFamily("zcfs_request_duration_seconds", "Time to answer FUSE requests, by opcode",
                                    labels=["opcode"])
    bounds = [_le(k) for k in range(HISTOGRAM_BUCKETS)]
    for opcode, op in snap["ops"].items():
        requests.add_metric([opcode], op["count"])
        for name, count in op["errors"].items():
            errors.add_metric([opcode, name], count)
        cumulative, buckets = 0, []
        for le, count in zip(bounds, op["latency_us_log2"]):
            cumulative += count
            buckets.append((le, cumulative))
        latency.add_metric([opcode], buckets, op["seconds"])
    families += [fallbacks, requests, errors, latency]

    for name, value in snap["gauges"].items():
        if isinstance(value, dict):
            label = _GAUGE_LABELS.get(name, "key")
            gauge = GaugeMetricFamily(f"zcfs_{name}", f"{name.replace('_', ' ')} now, by {label}", labels=[label])
            for key, number in value.items():
                gauge.add_metric([key], number)
        else:
            gauge = GaugeMetricFamily(f"zcfs_{name}", f"{name.replace('_', ' ')} now", value=value)
        families.append(gauge)
    return families


def _le(k: int) -> str:
    """The `le` bound of latency bucket k, in seconds (Prometheus spelling)."""
    high = bucket_bounds(k)[1]
    return "+Inf" if high == float("inf") else repr(high / 1e6)
