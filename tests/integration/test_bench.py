"""`zcfs bench`: its results document, its clean-up (also on Ctrl-C), --compare, and bad input.

Every run here uses the tiny data sets and one round: these check the
command, not the figures (performance lives in the benchmark itself).
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import fuse_skip_reason, wait_until
from zcfs.bench.command import SUITES
from zcfs.bench.workloads import SCALES

TINY = ["--scale", "tiny", "--rounds", "1"]
# The tier that must serve a zcfs configuration's reads: the proof the path really ran.
EXPECTED_PATH = {"pyfuse3": "copy", "native-off": "copy", "native-splice": "splice",
                 "native-splice+direct_io": "splice", "native-passthrough": "passthrough"}


@pytest.fixture(autouse=True)
def _needs_fuse():
    reason = fuse_skip_reason()
    if reason:
        pytest.skip(reason)


def bench(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "zcfs", "bench", *args], capture_output=True, text=True,
                          timeout=timeout)


def mounts_under(path: Path) -> list[str]:
    return [line.split()[1] for line in Path("/proc/mounts").read_text().splitlines()
            if line.split()[1].startswith(str(path))]


@pytest.fixture
def data_dir(tmp_path) -> Path:
    path = tmp_path / "data"
    path.mkdir()
    return path


def test_quick_json_has_every_row_with_ratio_and_paths(tmp_path, data_dir):
    out = tmp_path / "out"
    out.mkdir()
    result = bench(str(data_dir), "--quick", *TINY, "--json", "--output", str(out))
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    suite = SUITES["default"]
    rows = {(r["workload"], r["configuration"]): r for r in doc["results"]}
    assert set(rows) == {(w, c) for w in suite.workloads for c in suite.configs}
    failed = {c["name"] for c in doc["configurations"] if c["error"]}
    assert failed <= {"native-passthrough"}, doc["configurations"]  # only a kernel without passthrough may refuse
    for (workload, config), row in rows.items():
        if config in failed:
            continue
        assert row["error"] is None, row
        assert row["ratio"] > 0 and row["value"] > 0, row
        if config == "direct":
            assert row["ratio"] == 1.0
        elif workload == "seqread-warm":
            assert row["path_shares"][EXPECTED_PATH[config]] == 1.0, row
            assert row["cpu_s_per_gib"] is not None
    assert json.loads((out / "zcfs-bench-default.json").read_text())["results"] == doc["results"]
    assert (out / "zcfs-bench-default.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert mounts_under(tmp_path) == []
    assert list(data_dir.iterdir()) == []


def test_sigint_leaves_no_mount_and_no_data(tmp_path, data_dir):
    log = tmp_path / "stderr"
    with open(log, "w") as err:
        process = subprocess.Popen([sys.executable, "-m", "zcfs", "bench", str(data_dir), *TINY, "--rounds", "50",
                                    "--workloads", "seqread-warm,cat-small,untar", "--configs", "native",
                                    "--output", str(tmp_path), "--no-chart"],
                                   stdout=subprocess.DEVNULL, stderr=err)
    try:
        # Mid-run: past the first round, with mounts up and workloads creating files.
        assert wait_until(lambda: "round 2/" in log.read_text() or process.poll() is not None, timeout=120)
        assert process.poll() is None, log.read_text()
        assert mounts_under(data_dir)
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=120) == 130
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert "interrupted" in log.read_text()
    assert mounts_under(tmp_path) == []
    assert list(data_dir.iterdir()) == []
    assert not (tmp_path / "zcfs-bench-default.json").exists()


def test_round_trip_crosses_fuse_once_per_call(tmp_path, data_dir):
    """The round-trip workload's calls are answered by the daemon, not a kernel cache."""
    result = bench(str(data_dir), *TINY, "--workloads", "round-trip", "--configs", "native,pyfuse3",
                   "--json", "--output", str(tmp_path), "--no-chart")
    assert result.returncode == 0, result.stderr
    rows = {r["configuration"]: r for r in json.loads(result.stdout)["results"]}
    assert set(rows) == {"direct", "native", "pyfuse3"}
    for name, row in rows.items():
        assert row["error"] is None and row["unit"] == "IOPS" and row["value"] > 0, row
        if name != "direct":
            assert row["requests"] >= SCALES["tiny"].roundtrips, row
    assert mounts_under(tmp_path) == []
    assert list(data_dir.iterdir()) == []


def test_watch_suite_compares_the_default_with_direct_and_always(tmp_path, data_dir):
    """Issue 20's set: every row measured (cache=always cannot show backing changes), and the warm
    re-walk sends only what the kernel's own revalidation needs."""
    result = bench(str(data_dir), *TINY, "--suite", "watch", "--json", "--output", str(tmp_path), "--no-chart")
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    suite = SUITES["watch"]
    rows = {(r["workload"], r["configuration"]): r for r in doc["results"]}
    assert set(rows) == {(w, c) for w in suite.workloads for c in ["direct", "native", "native+cache=always"]}
    for (workload, config), row in rows.items():
        if workload.startswith("visible-") and config == "native+cache=always":
            assert "stayed unseen" in row["error"], row
            continue
        assert row["error"] is None and row["value"] > 0, row
    assert 0 < rows[("visible-p50", "native")]["value"] <= rows[("visible-p99", "native")]["value"] < 1
    walks = SCALES["tiny"].walk_entries
    for config in ("native", "native+cache=always"):
        rewalk = rows[("rewalk-warm", config)]
        assert rewalk["expectation"]["met"], rewalk
        assert "LOOKUP" not in rewalk["requests_by_opcode"] and rewalk["requests_by_opcode"]["OPENDIR"] > 0
        assert rewalk["inodes"] >= walks and rewalk["rss_per_inode_bytes"] is not None, rewalk
    assert rows[("rewalk-warm", "native")]["requests_by_opcode"]["READDIRPLUS"] > 0  # watch keeps no listings
    assert "READDIRPLUS" not in rows[("rewalk-warm", "native+cache=always")]["requests_by_opcode"]
    assert rows[("rewalk-warm", "direct")]["expectation"] is None  # nothing to count there
    assert mounts_under(tmp_path) == []
    assert list(data_dir.iterdir()) == []


