#!/usr/bin/env bash
# Set up, mount a demo mirror, read and write through it, show the stats, unmount.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh >/dev/null
demo=$(mktemp -d /tmp/zcfs-demo.XXXXXX)
mkdir "$demo/backing" "$demo/mnt"
trap 'fusermount3 -u "$demo/mnt" 2>/dev/null || true; rm -rf "$demo"' EXIT
echo "hello from the backing directory" > "$demo/backing/hello.txt"
head -c 64M /dev/urandom > "$demo/backing/big.bin"

set -x
.venv/bin/zcfs "$demo/backing" "$demo/mnt" "$@"
grep " $demo/mnt " /proc/mounts
cat "$demo/mnt/hello.txt"
echo "written through the mount" > "$demo/mnt/new.txt"
cat "$demo/backing/new.txt"
sha256sum "$demo/backing/big.bin" "$demo/mnt/big.bin"
ls -l "$demo/mnt"
{ set +x; } 2>/dev/null
if .venv/bin/zcfs stats "$demo/mnt" >/dev/null 2>&1; then .venv/bin/zcfs stats "$demo/mnt"; fi
set -x
fusermount3 -u "$demo/mnt"
{ set +x; } 2>/dev/null
echo "demo: unmounted; nothing left mounted: $(grep -c " $demo/mnt " /proc/mounts || true) mounts"
