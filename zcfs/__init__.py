"""zcfs: a zero-copy FUSE passthrough filesystem."""

from .testing import mounted

__all__ = ["mounted"]
