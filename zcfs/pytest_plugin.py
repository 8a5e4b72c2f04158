"""A pytest plugin (loaded by its entry point once zcfs is installed): the `zcfs_mount` fixture.

    def test_reads_splice(zcfs_mount):
        (zcfs_mount.backing / "f").write_bytes(b"x" * 65536)
        assert (zcfs_mount.path / "f").read_bytes() == b"x" * 65536
        assert zcfs_mount.stats()["read"]["splice"]["requests"] > 0

`@pytest.mark.zcfs(engine=..., zero_copy=..., options=[...])` on the test
sets how it is mounted (default: native engine, zero_copy="splice").
"""

from __future__ import annotations

from typing import Iterator

import pytest

from .testing import Mount, mounted


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "zcfs(engine='native', zero_copy='splice', options=[]): how the zcfs_mount fixture mounts")


@pytest.fixture
def zcfs_mount(tmp_path, request) -> Iterator[Mount]:
    """A zcfs mirror of an empty backing dir (`.backing`) at `.path`, for one test; always unmounted."""
    marker = request.node.get_closest_marker("zcfs")
    settings = {"engine": "native", "zero_copy": "splice", **(marker.kwargs if marker else {})}
    backing = tmp_path / "zcfs-backing"
    backing.mkdir()
    mountpoint = tmp_path / "zcfs-mnt"
    mountpoint.mkdir()
    with mounted(backing, mountpoint, **settings) as mount:
        yield mount
