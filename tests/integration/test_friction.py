"""What a new user meets first: `zcfs --version` and `--help`, the optional
packages (`zcfs[bench]`, `zcfs[metrics]`) and what zcfs says without them,
and the Python API's Mount used as a path.
"""

from __future__ import annotations

import importlib.metadata
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import fuse_skip_reason, mount_is_listed

import zcfs
from zcfs.cli import SUBCOMMANDS
from zcfs.testing import unmount

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


# -- the optional packages: zcfs[metrics], zcfs[bench] ---------------------------

OPTIONAL = ["prometheus_client", "matplotlib"]


@pytest.fixture
def without(tmp_path):
    """The environment of a zcfs installed without some packages: each named one cannot be imported.

    A directory on PYTHONPATH (searched before site-packages) holds a
    package of that name whose import fails as a missing one does.
    """
    def make(*modules: str) -> dict[str, str]:
        hiding = tmp_path / "hiding"
        for module in modules:
            (hiding / module).mkdir(parents=True)
            (hiding / module / "__init__.py").write_text(
                f'raise ModuleNotFoundError("No module named {module!r}", name={module!r})\n')
        return dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(hiding), os.environ.get("PYTHONPATH")])))
    return make


@pytest.fixture
def paths(tmp_path):
    """A backing dir and a mountpoint; anything left mounted there is unmounted at the end."""
    (tmp_path / "backing").mkdir()
    (tmp_path / "mnt").mkdir()
    yield tmp_path / "backing", tmp_path / "mnt"
    unmount(tmp_path / "mnt")


def test_the_hiding_works(without):
    result = subprocess.run([sys.executable, "-c", "import prometheus_client"], env=without("prometheus_client"),
                            capture_output=True, text=True, timeout=TIMEOUT)
    assert result.returncode == 1 and "ModuleNotFoundError: No module named 'prometheus_client'" in result.stderr


@pytest.mark.parametrize("how", ["background", "foreground"])
def test_metrics_without_prometheus_client_is_one_line(how, without, paths):
    backing, mnt = paths
    result = run_zcfs(backing, mnt, "--metrics", "127.0.0.1:9100", *(["-f"] if how == "foreground" else []),
                      env=without("prometheus_client"))
    assert result.returncode != 0
    assert result.stderr == "zcfs: --metrics needs prometheus_client: pip install 'zcfs[metrics]'\n"
    assert not mount_is_listed(mnt)


def test_bench_chart_without_matplotlib_is_one_line(without, tmp_path):
    """Said before anything is measured (the run is tiny, in case it is not)."""
    result = run_zcfs("bench", tmp_path, "--workloads", "round-trip", "--configs", "native", "--scale", "tiny",
                      "--rounds", "1", "--output", tmp_path, env=without("matplotlib"))
    assert result.returncode != 0
    assert result.stderr == ("zcfs bench: the chart needs matplotlib: pip install 'zcfs[bench]' "
                             "(or --no-chart)\n")
    assert result.stdout == "" and not list(tmp_path.glob("zcfs-bench-*"))


def test_commands_import_no_optional_package():
    """The daemon, `zcfs stats`, `zcfs bench`'s command line and the Python API load neither package."""
    code = ("import sys, zcfs, zcfs.cli, zcfs.fs, zcfs.engine.native, zcfs.engine.reference, zcfs.statscli, "
            "zcfs.bench.command, zcfs.pytest_plugin\n"
            f"print(sorted({{m.partition('.')[0] for m in sys.modules}} & {set(OPTIONAL)!r}))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=TIMEOUT)
    assert (result.returncode, result.stdout, result.stderr) == (0, "[]\n", "")


@pytest.mark.parametrize("engine", ["native", "pyfuse3"])
@pytest.mark.parametrize("how", ["background", "foreground"])
def test_daemon_runs_without_optional_packages(engine, how, without, paths):
    """A plain mount (no --metrics) needs neither package: it mounts, serves, and `zcfs stats` reads it."""
    if reason := fuse_skip_reason():
        pytest.skip(reason)
    backing, mnt = paths
    (backing / "f").write_bytes(b"served without the extras")
    env = without(*OPTIONAL)
    if how == "background":
        started = run_zcfs(backing, mnt, "--engine", engine, env=env)
        assert (started.returncode, started.stderr) == (0, "")
    else:
        read_end, write_end = os.pipe()
        daemon = subprocess.Popen([sys.executable, "-m", "zcfs", backing, mnt, "--engine", engine, "-f",
                                   "--ready-fd", str(write_end)], pass_fds=(write_end,), env=env,
                                  stdin=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        os.close(write_end)
        with os.fdopen(read_end) as ready:
            assert ready.readline() == "ready\n"
    try:
        assert (mnt / "f").read_bytes() == b"served without the extras"
        stats = run_zcfs("stats", "--json", mnt, env=env)
        assert stats.returncode == 0 and stats.stderr == ""
    finally:
        unmount(mnt)
    if how == "foreground":
        assert daemon.wait(timeout=TIMEOUT) == 0
        assert "Traceback" not in daemon.stderr.read()
        daemon.stderr.close()


# -- the Python API: a Mount stands for its mountpoint ------------------------------

@pytest.mark.parametrize("engine", ["native", "pyfuse3"])
def test_mount_is_a_path(engine, tmp_path):
    if reason := fuse_skip_reason():
        pytest.skip(reason)
    backing = tmp_path / "backing"
    backing.mkdir()
    (backing / "f").write_bytes(b"read through the mount")
    with zcfs.mounted(backing, engine=engine) as m:
        assert isinstance(m, os.PathLike) and isinstance(m.path, Path)
        assert str(m) == f"{m}" == os.fspath(m) == str(m.path)
        with open(f"{m}/f", "rb") as f:
            assert f.read() == b"read through the mount"
        with open(os.path.join(m, "new"), "wb") as f:
            f.write(b"written through the mount")
        assert (m / "new").read_bytes() == b"written through the mount" == (backing / "new").read_bytes()
        assert sorted(os.listdir(m)) == ["f", "new"] and Path(m) == m.path
        assert m.stats()["engine"] == engine  # it is the mount, not a directory of that name
        assert mount_is_listed(m.path)
    assert not mount_is_listed(m.path)
