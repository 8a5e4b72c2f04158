"""The stats channel on real mounts: what each engine and tier counts, `zcfs stats`, `--metrics`.

Snapshots are read with `statscli.read_stats` (one getxattr into a 64 KiB
buffer), so reading them adds no GETXATTR error of its own to what is compared.
"""

from __future__ import annotations

import errno
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import urllib.request
from pathlib import Path

import pytest

from conftest import fuse_skip_reason, wait_until
from stats_shape import check_shape
from zcfs.statscli import read_stats
from zcfs.testing import Mount, mount_is_listed, start_mount, stop_mount

TIMEOUT = 30
SIZE = 3 * (1 << 20) + 12345  # not a whole number of pages


def zcfs(*args: str | Path, timeout: float = TIMEOUT) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "zcfs", *map(str, args)],
                          capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)


def snapshot(mount: Mount) -> dict:
    return read_stats(str(mount.path))


def data_tier(mount: Mount, snap: dict) -> str:
    """Where this mount's READ bytes should go: passthrough, splice or copy."""
    if mount.mode == "native-auto":
        return "passthrough" if "passthrough" in snap["capabilities"] else "splice"
    return {"pyfuse3": "copy", "native-splice": "splice", "native-off": "copy"}[mount.mode]


def evict_and_read(mount: Mount, path: Path) -> int:
    """Read a file through the mount from its first byte to EOF, its page cache evicted first."""
    mount.drop_cache(path)
    return read_through(path)


def read_through(path: Path) -> int:
    """Read a file to EOF in 1 MiB requests; the number of bytes read."""
    total = 0
    with open(path, "rb", buffering=0) as f:
        while chunk := f.read(1 << 20):
            total += len(chunk)
    return total


def test_read_bytes_go_on_the_tier(mnt):
    (mnt.backing / "data").write_bytes(os.urandom(SIZE))
    target = mnt.path / "data"
    mnt.drop_cache(target)
    before = snapshot(mnt)
    assert read_through(target) == SIZE
    after = snapshot(mnt)
    tier = data_tier(mnt, before)
    opens = after["read"]["passthrough"]["opens"] - before["read"]["passthrough"]["opens"]
    moved = {path: after["read"][path]["bytes"] - before["read"][path]["bytes"] for path in ("splice", "copy")}
    requests = {path: after["read"][path]["requests"] - before["read"][path]["requests"]
                for path in ("splice", "copy")}
    if tier == "passthrough":
        assert opens == 1
        assert moved == {"splice": 0, "copy": 0} and requests == {"splice": 0, "copy": 0}
    else:
        other = "copy" if tier == "splice" else "splice"
        assert opens == 0
        assert moved[tier] == SIZE and requests[tier] > 0
        assert moved[other] == 0 and requests[other] == 0
    reads = lambda snap: snap["ops"].get("READ", {"count": 0})["count"]  # noqa: E731
    assert reads(after) - reads(before) == sum(requests.values())


def test_open_files_by_tier(mnt):
    (mnt.backing / "data").write_bytes(b"abc")
    before = snapshot(mnt)["gauges"]["open_files"]
    tier = data_tier(mnt, snapshot(mnt))
    with open(mnt.path / "data", "rb") as f:
        assert f.read() == b"abc"
        now = snapshot(mnt)["gauges"]["open_files"]
        assert now == {**before, tier: before[tier] + 1}
    # RELEASE comes after close() has returned
    assert wait_until(lambda: snapshot(mnt)["gauges"]["open_files"] == before)


def test_writes_are_counted(mnt):
    before = snapshot(mnt)
    (mnt.path / "written").write_bytes(b"w" * 100_000)
    after = snapshot(mnt)
    assert after["ops"]["CREATE"]["count"] == before["ops"].get("CREATE", {"count": 0})["count"] + 1
    if data_tier(mnt, before) == "passthrough":
        assert after["write"]["passthrough"]["opens"] == before["write"]["passthrough"]["opens"] + 1
        assert after["write"] | {"passthrough": None} == before["write"] | {"passthrough": None}
    else:  # WRITE data arrives in the request: copied
        assert after["write"]["copy"]["bytes"] - before["write"]["copy"]["bytes"] == 100_000
        assert after["write"]["copy"]["requests"] > before["write"]["copy"]["requests"]


