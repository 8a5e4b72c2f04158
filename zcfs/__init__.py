"""zcfs: a zero-copy FUSE passthrough filesystem."""
