"""The stats layer: where every request and byte went, kept apart from the filesystem.

Engines report events (`record_*`); anyone reads `statistics()`, a plain
dict snapshot (the documented JSON shape, see README). Counters are plain
ints touched from one thread at a time (under the native session's lock, or
on pyfuse3's loop), cheap enough to stay always on.
ZCFS_NO_STATS=1 in the daemon's environment turns recording off, only to
measure what it costs (`zcfs bench --suite stats`).
"""

from __future__ import annotations

import collections
import errno as errno_names
import json
import math
import os
import time
from typing import Any, Callable

TIERS = ("passthrough", "splice", "copy")
HISTOGRAM_BUCKETS = 32  # bucket k counts latencies in [2**(k-1), 2**k) microseconds


def bucket_bounds(k: int) -> tuple[float, float]:
    """The latencies bucket `k` counts, in microseconds: [low, high)."""
    if k == 0:
        return 0.0, 1.0
    return float(1 << (k - 1)), (math.inf if k == HISTOGRAM_BUCKETS - 1 else float(1 << k))


def latency_percentile(histogram: list[int], q: float) -> float | None:
    """Estimate the q-quantile (0 < q <= 1) of a latency histogram, in microseconds.

    Linear inside the bucket holding it (as Prometheus' histogram_quantile);
    the open-ended last bucket gives its lower bound. None if empty.
    """
    rank = q * sum(histogram)
    seen = 0
    for k, n in enumerate(histogram):
        if n and seen + n >= rank:
            low, high = bucket_bounds(k)
            return low if high == math.inf else low + (high - low) * (rank - seen) / n
        seen += n
    return None


class _OpCounters:
    __slots__ = ("count", "errors", "latency", "seconds")

    def __init__(self) -> None:
        self.count = 0
        self.errors: collections.Counter[str] = collections.Counter()
        self.latency = [0] * HISTOGRAM_BUCKETS
        self.seconds = 0.0


def _ignore(*args: Any) -> None:
    pass


