"""fio with data verification through the mount, on every mode.

Four jobs each write a file of their own at random offsets with random
block sizes (1k-256k) while reading others back (rw=randrw), then fio reads
every written block again and checks its crc32c header (verify_fatal: the
first bad block ends the run). Three ways of doing I/O: buffered psync,
O_DIRECT with libaio (several requests in flight at once), and mmap. After
the run, a second fio pass (`--verify_only`) checks the same blocks in the
backing directory itself, so the data really landed there, not only in the
mount's page cache.

Sizes are CI-short; ZCFS_FIO_SIZE (per job, fio syntax: 64m) raises them
(scripts/stress_long.sh). No --loops: a verify_only pass cannot replay a
multi-loop run's blocks.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess

import pytest

SIZE = os.environ.get("ZCFS_FIO_SIZE", "8m")

RUNS = {
    "buffered": ["--ioengine=psync", "--direct=0"],
    "direct": ["--ioengine=libaio", "--iodepth=8", "--direct=1"],
    "mmap": ["--ioengine=mmap", "--direct=0"],
}

pytestmark = pytest.mark.skipif(shutil.which("fio") is None, reason="fio not installed (scripts/setup.sh)")


def fio(directory, kind: str, cwd, *extra: str) -> tuple[subprocess.CompletedProcess, list[dict]]:
    """Run the verify workload in `directory`; returns the process and its jobs' JSON."""
    command = [
        "fio", "--name=verify", f"--directory={directory}", "--rw=randrw", "--bsrange=1k-256k",
        f"--size={SIZE}", "--numjobs=4", "--verify=crc32c", "--verify_fatal=1",
        "--verify_state_save=0", "--output-format=json", *RUNS[kind], *extra,
    ]
    done = subprocess.run(command, capture_output=True, text=True, cwd=cwd, timeout=600)
    start = done.stdout.find("{")
    jobs = json.loads(done.stdout[start:])["jobs"] if start >= 0 else []
    return done, jobs


def assert_verified(done: subprocess.CompletedProcess, jobs: list[dict], what: str) -> None:
    report = f"{what}: fio exit {done.returncode}\n{done.stderr[-3000:]}"
    assert done.returncode == 0, report
    assert len(jobs) == 4, report
    for job in jobs:
        assert job["error"] == 0, f"{report}\njob error {job['error']}"
        written, read = job["write"]["io_bytes"], job["read"]["io_bytes"]
        # every written block is read back once more by the verify phase
        assert written > 0 and read >= written, f"{what}: wrote {written}, read {read}"
    assert "verify failed" not in done.stderr and "bad header" not in done.stderr, report


@pytest.mark.parametrize("kind", RUNS)
def test_fio_verify(mnt, kind, tmp_path):
    done, jobs = fio(mnt.path, kind, tmp_path)
    assert_verified(done, jobs, f"[{mnt.mode}] fio {kind} through the mount")
    # fio closed its files (FLUSH writes back mmap'ed pages): the backing files hold the data.
    done, jobs = fio(mnt.backing, kind, tmp_path, "--verify_only")
    assert_verified(done, jobs, f"[{mnt.mode}] fio {kind} --verify_only in the backing dir")
    assert mnt.process.poll() is None, "the daemon died"
    if mnt.engine == "native":
        # the data went through the tier this mode asks for
        stats = mnt.stats()
        tier = {"native-auto": "passthrough", "native-splice": "splice", "native-off": "copy"}[mnt.mode]
        used = stats["read"][tier]
        assert used.get("opens", 0) + used.get("bytes", 0) > 0, f"tier {tier} unused: {stats['read']}"
        assert not stats.get("fallbacks"), f"fallbacks: {stats['fallbacks']}"
