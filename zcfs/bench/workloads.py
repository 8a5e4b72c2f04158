"""What `zcfs bench` measures: the test data sets and the workloads that run on them.

A data set is built once, directly in the backing directory, before any
mount. A workload runs against `ctx.root` (the backing directory for
direct access, a mountpoint otherwise) and times only its core with
`ctx.measure`, so preparation and cleanup (done directly in the backing
directory, where they cost the daemon nothing) stay out of the figures.
"""

from __future__ import annotations

import dataclasses
import errno
import json
import mmap
import os
import shutil
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

from ..testing import evict_page_cache

MiB = 1 << 20


@dataclasses.dataclass(frozen=True)
class Scale:
    """How big the data sets are."""

    file_mib: int        # the large file: sequential and random reads, cp
    random_mib: int      # bytes read by the random-read workloads
    sync_writes: int     # 4 KiB writes, each followed by fsync
    meta_files: int      # create, stat and unlink
    cat_files: int       # 4 KiB files read by cat on a fresh mount
    tree_files: int      # the small-file tree: tar c, untar, rm -rf
    git_files: int       # files in the generated git repository
    walk_entries: int    # empty files walked by find and ls -lR
    sqlite_inserts: int  # per process
    million: tuple[int, int]  # directories × files, for --million
    roundtrips: int = 20_000  # getxattr calls, one FUSE request each
    changes: int = 1_000      # backing-dir changes timed until visible (visible-p50, -p99)
    project_modules: int = 2_000  # modules of the generated Python project (tests: a fifth of that)
    listed_files: int = 5_000     # files in the directory `ls -l` lists
    appends: int = 10_000         # 10-byte appends to one file
    stat_files: int = 20_000      # stat() calls of stat-files (walk tree entries)


SCALES = {
    "full": Scale(1024, 256, 1000, 10_000, 5_000, 20_000, 4_800, 50_000, 1_500, (1_000, 1_000)),
    "quick": Scale(64, 8, 50, 300, 300, 600, 300, 2_000, 50, (100, 100), roundtrips=2_000, changes=200,
                   project_modules=200, listed_files=500, appends=1_000, stat_files=2_000),
    "tiny": Scale(4, 1, 10, 50, 20, 50, 20, 100, 5, (10, 10), roundtrips=50, changes=20,  # for the test suite
                  project_modules=20, listed_files=20, appends=50, stat_files=100),
}


@dataclasses.dataclass
class Measure:
    """One timed run: wall seconds, how much it moved or did, the daemon's CPU and memory."""

    seconds: float
    bytes: int = 0
    ops: int = 0
    cpu_seconds: float | None = None
    rss_mib: float | None = None


@dataclasses.dataclass
class Context:
    """Where a run works; `measure` times the part that counts."""

    root: Path                 # the tree as the configuration under test sees it
    backing: Path              # the same tree, directly
    work: Path                 # scratch space outside the backing dir
    scale: Scale
    tag: str                   # unique per run: names of files a run creates
    direct: bool               # True when root is the backing dir itself
    daemon_cpu: Callable[[], float | None] = lambda: None

    def measure(self, action: Callable[[], object], nbytes: int = 0, ops: int = 0) -> Measure:
        cpu_before = self.daemon_cpu()
        start = time.perf_counter()
        action()
        seconds = time.perf_counter() - start
        cpu_after = self.daemon_cpu()
        cpu = None if cpu_before is None or cpu_after is None else cpu_after - cpu_before
        return Measure(seconds, nbytes, ops, cpu)

    def evict_mount_cache(self, relative: str) -> None:
        """Forget the mount's cached pages of a file, so its reads cross FUSE (the backing stays warm)."""
        if not self.direct:
            evict_page_cache(self.root / relative)


class WorkloadError(Exception):
    """A workload failed on one configuration; the message says how."""


