#!/usr/bin/env bash
# Make a fresh Debian 12 machine (root) ready for zcfs: system packages, a
# virtualenv with zcfs and its test tools, an unprivileged test user.
# Idempotent and quick when everything is already there.
set -euo pipefail
cd "$(dirname "$0")/.."

packages=(fuse3 libfuse3-dev pkg-config gcc fio stress-ng attr acl libcap2-bin rsync git tar psmisc mergerfs docker.io)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "setup: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${missing[@]}" >/dev/null
fi

python=${PYTHON:-python3}
if ! "$python" -c 'import venv, ensurepip, sysconfig, os; assert os.path.exists(sysconfig.get_paths()["include"] + "/Python.h")' 2>/dev/null; then
  # Debian's own python3 keeps venv and the C headers (pyfuse3 builds) apart.
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv python3-dev >/dev/null
fi
if [ ! -x .venv/bin/python ]; then
  "$python" -m venv .venv
fi
stamp=.venv/.zcfs-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  rm -rf zcfs.egg-info  # left by the setuptools build zcfs used before flit_core
  # The extras: bench (matplotlib, zcfs bench's chart) and metrics (prometheus_client, --metrics) are tested too.
  .venv/bin/pip install -q -e '.[test,bench,metrics]' 2>&1 | grep -v -e '^WARNING: Location' -e BuildBackendWarning || true
  .venv/bin/python -c 'import pyfuse3, trio, pytest_trio, hypothesis, matplotlib, prometheus_client'
  touch "$stamp"
fi

# An unprivileged user for permission tests through -o allow_other.
id -u zcfs-test >/dev/null 2>&1 || useradd --system --no-create-home --shell /usr/sbin/nologin zcfs-test
echo "setup: ready (.venv/bin/zcfs)"
