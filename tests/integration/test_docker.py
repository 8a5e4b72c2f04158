"""Docker: a zcfs container whose mount propagates to the host (`rshared`) is
`docker kill`ed, then started again the same way.

A killed zcfs leaves a dead FUSE mount (ENOTCONN) on the host. Mounted at the
root of the shared volume, that dead mount is the volume's source: the next
`docker run` (or `docker start`) fails inside Docker, which stats the source
before the container exists. Mounted one level below (the Dockerfile's CMD),
the source stays a plain directory: the next container's zcfs finds the dead
mount at its mountpoint, clears it, and the unmount propagates to the host.

Docker runs for real: a private dockerd (data root, exec root and socket
under a temp dir, vfs storage, no networking) inside a private mount + pid
namespace, which plays the host. Killing the namespace's init takes dockerd,
containerd, the containers and every mount with it. The image is imported
from a tarball of empty directories (no registry needed); the host's /usr,
this checkout and its Python are bind-mounted read-only into the containers,
which run the Dockerfile's ENTRYPOINT and CMD.
"""

from __future__ import annotations

import errno
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path, PurePosixPath

import pytest

from conftest import fuse_skip_reason, wait_until
from test_mounting import Namespace

import zcfs

TIMEOUT = 60
CHECKOUT = Path(zcfs.__file__).resolve().parents[1]
DOCKERFILE = CHECKOUT / "Dockerfile"
DOCKERD = "/usr/sbin/dockerd"
DOCKER = "/usr/bin/docker"  # the client of the same package, which speaks its daemon's API
IMAGE = "zcfs-test"
VOLUME = PurePosixPath("/mnt/zcfs")  # the shared volume's path in the container, as in the README
STALE_NOTE = "cleared a stale FUSE mount"
MERGED_USR = ("bin", "sbin", "lib", "lib32", "lib64", "libx32")

# Prints the errno of stat(2) on a path (0 if it works): fstatat, as Docker's
# Go code calls it, not coreutils' statx.
STAT_ERRNO = "import os, sys\ntry: os.stat(sys.argv[1])\nexcept OSError as e: print(e.errno)\nelse: print(0)"


def _skip_reason() -> str | None:
    reason = fuse_skip_reason()
    if reason:
        return reason
    for binary in (DOCKERD, DOCKER):
        if not os.access(binary, os.X_OK):
            return f"{binary} missing: run scripts/setup.sh (installs docker.io)"
    with open("/proc/self/mounts") as mounts:
        if not any(line.split()[2] in ("cgroup", "cgroup2") for line in mounts):
            return "no cgroup filesystem mounted: containers cannot run here"
    for tool in ("unshare", "nsenter"):
        if shutil.which(tool) is None:
            return f"{tool} missing (util-linux)"
    return None


def _dockerfile(instruction: str) -> list[str]:
    """The exec form (a JSON list) of the Dockerfile's last ENTRYPOINT or CMD."""
    lines = [line for line in DOCKERFILE.read_text().splitlines() if line.startswith(instruction + " ")]
    return json.loads(lines[-1][len(instruction):])


