"""Reading /proc/self/mountinfo: its fields are split on spaces, so paths in it are escaped."""

from __future__ import annotations

import re

_ESCAPE = re.compile(rb"\\([0-7]{3})")


def unescape(field: bytes) -> bytes:
    """A mountinfo path with its octal escapes (\\040 for a space, ...) decoded."""
    return _ESCAPE.sub(lambda m: bytes([int(m.group(1), 8)]), field)