def test_the_folded_scripts_count_requests_and_compare_stats_off(tmp_path, data_dir):
    """What scripts/bench_roundtrips.py, bench_write.py and bench_stats_overhead.py measured, as workloads."""
    result = bench(str(data_dir), *TINY, "--workloads", "ls-l-cold,appends,seqwrite-16k,stat-files",
                   "--configs", "native-off,uncached,uncached-nostats", "--versus", "uncached-nostats",
                   "--json", "--output", str(tmp_path), "--no-chart")
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc["versus"] == "uncached-nostats"
    rows = {(r["workload"], r["configuration"]): r for r in doc["results"]}
    for row in rows.values():
        assert row["error"] is None and row["value"] > 0 and row["versus"] > 0, row
    assert all(rows[(w, "uncached-nostats")]["versus"] == 1.0 for w in ("appends", "stat-files"))
    tiny = SCALES["tiny"]
    listed = rows[("ls-l-cold", "native-off")]["requests_by_opcode"]
    assert listed["READDIRPLUS"] > 0 and listed["OPENDIR"] == 1, listed
    appended = rows[("appends", "native-off")]["requests_by_opcode"]
    assert appended["WRITE"] == tiny.appends and appended.get("GETXATTR", 0) <= 1, appended  # killpriv_v2
    assert rows[("seqwrite-16k", "native-off")]["paths"]["copy"] >= 4 * 1024 // 16  # a WRITE per write(2)
    assert rows[("stat-files", "uncached")]["requests_by_opcode"]["LOOKUP"] >= tiny.stat_files
    assert rows[("stat-files", "uncached-nostats")]["requests"] == 0  # ZCFS_NO_STATS: nothing recorded
    assert mounts_under(tmp_path) == []
    assert list(data_dir.iterdir()) == []


@pytest.mark.skipif(shutil.which("mergerfs") is None, reason="mergerfs not installed (scripts/setup.sh installs it)")
def test_compare_puts_mergerfs_in_the_table(tmp_path, data_dir):
    result = bench(str(data_dir), *TINY, "--workloads", "seqread-warm,cat-small", "--configs", "native",
                   "--compare", "mergerfs=mergerfs -o cache.files=off {backing} {mountpoint}",
                   "--output", str(tmp_path), "--no-chart")
    assert result.returncode == 0, result.stderr
    lines = [line for line in result.stdout.splitlines() if "mergerfs" in line]
    assert len(lines) == 2, result.stdout
    doc = json.loads((tmp_path / "zcfs-bench-default.json").read_text())
    rows = [r for r in doc["results"] if r["configuration"] == "mergerfs"]
    assert [r["workload"] for r in rows] == ["seqread-warm", "cat-small"]
    for row in rows:
        assert row["kind"] == "compare" and row["ratio"] > 0 and row["path_shares"] is None, row
        assert row["daemon_cpu_s"] is not None, row  # its daemon was found by its mountpoint
    assert mounts_under(tmp_path) == []
    assert list(data_dir.iterdir()) == []


@pytest.mark.parametrize("args, status, message", [
    (["--workloads", "seqread-warm,nope"], 2, "unknown workload 'nope'"),
    (["--configs", "native-fast"], 2, "unknown configuration 'native-fast'"),
    (["--compare", "broken=false {backing} {mountpoint}"], 1, "broken: false exited (status 1) without mounting"),
    (["--compare", "nomount=true {backing}"], 2, "needs {backing} and {mountpoint}"),
    (["--rounds", "0"], 2, "--rounds needs at least 1"),
    (["--versus", "native"], 2, "--versus native: not among the configurations measured"),
])
def test_bad_input_gets_one_line(tmp_path, data_dir, args, status, message):
    result = bench(str(data_dir), *TINY, "--output", str(tmp_path), *args)
    assert result.returncode == status, result.stderr
    assert result.stderr.count("\n") == 1 and message in result.stderr, result.stderr
    assert result.stdout == ""
    assert mounts_under(tmp_path) == []
    assert list(data_dir.iterdir()) == []


def test_dir_must_be_a_directory(tmp_path):
    (tmp_path / "file").write_text("")
    result = bench(str(tmp_path / "file"))
    assert result.returncode == 2
    assert result.stderr == f"zcfs bench: DIR is not a directory: {tmp_path / 'file'}\n"


def test_a_configuration_that_cannot_mount_is_reported_not_fatal(tmp_path, data_dir):
    """`-o cache=always` on a daemon that may not know it yet: a failed row or a measured one, never a crash."""
    result = bench(str(data_dir), *TINY, "--workloads", "git-status-warm", "--configs", "native+cache=always",
                   "--json", "--output", str(tmp_path), "--no-chart")
    assert result.returncode == 0, result.stderr
    rows = json.loads(result.stdout)["results"]
    row = next(r for r in rows if r["configuration"] == "native+cache=always")
    assert (row["error"] is None and row["ratio"] > 0) or "cache" in row["error"], row
    assert mounts_under(tmp_path) == []