class Stats:
    """Counters of one mount."""

    def __init__(self, engine: str, options: dict[str, Any] | None = None) -> None:
        self.info: dict[str, Any] = {
            "engine": engine,
            "start_time": time.time(),
            "protocol": None,
            "capabilities": [],
            "options": options or {},
            "zero_copy": None,
        }
        self._ops: dict[str, _OpCounters] = collections.defaultdict(_OpCounters)
        self._data = {direction: {"passthrough": {"opens": 0}, "splice": {"requests": 0, "bytes": 0},
                                  "copy": {"requests": 0, "bytes": 0}}
                      for direction in ("read", "write")}
        self.fallbacks: collections.Counter[str] = collections.Counter()
        self.open_files = {tier: 0 for tier in TIERS}
        self.backing_ids = 0
        self.in_flight = 0
        # Notifications sent to the kernel about changes made in the backing
        # dir by others (engine/watch.py, whose one thread is the only writer), by kind.
        self.invalidations: collections.Counter[str] = collections.Counter()
        self._watch: dict[str, Any] | None = None  # None: the mount does not watch (its policy)
        self._gauges: dict[str, Callable[[], int]] = {}
        self.enabled = os.environ.get("ZCFS_NO_STATS", "") in ("", "0")
        if not self.enabled:
            # The engines still call these; now they cost a call and nothing else.
            self.record_op = self.record_data = self.record_open = _ignore  # type: ignore[method-assign]
            self.record_release = self.record_fallback = _ignore  # type: ignore[method-assign]
            self.record_invalidation = _ignore  # type: ignore[method-assign]

    # -- recording -------------------------------------------------------

    def record_op(self, opcode: str, seconds: float, error: int = 0) -> None:
        """Count one answered request: its latency and, if it failed, its errno."""
        counters = self._ops[opcode]
        counters.count += 1
        counters.seconds += seconds
        if error:
            counters.errors[errno_names.errorcode.get(error, str(error))] += 1
        bucket = int(seconds * 1e6).bit_length()
        counters.latency[bucket if bucket < HISTOGRAM_BUCKETS else -1] += 1

    def record_data(self, direction: str, tier: str, nbytes: int) -> None:
        """Count one READ or WRITE request served on `tier` ("splice"/"copy")."""
        path = self._data[direction][tier]
        path["requests"] += 1
        path["bytes"] += nbytes

    def record_open(self, tier: str) -> None:
        """Count an open file on `tier`; passthrough opens also count as data opens."""
        self.open_files[tier] += 1
        if tier == "passthrough":
            self._data["read"]["passthrough"]["opens"] += 1
            self._data["write"]["passthrough"]["opens"] += 1

    def record_release(self, tier: str) -> None:
        self.open_files[tier] -= 1

    def record_fallback(self, reason: str) -> None:
        """Count a fall to a lower tier, by reason (e.g. "passthrough-eperm")."""
        self.fallbacks[reason] += 1

    def record_invalidation(self, kind: str) -> None:
        """Count one notification sent: "entry", "delete", "listing", "inode",
        "data", "passthrough" or "epoch" (see engine/watch.py)."""
        self.invalidations[kind] += 1

    def set_watch(self, **state: Any) -> None:
        """The backing-dir watch's state: mechanism, marks, overflows, events, own_events, fallback."""
        self._watch = dict(state)

    def update_watch(self, **changes: Any) -> None:
        """Add counts (ints) to the watch's state, or set its other fields."""
        watch = self._watch
        if watch is None:
            return
        for key, value in changes.items():
            if isinstance(value, int) and isinstance(watch.get(key), int):
                watch[key] += value
            else:
                watch[key] = value

    def gauge(self, name: str, read: Callable[[], int]) -> None:
        """Register a live gauge read at snapshot time (e.g. inodes known)."""
        self._gauges[name] = read

    # -- reading ---------------------------------------------------------

    def statistics(self) -> dict[str, Any]:
        """A snapshot: the documented JSON shape."""
        gauges = {
            "open_files": dict(self.open_files),
            "backing_ids": self.backing_ids,
            "in_flight": self.in_flight,
        }
        gauges.update({name: read() for name, read in self._gauges.items()})
        return {
            **self.info,
            "uptime": time.time() - self.info["start_time"],
            "read": _deep_copy(self._data["read"]),
            "write": _deep_copy(self._data["write"]),
            "fallbacks": dict(self.fallbacks),
            "invalidations": dict(self.invalidations),
            "watch": None if self._watch is None else dict(self._watch),
            "ops": {
                name: {"count": c.count, "errors": dict(c.errors), "seconds": c.seconds,
                       "latency_us_log2": list(c.latency)}
                for name, c in sorted(self._ops.items())
            },
            "gauges": gauges,
        }

    def json(self) -> str:
        return json.dumps(self.statistics(), separators=(",", ":"))

    def summary(self) -> str:
        """One paragraph for the log at unmount."""
        snap = self.statistics()
        parts = []
        for direction in ("read", "write"):
            d = snap[direction]
            parts.append(
                f"{direction}: {d['passthrough']['opens']} passthrough opens, "
                f"{d['splice']['requests']} splice requests ({_mib(d['splice']['bytes'])}), "
                f"{d['copy']['requests']} copy requests ({_mib(d['copy']['bytes'])})")
        total = sum(op["count"] for op in snap["ops"].values())
        errors = sum(sum(op["errors"].values()) for op in snap["ops"].values())
        fallbacks = ", ".join(f"{k} x{v}" for k, v in snap["fallbacks"].items()) or "none"
        return (f"zcfs ({snap['engine']} engine) served {total} requests ({errors} errors) in "
                f"{snap['uptime']:.0f} s; " + "; ".join(parts) + f"; fallbacks: {fallbacks}.")


def _deep_copy(d: dict) -> dict:
    return {k: dict(v) for k, v in d.items()}


def _mib(n: int) -> str:
    return f"{n / (1 << 20):.1f} MiB"
