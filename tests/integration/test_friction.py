"""What a new user meets first: `zcfs --version` and `--help`, the optional
packages (`zcfs[bench]`, `zcfs[metrics]`) and what zcfs says without them,
and the Python API's Mount used as a path.
"""

from __future__ import annotations

import importlib.metadata
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import fuse_skip_reason

import zcfs
from zcfs.cli import SUBCOMMANDS

TIMEOUT = 30


def run_zcfs(*args: str | Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "zcfs", *map(str, args)], capture_output=True, text=True,
                          timeout=TIMEOUT, stdin=subprocess.DEVNULL, env=env)


# -- --version and --help ----------------------------------------------------

@pytest.mark.parametrize("flag", ["--version", "-V"])
def test_version(flag):
    result = run_zcfs(flag)
    assert (result.returncode, result.stdout, result.stderr) == (0, f"zcfs {zcfs.__version__}\n", "")
    assert importlib.metadata.version("zcfs") == zcfs.__version__  # the package's metadata reads the same constant


def test_help_names_the_other_commands():
    result = run_zcfs("--help")
    assert result.returncode == 0 and result.stderr == ""
    assert "zcfs stats MOUNTPOINT" in result.stdout and "zcfs bench" in result.stdout
    assert all(f"zcfs {name}" in result.stdout for name in SUBCOMMANDS)