def test_failed_lookup_counts_enoent(mode, mount_factory):
    # Without negative caching (the default caches absent names as entries
    # of node id 0, which are answers, not errors), an absent name is ENOENT.
    mnt = mount_factory(mode, options=["negative_timeout=0"])

    def enoent() -> int:
        return snapshot(mnt)["ops"].get("LOOKUP", {"errors": {}})["errors"].get("ENOENT", 0)

    before = enoent()
    with pytest.raises(FileNotFoundError):
        os.stat(mnt.path / "no-such-name")
    assert enoent() == before + 1


def test_snapshot_shape(mnt):
    (mnt.backing / "dir").mkdir()
    (mnt.backing / "dir" / "f").write_bytes(b"abc")
    assert os.listdir(mnt.path / "dir") == ["f"]
    assert (mnt.path / "dir" / "f").read_bytes() == b"abc"
    snap = snapshot(mnt)
    check_shape(snap)
    assert snap["engine"] == mnt.engine
    assert snap["options"]["mountpoint"] == str(mnt.path)
    assert snap["options"]["backing"] == str(mnt.backing)
    assert snap["gauges"]["inodes"] >= 3
    assert snap["gauges"]["in_flight"] >= 0
    if mnt.engine == "native":
        assert re.fullmatch(r"7\.\d+", snap["protocol"])
        assert "async_read" in snap["capabilities"]
        assert snap["zero_copy"] == mnt.mode.split("-")[1]
        assert {"INIT", "LOOKUP", "READDIRPLUS"} <= snap["ops"].keys()
    else:
        assert snap["protocol"] is None and snap["zero_copy"] == "off"
        assert {"LOOKUP", "READDIRPLUS", "OPEN", "READ"} <= snap["ops"].keys()
    # the value is JSON then spaces, always 64 KiB: a size asked first always fits
    raw = os.getxattr(mnt.path, "user.zcfs.stats")
    assert len(raw) == 65536 and raw.endswith(b" ") and json.loads(raw)["engine"] == mnt.engine


def test_only_the_root_has_stats(mnt):
    (mnt.backing / "sub").mkdir()
    with pytest.raises(OSError) as exc:
        os.getxattr(mnt.path / "sub", "user.zcfs.stats")
    assert exc.value.errno == errno.ENODATA


# -- the `zcfs stats` command -------------------------------------------------

def test_cli_refuses_what_is_not_a_zcfs_mount(tmp_path):
    result = zcfs("stats", tmp_path)
    assert result.returncode == 1
    assert result.stderr == f"zcfs: {tmp_path} is not a zcfs mount\n"
    assert result.stdout == ""


def test_cli_refuses_a_directory_inside_a_mount(mnt):
    (mnt.backing / "sub").mkdir()
    result = zcfs("stats", mnt.path / "sub")
    assert result.returncode == 1
    assert result.stderr == f"zcfs: {mnt.path / 'sub'} is not a zcfs mount\n"


