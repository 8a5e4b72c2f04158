#!/usr/bin/env bash
# Install what the tests need (scripts/setup.sh), then run the whole suite.
# Extra arguments go to pytest, e.g. scripts/test.sh -k rename -x
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
exec .venv/bin/python -m pytest -q "$@"
