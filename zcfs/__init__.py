"""zcfs: a zero-copy FUSE passthrough filesystem."""

from .testing import mounted

__version__ = "0.1.0"  # the one place: the package metadata (pyproject.toml) and `zcfs --version` read it

__all__ = ["mounted", "__version__"]
