"""The documented shape of the stats JSON, and a checker of keys and types (no jsonschema)."""

from __future__ import annotations

from typing import Any

from zcfs.stats import HISTOGRAM_BUCKETS

NUMBER = (int, float)


class MapOf:
    """A JSON object with any string keys, each value of one shape."""

    def __init__(self, values: Any) -> None:
        self.values = values


class ListOf:
    """A JSON array; `length` fixed if given."""

    def __init__(self, items: Any, length: int | None = None) -> None:
        self.items = items
        self.length = length


class Nullable:
    """null, or a value of one shape."""

    def __init__(self, shape: Any) -> None:
        self.shape = shape


class Open:
    """A JSON object with these keys at least; others of shape `extra`."""

    def __init__(self, keys: dict[str, Any], extra: Any) -> None:
        self.keys = keys
        self.extra = extra


_DATA = {"passthrough": {"opens": int}, "splice": {"requests": int, "bytes": int},
         "copy": {"requests": int, "bytes": int}}

SHAPE = {
    "engine": str,                      # "native" or "pyfuse3"
    "start_time": NUMBER,               # Unix time the daemon started
    "protocol": (str, type(None)),      # "7.45" once INIT is answered (native); null for pyfuse3
    "capabilities": ListOf(str),        # INIT flags granted, lower case (native)
    "options": Open({"backing": str, "mountpoint": str, "zero_copy": str}, object),
    "zero_copy": (str, type(None)),     # the tier setting in force ("off" for pyfuse3)
    "transport": (str, type(None)),     # "uring" (FUSE over io_uring) or "devfuse" (native); null for pyfuse3
    "transport_fallback": (str, type(None)),  # why not the ring ("uring-not-offered", "uring-setup-eperm", ...)
    "uptime": NUMBER,                   # seconds since start_time
    "read": _DATA,
    "write": _DATA,
    "fallbacks": MapOf(int),            # reason -> count
    "invalidations": MapOf(int),        # notifications sent about backing-dir changes, by kind
    "watch": Nullable({                 # null unless the policy watches (cache=watch)
        "mechanism": (str, type(None)),  # "fanotify", or null when it fell back
        "marks": int, "overflows": int, "events": int, "own_events": int,
        "fallback": (str, type(None)),  # why there is no watch (then the timeouts of cache=auto)
    }),
    "ops": MapOf({                      # opcode name -> counters
        "count": int,
        "errors": MapOf(int),           # errno name -> count
        "seconds": NUMBER,              # total time answering
        "latency_us_log2": ListOf(int, HISTOGRAM_BUCKETS),
    }),
    "gauges": Open({"open_files": {"passthrough": int, "splice": int, "copy": int},
                    "backing_ids": int, "in_flight": int}, int),
}


def check_shape(value: Any, shape: Any = SHAPE, where: str = "$") -> None:
    """Raise AssertionError naming the first place where `value` does not fit `shape`."""
    if isinstance(shape, dict):
        assert isinstance(value, dict), f"{where}: expected an object, got {value!r}"
        assert value.keys() == shape.keys(), f"{where}: keys {sorted(value)} != {sorted(shape)}"
        for key, sub in shape.items():
            check_shape(value[key], sub, f"{where}.{key}")
    elif isinstance(shape, Nullable):
        if value is not None:
            check_shape(value, shape.shape, where)
    elif isinstance(shape, Open):
        assert isinstance(value, dict), f"{where}: expected an object, got {value!r}"
        assert shape.keys.keys() <= value.keys(), f"{where}: missing {sorted(shape.keys.keys() - value.keys())}"
        for key, item in value.items():
            check_shape(item, shape.keys.get(key, shape.extra), f"{where}.{key}")
    elif isinstance(shape, MapOf):
        assert isinstance(value, dict), f"{where}: expected an object, got {value!r}"
        for key, item in value.items():
            assert isinstance(key, str), f"{where}: key {key!r}"
            check_shape(item, shape.values, f"{where}.{key}")
    elif isinstance(shape, ListOf):
        assert isinstance(value, list), f"{where}: expected an array, got {value!r}"
        assert shape.length is None or len(value) == shape.length, f"{where}: length {len(value)}"
        for index, item in enumerate(value):
            check_shape(item, shape.items, f"{where}[{index}]")
    else:
        ok = isinstance(value, shape) and not (isinstance(value, bool) and shape in (int, NUMBER))
        assert ok, f"{where}: {value!r} is not {shape}"