def _image_tarball() -> bytes:
    """A root filesystem of empty directories, and /bin etc. as links into /usr as on the host."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for name in ("usr", "proc", "sys", "dev", "etc", "run", "tmp", "root", "data", "mnt", "mnt/zcfs"):
            entry = tarfile.TarInfo(name)
            entry.type, entry.mode = tarfile.DIRTYPE, 0o1777 if name == "tmp" else 0o755
            tar.addfile(entry)
        for name in MERGED_USR:
            if os.path.islink(f"/{name}"):
                entry = tarfile.TarInfo(name)
                entry.type, entry.linkname = tarfile.SYMTYPE, os.readlink(f"/{name}")
                tar.addfile(entry)
    return buffer.getvalue()


def _runtime_mounts() -> list[str]:
    """`-v` options that give the container the host's programs and this checkout's zcfs, read-only."""
    paths = ["/usr", sys.base_prefix, sys.prefix, str(CHECKOUT)]
    paths += [f"/{name}" for name in MERGED_USR if os.path.isdir(f"/{name}") and not os.path.islink(f"/{name}")]
    paths = sorted({os.path.realpath(p) for p in paths})
    outermost = [p for p in paths if not any(p.startswith(q.rstrip("/") + "/") for q in paths if q != p)]
    return [arg for p in outermost for arg in ("-v", f"{p}:{p}:ro")]


def _apparmor_enabled() -> bool:
    try:
        return Path("/sys/module/apparmor/parameters/enabled").read_text().strip() == "Y"
    except OSError:
        return False


class Docker:
    """A private dockerd in a private mount + pid namespace (the "host"), and its client."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.cgroup_parent = root.name
        self.env = {**os.environ, "DOCKER_HOST": f"unix://{root}/docker.sock",
                    "DOCKER_CONFIG": str(root / "client")}
        # dockerd writes /run/docker and /etc/docker/key.json, and would use a
        # system containerd it finds under /run: give it empty ones instead.
        self.host = Namespace("mount -t tmpfs zcfs-test-run /run\n"
                              "[ ! -d /etc/docker ] || mount -t tmpfs zcfs-test-etc /etc/docker")
        self.log = open(root / "dockerd.log", "wb")
        self.daemon: subprocess.Popen | None = None

    def start(self) -> None:
        """Start dockerd in the namespace, and import the test image."""
        root = self.root
        self.daemon = subprocess.Popen(
            ["nsenter", "-t", str(self.host.init), "-m", "-p", "--", DOCKERD,
             "--data-root", root / "data", "--exec-root", root / "exec", "--host", self.env["DOCKER_HOST"],
             "--pidfile", root / "dockerd.pid", "--storage-driver", "vfs", "--cgroup-parent", self.cgroup_parent,
             "--iptables=false", "--ip-forward=false", "--bridge=none"],
            stdin=subprocess.DEVNULL, stdout=self.log, stderr=subprocess.STDOUT)
        ready = wait_until(lambda: self.daemon.poll() is not None or self("version").returncode == 0, TIMEOUT)
        if not ready or self.daemon.poll() is not None:
            raise RuntimeError(f"dockerd did not start:\n{self.daemon_log()}")
        self("import", *self._image_changes(), "-", IMAGE, input=_image_tarball(), check=True)

    def _image_changes(self) -> list[str]:
        """The Dockerfile's ENTRYPOINT and CMD, with this checkout's venv first in PATH."""
        path = f"{Path(sys.executable).parent}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
        changes = [f"ENV PATH={path}", f"ENTRYPOINT {json.dumps(_dockerfile('ENTRYPOINT'))}",
                   f"CMD {json.dumps(_dockerfile('CMD'))}"]
        return [arg for change in changes for arg in ("--change", change)]

    def __call__(self, *args: str | Path, input: bytes | None = None, check: bool = False,
                 timeout: float = TIMEOUT) -> subprocess.CompletedProcess:
        done = subprocess.run([DOCKER, *map(str, args)], input=input, capture_output=True, env=self.env,
                              timeout=timeout, stdin=None if input is not None else subprocess.DEVNULL)
        if check and done.returncode != 0:
            raise AssertionError(f"docker {' '.join(map(str, args))}: {done.stderr.decode()}")
        return done

    def run_args(self, name: str, data: Path, shared: Path) -> list[str]:
        """The README's `docker run`, plus what this image needs: the host's programs, no network."""
        extra = ["--network", "none", *_runtime_mounts()]
        if _apparmor_enabled():
            extra += ["--security-opt", "apparmor=unconfined"]  # as the README says for AppArmor hosts
        return ["run", "-d", "--name", name, "--device", "/dev/fuse", "--cap-add", "SYS_ADMIN",
                "-v", f"{data}:/data", "-v", f"{shared}:{VOLUME}:rshared", *extra, IMAGE]

    def daemon_log(self) -> str:
        self.log.flush()
        return (self.root / "dockerd.log").read_text(errors="replace")[-4000:]

    # -- the host side ------------------------------------------------------

    def share(self, directory: Path) -> None:
        """The README's step once on the host: make `directory` a shared bind mount."""
        done = self.host.run("sh", "-ec", 'mount --bind "$0" "$0" && mount --make-shared "$0"', directory)
        assert done.returncode == 0, done.stderr

    def read(self, path: Path) -> str | None:
        done = self.host.run("cat", path)
        return done.stdout if done.returncode == 0 else None

    def stat_errno(self, path: Path) -> int:
        return int(self.host.run(sys.executable, "-c", STAT_ERRNO, path).stdout)

    def fuse_mounts(self, under: Path) -> list[str]:
        """FUSE mountpoints at or below `under` on the host, bottom first."""
        found = []
        for line in self.host.run("cat", "/proc/self/mountinfo").stdout.splitlines():
            fields = line.split()
            mountpoint, fstype = fields[4], fields[fields.index("-") + 1]
            if fstype.startswith("fuse") and (mountpoint + "/").startswith(str(under) + "/"):
                found.append(mountpoint)
        return found

    def close(self) -> None:
        """Remove every container, stop dockerd by its pid, kill the namespace, remove the cgroups."""
        try:
            if self.daemon is not None and self.daemon.poll() is None:
                ids = self("ps", "-aq").stdout.split()
                if ids:
                    self("rm", "-f", *ids)
                with open(f"/proc/{self.daemon.pid}/task/{self.daemon.pid}/children") as children:
                    dockerd = [int(pid) for pid in children.read().split()]  # nsenter forked it
                for pid in dockerd:
                    os.kill(pid, signal.SIGTERM)
                try:
                    self.daemon.wait(TIMEOUT)
                except subprocess.TimeoutExpired:
                    pass  # killing the namespace ends it
        finally:
            self.host.close()
            if self.daemon is not None:
                self.daemon.wait()
            self.log.close()
            for hierarchy in Path("/sys/fs/cgroup").glob("*"):
                parent = hierarchy / self.cgroup_parent
                for directory in sorted(parent.glob("**/"), key=lambda p: -len(p.parts)):
                    try:
                        directory.rmdir()  # left only if a container was killed with the namespace
                    except OSError:
                        pass