def test_cli_table_and_json(mnt):
    with open(mnt.path / "f", "wb", buffering=0) as f:
        f.write(b"x" * 5000)
    before = snapshot(mnt)
    written = before["write"]["copy"]["bytes"]  # 0 through passthrough
    table = zcfs("stats", mnt.path)
    assert table.returncode == 0, table.stderr
    assert table.stdout.splitlines()[0] == f"zcfs mount {mnt.path} of {mnt.backing}"
    assert f"engine {mnt.engine}," in table.stdout
    assert re.search(rf"^copy +\d+ +[\d.]+ \S*B +{1 if written else 0} +{'4.9 KiB' if written else '0 B'}$",
                     table.stdout, re.M), table.stdout
    assert re.search(r"^CREATE +1 +- +[\d.]+ (us|ms) +[\d.]+ (us|ms)$", table.stdout, re.M), table.stdout
    printed = zcfs("stats", "--json", mnt.path)
    assert printed.returncode == 0, printed.stderr
    snap = json.loads(printed.stdout)
    check_shape(snap)
    assert snap["write"]["copy"]["bytes"] == written
    # reading stats adds no error to them
    errors = lambda s: s["ops"].get("GETXATTR", {"errors": {}})["errors"]  # noqa: E731
    assert errors(snapshot(mnt)) == errors(before)


def test_cli_watch_shows_rates_until_interrupted(mnt, tmp_path):
    (mnt.backing / "big").write_bytes(os.urandom(32 << 20))
    target = mnt.path / "big"
    out = tmp_path / "watch.out"
    stop = threading.Event()

    def read_in_a_loop() -> None:
        while not stop.is_set():
            mnt.drop_cache(target)
            subprocess.run(["dd", f"if={target}", "of=/dev/null", "bs=1M"], capture_output=True, check=True)

    reader = threading.Thread(target=read_in_a_loop)
    with out.open("w") as stdout:
        watcher = subprocess.Popen([sys.executable, "-m", "zcfs", "stats", "--watch", "0.2", str(mnt.path)],
                                   stdout=stdout, stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL)
    try:
        reader.start()
        tier = data_tier(mnt, snapshot(mnt))

        def busy_rate_shown() -> bool:
            for m in RATE_LINE.finditer(out.read_text()):
                shown = {"passthrough": m["opens"], "splice": m["splice"], "copy": m["copy"]}[tier]
                if float(shown) > 0:
                    return True
            return False

        assert wait_until(busy_rate_shown, timeout=TIMEOUT), out.read_text()
        watcher.send_signal(signal.SIGINT)
        assert watcher.wait(timeout=TIMEOUT) == 0
        assert "Traceback" not in watcher.stderr.read()
    finally:
        stop.set()
        if reader.is_alive():
            reader.join()
        if watcher.poll() is None:
            watcher.kill()
            watcher.wait()
        watcher.stderr.close()
    text = out.read_text()
    assert text.startswith(f"zcfs mount {mnt.path} of {mnt.backing}")
    assert "rates: after the next sample, in 0.2 s" in text
    assert "rates over the last" in text


RATE_LINE = re.compile(r"^  read +passthrough (?P<opens>[\d.]+) opens/s \| splice (?P<splice>[\d.]+) MB/s, \d+ req/s"
                       r" \| copy (?P<copy>[\d.]+) MB/s, \d+ req/s$", re.M)


def test_other_users_read_stats_of_an_allow_other_mount(mode, mount_factory, test_user):
    mount = mount_factory(mode, options=["allow_other"])
    uid, gid = test_user
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: never return into pytest
        try:
            os.close(read_end)
            os.chdir(mount.path)  # as root: pytest's tmp_path is private to root
            os.setgroups([])
            os.setgid(gid)
            os.setuid(uid)
            os.write(write_end, json.dumps(read_stats(".")).encode())
        finally:
            os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as answer:
        raw = answer.read()
    os.waitpid(pid, 0)
    assert raw, "the unprivileged reader got no statistics"
    assert json.loads(raw)["engine"] == mount.engine


# -- Prometheus metrics -----------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def metrics_mount(mode, tmp_path):
    """A mount of `mode` serving --metrics on a free local port; unmounted at the end."""
    reason = fuse_skip_reason()
    if reason:
        pytest.skip(reason)
    (tmp_path / "backing").mkdir()
    (tmp_path / "mnt").mkdir()
    port = free_port()
    # negative_timeout=0: an absent name is an ENOENT reply (see test_failed_lookup_counts_enoent)
    mount = start_mount(tmp_path / "backing", tmp_path / "mnt", mode, ["negative_timeout=0"],
                        extra_args=["--metrics", f"127.0.0.1:{port}"])
    try:
        yield mount, f"http://127.0.0.1:{port}/metrics"
    finally:
        stop_mount(mount)