def run(args: list[str], cwd: Path | None = None, stdin: bytes | None = None,
        ok: tuple[int, ...] = (0,)) -> bytes:
    """Run a command to completion; WorkloadError with its last stderr line if it fails."""
    result = subprocess.run(args, cwd=cwd, input=stdin, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    if result.returncode not in ok:
        last = (result.stderr.decode(errors="replace").strip().splitlines() or ["no message"])[-1]
        raise WorkloadError(f"{args[0]} failed (status {result.returncode}): {last}")
    return result.stdout


# ---- data sets -----------------------------------------------------------

def _small_tree(root: Path, files: int, size: Callable[[int], int], per_dir: int = 100) -> None:
    payload = os.urandom(4096) * 2
    for i in range(files):
        directory = root / f"d{i // per_dir:05d}"
        if i % per_dir == 0:
            directory.mkdir(parents=True)
        (directory / f"f{i:07d}").write_bytes(payload[: size(i)])


def build_large(backing: Path, work: Path, scale: Scale) -> None:
    block = os.urandom(MiB)
    with open(backing / "large.bin", "wb") as f:
        for _ in range(scale.file_mib):
            f.write(block)


def build_cat(backing: Path, work: Path, scale: Scale) -> None:
    _small_tree(backing / "cat", scale.cat_files, lambda i: 4096)


def build_tree(backing: Path, work: Path, scale: Scale) -> None:
    _small_tree(backing / "tree", scale.tree_files, lambda i: 100 + (i * 37) % 3900)
    run(["tar", "cf", str(work / "tree.tar"), "tree"], cwd=backing)  # the untar source, outside the mounts


def build_repo(backing: Path, work: Path, scale: Scale) -> None:
    repo = backing / "repo"
    words = ["alpha", "beta", "gamma", "delta", "needle", "kappa", "lambda", "sigma"]
    payload = "\n".join(f"line {n} {words[n % len(words)]} " + "x" * (n % 60) for n in range(80))
    for i in range(scale.git_files):
        directory = repo / "src" / f"m{i // 50:04d}"
        directory.mkdir(parents=True, exist_ok=True)
        (directory / f"file{i:05d}.c").write_text(f"/* {i} */\n{payload[: 200 + (i * 53) % 4000]}\n")
    git = ["git", "-c", "user.name=bench", "-c", "user.email=bench@localhost", "-c", "init.defaultBranch=main"]
    run([*git, "init", "-q"], cwd=repo)
    run([*git, "add", "-A"], cwd=repo)
    run([*git, "commit", "-q", "-m", "generated"], cwd=repo)


def build_walk(backing: Path, work: Path, scale: Scale) -> None:
    _small_tree(backing / "walk", scale.walk_entries, lambda i: 0)


def build_million(backing: Path, work: Path, scale: Scale) -> None:
    dirs, per_dir = scale.million
    _small_tree(backing / "million", dirs * per_dir, lambda i: 0, per_dir=per_dir)


def build_listing(backing: Path, work: Path, scale: Scale) -> None:
    _small_tree(backing / "listing", scale.listed_files, lambda i: 1, per_dir=scale.listed_files)


# The generated Python project: modules in subpackages of `pkg`, and a test
# file per five modules that imports five of them and reads its own data file.
_MODULE = '"""Module {i}."""\nimport os\n\n' + "".join(
    f"\ndef f{k}(x):\n    return x * {k} + len(os.sep) - 1\n\n" for k in range(20))
_TEST = """import json
import os
{imports}

DATA = os.path.join(os.path.dirname(__file__), "data", "case{t:05d}.json")


def test_it():
    with open(DATA) as f:
        assert json.load(f)["n"] == {t}
    assert {first}.f1(1) == 1
"""


def _module(i: int) -> tuple[str, str]:
    """The subpackage and module name of module i."""
    return f"sub{i // 50:03d}", f"mod{i:05d}"


def build_project(backing: Path, work: Path, scale: Scale) -> None:
    root = backing / "project"
    modules = scale.project_modules
    (root / "src" / "pkg").mkdir(parents=True)
    (root / "src" / "pkg" / "__init__.py").write_text('"""The generated package."""\n')
    for i in range(modules):
        sub, name = _module(i)
        directory = root / "src" / "pkg" / sub
        if not directory.exists():
            directory.mkdir()
            (directory / "__init__.py").write_text("")
        (directory / f"{name}.py").write_text(_MODULE.format(i=i))
    (root / "tests" / "data").mkdir(parents=True)
    (root / "tests" / "conftest.py").write_text("import pkg  # noqa: F401\n")
    (root / "pyproject.toml").write_text('[project]\nname = "generated"\n')
    for t in range(_tests(scale)):
        picked = [_module((t * 5 + k) % modules) for k in range(5)]
        imports = "\n".join(f"from pkg.{sub} import {name}" for sub, name in picked)
        (root / "tests" / f"test_{t:05d}.py").write_text(_TEST.format(imports=imports, t=t, first=picked[0][1]))
        (root / "tests" / "data" / f"case{t:05d}.json").write_text(json.dumps({"n": t}))


def _tests(scale: Scale) -> int:
    return max(scale.project_modules // 5, 1)


DATASETS: dict[str, Callable[[Path, Path, Scale], None]] = {
    "large": build_large, "cat": build_cat, "tree": build_tree, "repo": build_repo,
    "walk": build_walk, "million": build_million, "listing": build_listing, "project": build_project,
}


# ---- workloads -----------------------------------------------------------

def dd(source: str, target: str, extra: tuple[str, ...] = ()) -> None:
    run(["dd", f"if={source}", f"of={target}", "bs=1M", *extra])


def seq_read_warm(ctx: Context) -> Measure:
    ctx.evict_mount_cache("large.bin")
    return ctx.measure(lambda: dd(str(ctx.root / "large.bin"), "/dev/null"), nbytes=ctx.scale.file_mib * MiB)


def seq_read_cold(ctx: Context) -> Measure:
    evict_page_cache(ctx.backing / "large.bin")  # no effect on tmpfs: the machine description says so
    ctx.evict_mount_cache("large.bin")
    return ctx.measure(lambda: dd(str(ctx.root / "large.bin"), "/dev/null"), nbytes=ctx.scale.file_mib * MiB)


def seq_reread(ctx: Context) -> Measure:
    """The large file read again while the mount's page cache holds it (read once, untimed, first)."""
    path = str(ctx.root / "large.bin")
    dd(path, "/dev/null")
    return ctx.measure(lambda: dd(path, "/dev/null"), nbytes=ctx.scale.file_mib * MiB)


def mmap_read(ctx: Context) -> Measure:
    """The large file mapped and every page touched once, the mount's cache evicted first."""
    ctx.evict_mount_cache("large.bin")
    path = ctx.root / "large.bin"

    def touch_every_page() -> None:
        with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ) as mapped:
            for offset in range(0, len(mapped), mmap.PAGESIZE):
                mapped[offset]
    return ctx.measure(touch_every_page, nbytes=ctx.scale.file_mib * MiB)


def fio(ctx: Context, path: Path, rw: str, bs: str, size: int, **options: object) -> Measure:
    """Run one fio job; fio's own runtime (without its start-up) is the time."""
    args = ["fio", "--name=bench", f"--filename={path}", f"--rw={rw}", f"--bs={bs}", f"--size={size}",
            "--ioengine=psync", "--invalidate=0", "--output-format=json", "--group_reporting"]
    args += [f"--{key}={value}" for key, value in options.items()]
    cpu_before = ctx.daemon_cpu()
    report = json.loads(run(args))
    cpu_after = ctx.daemon_cpu()
    job = report["jobs"][0]
    side = job["read"] if rw.endswith("read") else job["write"]
    seconds = max(side["runtime"], 1) / 1000  # milliseconds, of the slowest job
    cpu = None if cpu_before is None or cpu_after is None else cpu_after - cpu_before
    return Measure(seconds, side["io_bytes"], side["total_ios"], cpu)


def random_read(ctx: Context) -> Measure:
    ctx.evict_mount_cache("large.bin")
    return fio(ctx, ctx.root / "large.bin", "randread", "4k", ctx.scale.file_mib * MiB,
               io_size=ctx.scale.random_mib * MiB)


def random_read_parallel(ctx: Context) -> Measure:
    ctx.evict_mount_cache("large.bin")
    return fio(ctx, ctx.root / "large.bin", "randread", "4k", ctx.scale.file_mib * MiB,
               io_size=ctx.scale.random_mib * MiB // 4, numjobs=4)


def _seq_write(ctx: Context, block_kib: int) -> Measure:
    """dd of file_mib MiB (at most 256 MiB below 1 MiB blocks: each write(2) is one WRITE) with fsync."""
    name = f"write-{ctx.tag}.bin"
    mib = ctx.scale.file_mib if block_kib >= 1024 else min(ctx.scale.file_mib, 256)
    args = (f"bs={block_kib}K", f"count={mib * 1024 // block_kib}", "conv=fsync")
    try:
        return ctx.measure(lambda: run(["dd", "if=/dev/zero", f"of={ctx.root / name}", *args]), nbytes=mib * MiB)
    finally:
        # Through the mount first: a peer that caches names must not keep a removed one.
        for where in (ctx.root, ctx.backing):
            (where / name).unlink(missing_ok=True)


def seq_write(ctx: Context) -> Measure:
    return _seq_write(ctx, 1024)


def seq_write_128k(ctx: Context) -> Measure:
    return _seq_write(ctx, 128)


def seq_write_16k(ctx: Context) -> Measure:
    return _seq_write(ctx, 16)


def sync_writes(ctx: Context) -> Measure:
    path = ctx.root / f"sync-{ctx.tag}.bin"
    try:
        return fio(ctx, path, "write", "4k", ctx.scale.sync_writes * 4096, fsync=1)
    finally:
        (ctx.backing / path.name).unlink(missing_ok=True)


def copy_large(ctx: Context) -> Measure:
    name = f"copy-{ctx.tag}.bin"
    try:
        return ctx.measure(lambda: run(["cp", str(ctx.root / "large.bin"), str(ctx.root / name)]),
                           nbytes=ctx.scale.file_mib * MiB)
    finally:
        (ctx.backing / name).unlink(missing_ok=True)


def create_stat_unlink(ctx: Context) -> Measure:
    directory = ctx.root / f"meta-{ctx.tag}"
    names = [str(directory / f"f{i:06d}") for i in range(ctx.scale.meta_files)]

    def action() -> None:
        os.mkdir(directory)
        for name in names:
            os.close(os.open(name, os.O_CREAT | os.O_WRONLY | os.O_EXCL, 0o644))
        for name in names:
            os.stat(name)
        for name in names:
            os.unlink(name)
        os.rmdir(directory)

    try:
        return ctx.measure(action, ops=3 * len(names))
    finally:
        shutil.rmtree(ctx.backing / directory.name, ignore_errors=True)


def cat_small(ctx: Context) -> Measure:
    files = sorted(str(p.relative_to(ctx.backing)) for p in (ctx.backing / "cat").rglob("f*"))
    listing = "\0".join(files).encode()
    return ctx.measure(lambda: run(["xargs", "-0", "cat"], cwd=ctx.root, stdin=listing),
                       nbytes=4096 * len(files), ops=len(files))


def tar_create(ctx: Context) -> Measure:
    # GNU tar skips reading files when the archive is /dev/null, so the archive goes through a pipe.
    script = "tar cf - tree | cat >/dev/null; exit ${PIPESTATUS[0]}"
    return ctx.measure(lambda: run(["bash", "-c", script], cwd=ctx.root), ops=ctx.scale.tree_files)


def untar(ctx: Context) -> Measure:
    target = ctx.root / f"untar-{ctx.tag}"
    try:
        os.mkdir(target)
        return ctx.measure(lambda: run(["tar", "xf", str(ctx.work / "tree.tar"), "-C", str(target)]),
                           ops=ctx.scale.tree_files)
    finally:
        shutil.rmtree(ctx.backing / target.name, ignore_errors=True)


def remove_tree(ctx: Context) -> Measure:
    name = f"rm-{ctx.tag}"
    (ctx.backing / name).mkdir()
    run(["tar", "xf", str(ctx.work / "tree.tar"), "-C", str(ctx.backing / name)])
    try:
        return ctx.measure(lambda: run(["rm", "-rf", str(ctx.root / name)]), ops=ctx.scale.tree_files)
    finally:
        shutil.rmtree(ctx.backing / name, ignore_errors=True)


def git_status(ctx: Context) -> Measure:
    return ctx.measure(lambda: run(["git", "status", "--porcelain"], cwd=ctx.root / "repo"),
                       ops=ctx.scale.git_files)


def git_grep(ctx: Context) -> Measure:
    return ctx.measure(lambda: run(["git", "grep", "-c", "needle"], cwd=ctx.root / "repo", ok=(0, 1)),
                       ops=ctx.scale.git_files)


def _visibility_latencies(ctx: Context) -> list[float]:
    """Seconds from a change made directly in the backing dir until a stat through
    `ctx.root` shows it, for scale.changes changes (a size that grows by one each time)."""
    name = f"visible-{ctx.tag}"
    target, seen = ctx.backing / name, ctx.root / name
    target.write_bytes(b"")
    os.stat(seen)  # cached from here on (cache=watch, cache=always)
    latencies = []
    try:
        for size in range(1, ctx.scale.changes + 1):
            start = time.perf_counter()
            os.truncate(target, size)
            deadline = start + 1.0
            while os.stat(seen).st_size != size:
                if time.perf_counter() > deadline:
                    raise WorkloadError(f"a change to {name} stayed unseen for 1 s")
            latencies.append(time.perf_counter() - start)
    finally:
        target.unlink()
    return sorted(latencies)


def visibility_p50(ctx: Context) -> Measure:
    latencies = _visibility_latencies(ctx)
    return Measure(latencies[len(latencies) // 2], ops=len(latencies))


def visibility_p99(ctx: Context) -> Measure:
    latencies = _visibility_latencies(ctx)
    return Measure(latencies[len(latencies) * 99 // 100], ops=len(latencies))


def find_walk(ctx: Context) -> Measure:
    return ctx.measure(lambda: run(["find", "walk"], cwd=ctx.root), ops=ctx.scale.walk_entries)


def ls_walk(ctx: Context) -> Measure:
    return ctx.measure(lambda: run(["ls", "-lR", "walk"], cwd=ctx.root), ops=ctx.scale.walk_entries)


def du_walk(ctx: Context) -> Measure:
    return ctx.measure(lambda: run(["du", "-s", "walk"], cwd=ctx.root), ops=ctx.scale.walk_entries)


def find_stat_walk(ctx: Context) -> Measure:
    """find that stats every entry (-size): one LOOKUP each when cold, so the kernel remembers them all."""
    return ctx.measure(lambda: run(["find", "walk", "-size", "+1G"], cwd=ctx.root), ops=ctx.scale.walk_entries)


def stat_files(ctx: Context) -> Measure:
    """stat() of the walk tree's first stat_files entries: with entry and attribute timeouts of 0, a LOOKUP each."""
    paths = [ctx.root / "walk" / f"d{i // 100:05d}" / f"f{i:07d}" for i in range(ctx.scale.stat_files)]

    def action() -> None:
        for path in paths:
            os.stat(path)
    return ctx.measure(action, ops=len(paths))


def list_long(ctx: Context) -> Measure:
    return ctx.measure(lambda: run(["ls", "-l", "listing/d00000"], cwd=ctx.root), ops=ctx.scale.listed_files)


def appends(ctx: Context) -> Measure:
    """10-byte appends to one file (write(2) used to ask for security.capability before each)."""
    name = f"appends-{ctx.tag}.log"
    count = ctx.scale.appends

    def action() -> None:
        fd = os.open(ctx.root / name, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            for _ in range(count):
                os.write(fd, b"0123456789")
        finally:
            os.close(fd)
    try:
        return ctx.measure(action, ops=count)
    finally:
        for where in (ctx.root, ctx.backing):
            (where / name).unlink(missing_ok=True)


# The file accesses of a test run: a runner's probes for its configuration
# files, a walk of the tests directory, and each test module imported (its
# imports with it) and run, which reads its data file. The first run writes
# the .pyc files (__pycache__) that later runs check against their sources and read.
_TEST_RUN = """
import importlib, os, sys
root = sys.argv[1]
sys.path[:0] = [os.path.join(root, "src"), os.path.join(root, "tests")]
for name in ("pyproject.toml", "setup.cfg", "tox.ini", "pytest.ini", "tests/__init__.py"):
    os.path.exists(os.path.join(root, name))
import conftest
ran = 0
for directory, subdirectories, names in os.walk(os.path.join(root, "tests")):
    for name in sorted(names):
        if name.startswith("test_") and name.endswith(".py"):
            os.stat(os.path.join(directory, name))
            importlib.import_module(name[:-3]).test_it()
            ran += 1
print(ran)
"""


def rerun_tests(ctx: Context) -> Measure:
    tests = _tests(ctx.scale)

    def action() -> None:
        ran = run([sys.executable, "-I", "-c", _TEST_RUN, str(ctx.root / "project")])
        if int(ran) != tests:
            raise WorkloadError(f"the test run ran {int(ran)} tests, not {tests}")
    return ctx.measure(action, ops=tests)


def find_million(ctx: Context) -> Measure:
    dirs, per_dir = ctx.scale.million
    return ctx.measure(lambda: run(["find", "million"], cwd=ctx.root), ops=dirs * per_dir)


def du_million(ctx: Context) -> Measure:
    dirs, per_dir = ctx.scale.million
    return ctx.measure(lambda: run(["du", "-s", "million"], cwd=ctx.root), ops=dirs * per_dir)


def round_trip(ctx: Context) -> Measure:
    """getxattr of a name the file lacks, over and over: no kernel cache answers
    it, so every call is one whole FUSE round trip (request, daemon, reply,
    wake-up), the floor under every metadata workload above."""
    path = ctx.root / f"roundtrip-{ctx.tag}"
    path.write_bytes(b"")
    calls = ctx.scale.roundtrips

    def action() -> None:
        for _ in range(calls):
            try:
                os.getxattr(path, "user.zcfs-bench-absent")
            except OSError as exc:
                # ENOTSUP: a backing filesystem without user xattrs (still asked each time).
                if exc.errno not in (errno.ENODATA, errno.ENOTSUP):
                    raise WorkloadError(f"getxattr: {exc.strerror}") from None
            else:
                raise WorkloadError("getxattr found user.zcfs-bench-absent")

    try:
        return ctx.measure(action, ops=calls)
    finally:
        path.unlink(missing_ok=True)


# Each writer inserts its rows one transaction at a time (the synced-write pattern of small apps).
_SQLITE_WRITER = """
import sqlite3, sys
path, mode, count, writer = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
db = sqlite3.connect(path, timeout=600, isolation_level=None)
db.execute(f"PRAGMA journal_mode={mode}")
for i in range(count):
    db.execute("INSERT INTO t (writer, n, payload) VALUES (?, ?, ?)", (writer, i, "x" * 100))
db.close()
"""


def _sqlite(ctx: Context, mode: str) -> Measure:
    name = f"sqlite-{ctx.tag}.db"
    path = ctx.root / name
    count = ctx.scale.sqlite_inserts
    try:
        db = sqlite3.connect(path, isolation_level=None)
        db.execute(f"PRAGMA journal_mode={mode}")
        db.execute("CREATE TABLE t (writer TEXT, n INTEGER, payload TEXT)")
        db.close()
    except sqlite3.Error as exc:
        raise WorkloadError(f"sqlite: {exc}") from None

    def action() -> None:
        writers = [subprocess.Popen([sys.executable, "-c", _SQLITE_WRITER, str(path), mode, str(count), str(w)],
                                    stderr=subprocess.PIPE) for w in range(2)]
        failures = [w.stderr.read().decode(errors="replace").strip().splitlines()[-1:] for w in writers
                    if w.wait() != 0]
        if failures:
            raise WorkloadError(f"a sqlite writer failed: {failures[0][0] if failures[0] else 'no message'}")

    try:
        return ctx.measure(action, ops=2 * count)
    finally:
        for suffix in ("", "-journal", "-wal", "-shm"):
            # Through the mount first: a cache=always mount would not notice a
            # removal behind its back, and the next round would find the table.
            for where in (ctx.root, ctx.backing):
                try:
                    (where / (name + suffix)).unlink(missing_ok=True)
                except OSError:
                    pass  # a mount that died: the backing dir is next


def sqlite_journal(ctx: Context) -> Measure:
    return _sqlite(ctx, "DELETE")


def sqlite_wal(ctx: Context) -> Measure:
    return _sqlite(ctx, "WAL")


@dataclasses.dataclass(frozen=True)
class Workload:
    """A named measurement: its chart panel, data set, and whether each run gets a fresh mount."""

    name: str
    group: str
    description: str
    dataset: str | None
    run: Callable[[Context], Measure]
    unit: str = "s"            # what the table shows: "MB/s", "IOPS" or "s" (seconds per run)
    fresh_mount: bool = False  # cold: the kernel's caches of the mount start empty
    warmup: bool = False       # run once untimed first, so the timed run is warm
    by_opcode: bool = False    # the table shows the run's FUSE requests by opcode (zcfs)
    expect: Expectation | None = None  # what the run's requests must be, checked and shown (zcfs)


@dataclasses.dataclass(frozen=True)
class Expectation:
    """A statement about a run's FUSE requests (by opcode, from the stats layer), and its check."""

    text: str
    allowed: frozenset[str]               # opcodes the run may send, any number of times
    bounded: tuple[str, str] | None = None  # (A, B): A may be sent, at most as often as B

    def unmet(self, requests: dict[str, float]) -> str | None:
        """None when met; else what broke it."""
        extra = {op: n for op, n in requests.items() if n and op not in self.allowed}
        if self.bounded:
            op, per = self.bounded
            if extra.get(op, 0) <= requests.get(per, 0):
                extra.pop(op, None)
        return ", ".join(f"{op} {n:g}" for op, n in sorted(extra.items())) or None


# A warm re-walk under a day's timeouts: every name and attribute is the kernel's
# to answer. What still reaches the daemon is what the kernel never caches:
# listings (cache=watch keeps none, fs.py), statfs (fts asks it of each
# directory), and a directory's attributes after it was listed (a listing
# marks its atime stale: fuse_invalidate_atime).
REVALIDATION_ONLY = Expectation(
    "no requests beyond the kernel's own revalidation: listings (OPENDIR, READDIR[PLUS], RELEASEDIR), "
    "STATFS, and at most one GETATTR per directory opened (its atime); no LOOKUP, no GETATTR of a file",
    frozenset({"OPENDIR", "READDIR", "READDIRPLUS", "RELEASEDIR", "STATFS"}), bounded=("GETATTR", "OPENDIR"))


WORKLOADS = {w.name: w for w in [
    Workload("seqread-warm", "read", "sequential read, dd bs=1M, backing cached, mount cache evicted",
             "large", seq_read_warm, unit="MB/s"),
    Workload("seqread-cold", "read", "sequential read, dd bs=1M, backing and mount caches evicted",
             "large", seq_read_cold, unit="MB/s"),
    Workload("seqread-reread", "read", "sequential read, dd bs=1M, the mount's cache holding the file",
             "large", seq_reread, unit="MB/s"),
    Workload("mmap-read", "read", "mmap of the large file, every page touched, mount cache evicted",
             "large", mmap_read, unit="MB/s"),
    Workload("randread-4k", "read", "random read, fio bs=4k, 1 job", "large", random_read, unit="IOPS"),
    Workload("randread-4k-4jobs", "read", "random read, fio bs=4k, 4 parallel jobs", "large",
             random_read_parallel, unit="IOPS"),
    Workload("seqwrite", "write", "sequential write, dd bs=1M conv=fsync", None, seq_write, unit="MB/s"),
    Workload("seqwrite-128k", "write", "sequential write, dd bs=128K conv=fsync (256 MiB at most)", None,
             seq_write_128k, unit="MB/s"),
    Workload("seqwrite-16k", "write", "sequential write, dd bs=16K conv=fsync (256 MiB at most)", None,
             seq_write_16k, unit="MB/s"),
    Workload("syncwrite-4k", "write", "4 KiB writes, fio fsync=1 after each", None, sync_writes, unit="IOPS"),
    Workload("cp-large", "write", "cp of the large file inside the tree (copy_file_range)", "large", copy_large,
             unit="MB/s"),
    Workload("create-stat-unlink", "metadata", "create, stat, unlink small files", None, create_stat_unlink),
    Workload("cat-small", "metadata", "cat of 4 KiB files, fresh mount", "cat", cat_small, fresh_mount=True),
    Workload("tar-c", "metadata", "tar c of the small-file tree, fresh mount", "tree", tar_create,
             fresh_mount=True),
    Workload("untar", "metadata", "tar x of the small-file tree", "tree", untar),
    Workload("rm-rf", "metadata", "rm -rf of the untarred tree, fresh mount", "tree", remove_tree,
             fresh_mount=True),
    Workload("git-status-cold", "metadata", "git status, fresh mount", "repo", git_status, fresh_mount=True),
    Workload("git-status-warm", "metadata", "git status, after one untimed run", "repo", git_status, warmup=True),
    Workload("git-grep-cold", "metadata", "git grep, fresh mount", "repo", git_grep, fresh_mount=True),
    Workload("git-grep-warm", "metadata", "git grep, after one untimed run", "repo", git_grep, warmup=True),
    Workload("find-cold", "metadata", "find of the walk tree, fresh mount", "walk", find_walk, fresh_mount=True),
    Workload("ls-lR-cold", "metadata", "ls -lR of the walk tree, fresh mount", "walk", ls_walk, fresh_mount=True),
    Workload("du-cold", "metadata", "du -s of the walk tree, fresh mount", "walk", du_walk, fresh_mount=True),
    Workload("round-trip", "metadata", "getxattr of an absent name: one FUSE request per call", None,
             round_trip, unit="IOPS"),
    Workload("visible-p50", "watch", "a backing-dir change seen through the mount: median of 1,000 "
             "(the scale's changes), seconds", None, visibility_p50),
    Workload("visible-p99", "watch", "a backing-dir change seen through the mount: p99 of 1,000 "
             "(the scale's changes), seconds", None, visibility_p99),
    Workload("test-rerun", "watch", "a Python project's test run (stat, open, read, import), after one "
             "untimed run", "project", rerun_tests, warmup=True),
    Workload("rewalk-warm", "watch", "find -size of the walk tree, fresh mount, after one untimed walk: "
             "requests, inodes, RSS", "walk", find_stat_walk, fresh_mount=True, warmup=True, by_opcode=True,
             expect=REVALIDATION_ONLY),
    Workload("ls-l-cold", "requests", "ls -l of one directory of files, fresh mount", "listing", list_long,
             fresh_mount=True, by_opcode=True),
    Workload("ls-l-warm", "requests", "ls -l of one directory of files, after one untimed run", "listing",
             list_long, warmup=True, by_opcode=True),
    Workload("appends", "requests", "10-byte appends to one file", None, appends, unit="IOPS", by_opcode=True),
    Workload("stat-files", "metadata", "stat() of files of the walk tree, one after another", "walk",
             stat_files, unit="IOPS"),
    Workload("sqlite-journal", "sync", "sqlite, 2 processes inserting, rollback journal", None, sqlite_journal),
    Workload("sqlite-wal", "sync", "sqlite, 2 processes inserting, WAL", None, sqlite_wal),
    Workload("million-find-cold", "million", "find of 1,000 dirs x 1,000 files, fresh mount", "million",
             find_million, fresh_mount=True, by_opcode=True),
    Workload("million-du", "million", "du -s of 1,000 dirs x 1,000 files, fresh mount", "million",
             du_million, fresh_mount=True, by_opcode=True),
]}