@pytest.fixture(scope="module")
def docker():
    reason = _skip_reason()
    if reason:
        pytest.skip(reason)
    root = Path(tempfile.mkdtemp(prefix="zcfs-docker-", dir="/tmp"))  # short: socket paths
    try:
        daemon = Docker(root)
        try:
            daemon.start()
            yield daemon
        finally:
            daemon.close()
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def host_dirs(docker, request):
    """(data, shared): a backing dir holding `hello`, and a shared bind-mounted dir, on the host."""
    base = docker.root / request.node.name
    data, shared = base / "data", base / "shared"
    data.mkdir(parents=True)
    shared.mkdir()
    (data / "hello").write_text("hello\n")
    docker.share(shared)
    yield data, shared
    docker("rm", "-f", request.node.name)


def _killed(docker: Docker, name: str, mirror: Path) -> None:
    """`docker kill` the container; wait until the host's stat of its mountpoint fails as Docker's will."""
    docker("kill", name, check=True)
    assert docker("wait", name).stdout.strip() == b"137"
    # The kernel may answer stat from its attribute cache for a second after
    # the daemon died; Docker trips on the dead mount once that runs out.
    assert wait_until(lambda: docker.stat_errno(mirror) != 0, TIMEOUT), "the dead mount still answers stat"
    assert docker.stat_errno(mirror) == errno.ENOTCONN, "expected ENOTCONN from the dead mount"


def _mirrors(docker: Docker, name: str, mirror: Path) -> bool:
    """Wait until the host sees the backing dir through `mirror`; False early if the container exits."""
    def settled() -> bool:
        status = docker("inspect", "-f", "{{.State.Status}}", name).stdout.strip()
        return status == b"exited" or docker.read(mirror / "hello") == "hello\n"
    return wait_until(settled, TIMEOUT) and docker.read(mirror / "hello") == "hello\n"