def scrape(url: str) -> dict[str, float]:
    with urllib.request.urlopen(url, timeout=TIMEOUT) as response:
        assert response.status == 200
        text = response.read().decode()
    samples = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            samples[name] = float(value)
    return samples


def test_metrics_endpoint_serves_the_counters(metrics_mount):
    mount, url = metrics_mount
    (mount.backing / "data").write_bytes(os.urandom(SIZE))
    assert evict_and_read(mount, mount.path / "data") == SIZE
    with pytest.raises(FileNotFoundError):
        os.stat(mount.path / "missing")
    assert wait_until(lambda: sum(snapshot(mount)["gauges"]["open_files"].values()) == 0)
    snap = snapshot(mount)
    metrics = scrape(url)
    for path in ("splice", "copy"):
        assert metrics[f'zcfs_read_bytes_total{{path="{path}"}}'] == snap["read"][path]["bytes"]
        assert metrics[f'zcfs_read_requests_total{{path="{path}"}}'] == snap["read"][path]["requests"]
    tier = data_tier(mount, snap)
    if tier != "passthrough":
        assert metrics[f'zcfs_read_bytes_total{{path="{tier}"}}'] >= SIZE
    assert metrics["zcfs_read_passthrough_opens_total"] == snap["read"]["passthrough"]["opens"]
    assert metrics['zcfs_requests_total{opcode="LOOKUP"}'] >= 2
    assert metrics['zcfs_errors_total{errno="ENOENT",opcode="LOOKUP"}'] >= 1
    assert metrics['zcfs_request_duration_seconds_count{opcode="LOOKUP"}'] \
        == metrics['zcfs_requests_total{opcode="LOOKUP"}']
    assert metrics['zcfs_open_files{tier="copy"}'] == 0
    assert metrics["zcfs_inodes"] >= 2
    assert any(name.startswith("zcfs_info{") and f'engine="{mount.engine}"' in name for name in metrics)
    assert metrics["process_open_fds"] > 0  # the daemon's own process metrics
    # read at scrape time: a new request shows in the next scrape
    lookups = metrics['zcfs_requests_total{opcode="LOOKUP"}']
    with pytest.raises(FileNotFoundError):
        os.stat(mount.path / "missing-too")
    assert scrape(url)['zcfs_requests_total{opcode="LOOKUP"}'] == lookups + 1


@pytest.mark.parametrize("how", ["background", "foreground"])
def test_bad_metrics_address_is_refused_before_mounting(how, tmp_path):
    reason = fuse_skip_reason()
    if reason:
        pytest.skip(reason)
    (tmp_path / "backing").mkdir()
    (tmp_path / "mnt").mkdir()
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        taken = f"127.0.0.1:{busy.getsockname()[1]}"
        for address, code, words in [("nowhere", 2, "--metrics needs HOST:PORT"),
                                     ("127.0.0.1:99999", 2, "--metrics needs HOST:PORT"),
                                     (taken, 1, f"cannot serve metrics on {taken}")]:
            try:
                result = zcfs(tmp_path / "backing", tmp_path / "mnt", "--metrics", address,
                              *(["-f"] if how == "foreground" else []))
                assert result.returncode == code, result.stderr
                assert result.stderr.startswith(f"zcfs: {words}") and result.stderr.count("\n") == 1, result.stderr
            finally:
                if mount_is_listed(tmp_path / "mnt"):
                    subprocess.run(["fusermount3", "-u", str(tmp_path / "mnt")], capture_output=True)
                    pytest.fail(f"zcfs mounted despite --metrics {address}")
