#!/usr/bin/env bash
# The long soak of zcfs, as one command, on every mode (ZCFS_TEST_MODES narrows):
# the differential fsx with many examples, fio with verify on bigger files
# (checked again in the backing dir), and stress-ng's filesystem stressors for a minute.
# About 10 minutes on a 2-core machine. Ends with one summary line; exit
# status 0 only if everything passed and no mount is left behind.
#
# Knobs (environment): ZCFS_FSX_EXAMPLES (80), ZCFS_FIO_SIZE (64m per job),
# ZCFS_STRESS_SECONDS (60). Extra arguments go to pytest.
set -uo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh >/dev/null

export ZCFS_FSX_EXAMPLES=${ZCFS_FSX_EXAMPLES:-80}
export ZCFS_FIO_SIZE=${ZCFS_FIO_SIZE:-64m}
export ZCFS_STRESS_SECONDS=${ZCFS_STRESS_SECONDS:-60}
modes=${ZCFS_TEST_MODES:-pyfuse3,native-auto,native-splice,native-off}

base=$(mktemp -d /tmp/zcfs-stress-long.XXXXXX)
log="$base.log"
started=$(date +%s)
.venv/bin/python -m pytest -q -p no:cacheprovider --basetemp="$base/pytest" --durations=20 \
  tests/integration/test_differential.py tests/integration/test_fio.py tests/integration/test_stress.py \
  "$@" 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
elapsed=$(( $(date +%s) - started ))

# Every mount the run made lived under $base: none may be left.
leftover=$(grep -c -- "$base" /proc/mounts || true)
if [ "$leftover" != 0 ]; then
  echo "stress_long: $leftover mounts left under $base:" >&2
  grep -- "$base" /proc/mounts >&2
  status=1
else
  rm -rf "$base"
fi

result=$(grep -E '^(=+ )?[0-9]+ (passed|failed)|^=+ .*(passed|failed|error)' "$log" | tail -1 | tr -d '=' | sed 's/^ *//; s/ *$//')
verdict=$([ "$status" = 0 ] && echo PASS || echo FAIL)
echo "stress_long: $verdict ($result) in ${elapsed}s; modes=$modes fsx_examples=$ZCFS_FSX_EXAMPLES" \
     "fio_size=$ZCFS_FIO_SIZE x4 jobs stress_seconds=$ZCFS_STRESS_SECONDS" \
     "leftover_mounts=$leftover log=$log"
exit "$status"