def test_killed_container_comes_back_with_the_dockerfile_layout(docker, host_dirs):
    """The Dockerfile's CMD mounts below the shared volume: after `docker kill`,
    `docker start` and the same `docker run` again just work."""
    data, shared = host_dirs
    name = "test_killed_container_comes_back_with_the_dockerfile_layout"
    mountpoint = PurePosixPath(_dockerfile("CMD")[-1])
    assert mountpoint.is_relative_to(VOLUME) and mountpoint != VOLUME, \
        f"the Dockerfile's CMD mounts at {mountpoint}, not below the shared volume {VOLUME}"
    mirror = shared / mountpoint.relative_to(VOLUME)
    mirror.mkdir()  # the README's once-on-the-host mkdir
    run = docker.run_args(name, data, shared)

    docker(*run, check=True)
    assert _mirrors(docker, name, mirror), docker("logs", name).stderr.decode()
    _killed(docker, name, mirror)
    assert docker.fuse_mounts(shared) == [str(mirror)]  # the dead one

    docker("start", name, check=True)
    assert _mirrors(docker, name, mirror), docker("logs", name).stderr.decode()
    assert STALE_NOTE in docker("logs", name).stderr.decode()
    assert docker.fuse_mounts(shared) == [str(mirror)], "the dead mount's unmount did not reach the host"

    _killed(docker, name, mirror)
    docker("rm", name, check=True)
    docker(*run, check=True)  # the very same command as the first time
    assert _mirrors(docker, name, mirror), docker("logs", name).stderr.decode()
    assert STALE_NOTE in docker("logs", name).stderr.decode()
    assert docker.fuse_mounts(shared) == [str(mirror)], "the dead mount's unmount did not reach the host"

    docker("stop", name, check=True)  # SIGTERM: zcfs unmounts, on the host too
    assert docker.fuse_mounts(shared) == []


def test_killed_container_at_the_volume_root_blocks_the_next_run(docker, host_dirs):
    """The control: zcfs mounted at the shared volume's root. After `docker kill`
    Docker itself refuses the next run, until the host runs `umount` (the README's one-liner)."""
    data, shared = host_dirs
    name = "test_killed_container_at_the_volume_root_blocks_the_next_run"
    run = [*docker.run_args(name, data, shared), "/data", str(VOLUME)]

    docker(*run, check=True)
    assert _mirrors(docker, name, shared), docker("logs", name).stderr.decode()
    _killed(docker, name, shared)

    started = docker("start", name)
    assert started.returncode != 0 and b"error while creating mount source path" in started.stderr, started
    docker("rm", name, check=True)
    again = docker(*run)
    assert again.returncode != 0 and b"error while creating mount source path" in again.stderr, again

    assert docker.host.run("umount", shared).returncode == 0  # the one-liner: the dead mount goes
    assert docker.fuse_mounts(shared) == []
    docker("rm", "-f", name, check=True)  # the failed run left a created container
    docker(*run, check=True)
    assert _mirrors(docker, name, shared), docker("logs", name).stderr.decode()
    docker("stop", name, check=True)
    assert docker.fuse_mounts(shared) == []


def test_crashed_zcfs_is_restarted_by_docker(docker, host_dirs):
    """With a restart policy, zcfs dying on its own (a crash, the OOM killer)
    brings the mirror back with no command at all."""
    data, shared = host_dirs
    name = "test_crashed_zcfs_is_restarted_by_docker"
    mirror = shared / PurePosixPath(_dockerfile("CMD")[-1]).relative_to(VOLUME)
    mirror.mkdir()
    run = docker.run_args(name, data, shared)
    docker(*run[:2], "--restart", "unless-stopped", *run[2:], check=True)
    assert _mirrors(docker, name, mirror), docker("logs", name).stderr.decode()

    pid = docker("inspect", "-f", "{{.State.Pid}}", name, check=True).stdout.decode().strip()
    assert docker.host.run("kill", "-KILL", pid).returncode == 0  # dockerd's pid namespace is the host's
    assert wait_until(lambda: docker("inspect", "-f", "{{.RestartCount}}", name).stdout.strip() != b"0", TIMEOUT)
    assert _mirrors(docker, name, mirror), docker("logs", name).stderr.decode()
    assert STALE_NOTE in docker("logs", name).stderr.decode()
    assert docker.fuse_mounts(shared) == [str(mirror)]
    docker("stop", name, check=True)
    assert docker.fuse_mounts(shared) == []
